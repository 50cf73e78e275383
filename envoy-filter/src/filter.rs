//! One `proxy_wasm` filter on one Envoy stream: creates the stream context on the filter's
//! instance and runs its callbacks from Envoy's hooks.
//!
//! Envoy may call a hook of this filter while another of its hooks is still running (a local
//! response runs the response hooks at once; a stream can complete inside a hook), so the
//! filter is only ever used through `&self`, and no borrow of the instance is held while
//! Envoy runs the chain.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use inwasm_host::{Action, FilterError, HttpCallResponse, LocalResponse, Pairs, StreamId, Vm, FILTER_FAILED_STATUS};

use crate::abi::{self, callout_result, status, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr};
use crate::body::{self, Direction};
use crate::carrier::Carrier;
use crate::config::Isolation;
use crate::embedding::StreamEmbedding;
use crate::filter_config::FilterConfig;
use crate::grpc_calls::{self, Delivery};
use crate::instances::{self, Instance};
use crate::report;
use crate::stream::{self, SharedStream, StreamState};

/// The outcome of a call, to run on its root context's VM.
type RootDelivery = Box<dyn FnOnce(&mut Vm) -> Result<(), FilterError>>;

pub struct HttpFilter {
    config: Arc<FilterConfig>,
    state: SharedStream,
    instance: RefCell<Option<Rc<Instance>>>,
    stream: Cell<Option<StreamId>>,
    /// Failed (or could not start): no more callbacks for this stream.
    out: Cell<bool>,
    finished: Cell<bool>,
    /// Paused: its scheduler wakes the instance's root context while it waits.
    waiting: Cell<bool>,
}

impl HttpFilter {
    pub fn new(config: &Arc<FilterConfig>, envoy: FilterEnvoyPtr) -> HttpFilter {
        HttpFilter {
            config: config.clone(),
            state: StreamState::new(envoy),
            instance: RefCell::new(None),
            stream: Cell::new(None),
            out: Cell::new(false),
            finished: Cell::new(false),
            waiting: Cell::new(false),
        }
    }

    /// Starts the stream context (its instance first: this worker's, or a fresh one), after
    /// running what the worker's root context has pending. Returns the hook's status.
    pub fn on_request_headers(&self, end_of_stream: bool) -> u32 {
        let _entered = stream::enter(&self.state);
        let started = match self.config.settings.isolation {
            Isolation::None => instances::shared(&self.config).inspect(|instance| instance.deliver_pending()),
            Isolation::Stream => Instance::for_request(&self.config).map(Rc::new),
        }
        .and_then(|instance| {
            let embedding = Box::new(StreamEmbedding::new(&self.config, &self.state));
            let stream = instance.vm.borrow_mut().new_stream(instance.plugin, embedding, instance.stream_limits())?;
            Ok((instance, stream))
        });
        stream::run_deferred();
        match started {
            Ok((instance, stream)) => {
                report::request(&self.config);
                *self.instance.borrow_mut() = Some(instance);
                self.stream.set(Some(stream));
            }
            Err(error) => return self.fail(&error),
        }
        self.run(Direction::Request, status::STOP_ALL_ITERATION, |vm, s| vm.on_request_headers(s, end_of_stream))
    }

    pub fn on_request_body(&self, end_of_stream: bool) -> u32 {
        self.body_event(Direction::Request, |vm, s, size| vm.on_request_body(s, size, end_of_stream))
    }

    pub fn on_request_trailers(&self) -> u32 {
        self.run(Direction::Request, status::STOP_ITERATION, |vm, s| vm.on_request_trailers(s))
    }

    pub fn on_response_headers(&self, end_of_stream: bool) -> u32 {
        self.state.borrow_mut().response_seen = true;
        let status =
            self.run(Direction::Response, status::STOP_ALL_ITERATION, |vm, s| vm.on_response_headers(s, end_of_stream));
        if status == status::CONTINUE {
            self.state.borrow_mut().response_started = true;
        }
        status
    }

    pub fn on_response_body(&self, end_of_stream: bool) -> u32 {
        self.body_event(Direction::Response, |vm, s, size| vm.on_response_body(s, size, end_of_stream))
    }

    pub fn on_response_trailers(&self) -> u32 {
        self.run(Direction::Response, status::STOP_ITERATION, |vm, s| vm.on_response_trailers(s))
    }

    /// Envoy completed the stream: `on_done`, `on_log`, `on_delete`.
    pub fn on_stream_complete(&self) {
        let _entered = stream::enter(&self.state);
        self.finish();
        self.state.borrow_mut().completed = true;
        self.release_own_instance();
    }

    /// An http call this stream carried for a root context has its answer.
    ///
    /// # Safety
    /// The header and chunk arrays must be valid for the counts given (or null).
    pub unsafe fn on_callout_done(
        &self,
        callout_id: u64,
        result: u32,
        headers: *const EnvoyHeader,
        headers_size: usize,
        chunks: *const EnvoyBuffer,
        chunks_size: usize,
    ) {
        let Some(callout) = self.state.borrow_mut().callouts.remove(&callout_id) else { return };
        let Some(vm) = callout.vm.upgrade() else { return };
        // SAFETY: the arrays are valid for their counts (per the caller).
        let response = unsafe { callout_response(result, headers, headers_size, chunks, chunks_size) };
        self.deliver_to_root(vm, Box::new(move |vm| vm.on_http_call_response(callout.plugin, callout.token, response)));
    }

    /// Events of a gRPC call this stream carries.
    pub fn on_grpc(&self, delivery: Delivery) {
        let Some(vm) = delivery.caller.vm.upgrade() else { return };
        self.deliver_to_root(vm, Box::new(move |vm| delivery.deliver(vm)));
    }

    /// Runs `deliver` (the outcome of a call this stream carried) on `vm`, and then what it
    /// asked for; if the guest is running (Envoy answered inside its own call), once it has
    /// returned. A failure fails this stream.
    fn deliver_to_root(&self, vm: Rc<RefCell<Vm>>, deliver: RootDelivery) {
        let _entered = stream::enter(&self.state);
        let Ok(mut borrowed) = vm.try_borrow_mut() else {
            let config = self.config.clone();
            stream::defer(
                &self.state,
                stream::Action::Call(Box::new(move || {
                    if let Err(error) = deliver(&mut vm.borrow_mut()) {
                        report::failure(&config, &error, "in a root context");
                    }
                })),
            );
            return;
        };
        let delivered = deliver(&mut borrowed);
        drop(borrowed);
        match delivered {
            Ok(()) => {
                self.pass_local_response(&vm);
                stream::run_deferred();
            }
            Err(error) => {
                let paused = self.state.borrow().paused;
                let status = self.fail(&error);
                // Fail-open: a stream the filter was holding goes on without it.
                if status == status::CONTINUE {
                    for direction in [Direction::Request, Direction::Response].into_iter().filter(|d| paused[d.index()])
                    {
                        stream::defer(&self.state, continue_action(direction));
                    }
                    stream::run_deferred();
                }
            }
        }
    }

    /// The calls root contexts made through this stream end with it (Envoy cancels them):
    /// each root is told its call failed.
    fn end_carried_calls(&self) {
        let envoy = self.state.borrow().envoy;
        let callouts = std::mem::take(&mut self.state.borrow_mut().callouts);
        let ended = "the request that carried the call ended";
        for callout in callouts.into_values() {
            let Some(vm) = callout.vm.upgrade() else { continue };
            let Ok(mut vm) = vm.try_borrow_mut() else { continue };
            if let Err(error) = vm.on_http_call_response(callout.plugin, callout.token, Err(ended.into())) {
                report::failure(&self.config, &error, "in a root context");
            }
        }
        for delivery in grpc_calls::carrier_ended(Carrier::Filter(envoy)) {
            let Some(vm) = delivery.caller.vm.upgrade() else { continue };
            let Ok(mut vm) = vm.try_borrow_mut() else { continue };
            if let Err(error) = delivery.deliver(&mut vm) {
                report::failure(&self.config, &error, "in a root context");
            }
        }
    }

    /// The stream waits on its filter (a root context may resume it from a tick, a queue
    /// item or a call's answer): the root is woken through this stream's scheduler.
    fn wait(&self, instance: &Instance) {
        if self.waiting.replace(true) {
            return;
        }
        let envoy = self.state.borrow().envoy;
        // SAFETY: `envoy` is this live stream; the scheduler goes to the mailbox, which deletes it.
        let scheduler = unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(envoy) };
        if !scheduler.is_null() {
            instance.mailbox.wait_with(self.key(), scheduler);
        }
    }

    fn key(&self) -> usize {
        self as *const HttpFilter as usize
    }

    /// Envoy runs an event committed to this stream's scheduler: the root context's pending
    /// events (which may resume this stream or others).
    pub fn on_scheduled(&self) {
        let Some(instance) = self.instance.borrow().clone() else { return };
        let _entered = stream::enter(&self.state);
        instance.deliver_pending();
        stream::run_deferred();
    }

    /// Runs a body callback with the size of the body so far; a pause makes Envoy buffer.
    fn body_event(
        &self,
        direction: Direction,
        call: impl FnOnce(&mut Vm, StreamId, usize) -> Result<Action, FilterError>,
    ) -> u32 {
        let envoy = {
            let mut state = self.state.borrow_mut();
            state.body_event = Some(direction);
            state.envoy
        };
        // SAFETY: `envoy` is this stream's filter, live while its hooks run (this is its body hook).
        let size = unsafe { body::size(envoy, direction, true) };
        let status = self.run(direction, status::STOP_ITERATION, |vm, s| call(vm, s, size));
        let mut state = self.state.borrow_mut();
        state.body_event = None;
        state.buffering[direction.index()] = status != status::CONTINUE;
        status
    }

    /// Runs one callback and then what it asked for; returns the hook's status: `stop` when
    /// the filter paused. A pause in the headers stops everything, the body included, until
    /// the filter continues, as in Envoy's Wasm filter (which turns a headers pause into
    /// StopAllIterationAndWatermark); a pause in a body callback buffers.
    fn run(
        &self,
        direction: Direction,
        stop: u32,
        call: impl FnOnce(&mut Vm, StreamId) -> Result<Action, FilterError>,
    ) -> u32 {
        let (Some(instance), Some(stream_id)) = (self.instance.borrow().clone(), self.stream.get()) else {
            return status::CONTINUE;
        };
        if self.out.get() {
            return status::CONTINUE;
        }
        let _entered = stream::enter(&self.state);
        let result = call(&mut instance.vm.borrow_mut(), stream_id);
        let status = match result {
            Ok(Action::Pause) if !stream::take_continue(&self.state, direction) => {
                self.state.borrow_mut().paused[direction.index()] = true;
                self.wait(&instance);
                stop
            }
            Ok(_) => status::CONTINUE,
            Err(error) => return self.fail(&error),
        };
        self.pass_local_response(&instance.vm);
        stream::run_deferred();
        status
    }

    /// A local response the filter sent before its response callbacks ran goes through them
    /// before Envoy sends it, as in Envoy's Wasm filter (Envoy itself skips the hooks of the
    /// filter that answered). One sent from the response callbacks goes as it is.
    fn pass_local_response(&self, vm: &RefCell<Vm>) {
        let Some(stream_id) = self.stream.get() else { return };
        if self.state.borrow().response_seen {
            return;
        }
        let Some(mut response) = stream::take_local_response(&self.state) else { return };
        let mut headers = Pairs::new();
        headers.push_number(b":status", response.status.into());
        headers.extend(&response.headers);
        self.state.borrow_mut().local_response = Some((headers, std::mem::take(&mut response.body)));
        let end_of_stream = self.state.borrow().local_response.as_ref().is_some_and(|(_, body)| body.is_empty());
        let mut passed = vm.borrow_mut().on_response_headers(stream_id, end_of_stream).map(drop);
        if !end_of_stream && passed.is_ok() {
            let size = self.state.borrow().local_response.as_ref().map_or(0, |(_, body)| body.len());
            passed = vm.borrow_mut().on_response_body(stream_id, size, true).map(drop);
        }
        let (headers, body) = self.state.borrow_mut().local_response.take().unwrap_or_default();
        if let Err(error) = passed {
            self.fail(&error);
            return;
        }
        self.state.borrow_mut().response_started = true;
        // A second answer from those callbacks replaces the first.
        let response = stream::take_local_response(&self.state).unwrap_or_else(|| {
            let status = headers.exact_value(b":status");
            let status = status.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(response.status);
            LocalResponse { status, headers, body, ..response }
        });
        stream::defer(&self.state, stream::Action::Respond(response));
    }

    /// Reports a failure and answers 503 (or, once the response has begun, resets the
    /// stream); with fail-open the filter is skipped instead. Returns the hook's status.
    fn fail(&self, error: &FilterError) -> u32 {
        self.out.set(true);
        let fail_open = self.config.settings.fail_open;
        report::failure(&self.config, error, if fail_open { "skipped (fail-open)" } else { "request failed" });
        if fail_open {
            return status::CONTINUE;
        }
        let action = if self.state.borrow().response_started {
            stream::Action::Reset
        } else {
            stream::Action::Respond(LocalResponse {
                status: FILTER_FAILED_STATUS,
                details: b"inwasm_filter_failed".to_vec(),
                ..LocalResponse::default()
            })
        };
        stream::defer(&self.state, action);
        stream::run_deferred();
        status::STOP_ITERATION
    }

    /// Gives back this stream's own instance (isolation `stream`) as soon as the stream is
    /// done with it. Envoy destroys completed streams' filters later, in batches: given back
    /// at completion, one instance serves the streams of a batch in turn, where holding it
    /// until the filter's destruction took one instance per stream of the batch.
    fn release_own_instance(&self) {
        if self.config.settings.isolation != Isolation::Stream {
            return;
        }
        if let Some(instance) = self.instance.take() {
            instance.recycle();
        }
    }

    fn finish(&self) {
        if self.finished.replace(true) {
            return;
        }
        let (Some(instance), Some(stream_id)) = (self.instance.borrow().clone(), self.stream.get()) else { return };
        if self.waiting.get() {
            instance.mailbox.stop_waiting(self.key());
        }
        let Ok(mut vm) = instance.vm.try_borrow_mut() else { return };
        if let Err(error) = vm.finish_stream(stream_id) {
            drop(vm);
            report::failure(&self.config, &error, "at the end of the stream");
        }
    }
}

impl Drop for HttpFilter {
    /// Envoy destroys the filter: nothing the guest queues for its stream from now on may
    /// run (the Envoy filter behind it is going away).
    fn drop(&mut self) {
        self.state.borrow_mut().completed = true;
        self.finish();
        self.end_carried_calls();
        self.release_own_instance();
    }
}

fn continue_action(direction: Direction) -> stream::Action {
    match direction {
        Direction::Request => stream::Action::ContinueRequest,
        Direction::Response => stream::Action::ContinueResponse,
    }
}

/// An http call's answer as the host takes it: the response, or why there is none.
///
/// # Safety
/// The header and chunk arrays must be valid for the counts given (or null), as Envoy hands
/// them to its callout hooks.
pub unsafe fn callout_response(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> Result<HttpCallResponse, String> {
    match result {
        callout_result::SUCCESS => {}
        callout_result::EXCEED_RESPONSE_BUFFER_LIMIT => return Err("response exceeded the buffer limit".into()),
        _ => return Err("reset".into()),
    }
    // SAFETY: the arrays are valid for their counts (per the caller); both are copied here.
    unsafe {
        Ok(HttpCallResponse {
            headers: abi::envoy_pairs(headers, headers_size),
            body: abi::envoy_bytes(chunks, chunks_size),
            trailers: Pairs::new(),
        })
    }
}

/// The status a hook answers when this module itself failed (a panic caught at the FFI
/// boundary): stop, and answer 500 if nothing was sent yet.
///
/// # Safety
/// `envoy` must be the stream whose hook runs now.
pub unsafe fn internal_error(envoy: FilterEnvoyPtr) -> u32 {
    // SAFETY: `envoy` is the stream whose hook runs (per the caller); no headers are passed,
    // and the static buffers outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            envoy,
            500,
            std::ptr::null_mut(),
            0,
            abi::ModuleBuffer::of(b""),
            abi::ModuleBuffer::of(b"inwasm_internal_error"),
        )
    };
    status::STOP_ITERATION
}
