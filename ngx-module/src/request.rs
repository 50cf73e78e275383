//! A location's filter chain over one request, request side: the request's streams, the
//! request headers (from the rewrite phase) and body, and the end of the stream (log phase).
//!
//! The request side advances through stages, filter by filter in chain order. A filter that
//! pauses (`Action::Pause` without answering) suspends the request until it resumes it with
//! `proxy_continue_stream` (typically from an http call's response); the rest of the chain
//! then runs and nginx's phases go on. A suspended request is answered 504 once it has
//! waited `proxy_wasm_pause_timeout`, and 500 at once if its filter's instance fails while
//! it waits; a client that goes away ends it. A failed filter answers 500 (or is skipped
//! with fail-open) and its instance is rebuilt for the next request.
//!
//! A request has one set of streams, whatever locations it passes through: they follow it
//! through internal redirects (`try_files`, `error_page`, `rewrite ... last`,
//! `X-Accel-Redirect`, named locations), which clear nginx's module contexts (the context is
//! found again through the request pool's cleanup that owns it). A location reached later
//! adds the filters of its chain that the request has not met yet; those run from their
//! request headers on.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::time::Duration;

use allocator_api2::vec::Vec as PoolVec;

use inwasm_host::{Action, FilterError, LocalResponse, PluginId, StreamId};
use ngx::core::Pool;
use ngx::ffi::{
    ngx_chain_t, ngx_event_t, ngx_http_block_reading, ngx_http_core_run_phases, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_body_filter_pt, ngx_http_request_t, ngx_http_test_reading,
    ngx_int_t, ngx_log_t, ngx_palloc, ngx_pool_cleanup_add, ngx_uint_t, NGX_DECLINED, NGX_DONE, NGX_ERROR,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR, NGX_OK,
};
use ngx::http::HttpModuleLocationConf;

use crate::chains::{chain_bytes, chain_size, consume, memory_chain, replace_request_body, request_body};
use crate::embedding::{Exchange, ExchangeRef, StreamEmbedding};
use crate::ffi::{guard, guard_status, log_error};
use crate::framing::{self, has_body};
use crate::http_module::{ngx_http_inwasm_module, Isolation, LocConf, Module};
use crate::metrics;
use crate::response::send_local_response;
use crate::wasm_block::WasmConf;
use crate::worker::{
    failure_text, record_failure, recycle, request_instance, revive_later, shared_instance, start_plugin, SharedVm,
};

/// A request whose filter failed (see `inwasm_host::FILTER_FAILED_STATUS`).
pub const FILTER_FAILED: ngx_int_t = inwasm_host::FILTER_FAILED_STATUS as ngx_int_t;

pub struct ActiveFilter {
    /// The filter's index in the configuration.
    index: usize,
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
    /// The rest of the chain over a body held in the exchange: after a filter paused at the
    /// body's end, or for filters that joined after the body was read.
    Body(usize),
    Done,
}

/// A VM of the request's own (isolation `stream` or `filter`), started for filter `filter`.
struct OwnVm {
    module: usize,
    filter: usize,
    plugin: PluginId,
    isolation: Isolation,
    vm: SharedVm,
}

/// A request's state, kept in the request pool (see `start`).
pub struct RequestCtx {
    /// The request it belongs to (a subrequest shares its pool).
    r: *mut ngx_http_request_t,
    pub filters: PoolVec<ActiveFilter, Pool>,
    pub exchange: ExchangeRef,
    stage: Stage,
    /// The first filter that has not seen the request body (filters that joined later).
    body_from: usize,
    /// The request's own VMs, handed back to the worker when it ends (see `worker::recycle`).
    instances: Vec<OwnVm>,
    /// Suspended by a pausing filter (holding one reference on the request).
    suspended: bool,
    /// The filter that paused the request or its response headers, for messages.
    pub paused_by: Option<usize>,
    /// How long a filter may keep the request waiting.
    pub pause_limit: Duration,
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
    /// Ends every stream (`on_log`, `on_done`, `on_delete`) once.
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

    /// The name of the filter at `position` in the request's chain.
    pub fn filter_name(&self, position: usize) -> String {
        // SAFETY: the worker's cycle, whose configuration the request's filters belong to.
        let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) };
        let index = self.filters.get(position).map(|f| f.index);
        conf.zip(index).map(|(conf, index)| conf.filters[index].plugin.name.clone()).unwrap_or_default()
    }
}

impl Drop for RequestCtx {
    /// Ends the streams first if the log phase did not: they refer to the exchange, which
    /// goes with this context.
    fn drop(&mut self) {
        self.finish();
        // The request's own VMs go back to the worker, held by nothing else of the request.
        self.filters.clear();
        recycle(self.instances.drain(..).map(|own| (own.filter, own.plugin, own.vm)));
        // SAFETY: the context owns the exchange (see `start`); no stream refers to it now.
        unsafe { ptr::drop_in_place(self.exchange.as_ptr()) };
    }
}

/// The request's context: in its module slot, or (after an internal redirect, which clears
/// the slots) found again through the request pool's cleanup that owns it. Subrequests have
/// none: the filters run on the main request.
///
/// # Safety
/// `r` must be a live request; the result must not be used once another context reference
/// of the same request is made.
pub unsafe fn ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    // SAFETY: a live request (per the caller); its module slots and pool cleanups are valid.
    unsafe {
        if r != (*r).main {
            return None;
        }
        let slot = (*r).ctx.add(ngx_http_inwasm_module.ctx_index);
        if slot.read().is_null() {
            let mut cleanup = (*(*r).pool).cleanup;
            while let Some(c) = cleanup.as_ref() {
                let ours = c.handler.is_some_and(|handler| ptr::fn_addr_eq(handler, drop_ctx as CleanupHandler));
                if ours && (*(c.data as *mut RequestCtx)).r == r {
                    slot.write(c.data);
                    break;
                }
                cleanup = c.next;
            }
        }
        (slot.read() as *mut RequestCtx).as_mut()
    }
}

type CleanupHandler = unsafe extern "C" fn(*mut c_void);

/// The request pool's cleanup of the context it holds (the pool frees the memory). Guarded:
/// dropping it may end streams, which runs their filters; by then the request is going, so
/// the streams no longer reach it.
unsafe extern "C" fn drop_ctx(data: *mut c_void) {
    let ctx = data as *mut RequestCtx;
    // SAFETY: `data` is the context this cleanup was added for (see `start`), dropped once.
    unsafe {
        (*ctx).exchange.borrow_mut().request_gone = true;
        guard((*ctx).log, (), || ptr::drop_in_place(ctx));
    }
}

// The request pool aligns what it hands out to 8 bytes.
const _: () = assert!(std::mem::align_of::<RequestCtx>() <= 8);
const _: () = assert!(std::mem::align_of::<RefCell<Exchange>>() <= 8);

/// An event that runs `handler` for request `r`.
unsafe fn request_event(handler: unsafe extern "C" fn(*mut ngx_event_t), r: *mut ngx_http_request_t) -> ngx_event_t {
    // SAFETY: an all-zero event is nginx's idle event; `r` is live (per the caller).
    unsafe {
        let mut event: ngx_event_t = std::mem::zeroed();
        event.handler = Some(handler);
        event.data = r as *mut c_void;
        event.log = (*(*r).connection).log;
        event
    }
}

/// Creates the request's context, with no streams yet (see [`join`]).
unsafe fn start(r: *mut ngx_http_request_t, loc: &LocConf) -> Result<&'static mut RequestCtx, String> {
    // SAFETY: a live main request (per the caller); what is allocated in its pool outlives
    // every use, and the cleanup drops it.
    unsafe {
        let log = (*(*r).connection).log;
        let ctx = ngx_palloc((*r).pool, std::mem::size_of::<RequestCtx>()) as *mut RequestCtx;
        let exchange = ngx_palloc((*r).pool, std::mem::size_of::<RefCell<Exchange>>()) as *mut RefCell<Exchange>;
        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if ctx.is_null() || exchange.is_null() || cleanup.is_null() {
            return Err("out of memory".into());
        }
        let events = [
            request_event(resume, r),
            request_event(crate::response::resume_response, r),
            request_event(pause_expired, r),
        ];
        ptr::write(exchange, RefCell::new(Exchange::new(events)));
        ptr::write(
            ctx,
            RequestCtx {
                r,
                filters: PoolVec::new_in(Pool::from_ngx_pool((*r).pool)),
                // The context drops it (the pool frees the memory).
                exchange: ExchangeRef::new(NonNull::new_unchecked(exchange)),
                stage: Stage::Done,
                body_from: 0,
                instances: Vec::new(),
                suspended: false,
                paused_by: None,
                pause_limit: loc.pause_timeout(),
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
        Ok(&mut *ctx)
    }
}

/// The instance and plugin a filter runs on for this request, per the isolation mode. A VM
/// of the request's own is reused from an earlier request, reset, where the filter allows
/// it and it will hold that filter alone (see `worker::request_instance`).
fn instance_for(
    conf: &WasmConf,
    filter: usize,
    isolation: Isolation,
    chain: &[usize],
    own: &mut Vec<OwnVm>,
) -> Result<(SharedVm, PluginId), String> {
    let decl = &conf.filters[filter];
    let module = decl.module;
    let fresh = |reusable: bool, own: &mut Vec<OwnVm>| {
        let (vm, plugin) = request_instance(conf, filter, reusable)?;
        own.push(OwnVm { module, filter, plugin, isolation, vm: vm.clone() });
        Ok((vm, plugin))
    };
    match isolation {
        Isolation::None => shared_instance(filter).map_err(|e| format!("filter \"{}\": {e}", decl.plugin.name)),
        Isolation::Stream => match own.iter().find(|o| o.module == module && o.isolation == Isolation::Stream) {
            Some(o) => Ok((o.vm.clone(), start_plugin(&o.vm, decl)?)),
            None => {
                let alone = !chain.iter().any(|&other| other != filter && conf.filters[other].module == module);
                fresh(alone, own)
            }
        },
        Isolation::Filter => fresh(true, own),
    }
}

/// Opens streams for the filters of the location's chain the request has not met yet, and
/// sets the request side to run them from their request headers. A filter that cannot start
/// fails the request, or is left out of it with fail-open.
unsafe fn join(r: *mut ngx_http_request_t, ctx: &mut RequestCtx, loc: &LocConf) -> Result<(), String> {
    // SAFETY: the worker's cycle.
    let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.ok_or("no wasm configuration")?;
    let chain = loc.chain.as_deref().unwrap_or_default();
    let first = ctx.filters.len();
    let log = ctx.log;
    for &index in chain {
        if ctx.filters[..first].iter().any(|f| f.index == index) {
            continue;
        }
        let isolation = loc.isolation.unwrap_or(Isolation::None);
        let opened = instance_for(conf, index, isolation, chain, &mut ctx.instances).and_then(|(vm, plugin)| {
            let embedding = Box::new(StreamEmbedding::new(r, index, ctx.exchange));
            let stream =
                vm.borrow_mut().new_stream(plugin, embedding, loc.stream_limits()).map_err(|e| e.to_string())?;
            Ok(ActiveFilter { index, vm, stream, skipped: false })
        });
        match opened {
            Ok(filter) => {
                if let Some(zone) = WasmConf::metrics() {
                    metrics::count_request(zone, index, &conf.filters[index].plugin.name);
                }
                ctx.filters.try_reserve(1).map_err(|_| "out of memory")?;
                ctx.filters.push(filter)
            }
            Err(message) if ctx.fail_open => {
                log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {message}; skipped (fail-open)"));
            }
            Err(message) => return Err(message),
        }
    }
    if ctx.filters.len() > first {
        ctx.stage = Stage::Headers(first);
        ctx.body_from = first;
    }
    Ok(())
}

/// Logs a filter failure with the filter's failure counts in this worker.
fn report(r: *mut ngx_http_request_t, error: &FilterError, fail_open: bool) {
    let counts = record_failure(error);
    revive_later();
    let outcome = if fail_open { "skipped (fail-open)" } else { "request failed" };
    let message = format!("inwasm: {}; {outcome}; this worker: {counts}", failure_text(error));
    // SAFETY: a live request (`step`'s callers run on one).
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

/// After an instance failed outside the request's own callbacks: each filter of the request
/// on it is reported, and skipped (fail-open) or fails the request (`false`).
pub fn check_lost(ctx: &mut RequestCtx) -> bool {
    if !std::mem::take(&mut ctx.exchange.borrow_mut().lost) {
        return true;
    }
    for position in 0..ctx.filters.len() {
        let filter = &ctx.filters[position];
        if filter.skipped || filter.vm.borrow().is_live(filter.stream) {
            continue;
        }
        let outcome = if ctx.fail_open { "skipped (fail-open)" } else { "request failed" };
        let name = ctx.filter_name(position);
        let message = format!("inwasm: filter \"{name}\": its instance failed while the request waited; {outcome}");
        log_error(NGX_LOG_ERR as ngx_uint_t, ctx.log, &message);
        if !ctx.fail_open {
            ctx.failed = true;
            return false;
        }
        ctx.filters[position].skipped = true;
    }
    true
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
    const FAILED: Next = Next::Status(FILTER_FAILED);
    loop {
        if !check_lost(ctx) {
            return FAILED;
        }
        // Answered while suspended (e.g. from an http call's response).
        if let Some(response) = ctx.exchange.borrow_mut().local_response.take() {
            ctx.stage = Stage::Done;
            return Next::SendLocalResponse(response);
        }
        // SAFETY: a live request (per the caller).
        let with_body = has_body(unsafe { &*r });
        let result = match ctx.stage {
            Stage::Headers(index) if index < ctx.filters.len() => {
                ctx.stage = Stage::Headers(index + 1);
                step(r, ctx, index, |f| f.vm.borrow_mut().on_request_headers(f.stream, !with_body))
            }
            // SAFETY: a live request.
            Stage::Headers(_) if with_body && unsafe { body_was_read(r) } => {
                // Filters that joined after the body was read see it whole.
                // SAFETY: a live request whose body was read.
                let Some(body) = (unsafe { request_body(r) }) else { return FAILED };
                ctx.exchange.borrow_mut().request_body = body;
                // SAFETY: a live request whose body was read.
                if unsafe { replace_request_body(r, &[]) }.is_err() {
                    return FAILED;
                }
                ctx.stage = Stage::Body(ctx.body_from);
                continue;
            }
            Stage::Headers(_) if with_body => {
                ctx.stage = Stage::Streaming;
                return Next::ReadBody;
            }
            Stage::Headers(_) => {
                ctx.stage = Stage::Done;
                // SAFETY: a live request.
                if unsafe { settle_framing(r, ctx, None) }.is_err() {
                    return FAILED;
                }
                continue;
            }
            Stage::Body(index) if index < ctx.filters.len() => {
                let size = ctx.exchange.borrow().request_body.len();
                ctx.stage = Stage::Body(index + 1);
                step(r, ctx, index, |f| f.vm.borrow_mut().on_request_body(f.stream, size, true))
            }
            Stage::Body(_) => {
                // What the filters held joins the body already passed on.
                ctx.stage = Stage::Done;
                let tail = std::mem::take(&mut ctx.exchange.borrow_mut().request_body);
                // SAFETY: a live request whose body was read.
                let Some(mut body) = (unsafe { request_body(r) }) else { return FAILED };
                body.extend_from_slice(&tail);
                // SAFETY: a live request whose body was read.
                if unsafe { replace_request_body(r, &body) }.is_err() {
                    return FAILED;
                }
                continue;
            }
            Stage::Streaming => return Status(NGX_DONE as ngx_int_t),
            Stage::Done => return Status(NGX_DECLINED as ngx_int_t),
        };
        match result {
            Step::Continue => {}
            Step::Failed => return FAILED,
            Step::Responded => continue,
            Step::Paused if std::mem::take(&mut ctx.exchange.borrow_mut().resume_requested) => {}
            Step::Paused => {
                let position = match ctx.stage {
                    Stage::Headers(next) | Stage::Body(next) => next - 1,
                    _ => 0,
                };
                // SAFETY: a live request.
                unsafe { suspend(r, ctx, position) };
                return Status(NGX_DONE as ngx_int_t);
            }
        }
    }
}

/// Whether nginx has read the whole request body already (for filters joining after it).
unsafe fn body_was_read(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: a live request (per the caller).
    unsafe { (*r).request_body.as_ref().is_some_and(|body| body.rest == 0) && (*r).reading_body() == 0 }
}

/// Makes the request's framing describe the body that goes on, when a filter may have
/// changed it (see `framing`).
unsafe fn settle_framing(r: *mut ngx_http_request_t, ctx: &RequestCtx, body: Option<usize>) -> Result<(), ()> {
    let edited = std::mem::take(&mut ctx.exchange.borrow_mut().framing_edited);
    // SAFETY: a live request (per the caller).
    let hin = unsafe { &(*r).headers_in };
    let unchanged = body.is_none_or(|size| hin.content_length_n == size as i64 && hin.chunked() == 0);
    if !edited && unchanged {
        return Ok(());
    }
    // SAFETY: a live request.
    unsafe { framing::settle(r, body) }.map_err(drop)
}

/// Suspends the request for the filter at `position`: nginx waits (one reference held), a
/// client that goes away ends the request, and the pause has its limit.
unsafe fn suspend(r: *mut ngx_http_request_t, ctx: &mut RequestCtx, position: usize) {
    ctx.suspended = true;
    ctx.paused_by = Some(position);
    // SAFETY: a live main request (per the caller).
    unsafe {
        (*r).set_count((*r).count() + 1);
        (*r).read_event_handler = Some(ngx_http_test_reading);
    }
    ctx.exchange.borrow_mut().arm_pause_timer(ctx.pause_limit);
}

/// Takes the request out of suspension (its reference is still held: see `resume`).
fn unsuspend(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> bool {
    if !std::mem::take(&mut ctx.suspended) {
        return false;
    }
    ctx.exchange.borrow_mut().disarm_pause_timer();
    // SAFETY: a live request.
    unsafe { (*r).read_event_handler = Some(ngx_http_block_reading) };
    true
}

/// Does what the request side asked for (see [`Next`]); returns the phase handler's status.
unsafe fn proceed(r: *mut ngx_http_request_t, next: Next) -> ngx_int_t {
    // SAFETY: a live request (per the caller), no context reference held.
    unsafe {
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
}

pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls phase handlers with a live request.
    let log = unsafe { (*(*r).connection).log };
    // SAFETY: a live main request: the context, its filters and nginx's calls all serve it.
    guard_status(log, || unsafe {
        if r != (*r).main {
            return NGX_DECLINED as ngx_int_t;
        }
        let Some(loc) = Module::location_conf(&*r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        let has_chain = loc.chain.as_ref().is_some_and(|c| !c.is_empty());
        let ctx = match ctx(r) {
            Some(ctx) if ctx.failed => return FILTER_FAILED,
            Some(ctx) if ctx.suspended => return NGX_DONE as ngx_int_t,
            Some(ctx) => ctx,
            None if !has_chain => return NGX_DECLINED as ngx_int_t,
            None => match start(r, loc) {
                Ok(ctx) => ctx,
                Err(message) => {
                    log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {message}"));
                    return FILTER_FAILED;
                }
            },
        };
        if has_chain && ctx.stage == Stage::Done {
            if let Err(message) = join(r, ctx, loc) {
                log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {message}"));
                ctx.failed = true;
                return FILTER_FAILED;
            }
        }
        let next = advance(r, ctx);
        proceed(r, next)
    })
}

/// Goes on after waiting (a body read, a resume): runs the rest of the request side, then
/// nginx's phases, or ends the request.
unsafe fn go_on(r: *mut ngx_http_request_t) {
    // SAFETY: a live request (per the caller).
    unsafe {
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
}

/// Called once the whole request body is in (and through the chain).
unsafe extern "C" fn request_body_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls it with the live request whose body it read.
    unsafe {
        let failed = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        let finalize = guard((*(*r).connection).log, Some(failed), || {
            let Some(ctx) = ctx(r) else { return Some(NGX_ERROR as ngx_int_t) };
            (*r).set_preserve_body(1);
            if let Some(position) = ctx.body_paused_at.take() {
                // Wait for the pausing filter; then the rest of the chain runs over what it held.
                ctx.stage = Stage::Body(position + 1);
                if !std::mem::take(&mut ctx.exchange.borrow_mut().resume_requested) {
                    suspend(r, ctx, position);
                    return None;
                }
            } else {
                ctx.stage = Stage::Done;
                let size = (*r).request_body.as_ref().map_or(0, |body| chain_size(body.bufs));
                if settle_framing(r, ctx, Some(size)).is_err() {
                    return Some(failed);
                }
            }
            go_on(r);
            None
        });
        if let Some(rc) = finalize {
            ngx_http_finalize_request(r, rc);
        }
    }
}

pub static mut NEXT_REQUEST_BODY_FILTER: ngx_http_request_body_filter_pt = None;

/// nginx's request body filter: each piece of the body, as it is read, goes through the
/// chain in order. A filter that pauses before the end holds what it has seen (and gets it
/// again with the next piece); one that pauses at the end stops the body there until it
/// continues; one that answers stops the body and answers once it is read.
pub unsafe extern "C" fn request_body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: set at configuration time, before any request.
    let next = unsafe { NEXT_REQUEST_BODY_FILTER }.expect("next request body filter");
    let mut output = input;
    // SAFETY: nginx calls body filters with a live request.
    let rc = guard_status(unsafe { (*(*r).connection).log }, || unsafe {
        let Some(ctx) = ctx(r) else { return NGX_DECLINED as ngx_int_t };
        if ctx.stage != Stage::Streaming || input.is_null() {
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
        // SAFETY: nginx's next body filter, with the request and a chain it may take.
        unsafe { next(r, output) }
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
            Step::Failed => return Err(FILTER_FAILED),
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

/// The resume event: a filter asked to continue a suspended request (or its instance failed).
unsafe extern "C" fn resume(event: *mut ngx_event_t) {
    // SAFETY: the event's data is its live request (the event goes with the request's pool).
    unsafe {
        let r = (*event).data as *mut ngx_http_request_t;
        guard((*(*r).connection).log, (), || {
            let Some(ctx) = ctx(r) else { return };
            ctx.exchange.borrow_mut().resume_requested = false;
            if !unsuspend(r, ctx) {
                return;
            }
            go_on(r);
            // Drop the reference taken when the request was suspended.
            ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
        })
    }
}

/// The pause timer: a filter kept the request (or its response headers) waiting too long.
unsafe extern "C" fn pause_expired(event: *mut ngx_event_t) {
    // SAFETY: the event's data is its live request (the timer goes with the request's pool).
    unsafe {
        let r = (*event).data as *mut ngx_http_request_t;
        guard((*(*r).connection).log, (), || {
            let Some(ctx) = ctx(r) else { return };
            let name = ctx.paused_by.map(|position| ctx.filter_name(position)).unwrap_or_default();
            let limit = ctx.pause_limit;
            let message = format!(
                "inwasm: filter \"{name}\" kept the request waiting longer than proxy_wasm_pause_timeout ({limit:?}); answered 504"
            );
            log_error(NGX_LOG_ERR as ngx_uint_t, ctx.log, &message);
            if ctx.headers_held {
                return crate::response::answer_held(r, NGX_HTTP_GATEWAY_TIME_OUT);
            }
            if !unsuspend(r, ctx) {
                return;
            }
            ctx.failed = true;
            ngx_http_finalize_request(r, NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t);
            // Drop the reference taken when the request was suspended.
            ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
        })
    }
}

pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls phase handlers with a live request.
    let log = unsafe { (*(*r).connection).log };
    guard_status(log, || {
        // SAFETY: a live request.
        if let Some(ctx) = unsafe { ctx(r) } {
            ctx.finish();
        }
        NGX_OK as ngx_int_t
    })
}
