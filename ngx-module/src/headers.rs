//! Request and response headers as proxy-wasm maps: nginx's header lists plus the fields
//! nginx keeps outside them (pseudo-headers, Content-Type, Content-Length, Server).
//! Keys are presented in lower case, as Envoy does.

use std::ptr;

use inwasm_host::Pairs;
use ngx::ffi::{ngx_http_request_t, ngx_list_init, ngx_list_push, ngx_list_t, ngx_pool_t, ngx_table_elt_t, ngx_uint_t};

use crate::ffi::{bytes, pool_str};

/// Every live element of an nginx list of headers (elements with hash 0 are deleted ones).
unsafe fn elements(list: &ngx_list_t) -> Vec<*mut ngx_table_elt_t> {
    let mut out = Vec::new();
    let mut part = &list.part as *const ngx::ffi::ngx_list_part_t;
    while !part.is_null() {
        let elts = (*part).elts as *mut ngx_table_elt_t;
        for i in 0..(*part).nelts {
            let elt = elts.add(i);
            if (*elt).hash != 0 {
                out.push(elt);
            }
        }
        part = (*part).next;
    }
    out
}

unsafe fn pairs_of(list: &ngx_list_t) -> Pairs {
    elements(list)
        .into_iter()
        .map(|elt| (bytes(&(*elt).key).to_ascii_lowercase(), bytes(&(*elt).value).to_vec()))
        .collect()
}

/// Replaces `list` with a fresh one holding `pairs`; returns the new elements by key.
unsafe fn rebuild(
    list: &mut ngx_list_t,
    pool: *mut ngx_pool_t,
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> Option<Vec<(Vec<u8>, *mut ngx_table_elt_t)>> {
    if ngx_list_init(list, pool, pairs.len().max(1), std::mem::size_of::<ngx_table_elt_t>()) != 0 {
        return None;
    }
    let mut added = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let elt = ngx_list_push(list) as *mut ngx_table_elt_t;
        if elt.is_null() {
            return None;
        }
        // Zeroed first: newer nginx versions have more fields (e.g. `next`).
        ptr::write_bytes(elt, 0, 1);
        let lower = key.to_ascii_lowercase();
        (*elt).key = pool_str(pool, key)?;
        (*elt).value = pool_str(pool, value)?;
        (*elt).lowcase_key = pool_str(pool, &lower)?.data;
        (*elt).hash = 1;
        added.push((lower, elt));
    }
    Some(added)
}

/// The element `rebuild` added for `name` (lower case), or null: what nginx's pointers to
/// well-known headers hold.
fn element(added: &[(Vec<u8>, *mut ngx_table_elt_t)], name: &[u8]) -> *mut ngx_table_elt_t {
    added.iter().find(|(k, _)| k == name).map_or(ptr::null_mut(), |(_, e)| *e)
}

fn is_pseudo(key: &[u8]) -> bool {
    key.first() == Some(&b':')
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

/// Sets the request's headers. Pseudo-headers cannot be changed here and are ignored; the
/// pointers nginx keeps to well-known headers are updated.
pub unsafe fn set_request_headers(r: *mut ngx_http_request_t, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    let r = &mut *r;
    let regular: Vec<_> = pairs.iter().filter(|(k, _)| !is_pseudo(k)).cloned().collect();
    let added = rebuild(&mut r.headers_in.headers, r.pool, &regular)?;
    let find = |name: &[u8]| element(&added, name);
    let hin = &mut r.headers_in;
    hin.host = find(b"host");
    hin.user_agent = find(b"user-agent");
    hin.referer = find(b"referer");
    hin.content_type = find(b"content-type");
    hin.authorization = find(b"authorization");
    hin.content_length = find(b"content-length");
    hin.content_length_n = match hin.content_length.as_ref() {
        Some(elt) => parse_length(bytes(&elt.value)).unwrap_or(-1),
        None => -1,
    };
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
/// fields nginx's header filter reads, and re-pointing nginx's well-known header pointers.
pub unsafe fn set_response_headers(r: *mut ngx_http_request_t, pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<()> {
    let r = &mut *r;
    let value_of = |name: &[u8]| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    if let Some(status) = value_of(b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse::<ngx_uint_t>().ok()) {
        r.headers_out.status = status;
        r.headers_out.status_line.len = 0;
    }
    let out = &mut r.headers_out;
    match value_of(b"content-type") {
        Some(value) => {
            out.content_type = pool_str(r.pool, value)?;
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
    let special =
        |k: &[u8]| is_pseudo(k) || k.eq_ignore_ascii_case(b"content-type") || k.eq_ignore_ascii_case(b"content-length");
    let regular: Vec<_> = pairs.iter().filter(|(k, _)| !special(k)).cloned().collect();
    let added = rebuild(&mut out.headers, r.pool, &regular)?;
    let find = |name: &[u8]| element(&added, name);
    out.content_length = ptr::null_mut();
    out.server = find(b"server");
    out.date = find(b"date");
    out.location = find(b"location");
    out.content_encoding = find(b"content-encoding");
    out.refresh = find(b"refresh");
    out.content_range = find(b"content-range");
    out.accept_ranges = find(b"accept-ranges");
    out.www_authenticate = find(b"www-authenticate");
    out.expires = find(b"expires");
    out.etag = find(b"etag");
    out.last_modified = find(b"last-modified");
    if out.last_modified.is_null() {
        // Otherwise nginx prints Last-Modified from the time it remembers.
        out.last_modified_time = -1;
    }
    Some(())
}

fn parse_length(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
