//! A request's pseudo-headers, read from and written to what nginx made of its request line:
//! `:path` is the URI and arguments the rest of the request uses (parsed as nginx parses a
//! request line; in the rewrite phase nginx then finds the location again, as after
//! `rewrite ... last`), `:method` the method, `:authority` the `Host` header (and with it
//! `$host`), `:scheme` the scheme the request reports (nginx's `r->schema`; the connection's
//! scheme when unset). A value nginx would refuse in a request line answers `BAD_ARGUMENT`
//! and changes nothing.

use inwasm_host::{HostResult, Pairs, Status};
use ngx::ffi::{
    ngx_http_parse_complex_uri, ngx_http_request_t, ngx_pnalloc, ngx_str_t, ngx_uint_t, NGX_HTTP_COPY, NGX_HTTP_DELETE,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_LOCK, NGX_HTTP_MKCOL, NGX_HTTP_MOVE, NGX_HTTP_OPTIONS, NGX_HTTP_PATCH,
    NGX_HTTP_POST, NGX_HTTP_PROPFIND, NGX_HTTP_PROPPATCH, NGX_HTTP_PUT, NGX_HTTP_TRACE, NGX_HTTP_UNKNOWN,
    NGX_HTTP_UNLOCK, NGX_OK,
};
use ngx::http::{HttpModuleServerConf, NgxHttpCoreModule};

use crate::ffi::{bytes, pool_str, pool_str_lowercase};
use crate::headers::{self, Side};

/// How many pseudo-headers a request map has.
pub const PSEUDO_HEADERS: usize = 4;

/// `:authority`, `:path`, `:method`, `:scheme`.
pub unsafe fn pseudo_headers(r: *mut ngx_http_request_t) -> Pairs {
    // SAFETY: a live request (per the caller).
    let r = unsafe { &*r };
    // Room for a typical request's headers too, which `headers::request_headers` appends.
    let mut pairs = Pairs::with_capacity(PSEUDO_HEADERS + 8, 512);
    for name in [&b":authority"[..], b":path", b":method", b":scheme"] {
        pairs.push(name, pseudo_header(r, name).unwrap_or_default());
    }
    pairs
}

/// The value of a request pseudo-header; `None` for a name that is none.
pub fn pseudo_header<'r>(r: &'r ngx_http_request_t, name: &[u8]) -> Option<&'r [u8]> {
    Some(match name {
        b":authority" => authority(r),
        // SAFETY: a live request's strings.
        b":path" => unsafe { bytes(&r.unparsed_uri) },
        // SAFETY: as above.
        b":method" => unsafe { bytes(&r.method_name) },
        b":scheme" => scheme(r),
        _ => return None,
    })
}

/// The request's authority: its `Host` header, else the server name nginx took from an
/// absolute request URI.
pub fn authority(r: &ngx_http_request_t) -> &[u8] {
    // SAFETY: a live request's Host shortcut is a live element; its strings are valid.
    unsafe {
        match r.headers_in.host.as_ref() {
            Some(host) => bytes(&host.value),
            None => bytes(&r.headers_in.server),
        }
    }
}

/// The request's scheme: as set (by a filter, or an HTTP/2 client), else the connection's.
pub fn scheme(r: &ngx_http_request_t) -> &[u8] {
    if r.schema.len > 0 {
        // SAFETY: a live request's string.
        return unsafe { bytes(&r.schema) };
    }
    // SAFETY: a live request's connection.
    if unsafe { (*r.connection).ssl.is_null() } {
        b"http"
    } else {
        b"https"
    }
}

/// Writes a request pseudo-header.
pub unsafe fn set(r: *mut ngx_http_request_t, name: &[u8], value: &[u8]) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        match name {
            b":path" => set_path(r, value),
            b":method" => set_method(r, value),
            b":authority" => {
                crate::shortcuts::server_name(value).ok_or(Status::BadArgument)?;
                headers::replace(r, Side::Request, b"host", value)
            }
            b":scheme" => {
                let valid = value.first().is_some_and(u8::is_ascii_alphabetic)
                    && value.iter().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c));
                if !valid {
                    return Err(Status::BadArgument);
                }
                (*r).schema = pool_str_lowercase((*r).pool, value).ok_or(Status::InternalFailure)?;
                Ok(())
            }
            _ => Err(Status::BadArgument),
        }
    }
}

/// The request's URI and arguments from `path`, as nginx parses a request line's.
unsafe fn set_path(r: *mut ngx_http_request_t, path: &[u8]) -> HostResult<()> {
    if path.first() != Some(&b'/') || path.iter().any(|&c| c <= 0x20 || c == 0x7f) {
        return Err(Status::BadArgument);
    }
    // SAFETY: a live request (per the caller); the parser reads `uri_start` up to and
    // including `uri_end` (one byte past the path: a sentinel here, as a request line ends
    // with a line feed) and writes at most the path's length to `uri.data`.
    unsafe {
        let r = &mut *r;
        let pool = r.pool;
        let line = ngx_pnalloc(pool, path.len() + 1) as *mut u8;
        let uri = ngx_pnalloc(pool, path.len()) as *mut u8;
        if line.is_null() || uri.is_null() {
            return Err(Status::InternalFailure);
        }
        std::ptr::copy_nonoverlapping(path.as_ptr(), line, path.len());
        *line.add(path.len()) = b'\n';
        let saved = (r.uri, r.args, r.exten, r.uri_start, r.uri_end, r.args_start);
        r.uri_start = line;
        r.uri_end = line.add(path.len());
        r.uri = ngx_str_t { len: 0, data: uri };
        r.args = ngx_str_t { len: 0, data: std::ptr::null_mut() };
        r.exten = ngx_str_t { len: 0, data: std::ptr::null_mut() };
        r.set_empty_path_in_uri(0);
        let merge_slashes = NgxHttpCoreModule::server_conf(r).map_or(1, |cscf| cscf.merge_slashes);
        if ngx_http_parse_complex_uri(r, merge_slashes as ngx_uint_t) != NGX_OK as isize {
            (r.uri, r.args, r.exten, r.uri_start, r.uri_end, r.args_start) = saved;
            return Err(Status::BadArgument);
        }
        if !r.args_start.is_null() && r.uri_end > r.args_start {
            r.args = ngx_str_t { len: r.uri_end.offset_from(r.args_start) as usize, data: r.args_start };
        }
        r.unparsed_uri = ngx_str_t { len: path.len(), data: line };
        r.set_valid_unparsed_uri(1);
        // In the rewrite phase: find the location for the new URI.
        r.set_uri_changed(1);
    }
    Ok(())
}

/// nginx's method codes, by name.
const METHODS: [(&[u8], u32); 15] = [
    (b"GET", NGX_HTTP_GET),
    (b"HEAD", NGX_HTTP_HEAD),
    (b"POST", NGX_HTTP_POST),
    (b"PUT", NGX_HTTP_PUT),
    (b"DELETE", NGX_HTTP_DELETE),
    (b"MKCOL", NGX_HTTP_MKCOL),
    (b"COPY", NGX_HTTP_COPY),
    (b"MOVE", NGX_HTTP_MOVE),
    (b"OPTIONS", NGX_HTTP_OPTIONS),
    (b"PROPFIND", NGX_HTTP_PROPFIND),
    (b"PROPPATCH", NGX_HTTP_PROPPATCH),
    (b"LOCK", NGX_HTTP_LOCK),
    (b"UNLOCK", NGX_HTTP_UNLOCK),
    (b"PATCH", NGX_HTTP_PATCH),
    (b"TRACE", NGX_HTTP_TRACE),
];

unsafe fn set_method(r: *mut ngx_http_request_t, method: &[u8]) -> HostResult<()> {
    if !headers::is_token(method) {
        return Err(Status::BadArgument);
    }
    let code = METHODS.iter().find(|(name, _)| *name == method).map_or(NGX_HTTP_UNKNOWN, |(_, code)| *code);
    // SAFETY: a live request (per the caller).
    unsafe {
        (*r).method_name = pool_str((*r).pool, method).ok_or(Status::InternalFailure)?;
        (*r).method = code as ngx_uint_t;
    }
    Ok(())
}
