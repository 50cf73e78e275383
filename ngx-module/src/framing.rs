//! The request's framing is nginx's, never a filter's. nginx reads the client's body by the
//! `Content-Length` or chunked encoding it parsed before any filter ran (`content_length_n`,
//! `chunked`), and the shortcuts a filter's header edits refresh leave those alone: a filter
//! that removes or rewrites `Content-Length` or `Transfer-Encoding` cannot make nginx read
//! the body as the next request. Once the request side is done, [`settle`] makes the
//! framing headers describe the body nginx sends on, whatever the filters did to them.

use inwasm_host::HostResult;
use ngx::ffi::ngx_http_request_t;

use crate::headers::{self, Side};

/// Whether the client sent a body (as nginx framed it).
pub fn has_body(r: &ngx_http_request_t) -> bool {
    r.headers_in.content_length_n > 0 || r.headers_in.chunked() != 0
}

/// Makes the request's framing say what goes on: a body of `body` bytes (`None`: the request
/// has none) as its `Content-Length`, with no `Transfer-Encoding`; a bodyless request keeps a
/// client's `Content-Length: 0` and nothing else.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn settle(r: *mut ngx_http_request_t, body: Option<usize>) -> HostResult<()> {
    // SAFETY: a live request (per the caller).
    unsafe {
        let length = match body {
            Some(size) => Some(size as i64),
            None => ((*r).headers_in.content_length_n == 0).then_some(0),
        };
        headers::remove(r, Side::Request, b"transfer-encoding")?;
        match length {
            Some(length) => headers::replace(r, Side::Request, b"content-length", length.to_string().as_bytes())?,
            None => headers::remove(r, Side::Request, b"content-length")?,
        }
        (*r).headers_in.content_length_n = length.unwrap_or(-1);
        (*r).headers_in.set_chunked(0);
    }
    Ok(())
}

/// Whether a request header edit touches the framing headers (then [`settle`] is owed).
pub fn is_framing(key: &[u8]) -> bool {
    key.eq_ignore_ascii_case(b"content-length") || key.eq_ignore_ascii_case(b"transfer-encoding")
}
