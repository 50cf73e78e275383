//! The host's embedding for nginx: what a filter reaches, for a root context (logging) and
//! for a request (headers, bodies, properties, local responses).
//!
//! The host calls these while the guest runs, so nothing here sends output or resumes the
//! request: local responses and bodies are recorded in the request's [`Exchange`] and the
//! request driver acts on them when the callback has returned.

use std::cell::RefCell;
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::time::Duration;

use inwasm_host::*;
use ngx::ffi::{
    ngx_add_timer, ngx_chain_t, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_http_request_t, ngx_log_t,
    ngx_msec_t, ngx_post_event, ngx_posted_events, ngx_uint_t, NGX_LOG_CRIT, NGX_LOG_DEBUG, NGX_LOG_ERR, NGX_LOG_INFO,
    NGX_LOG_WARN,
};

use crate::chains::chain_bytes;
use crate::ffi::log_error;
use crate::headers::Side;
use crate::root_link::RootLink;
use crate::shared_queues;
use crate::tenant::Tenant;
use crate::wasm_block::WasmConf;
use crate::{framing, headers, http_call, properties};

/// What a request's filters share with the request driver.
pub struct Exchange {
    /// The request body a filter sees (the whole body, read before `on_request_body`).
    pub request_body: Vec<u8>,
    pub request_body_changed: bool,
    /// The response body a filter sees: the bytes of the current call. Those that came in
    /// `response_input` join it when a filter first reads the body.
    pub response_body: Vec<u8>,
    /// The current call's input chain while no filter has read or replaced its bytes: such
    /// a body goes on in nginx's own buffers (file buffers stay files), copied never.
    pub response_input: *mut ngx_chain_t,
    pub local_response: Option<LocalResponse>,
    /// A filter asked to resume the request (`proxy_continue_stream`).
    pub resume_requested: bool,
    /// A filter asked to resume the response, whose headers it paused.
    pub response_resume_requested: bool,
    /// The response headers are held for a filter that paused them.
    pub response_held: bool,
    /// A filter edited the request's framing headers (see `framing`).
    pub framing_edited: bool,
    /// An instance the request's streams ran on failed outside their callbacks.
    pub lost: bool,
    /// The request's pool is being destroyed: the streams must not reach the request.
    pub request_gone: bool,
    /// The request's resume events, posted when a filter asks to resume (never run from
    /// inside the guest), and the timer bounding a pause. Here, not in the request's
    /// context: nginx writes them as it posts them, while the request driver holds the
    /// context `&mut`.
    resume_event: ngx_event_t,
    response_resume_event: ngx_event_t,
    pause_timer: ngx_event_t,
}

impl Exchange {
    /// An exchange with its request's events: resume the request, resume its response, end
    /// a pause that went on too long.
    pub fn new([resume_event, response_resume_event, pause_timer]: [ngx_event_t; 3]) -> Exchange {
        Exchange {
            request_body: Vec::new(),
            request_body_changed: false,
            response_body: Vec::new(),
            response_input: ptr::null_mut(),
            local_response: None,
            resume_requested: false,
            response_resume_requested: false,
            response_held: false,
            framing_edited: false,
            lost: false,
            request_gone: false,
            resume_event,
            response_resume_event,
            pause_timer,
        }
    }

    /// The whole response body of the current call, copying in the input chain's bytes the
    /// first time (`None` when a file buffer cannot be read).
    pub fn response_body(&mut self) -> Option<&Vec<u8>> {
        let input = std::mem::replace(&mut self.response_input, ptr::null_mut());
        // SAFETY: the input chain is the current body filter call's, valid while the filters run on it.
        unsafe { chain_bytes(input, &mut self.response_body)? };
        Some(&self.response_body)
    }

    /// Records the request and has the event loop resume it.
    fn request_resume(&mut self) {
        self.resume_requested = true;
        post(&mut self.resume_event);
    }

    /// Records the response and has the event loop resume it.
    fn response_resume(&mut self) {
        self.response_resume_requested = true;
        post(&mut self.response_resume_event);
    }

    /// Starts the clock on a pause.
    pub fn arm_pause_timer(&mut self, limit: Duration) {
        let msec = limit.as_millis().clamp(1, ngx_msec_t::MAX as u128) as ngx_msec_t;
        // SAFETY: the timer lives as long as the exchange, whose drop deletes it.
        unsafe { ngx_add_timer(&mut self.pause_timer, msec) };
    }

    /// Stops the clock on a pause.
    pub fn disarm_pause_timer(&mut self) {
        if self.pause_timer.timer_set() != 0 {
            // SAFETY: a timer of ours, set.
            unsafe { ngx_del_timer(&mut self.pause_timer) };
        }
    }
}

impl Drop for Exchange {
    /// Takes the request's events off nginx's queue of posted events and its timers, which
    /// would reach freed memory once the request's pool is gone.
    fn drop(&mut self) {
        for event in [&mut self.resume_event, &mut self.response_resume_event] {
            if event.posted() != 0 {
                // SAFETY: an event of ours, posted.
                unsafe { ngx_delete_posted_event(event) };
            }
        }
        self.disarm_pause_timer();
    }
}

fn post(event: &mut ngx_event_t) {
    if event.posted() == 0 {
        // SAFETY: the exchange's events live as long as it does; its drop takes them off the queue.
        unsafe { ngx_post_event(event, ptr::addr_of_mut!(ngx_posted_events)) };
    }
}

/// A request's exchange, in the request's pool: its context owns it (and drops it after
/// ending the streams, see `RequestCtx`), its streams refer to it. Not inside the context
/// itself, which the request driver holds `&mut` while filters run and write to the exchange.
#[derive(Clone, Copy)]
pub struct ExchangeRef(NonNull<RefCell<Exchange>>);

impl ExchangeRef {
    /// # Safety
    /// `exchange` must stay valid as long as any copy of the result is used.
    pub unsafe fn new(exchange: NonNull<RefCell<Exchange>>) -> ExchangeRef {
        ExchangeRef(exchange)
    }

    pub fn as_ptr(self) -> *mut RefCell<Exchange> {
        self.0.as_ptr()
    }
}

impl Deref for ExchangeRef {
    type Target = RefCell<Exchange>;
    fn deref(&self) -> &RefCell<Exchange> {
        // SAFETY: valid while used (see `new`).
        unsafe { self.0.as_ref() }
    }
}

fn nginx_level(level: LogLevel) -> ngx_uint_t {
    (match level {
        LogLevel::Trace | LogLevel::Debug => NGX_LOG_DEBUG,
        LogLevel::Info => NGX_LOG_INFO,
        LogLevel::Warn => NGX_LOG_WARN,
        LogLevel::Error => NGX_LOG_ERR,
        LogLevel::Critical => NGX_LOG_CRIT,
    }) as ngx_uint_t
}

/// The lowest proxy-wasm level the nginx log lets through.
fn level_of(log: *mut ngx_log_t) -> LogLevel {
    // SAFETY: a non-null log is live (see `ffi::log_error`).
    let level = if log.is_null() { 0 } else { unsafe { (*log).log_level } };
    match level as u32 {
        l if l >= NGX_LOG_DEBUG => LogLevel::Trace,
        l if l >= NGX_LOG_INFO => LogLevel::Info,
        l if l >= NGX_LOG_WARN => LogLevel::Warn,
        l if l >= NGX_LOG_ERR => LogLevel::Error,
        _ => LogLevel::Critical,
    }
}

fn log_line(log: *mut ngx_log_t, filter: &str, level: LogLevel, message: &str) {
    log_error(nginx_level(level), log, &format!("[wasm] filter \"{filter}\": {message}"));
}

/// A plugin's root context: logging, http calls, its tick timer, queues it registers, through
/// its link to the VM. In the configuration-time dry run (a link that is not live) calls,
/// ticks, queues and shared data do nothing (there is no event loop, and the live shared
/// memory must not be touched) but are noted: a filter that starts them runs from each
/// worker's start, the others start at their first request.
pub struct RootEmbedding {
    filter: String,
    vm_id: String,
    link: Rc<RootLink>,
}

impl RootEmbedding {
    pub fn new(filter: &str, vm_id: &str, link: &Rc<RootLink>) -> RootEmbedding {
        RootEmbedding { filter: filter.to_string(), vm_id: vm_id.to_string(), link: link.clone() }
    }
}

impl Logging for RootEmbedding {
    fn log(&mut self, level: LogLevel, message: &str) {
        log_line(self.link.log(), &self.filter, level, message);
    }
    fn log_level(&self) -> LogLevel {
        level_of(self.link.log())
    }
}

impl Clock for RootEmbedding {}
impl HeaderMaps for RootEmbedding {}
impl Buffers for RootEmbedding {}
impl Properties for RootEmbedding {}
impl StreamControl for RootEmbedding {}
impl HttpCalls for RootEmbedding {
    fn http_call(&mut self, token: u32, request: HttpCallRequest) -> HostResult<()> {
        // At configuration time the call is taken (and never answered).
        if self.link.in_dry_run(true) {
            return Ok(());
        }
        self.within_worker_limit()?;
        http_call::start(&self.link, token, request).map_err(|reason| {
            self.tenant().limit_hit("refused calls", || format!("http call refused: {reason}"));
            Status::BadArgument
        })
    }

    fn cancel_http_call(&mut self, token: u32) {
        http_call::cancel(&self.link, token);
    }
}

impl GrpcCalls for RootEmbedding {
    fn grpc_call(&mut self, token: u32, request: GrpcCallRequest) -> HostResult<()> {
        // At configuration time the call is taken (and never answered).
        if self.link.in_dry_run(true) {
            return Ok(());
        }
        self.within_worker_limit()?;
        http_call::grpc_start(&self.link, token, request).map_err(|(status, reason)| {
            self.tenant().limit_hit("refused calls", || format!("gRPC call refused: {reason}"));
            status
        })
    }

    fn grpc_send(&mut self, token: u32, message: &[u8], end_of_stream: bool) -> HostResult<()> {
        http_call::grpc_send(&self.link, token, message, end_of_stream)
    }

    fn grpc_close(&mut self, token: u32) -> HostResult<()> {
        http_call::grpc_send(&self.link, token, &[], true)
    }

    fn grpc_cancel(&mut self, token: u32) -> HostResult<()> {
        http_call::cancel(&self.link, token);
        Ok(())
    }
}

impl Timers for RootEmbedding {
    fn set_tick_period(&mut self, period: Duration) -> HostResult<()> {
        self.link.set_tick_period(period);
        Ok(())
    }
}
impl RootEmbedding {
    /// Refuses a call past the worker's limit (`INTERNAL_FAILURE`, and a warning).
    fn within_worker_limit(&self) -> HostResult<()> {
        if http_call::in_flight() < http_call::worker_limit() {
            return Ok(());
        }
        self.tenant().limit_hit("calls", || {
            let limit = http_call::worker_limit();
            format!("call refused: this worker has {limit} calls in flight (half its worker_connections)")
        });
        Err(Status::InternalFailure)
    }

    fn tenant(&self) -> Tenant<'_> {
        Tenant { filter: &self.filter, vm_id: &self.vm_id, log: self.link.log() }
    }
}

/// In the configuration-time dry run, nothing reaches the live zones (see `RootEmbedding`).
impl SharedData for RootEmbedding {
    fn get_shared_data(&mut self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        if self.link.in_dry_run(false) {
            return Ok(None);
        }
        self.tenant().get_shared_data(key)
    }

    fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        if self.link.in_dry_run(true) {
            return Ok(());
        }
        self.tenant().set_shared_data(key, value, cas)
    }
}

/// Queues a root registers are watched by this worker.
impl SharedQueues for RootEmbedding {
    fn register_shared_queue(&mut self, name: &[u8]) -> HostResult<u32> {
        if self.link.in_dry_run(true) {
            return Ok(0);
        }
        let id = self.tenant().register_shared_queue(name)?;
        shared_queues::watch(id, &self.link);
        Ok(id)
    }

    fn resolve_shared_queue(&mut self, vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
        if self.link.in_dry_run(false) {
            return Ok(None);
        }
        self.tenant().resolve_shared_queue(vm_id, name)
    }

    fn enqueue_shared_queue(&mut self, queue_id: u32, value: &[u8]) -> HostResult<()> {
        if self.link.in_dry_run(true) {
            return Ok(());
        }
        self.tenant().enqueue_shared_queue(queue_id, value)
    }

    fn dequeue_shared_queue(&mut self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        if self.link.in_dry_run(false) {
            return Err(Status::NotFound);
        }
        self.tenant().dequeue_shared_queue(queue_id)
    }
}

impl Metrics for RootEmbedding {
    fn define_metric(&mut self, kind: MetricType, name: &str) -> HostResult<u32> {
        if self.link.in_dry_run(false) {
            return Ok(0);
        }
        self.tenant().define_metric(kind, name)
    }

    fn increment_metric(&mut self, metric_id: u32, offset: i64) -> HostResult<()> {
        if self.link.in_dry_run(false) {
            return Ok(());
        }
        self.tenant().increment_metric(metric_id, offset)
    }

    fn record_metric(&mut self, metric_id: u32, value: u64) -> HostResult<()> {
        if self.link.in_dry_run(false) {
            return Ok(());
        }
        self.tenant().record_metric(metric_id, value)
    }

    fn get_metric(&mut self, metric_id: u32) -> HostResult<u64> {
        if self.link.in_dry_run(false) {
            return Ok(0);
        }
        self.tenant().get_metric(metric_id)
    }
}
impl ForeignFunctions for RootEmbedding {}
impl Embedding for RootEmbedding {}

/// A request's stream context.
pub struct StreamEmbedding {
    r: *mut ngx_http_request_t,
    /// The filter's index in the configuration (whose names it reads when needed, so a
    /// request copies none).
    filter: usize,
    exchange: ExchangeRef,
}

impl StreamEmbedding {
    pub fn new(r: *mut ngx_http_request_t, filter: usize, exchange: ExchangeRef) -> StreamEmbedding {
        StreamEmbedding { r, filter, exchange }
    }

    fn request_log(&self) -> *mut ngx_log_t {
        // SAFETY: a stream's request outlives the stream (it ends in the log phase, or is marked gone).
        unsafe { (*(*self.r).connection).log }
    }

    fn conf(&self) -> &WasmConf {
        // SAFETY: the worker's cycle, whose configuration the request's filters belong to.
        unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.expect("a request's filters belong to its cycle")
    }

    fn name(&self) -> &str {
        &self.conf().filters[self.filter].plugin.name
    }

    fn vm_id(&self) -> &str {
        let conf = self.conf();
        &conf.modules[conf.filters[self.filter].module].vm_config.vm_id
    }

    fn tenant(&self) -> Tenant<'_> {
        Tenant { filter: self.name(), vm_id: self.vm_id(), log: self.request_log() }
    }
}

impl Logging for StreamEmbedding {
    fn log(&mut self, level: LogLevel, message: &str) {
        log_line(self.request_log(), self.name(), level, message);
    }
    fn log_level(&self) -> LogLevel {
        level_of(self.request_log())
    }
}

impl Clock for StreamEmbedding {}

/// The nginx header list behind a request/response map (trailers have none).
fn side(map: MapType) -> Option<Side> {
    match map {
        MapType::HttpRequestHeaders => Some(Side::Request),
        MapType::HttpResponseHeaders => Some(Side::Response),
        _ => None,
    }
}

impl StreamEmbedding {
    /// The request, while it lives (its pool is not being destroyed).
    fn request(&self) -> HostResult<*mut ngx_http_request_t> {
        if self.exchange.borrow().request_gone {
            return Err(Status::NotFound);
        }
        Ok(self.r)
    }

    /// The request, for a write to the header map of `side` named `key`, noting an edit of
    /// the request's framing (see `framing`).
    fn request_for_write(&self, side: Side, key: Option<&[u8]>) -> HostResult<*mut ngx_http_request_t> {
        let r = self.request()?;
        if side == Side::Request && key.is_none_or(framing::is_framing) {
            self.exchange.borrow_mut().framing_edited = true;
        }
        Ok(r)
    }
}

impl HeaderMaps for StreamEmbedding {
    fn header_map(&mut self, map: MapType) -> HostResult<Pairs> {
        let r = self.request()?;
        Ok(match side(map) {
            // SAFETY: `request()` gives the request only while it lives.
            Some(Side::Request) => unsafe { headers::request_headers(r) },
            // SAFETY: as above.
            Some(Side::Response) => unsafe { headers::response_headers(r) },
            // nginx hands trailers to no filter yet.
            None => Pairs::new(),
        })
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> HostResult<()> {
        let side = side(map).ok_or(Status::BadArgument)?;
        let r = self.request_for_write(side, None)?;
        match side {
            // SAFETY: `request_for_write()` gives the request only while it lives.
            Side::Request => unsafe { headers::set_request_headers(r, &pairs) },
            // SAFETY: as above.
            Side::Response => unsafe { headers::set_response_headers(r, &pairs) },
        }
    }

    fn header_map_size(&mut self, map: MapType) -> HostResult<usize> {
        let r = self.request()?;
        // SAFETY: `request()` gives the request only while it lives.
        Ok(side(map).map_or(0, |side| unsafe { headers::count(r, side) }))
    }

    fn header_value(&mut self, map: MapType, key: &[u8], value: &mut Vec<u8>) -> HostResult<bool> {
        let r = self.request()?;
        // SAFETY: as above.
        Ok(side(map).is_some_and(|side| unsafe { headers::append_value(r, side, key, value) }))
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let side = side(map).ok_or(Status::BadArgument)?;
        let r = self.request_for_write(side, Some(key))?;
        // SAFETY: `request_for_write()` gives the request only while it lives.
        unsafe { headers::add(r, side, key, value) }
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let side = side(map).ok_or(Status::BadArgument)?;
        let r = self.request_for_write(side, Some(key))?;
        // SAFETY: as above.
        unsafe { headers::replace(r, side, key, value) }
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> HostResult<()> {
        let side = side(map).ok_or(Status::BadArgument)?;
        let r = self.request_for_write(side, Some(key))?;
        // SAFETY: as above.
        unsafe { headers::remove(r, side, key) }
    }
}

impl Buffers for StreamEmbedding {
    fn buffer(&mut self, buffer: BufferType) -> HostResult<Vec<u8>> {
        let mut exchange = self.exchange.borrow_mut();
        match buffer {
            BufferType::HttpRequestBody => Ok(exchange.request_body.clone()),
            BufferType::HttpResponseBody => exchange.response_body().cloned().ok_or(Status::InternalFailure),
            _ => Ok(Vec::new()),
        }
    }

    fn set_buffer(&mut self, buffer: BufferType, bytes: Vec<u8>) -> HostResult<()> {
        let mut exchange = self.exchange.borrow_mut();
        match buffer {
            BufferType::HttpRequestBody => {
                exchange.request_body = bytes;
                exchange.request_body_changed = true;
            }
            BufferType::HttpResponseBody => {
                exchange.response_input = ptr::null_mut();
                exchange.response_body = bytes;
            }
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }
}

impl Properties for StreamEmbedding {
    fn property(&mut self, path: &[&[u8]]) -> HostResult<Option<Vec<u8>>> {
        let r = self.request()?;
        // SAFETY: `request()` gives the request only while it lives.
        Ok(unsafe { properties::get(r, path) })
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> HostResult<()> {
        let r = self.request()?;
        // SAFETY: as above.
        unsafe { properties::set(r, path, value) }.map_err(|()| Status::NotFound)
    }
}

impl StreamControl for StreamEmbedding {
    fn send_local_response(&mut self, response: LocalResponse) -> HostResult<()> {
        let mut exchange = self.exchange.borrow_mut();
        if exchange.local_response.is_some() {
            return Err(Status::BadArgument);
        }
        exchange.local_response = Some(response);
        // A request suspended by a pause (or a response held) is answered from the event loop.
        if exchange.response_held {
            exchange.response_resume();
        } else {
            exchange.request_resume();
        }
        Ok(())
    }

    fn continue_stream(&mut self, stream: StreamType) -> HostResult<()> {
        match stream {
            StreamType::Request => self.exchange.borrow_mut().request_resume(),
            StreamType::Response => self.exchange.borrow_mut().response_resume(),
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }

    /// Wakes whichever side of the request waits, to fail it (see `request::check_lost`).
    fn instance_lost(&mut self) {
        let mut exchange = self.exchange.borrow_mut();
        if exchange.request_gone {
            return;
        }
        exchange.lost = true;
        if exchange.response_held {
            post(&mut exchange.response_resume_event);
        } else {
            post(&mut exchange.resume_event);
        }
    }
}

impl HttpCalls for StreamEmbedding {}
impl GrpcCalls for StreamEmbedding {}
impl Timers for StreamEmbedding {}
impl SharedData for StreamEmbedding {
    fn get_shared_data(&mut self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        self.tenant().get_shared_data(key)
    }

    fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        self.tenant().set_shared_data(key, value, cas)
    }
}

impl SharedQueues for StreamEmbedding {
    fn resolve_shared_queue(&mut self, vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
        self.tenant().resolve_shared_queue(vm_id, name)
    }

    fn enqueue_shared_queue(&mut self, queue_id: u32, value: &[u8]) -> HostResult<()> {
        self.tenant().enqueue_shared_queue(queue_id, value)
    }

    fn dequeue_shared_queue(&mut self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        self.tenant().dequeue_shared_queue(queue_id)
    }
}

impl Metrics for StreamEmbedding {
    fn define_metric(&mut self, kind: MetricType, name: &str) -> HostResult<u32> {
        self.tenant().define_metric(kind, name)
    }

    fn increment_metric(&mut self, metric_id: u32, offset: i64) -> HostResult<()> {
        self.tenant().increment_metric(metric_id, offset)
    }

    fn record_metric(&mut self, metric_id: u32, value: u64) -> HostResult<()> {
        self.tenant().record_metric(metric_id, value)
    }

    fn get_metric(&mut self, metric_id: u32) -> HostResult<u64> {
        self.tenant().get_metric(metric_id)
    }
}
impl ForeignFunctions for StreamEmbedding {}
impl Embedding for StreamEmbedding {}
