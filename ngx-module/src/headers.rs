//! Request and response headers as proxy-wasm maps: nginx's header lists plus the fields
//! nginx keeps outside them (pseudo-headers, Content-Type, Content-Length). Keys are
//! presented in lower case, as Envoy does.
//!
//! Single-header reads and writes work on nginx's lists in place (the common case, and
//! cheap); whole-map writes and the response headers nginx keeps outside its list go through
//! the whole map. Either way nginx's shortcuts to well-known headers are kept true
//! (`shortcuts.rs`). Request pseudo-headers are written to the request line (`request_line.rs`).
//! A name or value that would break HTTP framing (CR, LF, NUL; a name that is not a token)
//! is refused with `BAD_ARGUMENT`, so a filter cannot inject headers or requests.

use std::ptr;

use inwasm_host::{HostResult, Pairs, Status};
use ngx::ffi::{
    ngx_cached_http_time, ngx_hash_key, ngx_http_headers_out_t, ngx_http_request_t, ngx_list_init, ngx_list_part_t,
    ngx_list_push, ngx_list_t, ngx_pool_t, ngx_table_elt_t, ngx_uint_t, NGINX_VER, NGINX_VER_BUILD,
    NGX_HTTP_SERVER_TOKENS_BUILD, NGX_HTTP_SERVER_TOKENS_OFF, NGX_HTTP_SERVER_TOKENS_ON,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::ffi::{bytes, pool_str, pool_str_lowercase};
use crate::request_line;
use crate::shortcuts::{self, elements};

/// Which side of the exchange a header map is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

pub use inwasm_host::http1_client::is_token;

/// Refuses a header a filter sets when it could break the message's framing.
fn check(key: &[u8], value: &[u8]) -> HostResult<()> {
    let name = key.strip_prefix(b":").unwrap_or(key);
    let value_ok = value.iter().all(|&c| c != b'\r' && c != b'\n' && c != 0);
    if is_token(name) && value_ok {
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

const OUT_OF_MEMORY: Status = Status::InternalFailure;

/// Appends the live elements of `list` to `pairs`, and lower-cases the names (those already
/// in `pairs` are the host's own, in lower case).
unsafe fn append_elements(pairs: &mut Pairs, list: &ngx_list_t) {
    // SAFETY: a valid list (per the caller); its live elements are valid.
    pairs.extend(unsafe { elements(list).map(|elt| (bytes(&(*elt).key), bytes(&(*elt).value))) });
    pairs.lowercase_names();
}

/// The live elements named `key` (case-insensitively), in order.
unsafe fn named<'a>(list: &'a ngx_list_t, key: &'a [u8]) -> impl Iterator<Item = *mut ngx_table_elt_t> + 'a {
    // SAFETY: a valid list (per the caller); its live elements are valid.
    unsafe { elements(list) }.filter(move |elt| unsafe { bytes(&(**elt).key) }.eq_ignore_ascii_case(key))
}

/// Appends a header to `list`. Request headers get nginx's hash of their lower-case name (as
/// nginx's parser gives them); response headers 1, as nginx's own modules do.
pub(crate) unsafe fn push(
    list: &mut ngx_list_t,
    pool: *mut ngx_pool_t,
    side: Side,
    key: &[u8],
    value: &[u8],
) -> HostResult<()> {
    // SAFETY: a valid list and pool (per the caller); the element is initialised before use.
    unsafe {
        let elt = ngx_list_push(list) as *mut ngx_table_elt_t;
        if elt.is_null() {
            return Err(OUT_OF_MEMORY);
        }
        // Zeroed first: newer nginx versions have more fields (e.g. `next`).
        ptr::write_bytes(elt, 0, 1);
        (*elt).key = pool_str(pool, key).ok_or(OUT_OF_MEMORY)?;
        (*elt).value = pool_str(pool, value).ok_or(OUT_OF_MEMORY)?;
        let lowercase = pool_str_lowercase(pool, key).ok_or(OUT_OF_MEMORY)?.data;
        (*elt).lowcase_key = lowercase;
        (*elt).hash = match side {
            Side::Request => ngx_hash_key(lowercase, key.len()).max(1),
            Side::Response => 1,
        };
    }
    Ok(())
}

/// Removes the headers named `key` from `list` (all of them, or all but the first); returns
/// whether any went. Request lists are compacted (modules read every element of them);
/// response lists mark them deleted (hash 0), as nginx does.
unsafe fn remove_named(list: &mut ngx_list_t, key: &[u8], side: Side, keep_first: bool) -> bool {
    let mut first = keep_first;
    let mut removed = false;
    let mut doomed = |elt: *mut ngx_table_elt_t| {
        // SAFETY: an element of the list.
        let matches = unsafe { (*elt).hash != 0 && bytes(&(*elt).key).eq_ignore_ascii_case(key) };
        let doomed = matches && !std::mem::replace(&mut first, false);
        removed |= doomed;
        doomed
    };
    let mut part = &mut list.part as *mut ngx_list_part_t;
    // SAFETY: walks the list's parts and their `nelts` elements, moving elements only within
    // a part.
    unsafe {
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
    removed
}

/// Replaces `list` with a fresh one holding the pairs of `pairs` that `keep` takes.
unsafe fn rebuild(
    list: &mut ngx_list_t,
    pool: *mut ngx_pool_t,
    side: Side,
    pairs: &Pairs,
    keep: impl Fn(&[u8]) -> bool,
) -> HostResult<()> {
    // SAFETY: a valid pool (per the caller); the list is re-initialised before use.
    unsafe {
        if ngx_list_init(list, pool, pairs.len().max(1), std::mem::size_of::<ngx_table_elt_t>()) != 0 {
            return Err(OUT_OF_MEMORY);
        }
        pairs.iter().filter(|(key, _)| keep(key)).try_for_each(|(key, value)| push(list, pool, side, key, value))
    }
}

pub fn is_pseudo(key: &[u8]) -> bool {
    key.first() == Some(&b':')
}

/// Response headers nginx keeps outside its list: read and written through the whole map.
fn is_special_response(key: &[u8]) -> bool {
    is_pseudo(key) || key.eq_ignore_ascii_case(b"content-type") || key.eq_ignore_ascii_case(b"content-length")
}

/// The request's headers: the pseudo-headers from its request line, then its list.
pub unsafe fn request_headers(r: *mut ngx_http_request_t) -> Pairs {
    // SAFETY: a live request (per the caller).
    unsafe {
        let mut pairs = request_line::pseudo_headers(r);
        append_elements(&mut pairs, &(*r).headers_in.headers);
        pairs
    }
}

/// Sets the request's headers: its list, and its request line from the pseudo-headers that
/// differ from it.
pub unsafe fn set_request_headers(r: *mut ngx_http_request_t, pairs: &Pairs) -> HostResult<()> {
    pairs.iter().try_for_each(|(k, v)| check(k, v))?;
    // SAFETY: a live request (per the caller).
    unsafe {
        let current = request_line::pseudo_headers(r);
        for (key, value) in pairs.iter().filter(|(k, _)| is_pseudo(k)) {
            if !current.iter().any(|(k, v)| k == key && v == value) {
                request_line::set(r, key, value)?;
            }
        }
        rebuild(&mut (*r).headers_in.headers, (*r).pool, Side::Request, pairs, |k| !is_pseudo(k))?;
        shortcuts::refresh_request(r).ok_or(OUT_OF_MEMORY)
    }
}

pub unsafe fn response_headers(r: *mut ngx_http_request_t) -> Pairs {
    // SAFETY: a live request (per the caller).
    let out = unsafe { &(*r).headers_out };
    let mut pairs = Pairs::new();
    pairs.push_number(b":status", out.status as u64);
    // SAFETY: a live request.
    unsafe { add_nginx_own(r, &mut pairs) };
    // SAFETY: nginx's strings of a live request.
    if let Some(value) = unsafe { content_type(out) } {
        pairs.push(b"content-type", value);
    }
    if let Some(value) = content_length(out) {
        pairs.push(b"content-length", value);
    }
    // SAFETY: the response's list is valid.
    unsafe { append_elements(&mut pairs, &out.headers) };
    pairs
}

/// The response's `content-type` as nginx's header filter will send it: the charset goes on
/// unless the type already carries it.
///
/// # Safety
/// `out` must be a live request's.
unsafe fn content_type(out: &ngx_http_headers_out_t) -> Option<Vec<u8>> {
    if out.content_type.len == 0 {
        return None;
    }
    // SAFETY: nginx's strings of a live request (per the caller).
    let mut value = unsafe { bytes(&out.content_type) }.to_vec();
    if out.charset.len > 0 && out.content_type_len == out.content_type.len {
        value.extend_from_slice(b"; charset=");
        // SAFETY: as above.
        value.extend_from_slice(unsafe { bytes(&out.charset) });
    }
    Some(value)
}

/// The `content-length` nginx's header filter will send from its field (a listed one aside).
fn content_length(out: &ngx_http_headers_out_t) -> Option<Vec<u8>> {
    (out.content_length.is_null() && out.content_length_n >= 0).then(|| out.content_length_n.to_string().into_bytes())
}

/// The first value of special response header `key` (`:status`, `content-type`,
/// `content-length`), from nginx's fields, else from the list.
///
/// # Safety
/// `r` must be a live request.
unsafe fn special_response_value(r: *mut ngx_http_request_t, key: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: a live request (per the caller).
    let out = unsafe { &(*r).headers_out };
    let field = if key == b":status" {
        Some(out.status.to_string().into_bytes())
    } else if key.eq_ignore_ascii_case(b"content-type") {
        // SAFETY: as above.
        unsafe { content_type(out) }
    } else if key.eq_ignore_ascii_case(b"content-length") {
        content_length(out)
    } else {
        return None;
    };
    // SAFETY: the response's list is valid.
    field.or_else(|| unsafe { named(&out.headers, key).next().map(|elt| bytes(&(*elt).value).to_vec()) })
}

/// Sets special response header `key` to `value` (`None`: removes it) in the field nginx's
/// header filter reads, with no list of that name left: what setting the whole map with
/// that one change does, without rebuilding the list. (Removing `:status` leaves it; other
/// pseudo-headers are not the response's.)
///
/// # Safety
/// `r` must be a live request.
unsafe fn set_special_response(r: *mut ngx_http_request_t, key: &[u8], value: Option<&[u8]>) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        set_special_field(r, key, value)?;
        if is_pseudo(key) {
            return Ok(());
        }
        if remove_named(&mut (*r).headers_out.headers, key, Side::Response, false) {
            shortcuts::refresh_response(r);
        }
        (*r).headers_out.content_length = ptr::null_mut();
    }
    Ok(())
}

/// The special response headers that have a field of their own.
const SPECIAL_RESPONSE_FIELDS: [&[u8]; 3] = [b":status", b"content-type", b"content-length"];

/// Writes special response header `key` to the field nginx's header filter reads (`None`:
/// none; a `:status` stays). Any other key is left alone.
///
/// # Safety
/// `r` must be a live request.
unsafe fn set_special_field(r: *mut ngx_http_request_t, key: &[u8], value: Option<&[u8]>) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        let pool = (*r).pool;
        let out = &mut (*r).headers_out;
        if key == b":status" {
            if let Some(status) = value.and_then(|v| std::str::from_utf8(v).ok()?.parse::<ngx_uint_t>().ok()) {
                out.status = status;
                out.status_line.len = 0;
            }
        } else if key.eq_ignore_ascii_case(b"content-type") {
            match value {
                Some(value) => {
                    out.content_type = pool_str(pool, value).ok_or(OUT_OF_MEMORY)?;
                    out.content_type_len = value.len();
                }
                None => {
                    out.content_type.len = 0;
                    out.content_type_len = 0;
                }
            }
            out.charset.len = 0;
            out.content_type_lowcase = ptr::null_mut();
        } else if key.eq_ignore_ascii_case(b"content-length") {
            out.content_length_n = value.and_then(parse_length).unwrap_or(-1);
        }
    }
    Ok(())
}

/// Whether the request is gRPC (by its `content-type`).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn is_grpc_request(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: a live request's `Content-Type` shortcut is null or a live element.
    unsafe {
        (*r).headers_in.content_type.as_ref().is_some_and(|h| inwasm_host::grpc::is_grpc_content_type(bytes(&h.value)))
    }
}

/// `server` and `date` as nginx's header filter will add them (unless the response has its
/// own), so filters see the response as the client will. Set back through the map, they
/// become the response's own and nginx adds none.
///
/// # Safety
/// `r` must be a live request.
unsafe fn add_nginx_own(r: *mut ngx_http_request_t, pairs: &mut Pairs) {
    // SAFETY: a live request (per the caller); nginx's cached time is valid in a worker.
    unsafe {
        let out = &(*r).headers_out;
        if out.server.is_null() {
            let tokens = NgxHttpCoreModule::location_conf(&*r)
                .map_or(NGX_HTTP_SERVER_TOKENS_ON as ngx_uint_t, |c| c.server_tokens);
            let server = match tokens as u32 {
                NGX_HTTP_SERVER_TOKENS_OFF => &b"nginx"[..],
                NGX_HTTP_SERVER_TOKENS_BUILD => NGINX_VER_BUILD.to_bytes(),
                _ => NGINX_VER.to_bytes(),
            };
            pairs.push(b"server", server);
        }
        if out.date.is_null() {
            pairs.push(b"date", bytes(&*ptr::addr_of!(ngx_cached_http_time)));
        }
    }
}

/// Sets the response's headers, routing `:status`, `content-type` and `content-length` to the
/// fields nginx's header filter reads.
pub unsafe fn set_response_headers(r: *mut ngx_http_request_t, pairs: &Pairs) -> HostResult<()> {
    pairs.iter().try_for_each(|(k, v)| check(k, v))?;
    // SAFETY: a live request (per the caller).
    unsafe {
        for name in SPECIAL_RESPONSE_FIELDS {
            set_special_field(r, name, pairs.first_value(name))?;
        }
        let pool = (*r).pool;
        let out = &mut (*r).headers_out;
        rebuild(&mut out.headers, pool, Side::Response, pairs, |k| !is_special_response(k))?;
        shortcuts::refresh_response(r);
    }
    Ok(())
}

fn headers_of(r: *mut ngx_http_request_t, side: Side) -> *mut ngx_list_t {
    // SAFETY: only the field's address is taken.
    unsafe {
        match side {
            Side::Request => ptr::addr_of_mut!((*r).headers_in.headers),
            Side::Response => ptr::addr_of_mut!((*r).headers_out.headers),
        }
    }
}

/// Whether `key` is read and written through the whole map rather than the list.
fn is_special(side: Side, key: &[u8]) -> bool {
    match side {
        Side::Request => is_pseudo(key),
        Side::Response => is_special_response(key),
    }
}

/// Appends the first value of header `key` to `value`; `false` when there is none.
pub unsafe fn append_value(r: *mut ngx_http_request_t, side: Side, key: &[u8], value: &mut Vec<u8>) -> bool {
    // SAFETY: a live request (per the caller).
    unsafe {
        match side {
            Side::Request if is_pseudo(key) => {
                request_line::pseudo_header(&*r, key).map(|v| value.extend_from_slice(v))
            }
            Side::Response if is_special_response(key) => special_response_value(r, key).map(|v| value.extend(v)),
            _ => named(&*headers_of(r, side), key).next().map(|elt| value.extend_from_slice(bytes(&(*elt).value))),
        }
        .is_some()
    }
}

/// How many headers the map has: the listed ones and those nginx keeps aside.
pub unsafe fn count(r: *mut ngx_http_request_t, side: Side) -> usize {
    // SAFETY: a live request (per the caller).
    unsafe {
        let listed = elements(&*headers_of(r, side)).count();
        let out = &(*r).headers_out;
        match side {
            Side::Request => listed + request_line::PSEUDO_HEADERS,
            Side::Response => {
                let content_length = out.content_length.is_null() && out.content_length_n >= 0;
                listed + 1 + (out.content_type.len > 0) as usize + content_length as usize
            }
        }
    }
}

/// Refreshes the side's shortcuts after its list changed.
unsafe fn refresh(r: *mut ngx_http_request_t, side: Side) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        match side {
            Side::Request => shortcuts::refresh_request(r).ok_or(OUT_OF_MEMORY),
            Side::Response => {
                shortcuts::refresh_response(r);
                Ok(())
            }
        }
    }
}

fn has_shortcut(side: Side, key: &[u8]) -> bool {
    match side {
        Side::Request => shortcuts::has_request_shortcut(key),
        Side::Response => shortcuts::has_response_shortcut(key),
    }
}

pub unsafe fn add(r: *mut ngx_http_request_t, side: Side, key: &[u8], value: &[u8]) -> HostResult<()> {
    check(key, value)?;
    // SAFETY: a live request (per the caller).
    unsafe {
        if side == Side::Request && is_pseudo(key) {
            return request_line::set(r, key, value);
        }
        if is_special(side, key) {
            let mut pairs = response_headers(r);
            pairs.push(key, value);
            return set_response_headers(r, &pairs);
        }
        push(&mut *headers_of(r, side), (*r).pool, side, key, value)?;
        // Pushing moves no element: only a header nginx keeps a shortcut to needs one.
        if has_shortcut(side, key) {
            refresh(r, side)?;
        }
    }
    Ok(())
}

pub unsafe fn remove(r: *mut ngx_http_request_t, side: Side, key: &[u8]) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        match side {
            // The request line keeps its parts: removing one leaves it as it is.
            Side::Request if is_pseudo(key) => Ok(()),
            Side::Response if is_special_response(key) => set_special_response(r, key, None),
            _ if remove_named(&mut *headers_of(r, side), key, side, false) => refresh(r, side),
            _ => Ok(()),
        }
    }
}

/// Sets `key` to `value`: the first such header takes the value, any others go.
pub unsafe fn replace(r: *mut ngx_http_request_t, side: Side, key: &[u8], value: &[u8]) -> HostResult<()> {
    check(key, value)?;
    // SAFETY: a live request (per the caller).
    unsafe {
        if side == Side::Request && is_pseudo(key) {
            return request_line::set(r, key, value);
        }
        if is_special(side, key) {
            return set_special_response(r, key, Some(value));
        }
        let list = &mut *headers_of(r, side);
        let Some(first) = named(list, key).next() else { return add(r, side, key, value) };
        (*first).value = pool_str((*r).pool, value).ok_or(OUT_OF_MEMORY)?;
        // Removing the others moves elements (request lists are compacted).
        if remove_named(list, key, side, true) || has_shortcut(side, key) {
            refresh(r, side)?;
        }
    }
    Ok(())
}

pub fn parse_length(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
