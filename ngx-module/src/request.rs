//! A location's filter chain over one request, request side: the request's streams, the
//! request headers (from the rewrite phase) and body, and the end of the stream (log phase).
//!
//! The request side advances through stages, filter by filter in chain order. A filter that
//! pauses (`Action::Pause` without answering) suspends the request until it resumes it with
//! `proxy_continue_stream` (typically from an http call's response); the rest of the chain
//! then runs and nginx's phases go on. A failed filter answers 500 (or is skipped with
//! fail-open) and its instance is rebuilt for the next request.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr::{self, NonNull};

use allocator_api2::vec::Vec as PoolVec;

use inwasm_host::{Action, FilterError, LocalResponse, PluginId, StreamId};
use ngx::core::Pool;
use ngx::ffi::{
    ngx_chain_t, ngx_event_t, ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_body_filter_pt, ngx_http_request_t, ngx_int_t, ngx_log_t, ngx_palloc, ngx_pool_cleanup_add,
    ngx_uint_t, NGX_DECLINED, NGX_DONE, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE,
    NGX_LOG_ERR, NGX_OK,
};
use ngx::http::HttpModuleLocationConf;

use crate::chains::{chain_bytes, chain_size, consume, memory_chain, replace_request_body, request_body};
use crate::embedding::{Exchange, ExchangeRef, StreamEmbedding};
use crate::ffi::{guard, guard_status, log_error};
use crate::headers::{self, Side};
use crate::http_module::{ngx_http_inwasm_module, Isolation, LocConf, Module};
use crate::metrics;
use crate::response::send_local_response;
use crate::wasm_block::WasmConf;
use crate::worker::{fresh_instance, record_failure, shared_instance, start_plugin, SharedVm};

pub struct ActiveFilter {
    pub vm: SharedVm,
    pub stream: StreamId,
    /// Failed with fail-open on: skipped for the rest of the request.
    skipped: bool,
}

/// How far the request side has come: the next filter to run in each stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Headers(usize),
    /// The body is being read; each piece goes through the chain as it arrives.
    Streaming,
    /// After a filter paused at the body's end: the rest of the chain, over what it held.
    Body(usize),
    Done,
}

/// A request's state, kept in its module context (in the request pool, like its filters).
pub struct RequestCtx {
    pub filters: PoolVec<ActiveFilter, Pool>,
    pub exchange: ExchangeRef,
    stage: Stage,
    /// Suspended by a pausing filter (holding one reference on the request).
    suspended: bool,
    /// The request's log.
    log: *mut ngx_log_t,
    /// A filter failed: the rest of the chain is skipped.
    pub failed: bool,
    /// `proxy_wasm_fail_open`: a failed filter is skipped instead of failing the request.
    fail_open: bool,
    /// Request bytes each filter holds while it pauses the request body (by filter).
    held_request: Vec<Vec<u8>>,
    /// The chain stopped taking request body: a filter answered, or paused at its end.
    body_stopped: bool,
    /// The filter that paused at the end of the request body.
    body_paused_at: Option<usize>,
    /// Response bytes held back while a filter pauses the response body.
    pub held_body: Vec<u8>,
    /// The body of a local response sent during the response headers, replacing the original.
    pub replacement_body: Option<Vec<u8>>,
    /// A filter paused the response headers: they, and the response body received meanwhile
    /// (`held_raw`, `held_raw_last`), wait until it continues (see `response.rs`).
    pub headers_held: bool,
    /// The response headers wait for the filters' first look at the body, to settle its
    /// Content-Length; and the body bytes received and sent so far (see `response.rs`).
    pub length_pending: bool,
    pub body_received: usize,
    pub body_received_total: i64,
    pub body_sent_total: i64,
    pub held_raw: Vec<u8>,
    pub held_raw_last: bool,
    finished: bool,
}

impl RequestCtx {
    /// Ends every stream (`on_done`, `on_log`, `on_delete`) once.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for filter in &self.filters {
            if let Err(error) = filter.vm.borrow_mut().finish_stream(filter.stream) {
                log_error(NGX_LOG_ERR as ngx_uint_t, self.log, &format!("inwasm: {error}"));
            }
        }
    }
}

impl Drop for RequestCtx {
    /// Ends the streams first if the log phase did not: they refer to the exchange, which
    /// goes with this context.
    fn drop(&mut self) {
        self.finish();
        unsafe { ptr::drop_in_place(self.exchange.as_ptr()) };
    }
}

pub unsafe fn ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    let slot = *(*r).ctx.add(ngx_http_inwasm_module.ctx_index);
    (slot as *mut RequestCtx).as_mut()
}

/// The request pool's cleanup of the context it holds (the pool frees the memory). Guarded:
/// dropping it may end streams, which runs their filters.
unsafe extern "C" fn drop_ctx(data: *mut c_void) {
    let ctx = data as *mut RequestCtx;
    guard((*ctx).log, (), || ptr::drop_in_place(ctx));
}

// The request pool aligns what it hands out to 8 bytes.
const _: () = assert!(std::mem::align_of::<RequestCtx>() <= 8);
const _: () = assert!(std::mem::align_of::<RefCell<Exchange>>() <= 8);

/// An event that runs `handler` for request `r`.
unsafe fn request_event(handler: unsafe extern "C" fn(*mut ngx_event_t), r: *mut ngx_http_request_t) -> ngx_event_t {
    let mut event: ngx_event_t = std::mem::zeroed();
    event.handler = Some(handler);
    event.data = r as *mut c_void;
    event.log = (*(*r).connection).log;
    event
}

/// Per-request instances of a request (isolation `stream`), by module index.
type RequestInstances = Vec<(usize, SharedVm)>;

/// The instance and plugin a filter runs on for this request, per the isolation mode.
fn instance_for(
    conf: &WasmConf,
    filter: usize,
    isolation: Isolation,
    per_request: &mut RequestInstances,
    log: *mut ngx_log_t,
) -> Result<(SharedVm, PluginId), String> {
    let decl = &conf.filters[filter];
    match isolation {
        Isolation::None => shared_instance(filter).map_err(|e| format!("filter \"{}\": {e}", decl.plugin.name)),
        Isolation::Stream => match per_request.iter().find(|(module, _)| *module == decl.module) {
            Some((_, vm)) => Ok((vm.clone(), start_plugin(vm, decl, log)?)),
            None => {
                let (vm, plugin) = fresh_instance(conf, decl, log)?;
                per_request.push((decl.module, vm.clone()));
                Ok((vm, plugin))
            }
        },
        Isolation::Filter => fresh_instance(conf, decl, log),
    }
}

/// Creates the request's context and streams for the location's chain. A filter that cannot
/// start fails the request, or is left out of it with fail-open.
unsafe fn start(r: *mut ngx_http_request_t, loc: &LocConf) -> Result<&'static mut RequestCtx, String> {
    let chain = loc.chain.as_deref().unwrap_or_default();
    let conf = WasmConf::of_cycle(ngx::ffi::ngx_cycle).ok_or("no wasm configuration")?;
    let log = (*(*r).connection).log;
    // In the request's pool, which outlives every use of it; the cleanup drops it.
    let ctx = ngx_palloc((*r).pool, std::mem::size_of::<RequestCtx>()) as *mut RequestCtx;
    let exchange = ngx_palloc((*r).pool, std::mem::size_of::<RefCell<Exchange>>()) as *mut RefCell<Exchange>;
    let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
    if ctx.is_null() || exchange.is_null() || cleanup.is_null() {
        return Err("out of memory".into());
    }
    let mut filters = PoolVec::new_in(Pool::from_ngx_pool((*r).pool));
    filters.try_reserve_exact(chain.len()).map_err(|_| "out of memory")?;
    let events = (request_event(resume, r), request_event(crate::response::resume_response, r));
    ptr::write(exchange, RefCell::new(Exchange::new(events.0, events.1)));
    ptr::write(
        ctx,
        RequestCtx {
            filters,
            // The context drops it (the pool frees the memory).
            exchange: ExchangeRef::new(NonNull::new_unchecked(exchange)),
            stage: Stage::Headers(0),
            suspended: false,
            log,
            failed: false,
            fail_open: loc.fail_open(),
            held_request: Vec::new(),
            body_stopped: false,
            body_paused_at: None,
            held_body: Vec::new(),
            replacement_body: None,
            headers_held: false,
            length_pending: false,
            body_received: 0,
            body_received_total: 0,
            body_sent_total: 0,
            held_raw: Vec::new(),
            held_raw_last: false,
            finished: false,
        },
    );
    (*cleanup).handler = Some(drop_ctx);
    (*cleanup).data = ctx as *mut c_void;
    *(*r).ctx.add(ngx_http_inwasm_module.ctx_index) = ctx as *mut c_void;
    let ctx = &mut *ctx;

    let mut per_request = RequestInstances::new();
    for &index in chain {
        let opened = instance_for(conf, index, loc.isolation.unwrap_or(Isolation::None), &mut per_request, log)
            .and_then(|(vm, plugin)| {
                let embedding = Box::new(StreamEmbedding::new(r, index, ctx.exchange));
                let timeout = Some(loc.timeout());
                let stream = vm.borrow_mut().new_stream(plugin, embedding, timeout).map_err(|e| e.to_string())?;
                Ok(ActiveFilter { vm, stream, skipped: false })
            });
        match opened {
            Ok(filter) => {
                if let Some(zone) = WasmConf::metrics() {
                    metrics::count_request(zone, index, &conf.filters[index].plugin.name);
                }
                ctx.filters.push(filter)
            }
            Err(message) if loc.fail_open() => {
                log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {message}; skipped (fail-open)"));
            }
            Err(message) => return Err(message),
        }
    }
    Ok(ctx)
}

/// Logs a filter failure with the filter's failure counts in this worker.
fn report(r: *mut ngx_http_request_t, error: &FilterError, fail_open: bool) {
    let counts = record_failure(error);
    let outcome = if fail_open { "skipped (fail-open)" } else { "request failed" };
    let message = format!("inwasm: {error}; {outcome}; this worker: {counts}");
    unsafe { log_error(NGX_LOG_ERR as ngx_uint_t, (*(*r).connection).log, &message) };
}

/// What one filter callback led to.
pub enum Step {
    Continue,
    /// The filter paused without answering.
    Paused,
    /// The filter answered with a local response.
    Responded,
    /// The filter failed (and fail-open is off).
    Failed,
}

/// Calls one filter; on failure reports it and, with fail-open, skips the filter from then on.
pub fn step(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    index: usize,
    call: impl FnOnce(&ActiveFilter) -> Result<Action, FilterError>,
) -> Step {
    if ctx.filters[index].skipped {
        return Step::Continue;
    }
    match call(&ctx.filters[index]) {
        Ok(_) if ctx.exchange.borrow().local_response.is_some() => Step::Responded,
        Ok(Action::Pause) => Step::Paused,
        Ok(Action::Continue) => Step::Continue,
        Err(error) => {
            report(r, &error, ctx.fail_open);
            if ctx.fail_open {
                ctx.filters[index].skipped = true;
                return Step::Continue;
            }
            ctx.failed = true;
            Step::Failed
        }
    }
}

fn has_body(r: &ngx_http_request_t) -> bool {
    r.headers_in.content_length_n > 0 || r.headers_in.chunked() != 0
}

/// Where the request side stopped, and what nginx is to do next. The calls into nginx are
/// made by [`proceed`], once no reference to the request's context is held: they run our
/// filters again, which find the context through the request.
enum Next {
    /// `NGX_DECLINED` (nginx's phases go on), `NGX_DONE` (suspended), or an HTTP status.
    Status(ngx_int_t),
    SendLocalResponse(LocalResponse),
    /// Read the request body; each piece goes through the chain as it arrives.
    ReadBody,
}

/// Runs the request side from where it stands until it is done, waits, or ends the request.
unsafe fn advance(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> Next {
    use Next::Status;
    loop {
        // Answered while suspended (e.g. from an http call's response).
        if let Some(response) = ctx.exchange.borrow_mut().local_response.take() {
            ctx.stage = Stage::Done;
            return Next::SendLocalResponse(response);
        }
        let result = match ctx.stage {
            Stage::Headers(index) if index < ctx.filters.len() => {
                let end_of_stream = !has_body(&*r);
                ctx.stage = Stage::Headers(index + 1);
                step(r, ctx, index, |f| f.vm.borrow_mut().on_request_headers(f.stream, end_of_stream))
            }
            Stage::Headers(_) if has_body(&*r) => {
                ctx.stage = Stage::Streaming;
                return Next::ReadBody;
            }
            Stage::Headers(_) => {
                ctx.stage = Stage::Done;
                continue;
            }
            Stage::Body(index) if index < ctx.filters.len() => {
                let size = ctx.exchange.borrow().request_body.len();
                ctx.stage = Stage::Body(index + 1);
                step(r, ctx, index, |f| f.vm.borrow_mut().on_request_body(f.stream, size, true))
            }
            Stage::Body(_) => {
                // What the pausing filter held joins the body already passed on.
                ctx.stage = Stage::Done;
                let tail = std::mem::take(&mut ctx.exchange.borrow_mut().request_body);
                let Some(mut body) = request_body(r) else {
                    return Status(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
                };
                body.extend_from_slice(&tail);
                if replace_request_body(r, &body).is_none() {
                    return Status(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
                }
                continue;
            }
            Stage::Streaming => return Status(NGX_DONE as ngx_int_t),
            Stage::Done => return Status(NGX_DECLINED as ngx_int_t),
        };
        match result {
            Step::Continue => {}
            Step::Failed => return Status(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
            Step::Responded => continue,
            Step::Paused if std::mem::take(&mut ctx.exchange.borrow_mut().resume_requested) => {}
            Step::Paused => {
                ctx.suspended = true;
                (*(*r).main).set_count((*(*r).main).count() + 1);
                return Status(NGX_DONE as ngx_int_t);
            }
        }
    }
}

/// Does what the request side asked for (see [`Next`]); returns the phase handler's status.
unsafe fn proceed(r: *mut ngx_http_request_t, next: Next) -> ngx_int_t {
    match next {
        Next::Status(rc) => rc,
        Next::SendLocalResponse(response) => send_local_response(r, response),
        Next::ReadBody => {
            let rc = ngx_http_read_client_request_body(r, Some(request_body_read));
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            // Reading holds its own reference on the request until `request_body_read`.
            ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
            NGX_DONE as ngx_int_t
        }
    }
}

pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard_status((*(*r).connection).log, || {
        if r != (*r).main {
            return NGX_DECLINED as ngx_int_t;
        }
        let Some(loc) = Module::location_conf(&*r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if loc.chain.as_ref().is_none_or(|c| c.is_empty()) {
            return NGX_DECLINED as ngx_int_t;
        }
        let ctx = match ctx(r) {
            Some(ctx) if ctx.failed => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            Some(ctx) => ctx,
            None => match start(r, loc) {
                Ok(ctx) => ctx,
                Err(message) => {
                    log_error(NGX_LOG_ERR as ngx_uint_t, (*(*r).connection).log, &format!("inwasm: {message}"));
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                }
            },
        };
        if ctx.suspended {
            return NGX_DONE as ngx_int_t;
        }
        let next = advance(r, ctx);
        proceed(r, next)
    })
}

/// Goes on after waiting (a body read, a resume): runs the rest of the request side, then
/// nginx's phases, or ends the request.
unsafe fn go_on(r: *mut ngx_http_request_t) {
    let rc = guard_status((*(*r).connection).log, || {
        let Some(ctx) = ctx(r) else { return NGX_ERROR as ngx_int_t };
        let next = advance(r, ctx);
        proceed(r, next)
    });
    if rc == NGX_DECLINED as ngx_int_t {
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    } else if rc != NGX_DONE as ngx_int_t {
        ngx_http_finalize_request(r, rc);
    }
}

/// Called once the whole request body is in (and through the chain).
unsafe extern "C" fn request_body_read(r: *mut ngx_http_request_t) {
    let Some(ctx) = ctx(r) else { return ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t) };
    (*r).set_preserve_body(1);
    if let Some(index) = ctx.body_paused_at.take() {
        // Wait for the pausing filter; then the rest of the chain runs over what it held.
        ctx.stage = Stage::Body(index + 1);
        if !std::mem::take(&mut ctx.exchange.borrow_mut().resume_requested) {
            ctx.suspended = true;
            (*(*r).main).set_count((*(*r).main).count() + 1);
            return;
        }
    } else {
        ctx.stage = Stage::Done;
        if guard((*(*r).connection).log, None, || fix_content_length(r)).is_none() {
            return ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
    }
    go_on(r);
}

/// Makes Content-Length match the body the chain let through (filters may change its size).
unsafe fn fix_content_length(r: *mut ngx_http_request_t) -> Option<()> {
    let size = (*r).request_body.as_ref().map_or(0, |body| chain_size(body.bufs));
    if (*r).headers_in.content_length_n == size as i64 && (*r).headers_in.chunked() == 0 {
        return Some(());
    }
    headers::remove(r, Side::Request, b"transfer-encoding")?;
    headers::replace(r, Side::Request, b"content-length", size.to_string().as_bytes())?;
    (*r).headers_in.set_chunked(0);
    Some(())
}

pub static mut NEXT_REQUEST_BODY_FILTER: ngx_http_request_body_filter_pt = None;

/// nginx's request body filter: each piece of the body, as it is read, goes through the
/// chain in order. A filter that pauses before the end holds what it has seen (and gets it
/// again with the next piece); one that pauses at the end stops the body there until it
/// continues; one that answers stops the body and answers once it is read.
pub unsafe extern "C" fn request_body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    let next = NEXT_REQUEST_BODY_FILTER.expect("next request body filter");
    let mut output = input;
    let rc = guard_status((*(*r).connection).log, || {
        let Some(ctx) = ctx(r) else { return NGX_DECLINED as ngx_int_t };
        if r != (*r).main || ctx.stage != Stage::Streaming || input.is_null() {
            return NGX_DECLINED as ngx_int_t;
        }
        let mut piece = Vec::new();
        if chain_bytes(input, &mut piece).is_none() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        let end_of_stream = consume(input);
        let passed = match stream_piece(r, ctx, piece, end_of_stream) {
            Ok(passed) => passed,
            Err(rc) => return rc,
        };
        if passed.is_empty() && !end_of_stream {
            return NGX_OK as ngx_int_t;
        }
        match memory_chain(r, &passed, end_of_stream) {
            Some(chain) => {
                output = chain;
                NGX_DECLINED as ngx_int_t
            }
            None => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        }
    });
    if rc == NGX_DECLINED as ngx_int_t {
        next(r, output)
    } else {
        rc
    }
}

/// Runs one piece of the request body through the chain; returns what goes on to nginx.
unsafe fn stream_piece(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    mut data: Vec<u8>,
    end: bool,
) -> Result<Vec<u8>, ngx_int_t> {
    if ctx.body_stopped {
        return Ok(Vec::new());
    }
    ctx.held_request.resize_with(ctx.filters.len(), Vec::new);
    for index in 0..ctx.filters.len() {
        let mut held = std::mem::take(&mut ctx.held_request[index]);
        held.extend_from_slice(&data);
        let size = held.len();
        ctx.exchange.borrow_mut().request_body = held;
        let result = step(r, ctx, index, |f| f.vm.borrow_mut().on_request_body(f.stream, size, end));
        let resumed = std::mem::take(&mut ctx.exchange.borrow_mut().resume_requested);
        match result {
            Step::Failed => return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
            Step::Responded => {
                ctx.body_stopped = true;
                return Ok(Vec::new());
            }
            Step::Paused if !resumed && !end => {
                ctx.held_request[index] = std::mem::take(&mut ctx.exchange.borrow_mut().request_body);
                return Ok(Vec::new());
            }
            Step::Paused if !resumed => {
                // Its data waits in the exchange until it continues.
                ctx.body_stopped = true;
                ctx.body_paused_at = Some(index);
                return Ok(Vec::new());
            }
            Step::Paused | Step::Continue => data = std::mem::take(&mut ctx.exchange.borrow_mut().request_body),
        }
    }
    Ok(data)
}

/// The resume event: a filter asked to continue a suspended request.
unsafe extern "C" fn resume(event: *mut ngx_event_t) {
    let r = (*event).data as *mut ngx_http_request_t;
    let Some(ctx) = ctx(r) else { return };
    ctx.exchange.borrow_mut().resume_requested = false;
    if !std::mem::take(&mut ctx.suspended) {
        return;
    }
    go_on(r);
    // Drop the reference taken when the request was suspended.
    ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
}

pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let log = (*(*r).connection).log;
    guard_status(log, || {
        if let Some(ctx) = ctx(r) {
            ctx.finish();
        }
        NGX_OK as ngx_int_t
    })
}
