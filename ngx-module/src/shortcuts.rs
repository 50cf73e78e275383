//! nginx's shortcuts to well-known headers (`r->headers_in.host`, `.range`, `.cookie`, ...,
//! and `r->headers_out.server`, ...), kept true after a filter edits a header list, so
//! nginx's own modules never act on a header a filter removed or miss one it added.
//!
//! The request side follows nginx's own table of request headers (`ngx_http_headers_in`,
//! looked up through the core module's `headers_in_hash`), so every shortcut of the nginx the
//! module is built for is covered. What nginx derives from a header follows it too (the
//! server name from `Host`, the browser flags from `User-Agent`, the cached basic-auth user
//! from `Authorization`), except the request's framing (`content_length_n`, `chunked`) and
//! its client connection (`connection_type`, `keep_alive_n`): those describe what the client
//! sent and stay as nginx read them (see `request::settle_framing`).

use std::ptr;

use ngx::ffi::{
    ngx_hash_find, ngx_hash_key, ngx_http_headers_in, ngx_http_headers_in_t, ngx_http_request_t, ngx_list_part_t,
    ngx_list_t, ngx_str_t, ngx_table_elt_t,
};
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};

use crate::ffi::bytes;

/// Every live element of an nginx list of headers (elements with hash 0 are deleted ones).
///
/// # Safety
/// `list` must be a valid nginx list of `ngx_table_elt_t`, unchanged while iterated.
pub unsafe fn elements(list: &ngx_list_t) -> impl Iterator<Item = *mut ngx_table_elt_t> + '_ {
    let parts = std::iter::successors(Some(&list.part as *const ngx_list_part_t), |part| {
        // SAFETY: each part of a valid list is valid; `next` is null after the last.
        Some(unsafe { (**part).next } as *const ngx_list_part_t).filter(|next| !next.is_null())
    });
    parts
        .flat_map(|part| {
            // SAFETY: a part holds `nelts` elements at `elts`.
            let (elts, count) = unsafe { ((*part).elts as *mut ngx_table_elt_t, (*part).nelts) };
            // SAFETY: within the part's `nelts` elements.
            (0..count).map(move |i| unsafe { elts.add(i) })
        })
        // SAFETY: the element is within its part.
        .filter(|elt| unsafe { (**elt).hash } != 0)
}

/// The slot of the request shortcut at `offset` in `headers_in`.
///
/// # Safety
/// `offset` must be an offset nginx's table of request headers gives.
unsafe fn slot(headers_in: *mut ngx_http_headers_in_t, offset: usize) -> *mut u8 {
    // SAFETY: offsets in nginx's table are within `ngx_http_headers_in_t`.
    unsafe { (headers_in as *mut u8).add(offset) }
}

/// Whether the shortcut at `offset` is one of nginx 1.22's arrays of duplicates.
#[cfg(not(nginx1_23))]
fn is_array(offset: usize) -> bool {
    offset == std::mem::offset_of!(ngx_http_headers_in_t, cookies)
        || offset == std::mem::offset_of!(ngx_http_headers_in_t, x_forwarded_for)
}

/// Clears the shortcut at `offset`.
///
/// # Safety
/// As [`slot`].
unsafe fn clear(headers_in: *mut ngx_http_headers_in_t, offset: usize) {
    // SAFETY: per the caller.
    let slot = unsafe { slot(headers_in, offset) };
    #[cfg(not(nginx1_23))]
    if is_array(offset) {
        // SAFETY: the field at this offset is an array of element pointers.
        unsafe { (*(slot as *mut ngx::ffi::ngx_array_t)).nelts = 0 };
        return;
    }
    // SAFETY: every other shortcut is an element pointer.
    unsafe { *(slot as *mut *mut ngx_table_elt_t) = ptr::null_mut() };
}

/// Points the shortcut at `offset` at `elt` too: the first such header is the shortcut;
/// later ones are chained (nginx 1.23 and later) or pushed (1.22's arrays).
///
/// # Safety
/// As [`slot`]; `elt` a live element of the request's list; `r`'s pool valid.
unsafe fn attach(r: *mut ngx_http_request_t, offset: usize, elt: *mut ngx_table_elt_t) -> Option<()> {
    // SAFETY: per the caller.
    let slot = unsafe { slot(&mut (*r).headers_in, offset) };
    #[cfg(not(nginx1_23))]
    if is_array(offset) {
        let array = slot as *mut ngx::ffi::ngx_array_t;
        // SAFETY: the field is an array of element pointers, set up with the request (or
        // here, on the request's pool).
        unsafe {
            if (*array).elts.is_null() {
                // What nginx's (inline) ngx_array_init does.
                let size = std::mem::size_of::<*mut ngx_table_elt_t>();
                let elts = ngx::ffi::ngx_palloc((*r).pool, 2 * size);
                if elts.is_null() {
                    return None;
                }
                *array = ngx::ffi::ngx_array_t { elts, nelts: 0, size, nalloc: 2, pool: (*r).pool };
            }
            let pushed = ngx::ffi::ngx_array_push(array) as *mut *mut ngx_table_elt_t;
            if pushed.is_null() {
                return None;
            }
            *pushed = elt;
        }
        return Some(());
    }
    #[cfg(nginx1_23)]
    // SAFETY: the chain holds live elements of the list, each with a `next`.
    unsafe {
        let mut link = slot as *mut *mut ngx_table_elt_t;
        while !(*link).is_null() {
            link = &mut (**link).next;
        }
        *link = elt;
        (*elt).next = ptr::null_mut();
    }
    #[cfg(not(nginx1_23))]
    // SAFETY: a valid slot; on 1.22 the first duplicate is the shortcut.
    unsafe {
        let link = slot as *mut *mut ngx_table_elt_t;
        if (*link).is_null() {
            *link = elt;
        }
    }
    Some(())
}

/// nginx's table of request headers with shortcuts: (lower-case name, offset) pairs.
fn request_shortcuts() -> impl Iterator<Item = (&'static [u8], usize)> {
    // SAFETY: nginx's table is static and ends with an entry whose name is empty.
    let table = ptr::addr_of!(ngx_http_headers_in) as *const ngx::ffi::ngx_http_header_t;
    (0..)
        // SAFETY: stops at the table's terminator.
        .map(move |i| unsafe { &*table.add(i) })
        .take_while(|entry| entry.name.len != 0)
        // SAFETY: the table's names are static strings.
        .map(|entry| (unsafe { bytes(&entry.name) }, entry.offset))
}

/// The offset of the shortcut for the lower-case header `lowcase`, when it has one.
///
/// # Safety
/// `r` must be a live request.
unsafe fn shortcut_offset(r: *mut ngx_http_request_t, lowcase: &mut [u8]) -> Option<usize> {
    // SAFETY: a live request has its core main configuration.
    let cmcf = unsafe { NgxHttpCoreModule::main_conf(&*r) }?;
    // SAFETY: a valid buffer; nginx's hash of request headers from configuration time.
    unsafe {
        let key = ngx_hash_key(lowcase.as_mut_ptr(), lowcase.len());
        let hash = &cmcf.headers_in_hash as *const _ as *mut _;
        let header =
            ngx_hash_find(hash, key, lowcase.as_mut_ptr(), lowcase.len()) as *const ngx::ffi::ngx_http_header_t;
        header.as_ref().map(|h| h.offset)
    }
}

/// Whether header `key` (any case) has a request shortcut.
pub fn has_request_shortcut(key: &[u8]) -> bool {
    request_shortcuts().any(|(name, _)| name.eq_ignore_ascii_case(key))
}

/// Points every request shortcut at the current elements, and updates what nginx derives
/// from them. `None` when the request's pool is out of memory.
///
/// # Safety
/// `r` must be a live request whose header list is valid.
pub unsafe fn refresh_request(r: *mut ngx_http_request_t) -> Option<()> {
    // SAFETY: a live request (per the caller) throughout.
    unsafe {
        let headers_in: *mut ngx_http_headers_in_t = &mut (*r).headers_in;
        for (_, offset) in request_shortcuts() {
            clear(headers_in, offset);
        }
        let elts: Vec<_> = elements(&(*headers_in).headers).collect();
        // Names of headers with shortcuts are short: a longer one has none.
        let mut lowcase = [0u8; 32];
        for elt in elts {
            let Some(name) = lowcase.get_mut(..(*elt).key.len) else { continue };
            name.copy_from_slice(bytes(&(*elt).key));
            name.make_ascii_lowercase();
            if let Some(offset) = shortcut_offset(r, name) {
                attach(r, offset, elt)?;
            }
        }
        derive_server(r);
        derive_browser(r);
        // The basic-auth user nginx decoded (and cached) from the old Authorization.
        (*headers_in).user = ngx_str_t { len: 0, data: ptr::null_mut() };
        (*headers_in).passwd = ngx_str_t { len: 0, data: ptr::null_mut() };
    }
    Some(())
}

/// The server name (`$host`) from `Host`, as nginx validates it: lower case, without port or
/// trailing dot. An invalid or missing `Host` leaves none (nginx then uses `server_name`).
///
/// # Safety
/// `r` must be a live request.
unsafe fn derive_server(r: *mut ngx_http_request_t) {
    // SAFETY: a live request; its Host shortcut, if any, is a live element.
    unsafe {
        let host = (*r).headers_in.host.as_ref().map(|h| bytes(&h.value)).and_then(server_name);
        let server = host.and_then(|name| crate::ffi::pool_str_lowercase((*r).pool, name));
        (*r).headers_in.server = server.unwrap_or(ngx_str_t { len: 0, data: ptr::null_mut() });
    }
}

/// A `Host` value's server name as `ngx_http_validate_host` makes it (but for its case: nginx
/// lower-cases it), or `None` if invalid.
pub fn server_name(host: &[u8]) -> Option<&[u8]> {
    let mut end = host.len();
    let mut literal = false;
    let mut last_dot: Option<usize> = None;
    for (i, &ch) in host.iter().enumerate() {
        match ch {
            b'.' if last_dot.is_some_and(|d| d + 1 == i) => return None,
            b'.' => last_dot = Some(i),
            b'[' if i == 0 => literal = true,
            b']' if literal => {
                end = i + 1;
                break;
            }
            b':' if !literal => {
                end = i;
                break;
            }
            b'/' | b'\\' => return None,
            ch if ch <= 0x20 || ch == 0x7f => return None,
            _ => {}
        }
    }
    if end > 0 && last_dot == Some(end - 1) {
        end -= 1;
    }
    (end > 0).then(|| &host[..end])
}

/// nginx's browser flags from `User-Agent` (as `ngx_http_process_user_agent` sets them).
///
/// # Safety
/// `r` must be a live request.
unsafe fn derive_browser(r: *mut ngx_http_request_t) {
    // SAFETY: a live request; its User-Agent shortcut, if any, is a live element.
    let agent = unsafe { (*r).headers_in.user_agent.as_ref().map(|h| bytes(&h.value)).unwrap_or_default() };
    let has = |needle: &[u8]| agent.windows(needle.len()).any(|w| w == needle);
    let msie_at = agent.windows(5).position(|w| w == b"MSIE ").filter(|at| at + 7 < agent.len());
    let mut msie = msie_at.is_some();
    let mut msie6 = msie_at.is_some_and(|at| {
        agent[at + 6] == b'.' && (matches!(agent[at + 5], b'4' | b'5') || agent[at + 5] == b'6' && !has(b"SV1"))
    });
    let opera = has(b"Opera");
    if opera {
        (msie, msie6) = (false, false);
    }
    let other = !msie && !opera;
    let gecko = other && has(b"Gecko/");
    let chrome = other && !gecko && has(b"Chrome/");
    let safari = other && !gecko && !chrome && has(b"Safari/") && has(b"Mac OS X");
    let konqueror = other && !gecko && !chrome && !safari && has(b"Konqueror");
    // SAFETY: a live request.
    let headers_in = unsafe { &mut (*r).headers_in };
    headers_in.set_msie(msie.into());
    headers_in.set_msie6(msie6.into());
    headers_in.set_opera(opera.into());
    headers_in.set_gecko(gecko.into());
    headers_in.set_chrome(chrome.into());
    headers_in.set_safari(safari.into());
    headers_in.set_konqueror(konqueror.into());
}

/// Response headers nginx keeps a pointer to, and the pointer for each.
const RESPONSE_SHORTCUTS: [&[u8]; 11] = [
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

/// Whether response header `key` (any case) has a shortcut.
pub fn has_response_shortcut(key: &[u8]) -> bool {
    RESPONSE_SHORTCUTS.iter().any(|name| key.eq_ignore_ascii_case(name))
}

/// Points nginx's response shortcuts at the current elements (the first of each), in one
/// pass over the list.
///
/// # Safety
/// `r` must be a live request whose response header list is valid.
pub unsafe fn refresh_response(r: *mut ngx_http_request_t) {
    // SAFETY: a live request (per the caller).
    let out = unsafe { &mut (*r).headers_out };
    let mut slots: [&mut *mut ngx_table_elt_t; 11] = [
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
    ];
    slots.iter_mut().for_each(|slot| **slot = ptr::null_mut());
    // SAFETY: the list is valid (per the caller) and not changed while iterated.
    for elt in unsafe { elements(&out.headers) } {
        // SAFETY: a live element.
        let key = unsafe { bytes(&(*elt).key) };
        if let Some(index) = RESPONSE_SHORTCUTS.iter().position(|name| key.eq_ignore_ascii_case(name)) {
            if slots[index].is_null() {
                *slots[index] = elt;
            }
        }
    }
    out.content_length = ptr::null_mut();
    if out.last_modified.is_null() {
        // Otherwise nginx prints Last-Modified from the time it remembers.
        out.last_modified_time = -1;
    }
}
