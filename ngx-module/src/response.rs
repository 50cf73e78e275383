//! A location's filter chain over one request, response side: local responses, the response
//! headers (header filter) and body (body filter, buffered while a filter pauses it), in
//! reverse chain order as in Envoy.

use std::ptr;

use inwasm_host::{Action, LocalResponse, Pairs};
use ngx::ffi::{
    ngx_chain_t, ngx_http_filter_finalize_request, ngx_http_output_body_filter_pt, ngx_http_output_filter,
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_uint_t, NGX_DECLINED,
    NGX_ERROR, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_OK,
};

use crate::chains::{chain_bytes, consume, memory_chain};
use crate::ffi::guard_status;
use crate::headers;
use crate::http_module::ngx_http_inwasm_module;
use crate::request::{ctx, step, ActiveFilter, RequestCtx, Step};

pub static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
pub static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// A local response's status and headers (with its own Content-Length), and its body.
fn local_response_parts(response: LocalResponse) -> (Pairs, Vec<u8>) {
    let LocalResponse { status, body, headers: extra, .. } = response;
    let mut pairs = vec![(b":status".to_vec(), status.to_string().into_bytes())];
    pairs.extend(extra);
    if !pairs.iter().any(|(k, _)| k.eq_ignore_ascii_case(b"content-type")) && !body.is_empty() {
        pairs.push((b"content-type".to_vec(), b"text/plain".to_vec()));
    }
    pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(b"content-length"));
    pairs.push((b"content-length".to_vec(), body.len().to_string().into_bytes()));
    (pairs, body)
}

/// Makes the pending local response the request's response status and headers; returns its
/// body. `None` when there is none or nginx is out of memory.
unsafe fn apply_local_response(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
    let (pairs, body) = local_response_parts(ctx.exchange.borrow_mut().local_response.take()?);
    headers::set_response_headers(r, &pairs)?;
    Some(body)
}

/// Sends the pending local response; the response filters, ours included, see it like any
/// other response.
pub unsafe fn send_local_response(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> ngx_int_t {
    let Some(response) = ctx.exchange.borrow_mut().local_response.take() else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let (pairs, body) = local_response_parts(response);
    send_response(r, &pairs, &body)
}

/// Sends a whole response from a handler: status and headers from `pairs`, then `body`.
pub unsafe fn send_response(r: *mut ngx_http_request_t, pairs: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> ngx_int_t {
    if headers::set_response_headers(r, pairs).is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    if body.is_empty() || (*r).method == NGX_HTTP_HEAD as ngx_uint_t {
        (*r).set_header_only(1);
    }
    let rc = ngx_http_send_header(r);
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
        return rc;
    }
    match memory_chain(r, body, true) {
        Some(chain) => ngx_http_output_filter(r, chain),
        None => NGX_ERROR as ngx_int_t,
    }
}

/// Runs a response callback on every filter, last to first. `Err(())` when one failed;
/// `Ok(true)` when one answered locally; `paused` tells whether any paused.
fn run_response_chain(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    paused: &mut bool,
    call: impl Fn(&ActiveFilter) -> Result<Action, inwasm_host::FilterError>,
) -> Result<bool, ()> {
    for index in (0..ctx.filters.len()).rev() {
        match step(r, ctx, index, &call) {
            Step::Continue => {}
            Step::Paused => *paused = true,
            Step::Responded => return Ok(true),
            Step::Failed => return Err(()),
        }
    }
    Ok(false)
}

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    let next = NEXT_HEADER_FILTER.expect("next header filter");
    let rc = guard_status((*(*r).connection).log, || {
        let Some(ctx) = ctx(r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if ctx.failed || r != (*r).main {
            return NGX_DECLINED as ngx_int_t;
        }
        let end_of_stream = (*r).header_only() != 0;
        // A pause here cannot hold back nginx's headers; the body callbacks can still buffer.
        let mut paused = false;
        match run_response_chain(r, ctx, &mut paused, |f| {
            f.vm.borrow_mut().on_response_headers(f.stream, end_of_stream)
        }) {
            Err(()) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            // A local response instead of the upstream's: its headers now, its body in place
            // of the original one (which the body filter swallows).
            Ok(true) => match apply_local_response(r, ctx) {
                Some(body) => ctx.replacement_body = Some(body),
                None => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            },
            Ok(false) => {}
        }
        // Filters may rewrite the body, so its length is only known at its end.
        if !end_of_stream && ctx.replacement_body.is_none() {
            (*r).headers_out.content_length_n = -1;
            if let Some(length) = (*r).headers_out.content_length.as_mut() {
                length.hash = 0;
            }
            (*r).headers_out.content_length = ptr::null_mut();
        }
        NGX_DECLINED as ngx_int_t
    });
    match rc {
        rc if rc == NGX_DECLINED as ngx_int_t => next(r),
        rc if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t => {
            ngx_http_filter_finalize_request(r, ptr::addr_of_mut!(ngx_http_inwasm_module), rc)
        }
        rc => rc,
    }
}

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    let next = NEXT_BODY_FILTER.expect("next body filter");
    let mut output = input;
    let rc = guard_status((*(*r).connection).log, || {
        let Some(ctx) = ctx(r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if ctx.failed || r != (*r).main || input.is_null() {
            return NGX_DECLINED as ngx_int_t;
        }
        let body = match ctx.replacement_body.clone() {
            Some(replacement) => {
                if !consume(input) {
                    return NGX_OK as ngx_int_t;
                }
                replacement
            }
            None => match filter_body(r, ctx, input) {
                Some(Some(body)) => body,
                Some(None) => return NGX_OK as ngx_int_t,
                None => return NGX_ERROR as ngx_int_t,
            },
        };
        let end_of_stream = is_last(input);
        match memory_chain(r, &body, end_of_stream) {
            Some(chain) => {
                output = chain;
                NGX_DECLINED as ngx_int_t
            }
            None => NGX_ERROR as ngx_int_t,
        }
    });
    if rc == NGX_DECLINED as ngx_int_t {
        next(r, output)
    } else {
        rc
    }
}

/// Runs the body callbacks on the bytes of `input` (after any held back). `Some(Some(bytes))`:
/// send these; `Some(None)`: a filter paused, hold them; `None`: failed (the headers are gone,
/// so the response can only be cut short).
unsafe fn filter_body(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    input: *mut ngx_chain_t,
) -> Option<Option<Vec<u8>>> {
    let mut chunk = std::mem::take(&mut ctx.held_body);
    chain_bytes(input, &mut chunk)?;
    let end_of_stream = is_last(input);
    consume(input);
    let size = chunk.len();
    ctx.exchange.borrow_mut().response_body = chunk;
    let mut paused = false;
    run_response_chain(r, ctx, &mut paused, |f| f.vm.borrow_mut().on_response_body(f.stream, size, end_of_stream))
        .ok()?;
    let body = std::mem::take(&mut ctx.exchange.borrow_mut().response_body);
    if paused && !end_of_stream {
        ctx.held_body = body;
        return Some(None);
    }
    Some(Some(body))
}

/// Whether a chain ends the body.
unsafe fn is_last(mut chain: *mut ngx_chain_t) -> bool {
    while let Some(link) = chain.as_ref() {
        if (*link.buf).last_buf() != 0 || (*link.buf).last_in_chain() != 0 {
            return true;
        }
        chain = link.next;
    }
    false
}
