//! A location's filter chain over one request, response side: local responses, the response
//! headers (header filter) and body (body filter, buffered while a filter pauses it), in
//! reverse chain order as in Envoy.

use std::ptr;

use inwasm_host::{Action, LocalResponse, Pairs};
use ngx::ffi::{
    ngx_chain_t, ngx_event_t, ngx_http_filter_finalize_request, ngx_http_output_body_filter_pt, ngx_http_output_filter,
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_uint_t, NGX_DECLINED,
    NGX_ERROR, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_OK,
};

use crate::chains::{chain_bytes, chain_size, consume, memory_chain};
use crate::ffi::{guard, guard_status};
use crate::headers;
use crate::http_module::ngx_http_inwasm_module;
use crate::request::{check_lost, ctx, step, ActiveFilter, RequestCtx, Step, FILTER_FAILED};

pub static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
pub static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// A local response's status and headers (with its own Content-Length), and its body; to a
/// gRPC request, in gRPC's form (as Envoy answers one).
fn local_response_parts(response: LocalResponse, grpc: bool) -> (Pairs, Vec<u8>) {
    let response = if grpc { response.into_grpc() } else { response };
    let LocalResponse { status, body, mut headers, .. } = response;
    headers.retain(|_, k, _| k != b":status" && !k.eq_ignore_ascii_case(b"content-length"));
    // Room for the three pairs below at once (each number's room counted at 20 digits).
    headers.reserve(3, 96);
    if headers.first_value(b"content-type").is_none() && !body.is_empty() {
        headers.push(b"content-type", b"text/plain");
    }
    headers.push_number(b"content-length", body.len() as u64);
    headers.push_number(b":status", status.into());
    (headers, body)
}

/// Makes the pending local response the request's response status and headers; returns its
/// body. `None` when there is none or nginx is out of memory.
///
/// # Safety
/// `r` must be a live request whose response headers are not sent.
unsafe fn apply_local_response(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
    // SAFETY: a live request (the caller's contract), whose response headers are not sent yet.
    unsafe {
        let response = ctx.exchange.borrow_mut().local_response.take()?;
        let (pairs, body) = local_response_parts(response, headers::is_grpc_request(r));
        headers::set_response_headers(r, &pairs).ok()?;
        Some(body)
    }
}

/// Sends a filter's local response; the response filters, ours included, see it like any
/// other response.
///
/// # Safety
/// `r` must be a live request its handler answers.
pub unsafe fn send_local_response(r: *mut ngx_http_request_t, response: LocalResponse) -> ngx_int_t {
    // SAFETY: a live request, answered here.
    unsafe {
        let (pairs, body) = local_response_parts(response, headers::is_grpc_request(r));
        send_response(r, &pairs, &body)
    }
}

/// Sends a whole response from a handler: status and headers from `pairs`, then `body`.
///
/// # Safety
/// `r` must be a live request its handler answers.
pub unsafe fn send_response(r: *mut ngx_http_request_t, pairs: &Pairs, body: &[u8]) -> ngx_int_t {
    // SAFETY: a live request, answered here by its handler.
    unsafe {
        if headers::set_response_headers(r, pairs).is_err() {
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
}

/// Runs a response callback on every filter, last to first. `Err(())` when one failed;
/// `Ok(true)` when one answered locally; `paused` tells which paused (the first in the chain).
fn run_response_chain(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    paused: &mut Option<usize>,
    call: impl Fn(&ActiveFilter) -> Result<Action, inwasm_host::FilterError>,
) -> Result<bool, ()> {
    for index in (0..ctx.filters.len()).rev() {
        match step(r, ctx, index, &call) {
            Step::Continue => {}
            Step::Paused => *paused = Some(index),
            Step::Responded => return Ok(true),
            Step::Failed => return Err(()),
        }
    }
    Ok(false)
}

/// The bit of `connection->buffered` set while a filter holds the response headers: nginx
/// then waits (in its writer) instead of finishing the request.
const HEADERS_HELD: u32 = 0x80;

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request; the context and the next filter serve it.
    unsafe {
        let next = NEXT_HEADER_FILTER.expect("next header filter");
        let rc = guard_status((*(*r).connection).log, || {
            let Some(ctx) = ctx(r) else {
                return NGX_DECLINED as ngx_int_t;
            };
            if r != (*r).main {
                return NGX_DECLINED as ngx_int_t;
            }
            if ctx.failed {
                return answer_failure_as_grpc(r);
            }
            let end_of_stream = (*r).header_only() != 0;
            let mut paused = None;
            match run_response_chain(r, ctx, &mut paused, |f| {
                f.vm.borrow_mut().on_response_headers(f.stream, end_of_stream)
            }) {
                Err(()) => return FILTER_FAILED,
                // A local response instead of the upstream's: its headers now, its body in place
                // of the original one (which the body filter swallows).
                Ok(true) => match apply_local_response(r, ctx) {
                    Some(body) => ctx.replacement_body = Some(body),
                    None => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
                },
                Ok(false) => {}
            }
            if end_of_stream || ctx.replacement_body.is_some() {
                return NGX_DECLINED as ngx_int_t;
            }
            let resumed = std::mem::take(&mut ctx.exchange.borrow_mut().response_resume_requested);
            if paused.is_some() && !resumed {
                // As in Envoy's Wasm filter, a pause stops the response, headers and body alike,
                // until the filter continues it (`resume_response`).
                ctx.headers_held = true;
                ctx.exchange.borrow_mut().response_held = true;
                ctx.exchange.borrow_mut().arm_pause_timer(ctx.pause_limit);
                ctx.paused_by = paused;
                (*(*r).connection).set_buffered((*(*r).connection).buffered() | HEADERS_HELD);
                return NGX_OK as ngx_int_t;
            }
            if (*r).headers_out.content_length_n >= 0 {
                // The filters may change the body: its Content-Length waits for their first look
                // at it (usually the whole body), then stays, becomes exact, or goes.
                ctx.length_pending = true;
                return NGX_OK as ngx_int_t;
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
}

/// nginx's answer to a request whose filter failed, on its way out: to a gRPC request, made
/// a gRPC status instead (14, unavailable, with no body), as Envoy's Wasm filter answers.
///
/// # Safety
/// `r` must be a live request whose response headers are not sent.
unsafe fn answer_failure_as_grpc(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: a live request (per the caller).
    unsafe {
        if (*r).headers_out.status != FILTER_FAILED as ngx_uint_t || !headers::is_grpc_request(r) {
            return NGX_DECLINED as ngx_int_t;
        }
        let failed = LocalResponse { status: FILTER_FAILED as u32, ..LocalResponse::default() };
        let (pairs, _) = local_response_parts(failed, true);
        if headers::set_response_headers(r, &pairs).is_err() {
            return NGX_ERROR as ngx_int_t;
        }
        // nginx's error page body is not sent after headers alone.
        (*r).set_header_only(1);
        NGX_DECLINED as ngx_int_t
    }
}

/// Takes the response's Content-Length away (the body goes chunked).
///
/// # Safety
/// `r` must be a live request whose response headers are not sent.
unsafe fn drop_content_length(r: *mut ngx_http_request_t) {
    // SAFETY: a live request, whose headers are not sent yet.
    unsafe {
        (*r).headers_out.content_length_n = -1;
        if let Some(length) = (*r).headers_out.content_length.as_mut() {
            length.hash = 0;
        }
        (*r).headers_out.content_length = ptr::null_mut();
    }
}

/// What the body callbacks make of the bytes so far.
enum Output {
    Send(Vec<u8>),
    /// What arrived goes on as it came: no filter read or replaced it.
    PassOn,
    Hold,
    /// The headers are gone: the response can only be cut short.
    Fail,
}

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls body filters with a live request and its chain; the context, the chain and
    // the next filter serve it.
    unsafe {
        let next = NEXT_BODY_FILTER.expect("next body filter");
        let mut output = input;
        let rc = guard_status((*(*r).connection).log, || {
            let Some(ctx) = ctx(r) else {
                return NGX_DECLINED as ngx_int_t;
            };
            if ctx.failed || r != (*r).main || input.is_null() {
                return NGX_DECLINED as ngx_int_t;
            }
            if ctx.headers_held {
                // Kept, unseen by the filters, until the one that paused continues.
                if chain_bytes(input, &mut ctx.held_raw).is_none() {
                    return NGX_ERROR as ngx_int_t;
                }
                ctx.held_raw_last |= consume(input);
                return NGX_OK as ngx_int_t;
            }
            let end_of_stream = is_last(input);
            let arrived = chain_size(input);
            let replacing = ctx.replacement_body.is_some();
            let body = match ctx.replacement_body.clone() {
                Some(replacement) => {
                    if !consume(input) {
                        return NGX_OK as ngx_int_t;
                    }
                    Output::Send(replacement)
                }
                None => {
                    ctx.body_received += arrived;
                    let body = filter_body(r, ctx, Vec::new(), input, end_of_stream);
                    if !matches!(body, Output::PassOn) {
                        consume(input);
                    }
                    body
                }
            };
            let sent = match &body {
                Output::Send(bytes) => bytes.len(),
                Output::PassOn => arrived,
                Output::Hold | Output::Fail => 0,
            };
            match body {
                Output::Send(_) | Output::PassOn => {
                    let rc = if replacing { NGX_OK as ngx_int_t } else { settle_length(r, ctx, sent, end_of_stream) };
                    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
                        return rc;
                    }
                    let Output::Send(bytes) = body else { return NGX_DECLINED as ngx_int_t };
                    match memory_chain(r, &bytes, end_of_stream) {
                        Some(chain) => {
                            output = chain;
                            NGX_DECLINED as ngx_int_t
                        }
                        None => NGX_ERROR as ngx_int_t,
                    }
                }
                Output::Hold => NGX_OK as ngx_int_t,
                Output::Fail => NGX_ERROR as ngx_int_t,
            }
        });
        if rc == NGX_DECLINED as ngx_int_t {
            next(r, output)
        } else {
            rc
        }
    }
}

/// Keeps the response's Content-Length true to what the filters send: before the headers go
/// (after the filters' first look at the body) it stays, becomes exact (the body is whole)
/// or goes (chunked); once they are gone with a length, a body whose size changes can only
/// be cut short, with an error naming why.
///
/// # Safety
/// `r` must be a live request in its body filter.
unsafe fn settle_length(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    sent: usize,
    end_of_stream: bool,
) -> ngx_int_t {
    // SAFETY: a live request (the caller's contract) in its body filter.
    unsafe {
        let received = std::mem::replace(&mut ctx.body_received, 0);
        ctx.body_sent_total += sent as i64;
        ctx.body_received_total += received as i64;
        if std::mem::take(&mut ctx.length_pending) {
            if end_of_stream {
                (*r).headers_out.content_length_n = ctx.body_sent_total;
            } else if sent != received {
                drop_content_length(r);
            }
            return NEXT_HEADER_FILTER.expect("next header filter")(r);
        }
        let length = (*r).headers_out.content_length_n;
        if length >= 0
            && ctx.body_sent_total != ctx.body_received_total
            && (end_of_stream || ctx.body_sent_total > length)
        {
            let message = "inwasm: a filter changed the size of a response body whose Content-Length was sent; the response is cut short (a filter that rewrites bodies should remove content-length in on_response_headers)";
            crate::ffi::log_error(ngx::ffi::NGX_LOG_ERR as ngx_uint_t, (*(*r).connection).log, message);
            return NGX_ERROR as ngx_int_t;
        }
        NGX_OK as ngx_int_t
    }
}

/// Runs the body callbacks on what arrived: `bytes`, then `input`'s (a chain, or null), after
/// any held back while a filter paused the body. `input` is copied only if a filter reads
/// the body or it must be held: otherwise it passes on as it is (`Output::PassOn`, and the
/// caller must not consume it).
///
/// # Safety
/// `r` must be a live request in its body filter; `input` null or that call's chain.
unsafe fn filter_body(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    bytes: Vec<u8>,
    input: *mut ngx_chain_t,
    end_of_stream: bool,
) -> Output {
    // SAFETY: a live request in its body filter; `input` is null or the call's chain.
    unsafe {
        let mut chunk = std::mem::take(&mut ctx.held_body);
        chunk.extend_from_slice(&bytes);
        let size = chunk.len() + chain_size(input);
        {
            let mut exchange = ctx.exchange.borrow_mut();
            exchange.response_body = chunk;
            exchange.response_input = input;
        }
        let mut paused = None;
        let run = run_response_chain(r, ctx, &mut paused, |f| {
            f.vm.borrow_mut().on_response_body(f.stream, size, end_of_stream)
        });
        let mut exchange = ctx.exchange.borrow_mut();
        let untouched = !exchange.response_input.is_null() && exchange.response_body.is_empty();
        let hold = paused.is_some() && !end_of_stream;
        if untouched && !hold && run.is_ok() {
            exchange.response_input = ptr::null_mut();
            return Output::PassOn;
        }
        if exchange.response_body().is_none() {
            return Output::Fail;
        }
        let body = std::mem::take(&mut exchange.response_body);
        drop(exchange);
        match run {
            Err(()) => Output::Fail,
            _ if hold => {
                ctx.held_body = body;
                Output::Hold
            }
            _ => Output::Send(body),
        }
    }
}

/// The response resume event: the filter that paused the response headers continued it,
/// answered locally, or lost its instance.
pub unsafe extern "C" fn resume_response(event: *mut ngx_event_t) {
    // SAFETY: nginx runs posted events with their data: the exchange's event carries its live request.
    unsafe {
        let r = (*event).data as *mut ngx_http_request_t;
        guard((*(*r).connection).log, (), || {
            let Some(ctx) = ctx(r) else { return };
            ctx.exchange.borrow_mut().response_resume_requested = false;
            if ctx.headers_held && !check_lost(ctx) {
                return answer_held(r, FILTER_FAILED as u32);
            }
            release_held(r);
        })
    }
}

/// Answers `status` (with an empty body) in place of a response whose headers a filter holds.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn answer_held(r: *mut ngx_http_request_t, status: u32) {
    // SAFETY: a live request whose response headers a filter holds.
    unsafe {
        let Some(ctx) = ctx(r) else { return };
        if !ctx.headers_held {
            return;
        }
        ctx.failed = true;
        let answer =
            LocalResponse { status, details: Vec::new(), body: Vec::new(), headers: Pairs::new(), grpc_status: -1 };
        ctx.exchange.borrow_mut().local_response = Some(answer);
        release_held(r);
    }
}

/// Lets a response whose headers a filter held go on: the headers go out, then what arrived
/// meanwhile, through the body callbacks (or a local response in its place); a request
/// nginx has finished meanwhile is then completed.
///
/// # Safety
/// `r` must be a live request.
unsafe fn release_held(r: *mut ngx_http_request_t) {
    // SAFETY: a live request whose response headers a filter held; the context and nginx's next filters
    // serve it, from the event loop.
    unsafe {
        let Some(ctx) = ctx(r) else { return };
        let log = (*(*r).connection).log;
        let rc = guard_status(log, || {
            if !std::mem::take(&mut ctx.headers_held) {
                return NGX_OK as ngx_int_t;
            }
            ctx.exchange.borrow_mut().response_held = false;
            ctx.exchange.borrow_mut().disarm_pause_timer();
            (*(*r).connection).set_buffered((*(*r).connection).buffered() & !HEADERS_HELD);
            let held = std::mem::take(&mut ctx.held_raw);
            let last = ctx.held_raw_last;
            let body = if ctx.exchange.borrow().local_response.is_some() {
                // An answer in place of the held response; what is left of that is swallowed.
                let Some(local) = apply_local_response(r, ctx) else { return NGX_ERROR as ngx_int_t };
                ctx.replacement_body = Some(local.clone());
                if last {
                    Output::Send(local)
                } else {
                    Output::Hold
                }
            } else {
                filter_body(r, ctx, held, ptr::null_mut(), last)
            };
            // Held, the body's length is known only when all of it is here.
            match &body {
                Output::Send(bytes) if last => (*r).headers_out.content_length_n = bytes.len() as i64,
                _ => drop_content_length(r),
            }
            let rc = NEXT_HEADER_FILTER.expect("next header filter")(r);
            if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
                return rc;
            }
            match body {
                Output::Send(bytes) => match memory_chain(r, &bytes, last) {
                    Some(chain) => NEXT_BODY_FILTER.expect("next body filter")(r, chain),
                    None => NGX_ERROR as ngx_int_t,
                },
                // Nothing arrived to pass on: only held bytes went through the filters.
                Output::Hold | Output::PassOn => NGX_OK as ngx_int_t,
                Output::Fail => NGX_ERROR as ngx_int_t,
            }
        });
        if rc == NGX_ERROR as ngx_int_t {
            (*(*r).connection).set_error(1);
        }
        // nginx finished the request while it was held and waits in its writer: let it go on.
        if (*r).http_state() == ngx::ffi::ngx_http_state_e_NGX_HTTP_WRITING_REQUEST_STATE {
            if let Some(writer) = (*r).write_event_handler {
                writer(r);
            }
        }
    }
}

/// Whether a chain ends the body.
///
/// # Safety
/// `chain` must be null or a valid chain.
unsafe fn is_last(mut chain: *mut ngx_chain_t) -> bool {
    // SAFETY: a valid chain (the caller's contract).
    unsafe {
        while let Some(link) = chain.as_ref() {
            if (*link.buf).last_buf() != 0 || (*link.buf).last_in_chain() != 0 {
                return true;
            }
            chain = link.next;
        }
        false
    }
}
