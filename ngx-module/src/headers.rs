//! Request and response headers as proxy-wasm maps: nginx's header lists plus the fields
//! nginx keeps outside them (pseudo-headers, Content-Type, Content-Length, Server).
//! Keys are presented in lower case, as Envoy does.
//!
//! Single-header reads and writes work on nginx's lists in place (the common case, and
//! cheap); whole-map writes and the headers nginx keeps outside its lists go through the
//! whole map. Either way nginx's pointers to well-known headers are kept right.

use std::ptr;

use inwasm_host::Pairs;
use ngx::ffi::{
    ngx_http_request_t, ngx_list_init, ngx_list_part_t, ngx_list_push, ngx_list_t, ngx_pool_t, ngx_table_elt_t,
    ngx_uint_t,
};

use crate::ffi::{bytes, pool_str};

/// Which side of the exchange a header map is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Every live element of an nginx list of headers (elements with hash 0 are deleted ones).
unsafe fn elements(list: &ngx_list_t) -> impl Iterator<Item = *mut ngx_table_elt_t> + '_ {
    let parts = std::iter::successors(Some(&list.part as *const ngx_list_part_t), |part| {
        Some((**part).next as *const ngx_list_part_t).filter(|next| !next.is_null())
    });
    parts
        .flat_map(|part| {
            let elts = (*part).elts as *mut ngx_table_elt_t;
            (0..(*part).nelts).map(move |i| elts.add(i))
        })
        .filter(|elt| (**elt).hash != 0)
}

unsafe fn pairs_of(list: &ngx_list_t) -> Pairs {
    elements(list).map(|elt| (bytes(&(*elt).key).to_ascii_lowercase(), bytes(&(*elt).value).to_vec())).collect()
}

/// The live elements named `key` (case-insensitively), in order.
unsafe fn named<'a>(list: &'a ngx_list_t, key: &'a [u8]) -> impl Iterator<Item = *mut ngx_table_elt_t> + 'a {
    elements(list).filter(move |elt| bytes(&(**elt).key).eq_ignore_ascii_case(key))
}

/// Appends a header to `list`.
unsafe fn push(list: &mut ngx_list_t, pool: *mut ngx_pool_t, key: &[u8], value: &[u8]) -> Option<()> {
    let elt = ngx_list_push(list) as *mut ngx_table_elt_t;
    if elt.is_null() {
        return None;
    }
    // Zeroed first: newer nginx versions have more fields (e.g. `next`).
    ptr::write_bytes(elt, 0, 1);
    (*elt).key = pool_str(pool, key)?;
    (*elt).value = pool_str(pool, value)?;
    let lowercase = pool_str(pool, key)?.data;
    if !lowercase.is_null() {
        std::slice::from_raw_parts_mut(lowercase, key.len()).make_ascii_lowercase();
    }
    (*elt).lowcase_key = lowercase;
    (*elt).hash = 1;
    Some(())
}

/// Removes the headers named `key` from `list` (all of them, or all but the first). Request
/// lists are compacted (some modules read every element); response lists mark them deleted
/// (hash 0), as nginx does.
unsafe fn remove_named(list: &mut ngx_list_t, key: &[u8], side: Side, keep_first: bool) {
    let mut first = keep_first;
    let mut doomed = |elt: *mut ngx_table_elt_t| {
        let matches = (*elt).hash != 0 && bytes(&(*elt).key).eq_ignore_ascii_case(key);
        matches && !std::mem::replace(&mut first, false)
    };
    let mut part = &mut list.part as *mut ngx_list_part_t;
    while !part.is_null() {
        let elts = (*part).elts as *mut ngx_table_elt_t;
        let mut kept = 0;
        for i in 0..(*part).nelts {
            let elt = elts.add(i);
            match (doomed(elt), side) {
                (true, Side::Response) => (*elt).hash = 0,
                (true, Side::Request) => continue,
                (false, _) => {}
            }
            ptr::copy(elt, elts.add(kept), 1);
            kept += 1;
        }
        (*part).nelts = kept;
        part = (*part).next;
    }
}

/// Replaces `list` with a fresh one holding `pairs`.
unsafe fn rebuild(list: &mut ngx_list_t, pool: *mut ngx_pool_t, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    if ngx_list_init(list, pool, pairs.len().max(1), std::mem::size_of::<ngx_table_elt_t>()) != 0 {
        return None;
    }
    pairs.iter().try_for_each(|(key, value)| push(list, pool, key, value))
}

fn is_pseudo(key: &[u8]) -> bool {
    key.first() == Some(&b':')
}

/// Headers nginx keeps outside its lists: they are read and written through the whole map.
fn is_special(side: Side, key: &[u8]) -> bool {
    is_pseudo(key)
        || side == Side::Response
            && (key.eq_ignore_ascii_case(b"content-type") || key.eq_ignore_ascii_case(b"content-length"))
}

pub unsafe fn request_headers(r: *mut ngx_http_request_t) -> Pairs {
    let r = &*r;
    let mut pairs = vec![
        (b":authority".to_vec(), authority(r)),
        (b":path".to_vec(), bytes(&r.unparsed_uri).to_vec()),
        (b":method".to_vec(), bytes(&r.method_name).to_vec()),
        (b":scheme".to_vec(), scheme(r).to_vec()),
    ];
    pairs.extend(pairs_of(&r.headers_in.headers));
    pairs
}

pub unsafe fn authority(r: &ngx_http_request_t) -> Vec<u8> {
    if r.headers_in.host.is_null() {
        bytes(&r.headers_in.server).to_vec()
    } else {
        bytes(&(*r.headers_in.host).value).to_vec()
    }
}

pub unsafe fn scheme(r: &ngx_http_request_t) -> &'static [u8] {
    if (*r.connection).ssl.is_null() {
        b"http"
    } else {
        b"https"
    }
}

/// Sets the request's headers. Pseudo-headers cannot be changed here and are ignored.
pub unsafe fn set_request_headers(r: *mut ngx_http_request_t, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    let regular: Vec<_> = pairs.iter().filter(|(k, _)| !is_pseudo(k)).cloned().collect();
    rebuild(&mut (*r).headers_in.headers, (*r).pool, &regular)?;
    refresh_pointers(r, Side::Request);
    Some(())
}

pub unsafe fn response_headers(r: *mut ngx_http_request_t) -> Pairs {
    let r = &*r;
    let out = &r.headers_out;
    let mut pairs = vec![(b":status".to_vec(), out.status.to_string().into_bytes())];
    if out.content_type.len > 0 {
        let mut value = bytes(&out.content_type).to_vec();
        if out.charset.len > 0 {
            value.extend_from_slice(b"; charset=");
            value.extend_from_slice(bytes(&out.charset));
        }
        pairs.push((b"content-type".to_vec(), value));
    }
    if out.content_length.is_null() && out.content_length_n >= 0 {
        pairs.push((b"content-length".to_vec(), out.content_length_n.to_string().into_bytes()));
    }
    pairs.extend(pairs_of(&out.headers));
    pairs
}

/// Sets the response's headers, routing `:status`, `content-type` and `content-length` to the
/// fields nginx's header filter reads.
pub unsafe fn set_response_headers(r: *mut ngx_http_request_t, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    let value_of = |name: &[u8]| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    let pool = (*r).pool;
    let out = &mut (*r).headers_out;
    if let Some(status) = value_of(b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse::<ngx_uint_t>().ok()) {
        out.status = status;
        out.status_line.len = 0;
    }
    match value_of(b"content-type") {
        Some(value) => {
            out.content_type = pool_str(pool, value)?;
            out.content_type_len = value.len();
        }
        None => {
            out.content_type.len = 0;
            out.content_type_len = 0;
        }
    }
    out.charset.len = 0;
    out.content_type_lowcase = ptr::null_mut();
    out.content_length_n = value_of(b"content-length").and_then(parse_length).unwrap_or(-1);
    let regular: Vec<_> = pairs.iter().filter(|(k, _)| !is_special(Side::Response, k)).cloned().collect();
    rebuild(&mut out.headers, pool, &regular)?;
    refresh_pointers(r, Side::Response);
    Some(())
}

fn headers_of(r: *mut ngx_http_request_t, side: Side) -> *mut ngx_list_t {
    unsafe {
        match side {
            Side::Request => &mut (*r).headers_in.headers,
            Side::Response => &mut (*r).headers_out.headers,
        }
    }
}

unsafe fn whole_map(r: *mut ngx_http_request_t, side: Side) -> Pairs {
    match side {
        Side::Request => request_headers(r),
        Side::Response => response_headers(r),
    }
}

unsafe fn set_whole_map(r: *mut ngx_http_request_t, side: Side, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    match side {
        Side::Request => set_request_headers(r, pairs),
        Side::Response => set_response_headers(r, pairs),
    }
}

/// The first value of header `key`.
pub unsafe fn value(r: *mut ngx_http_request_t, side: Side, key: &[u8]) -> Option<Vec<u8>> {
    if is_special(side, key) {
        return whole_map(r, side).into_iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v);
    }
    named(&*headers_of(r, side), key).next().map(|elt| bytes(&(*elt).value).to_vec())
}

/// How many headers the map has: the listed ones and those nginx keeps aside.
pub unsafe fn count(r: *mut ngx_http_request_t, side: Side) -> usize {
    let listed = elements(&*headers_of(r, side)).count();
    let out = &(*r).headers_out;
    match side {
        Side::Request => listed + 4, // :authority, :path, :method, :scheme
        Side::Response => {
            let content_length = out.content_length.is_null() && out.content_length_n >= 0;
            listed + 1 + (out.content_type.len > 0) as usize + content_length as usize
        }
    }
}

pub unsafe fn add(r: *mut ngx_http_request_t, side: Side, key: &[u8], value: &[u8]) -> Option<()> {
    if is_special(side, key) {
        let mut pairs = whole_map(r, side);
        pairs.push((key.to_vec(), value.to_vec()));
        return set_whole_map(r, side, &pairs);
    }
    push(&mut *headers_of(r, side), (*r).pool, key, value)?;
    // Pushing moves no element: only a header nginx keeps a pointer to needs one.
    let pointed = match side {
        Side::Request => &REQUEST_POINTERS[..],
        Side::Response => &RESPONSE_POINTERS[..],
    };
    if pointed.iter().any(|name| key.eq_ignore_ascii_case(name)) {
        refresh_pointers(r, side);
    }
    Some(())
}

pub unsafe fn remove(r: *mut ngx_http_request_t, side: Side, key: &[u8]) -> Option<()> {
    if is_special(side, key) {
        let mut pairs = whole_map(r, side);
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        return set_whole_map(r, side, &pairs);
    }
    remove_named(&mut *headers_of(r, side), key, side, false);
    refresh_pointers(r, side);
    Some(())
}

/// Sets `key` to `value`: the first such header takes the value, any others go.
pub unsafe fn replace(r: *mut ngx_http_request_t, side: Side, key: &[u8], value: &[u8]) -> Option<()> {
    if is_special(side, key) {
        let mut pairs = whole_map(r, side);
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        pairs.push((key.to_vec(), value.to_vec()));
        return set_whole_map(r, side, &pairs);
    }
    let list = &mut *headers_of(r, side);
    let Some(first) = named(list, key).next() else { return add(r, side, key, value) };
    (*first).value = pool_str((*r).pool, value)?;
    remove_named(list, key, side, true);
    refresh_pointers(r, side);
    Some(())
}

const REQUEST_POINTERS: [&[u8]; 6] =
    [b"host", b"user-agent", b"referer", b"content-type", b"authorization", b"content-length"];
const RESPONSE_POINTERS: [&[u8]; 11] = [
    b"server",
    b"date",
    b"location",
    b"content-encoding",
    b"refresh",
    b"content-range",
    b"accept-ranges",
    b"www-authenticate",
    b"expires",
    b"etag",
    b"last-modified",
];

/// Points nginx's well-known header pointers at the current elements (the first of each),
/// in one pass over the list.
unsafe fn refresh_pointers(r: *mut ngx_http_request_t, side: Side) {
    let (hin, out) = (&mut (*r).headers_in, &mut (*r).headers_out);
    let (names, mut slots): (&[&[u8]], Vec<&mut *mut ngx_table_elt_t>) = match side {
        Side::Request => (
            &REQUEST_POINTERS,
            vec![
                &mut hin.host,
                &mut hin.user_agent,
                &mut hin.referer,
                &mut hin.content_type,
                &mut hin.authorization,
                &mut hin.content_length,
            ],
        ),
        Side::Response => (
            &RESPONSE_POINTERS,
            vec![
                &mut out.server,
                &mut out.date,
                &mut out.location,
                &mut out.content_encoding,
                &mut out.refresh,
                &mut out.content_range,
                &mut out.accept_ranges,
                &mut out.www_authenticate,
                &mut out.expires,
                &mut out.etag,
                &mut out.last_modified,
            ],
        ),
    };
    slots.iter_mut().for_each(|slot| **slot = ptr::null_mut());
    for elt in elements(&*headers_of(r, side)) {
        let key = bytes(&(*elt).key);
        if let Some(index) = names.iter().position(|name| key.eq_ignore_ascii_case(name)) {
            if slots[index].is_null() {
                *slots[index] = elt;
            }
        }
    }
    match side {
        Side::Request => {
            hin.content_length_n = match hin.content_length.as_ref() {
                Some(elt) => parse_length(bytes(&elt.value)).unwrap_or(-1),
                None => -1,
            };
        }
        Side::Response => {
            out.content_length = ptr::null_mut();
            if out.last_modified.is_null() {
                // Otherwise nginx prints Last-Modified from the time it remembers.
                out.last_modified_time = -1;
            }
        }
    }
}

fn parse_length(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
