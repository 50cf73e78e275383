//! A VM: one live instance of a module with its plugins (root contexts) and streams, driven
//! through the proxy-wasm lifecycle.
//!
//! A trap, an exceeded deadline or an exhausted memory poisons only this VM's instance: the
//! failing call returns a [`FilterError`], streams of that instance are lost, and the next use
//! builds a fresh instance and re-creates every plugin's root context (`on_vm_start`,
//! `on_configure`) with the same embeddings.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Func, PoolConcurrencyLimitError, Store};

use crate::callbacks::{Callback, Callbacks};
use crate::embedding::{Embedding, HttpCallResponse};
use crate::error::{classify, describe, FailureCounter, FailureKind, FilterError};
use crate::limits::{on_epoch_tick, Deadline, MemoryLimiter};
use crate::module::Module;
use crate::plugin::{PluginConfig, StreamLimits, VmConfig};
use crate::grpc_client::GrpcEvent;
use crate::session::{CallData, CallKind, Context, HostState, Properties};
use crate::snapshot::{NotResettable, Snapshot};
use crate::ticker::Activity;
use crate::types::{Action, MapType, Status};
use crate::Pairs;
use crate::wasi::flush_output;

/// A plugin (root context) on a [`Vm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PluginId(usize);

/// A stream (request) context on a [`Vm`]. Only valid on the instance that created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    generation: u64,
    context_id: u32,
    plugin: usize,
}

/// Failures this VM has seen, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    pub instances_created: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub memory_failures: u64,
}

struct Plugin {
    config: Arc<PluginConfig>,
    /// Its root context id on the live instance.
    root_id: u32,
    /// Held here while no instance is live (between a failure and the rebuild).
    parked: Option<Box<dyn Embedding>>,
    /// Taken off the VM (`remove_plugin`): its slot stays, so other ids keep their meaning.
    removed: bool,
}

struct Live {
    store: Store<HostState>,
    instance: wasmtime::Instance,
    callbacks: Callbacks,
}

/// What a VM returns to for each request it serves after the first (see
/// [`Vm::keep_reset_point`]).
struct ResetPoint {
    snapshot: Snapshot,
    /// The VM's counter then: a reset VM numbers its streams as a fresh one would.
    next_context_id: u32,
    /// The plugins' root contexts, with the properties they had set then.
    roots: Vec<(u32, Properties)>,
}

pub struct Vm {
    module: Arc<Module>,
    config: Arc<VmConfig>,
    live: Option<Live>,
    plugins: Vec<Plugin>,
    /// Bumped each time the instance is discarded; streams of older generations are lost.
    generation: u64,
    /// Context ids and call tokens are never reused within a VM, across instances too.
    next_context_id: u32,
    next_token: [u32; 3],
    stats: VmStats,
    /// Running start-up steps (instantiation, root contexts): `start_timeout` applies.
    starting: bool,
    /// What callbacks mark for the epoch ticker, when the engine enforces deadlines (kept
    /// here, as each call needs it).
    activity: Option<Arc<Activity>>,
    reset_point: Option<ResetPoint>,
}

impl Vm {
    /// Instantiates `module` (running `_initialize`/`_start`). Add plugins next.
    pub fn new(module: Arc<Module>, config: VmConfig) -> Result<Vm, FilterError> {
        let activity = module.engine.config().deadlines.then(|| module.engine.activity().clone());
        let mut vm = Vm {
            module,
            config: Arc::new(config),
            live: None,
            plugins: Vec::new(),
            generation: 0,
            next_context_id: 1,
            next_token: [0; 3],
            stats: VmStats::default(),
            starting: false,
            activity,
            reset_point: None,
        };
        vm.ensure_live()?;
        Ok(vm)
    }

    pub fn stats(&self) -> VmStats {
        self.stats
    }

    /// Whether an instance is live (none after a failure, until the next use or [`revive`]).
    ///
    /// [`revive`]: Vm::revive
    pub fn has_instance(&self) -> bool {
        self.live.is_some()
    }

    /// Builds the instance again after a failure (start-up and every plugin's root context),
    /// so that the next use does not wait for it.
    pub fn revive(&mut self) -> Result<(), FilterError> {
        self.ensure_live()
    }

    /// Remembers the VM's state now, after its start-up and its plugins' configuration, so
    /// that [`reset`](Vm::reset) can return to it: a VM that served a request can then serve
    /// another as if it were fresh, without the cost of a fresh instance.
    pub fn keep_reset_point(&mut self) -> Result<(), NotResettable> {
        if self.has_work_in_flight() {
            return Err(NotResettable::Changed);
        }
        let live = self.live.as_mut().ok_or(NotResettable::Changed)?;
        let snapshot = Snapshot::take(&live.instance, &mut live.store, &self.module.last_image)?;
        let contexts = &live.store.data().contexts;
        let roots = contexts.iter().map(|(id, context)| (*id, context.properties.clone())).collect();
        self.reset_point = Some(ResetPoint { snapshot, next_context_id: self.next_context_id, roots });
        Ok(())
    }

    /// Returns the VM to its reset point, for another request: its memory and globals as they
    /// were then, its streams' numbering too. The streams it had are gone (their ids no
    /// longer valid). Refused, with the VM left as it is (to be dropped), when it has no
    /// reset point, it failed since, a stream or call is still in flight, its plugins
    /// changed, or its memory grew.
    pub fn reset(&mut self) -> Result<(), NotResettable> {
        let plugins = self.plugins.iter().filter(|p| !p.removed).count();
        let (Some(point), Some(live)) = (self.reset_point.as_mut(), self.live.as_mut()) else {
            return Err(NotResettable::Changed);
        };
        let state = live.store.data();
        if !state.pending_calls.is_empty() || state.contexts.len() != plugins || point.roots.len() != plugins {
            return Err(NotResettable::Changed);
        }
        point.snapshot.restore(&mut live.store)?;
        let state = live.store.data_mut();
        for (id, properties) in &point.roots {
            let context = state.contexts.get_mut(id).ok_or(NotResettable::Changed)?;
            if context.properties != *properties {
                context.properties.clone_from(properties);
            }
        }
        state.status.code = Status::Ok as u32;
        state.status.message.clear();
        state.startup_log.clear();
        self.next_context_id = point.next_context_id;
        self.generation += 1;
        Ok(())
    }

    /// Whether a stream is open on the instance or a call it made awaits its answer: until
    /// neither is true, dropping the VM would lose work in progress.
    pub fn has_work_in_flight(&self) -> bool {
        self.live.as_ref().is_some_and(|live| {
            let state = live.store.data();
            !state.pending_calls.is_empty() || state.contexts.len() > self.plugins.iter().filter(|p| !p.removed).count()
        })
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The VM id plugins on this VM see as `plugin_vm_id` (and share data under).
    pub fn module_vm_id(&self) -> &str {
        &self.config.vm_id
    }

    /// Creates a root context for `config` and runs `on_vm_start` and `on_configure`.
    /// `embedding` serves this root context (http calls, timers, queues, ...).
    pub fn add_plugin(&mut self, config: PluginConfig, embedding: Box<dyn Embedding>) -> Result<PluginId, FilterError> {
        self.ensure_live()?;
        let index = self.plugins.len();
        self.plugins.push(Plugin { config: Arc::new(config), root_id: 0, parked: Some(embedding), removed: false });
        self.starting = true;
        let started = self.start_plugin(index);
        self.starting = false;
        if let Err(error) = started {
            self.plugins.pop();
            return Err(error);
        }
        Ok(PluginId(index))
    }

    /// Takes a plugin off the VM (its configuration is gone): its root context gets `on_done`
    /// and `on_delete` and is dropped with its embedding; the other plugins go on. No stream of
    /// the plugin may be left. A failure of those last callbacks is returned, the plugin
    /// removed all the same.
    pub fn remove_plugin(&mut self, plugin: PluginId) -> Result<(), FilterError> {
        let Some(entry) = self.plugins.get_mut(plugin.0).filter(|p| !p.removed) else { return Ok(()) };
        entry.removed = true;
        entry.parked = None;
        let root_id = std::mem::take(&mut entry.root_id);
        if !self.live.as_ref().is_some_and(|live| live.store.data().contexts.contains_key(&root_id)) {
            return Ok(());
        }
        let timeout = self.config.background_timeout;
        let result = [Callback::Done, Callback::Delete]
            .into_iter()
            .try_for_each(|callback| self.call_within(plugin.0, callback, root_id, &[root_id], timeout).map(drop));
        if let Some(live) = &mut self.live {
            let state = live.store.data_mut();
            state.contexts.remove(&root_id);
            state.plugins.remove(&root_id);
        }
        result
    }

    /// Creates a stream context under `plugin` (rebuilding the instance if it failed), with
    /// the stream's own `limits` (e.g. its location's).
    pub fn new_stream(
        &mut self,
        plugin: PluginId,
        embedding: Box<dyn Embedding>,
        limits: StreamLimits,
    ) -> Result<StreamId, FilterError> {
        self.ensure_live()?;
        if self.plugins[plugin.0].removed {
            let gone = FailureKind::Instantiation("the filter was removed from its VM".into());
            return Err(self.failure(plugin.0, Callback::ContextCreate, gone));
        }
        let root_id = self.plugins[plugin.0].root_id;
        let id = self.new_context_id();
        let StreamLimits { timeout, request_budget } = limits;
        let context = Context { timeout, request_budget, budget_left: request_budget, ..Context::new(root_id, embedding) };
        self.state().contexts.insert(id, context);
        let budget = self.budget(plugin.0, timeout);
        self.call_within(plugin.0, Callback::ContextCreate, id, &[id, root_id], budget)?;
        Ok(StreamId { generation: self.generation, context_id: id, plugin: plugin.0 })
    }

    pub fn on_request_headers(&mut self, stream: StreamId, end_of_stream: bool) -> Result<Action, FilterError> {
        self.headers_callback(stream, Callback::RequestHeaders, MapType::HttpRequestHeaders, end_of_stream)
    }

    pub fn on_request_body(
        &mut self,
        stream: StreamId,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Action, FilterError> {
        self.stream_action(stream, Callback::RequestBody, |_| [body_size as u32, end_of_stream as u32])
    }

    pub fn on_request_trailers(&mut self, stream: StreamId) -> Result<Action, FilterError> {
        self.headers_callback(stream, Callback::RequestTrailers, MapType::HttpRequestTrailers, true)
    }

    pub fn on_response_headers(&mut self, stream: StreamId, end_of_stream: bool) -> Result<Action, FilterError> {
        self.headers_callback(stream, Callback::ResponseHeaders, MapType::HttpResponseHeaders, end_of_stream)
    }

    pub fn on_response_body(
        &mut self,
        stream: StreamId,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Action, FilterError> {
        self.stream_action(stream, Callback::ResponseBody, |_| [body_size as u32, end_of_stream as u32])
    }

    pub fn on_response_trailers(&mut self, stream: StreamId) -> Result<Action, FilterError> {
        self.headers_callback(stream, Callback::ResponseTrailers, MapType::HttpResponseTrailers, true)
    }

    /// Ends a stream as Envoy 1.40 does: `on_log`, `on_done`, `on_delete`, then drops its
    /// context and cancels the calls it made.
    /// A stream whose instance is gone has nothing left to run.
    pub fn finish_stream(&mut self, stream: StreamId) -> Result<(), FilterError> {
        if !self.is_current(stream) {
            return Ok(());
        }
        let id = stream.context_id;
        let own = self.stream_context(stream).and_then(|context| context.timeout);
        let timeout = self.budget(stream.plugin, own);
        let result = [Callback::Log, Callback::Done, Callback::Delete]
            .into_iter()
            .try_for_each(|callback| self.call_within(stream.plugin, callback, id, &[id], timeout).map(drop));
        if let Some(live) = &mut self.live {
            let state = live.store.data_mut();
            state.contexts.remove(&id);
            // Calls the stream made are cancelled with it: their answers will not be delivered,
            // and the proxy stops them. (Retaining scans the map's whole capacity, so an empty
            // map is left alone.)
            if !state.pending_calls.is_empty() {
                let mut cancelled = Vec::new();
                state.pending_calls.retain(|token, context| {
                    let theirs = *context == id;
                    if theirs {
                        cancelled.push(*token);
                    }
                    !theirs
                });
                let root = self.plugins[stream.plugin].root_id;
                if let Some(root) = state.contexts.get_mut(&root) {
                    for token in cancelled {
                        match HostState::call_kind(token) {
                            Some(CallKind::Http) => root.embedding.cancel_http_call(token),
                            _ => root.embedding.cancel_grpc_call(token),
                        }
                    }
                }
            }
        }
        result
    }

    /// Runs the plugin's `on_tick`.
    pub fn on_tick(&mut self, plugin: PluginId) -> Result<(), FilterError> {
        self.root_call(plugin, Callback::Tick, &[], CallData::default()).map(drop)
    }

    /// Delivers the outcome of an http call. A failed call (`Err` with the reason, e.g.
    /// "timeout") reaches the filter with no headers, body or trailers, and `get_status`
    /// reports `BrokenConnection` with the reason. Calls issued by an instance that has since
    /// been replaced are dropped.
    pub fn on_http_call_response(
        &mut self,
        plugin: PluginId,
        token: u32,
        response: Result<HttpCallResponse, String>,
    ) -> Result<(), FilterError> {
        let Some(caller) = self.take_pending_call(token) else { return Ok(()) };
        let (response, status) = match response {
            Ok(response) => (response, (Status::Ok, Vec::new())),
            Err(reason) => (HttpCallResponse::default(), (Status::BrokenConnection, reason.into_bytes())),
        };
        self.set_status(status);
        let args = [token, response.headers.len() as u32, response.body.len() as u32, response.trailers.len() as u32];
        let call = CallData {
            http_response_headers: response.headers,
            http_response_body: response.body,
            http_response_trailers: response.trailers,
            ..CallData::default()
        };
        self.root_call_for(plugin, Callback::HttpCallResponse, &args, call, caller).map(drop)
    }

    /// Delivers gRPC initial (`trailing == false`) or trailing metadata.
    pub fn on_grpc_metadata(
        &mut self,
        plugin: PluginId,
        token: u32,
        trailing: bool,
        metadata: Pairs,
    ) -> Result<(), FilterError> {
        if !self.has_pending_call(token) {
            return Ok(());
        }
        let callback =
            if trailing { Callback::GrpcReceiveTrailingMetadata } else { Callback::GrpcReceiveInitialMetadata };
        let args = [token, metadata.len() as u32];
        self.root_call(plugin, callback, &args, CallData { grpc_metadata: metadata, ..CallData::default() }).map(drop)
    }

    /// Delivers one gRPC message. A unary call's message is its answer and ends it (as in
    /// Envoy, no close follows).
    pub fn on_grpc_receive(&mut self, plugin: PluginId, token: u32, message: Vec<u8>) -> Result<(), FilterError> {
        let args = [token, message.len() as u32];
        let call = CallData { grpc_message: message, ..CallData::default() };
        if HostState::call_kind(token) == Some(CallKind::GrpcCall) {
            let Some(caller) = self.take_pending_call(token) else { return Ok(()) };
            self.set_status((Status::Ok, Vec::new()));
            return self.root_call_for(plugin, Callback::GrpcReceive, &args, call, caller).map(drop);
        }
        if !self.has_pending_call(token) {
            return Ok(());
        }
        self.root_call(plugin, Callback::GrpcReceive, &args, call).map(drop)
    }

    /// Delivers what a `grpc_client::ResponseReader` read.
    pub fn on_grpc_event(&mut self, plugin: PluginId, token: u32, event: GrpcEvent) -> Result<(), FilterError> {
        match event {
            GrpcEvent::InitialMetadata(metadata) => self.on_grpc_metadata(plugin, token, false, metadata),
            GrpcEvent::Message(message) => self.on_grpc_receive(plugin, token, message),
            GrpcEvent::TrailingMetadata(metadata) => self.on_grpc_metadata(plugin, token, true, metadata),
            GrpcEvent::Close(code, message) => self.on_grpc_close(plugin, token, code, &message),
        }
    }

    /// Ends a gRPC call or stream with its gRPC status code and message.
    pub fn on_grpc_close(&mut self, plugin: PluginId, token: u32, code: u32, message: &str) -> Result<(), FilterError> {
        let Some(caller) = self.take_pending_call(token) else { return Ok(()) };
        self.set_status((Status::Ok, message.as_bytes().to_vec()));
        if let Some(live) = &mut self.live {
            live.store.data_mut().status.code = code;
        }
        self.root_call_for(plugin, Callback::GrpcClose, &[token, code], CallData::default(), caller).map(drop)
    }

    /// Tells the plugin that a queue it registered has items.
    pub fn on_queue_ready(&mut self, plugin: PluginId, queue_id: u32) -> Result<(), FilterError> {
        self.root_call(plugin, Callback::QueueReady, &[queue_id], CallData::default()).map(drop)
    }

    /// Calls the plugin's `on_foreign_function` with `args` as its CALL_DATA buffer.
    pub fn on_foreign_function(
        &mut self,
        plugin: PluginId,
        function_id: u32,
        args: Vec<u8>,
    ) -> Result<(), FilterError> {
        let call_args = [function_id, args.len() as u32];
        self.root_call(
            plugin,
            Callback::ForeignFunction,
            &call_args,
            CallData { foreign_args: args, ..CallData::default() },
        )
        .map(drop)
    }

    fn headers_callback(
        &mut self,
        stream: StreamId,
        callback: Callback,
        map: MapType,
        end_of_stream: bool,
    ) -> Result<Action, FilterError> {
        self.stream_action(stream, callback, |context| {
            let count = context.embedding.header_map_size(map).unwrap_or(0);
            [count as u32, end_of_stream as u32]
        })
    }

    /// Runs a stream's callback with the arguments `args` makes from its context.
    fn stream_action(
        &mut self,
        stream: StreamId,
        callback: Callback,
        args: impl FnOnce(&mut Context) -> [u32; 2],
    ) -> Result<Action, FilterError> {
        let Some(context) = self.stream_context(stream) else {
            return Err(self.failure(stream.plugin, callback, FailureKind::InstanceLost));
        };
        let (args, own) = (args(context), context.timeout);
        let timeout = self.budget(stream.plugin, own);
        let id = stream.context_id;
        let result = self.call_within(stream.plugin, callback, id, &with_context(id, &args), timeout)?;
        let result = result.unwrap_or(0);
        if self.state().local_response_sent {
            return Ok(Action::Pause);
        }
        Ok(match callback {
            Callback::RequestBody | Callback::ResponseBody => Action::from_body_result(result),
            _ => Action::from_headers_result(result),
        })
    }

    /// The stream's context, while its instance lives.
    fn stream_context(&mut self, stream: StreamId) -> Option<&mut Context> {
        let live = self.live.as_mut().filter(|_| stream.generation == self.generation)?;
        live.store.data_mut().contexts.get_mut(&stream.context_id)
    }

    /// Whether `stream` is still open on the live instance.
    pub fn is_live(&self, stream: StreamId) -> bool {
        self.is_current(stream)
            && self.live.as_ref().is_some_and(|live| live.store.data().contexts.contains_key(&stream.context_id))
    }

    fn is_current(&self, stream: StreamId) -> bool {
        self.live.is_some() && stream.generation == self.generation
    }

    /// Calls a root-context callback (with the root id first), with `call` data in place,
    /// under the background budget.
    fn root_call(
        &mut self,
        plugin: PluginId,
        callback: Callback,
        args: &[u32],
        call: CallData,
    ) -> Result<Option<i32>, FilterError> {
        self.ensure_live()?;
        let root_id = self.plugins[plugin.0].root_id;
        self.root_call_for(plugin, callback, args, call, root_id)
    }

    /// `root_call` for what context `caller` asked (the answer to a call it made): a stream's
    /// answer runs under the stream's budgets, a root's under the background budget.
    fn root_call_for(
        &mut self,
        plugin: PluginId,
        callback: Callback,
        args: &[u32],
        call: CallData,
        caller: u32,
    ) -> Result<Option<i32>, FilterError> {
        self.ensure_live()?;
        if self.plugins[plugin.0].removed {
            return Ok(None);
        }
        let root_id = self.plugins[plugin.0].root_id;
        let own = self.state().contexts.get(&caller).filter(|_| caller != root_id).map(|context| context.timeout);
        let timeout = match own {
            Some(own) => self.budget(plugin.0, own),
            None if self.starting => self.config.start_timeout,
            None => self.config.background_timeout,
        };
        self.state().call = call;
        let result = self.call_charged(plugin.0, callback, root_id, &with_context(root_id, args), timeout, caller);
        if let Some(live) = &mut self.live {
            live.store.data_mut().call = CallData::default();
        }
        result
    }

    fn set_status(&mut self, (code, message): (Status, Vec<u8>)) {
        if let Some(live) = &mut self.live {
            let status = &mut live.store.data_mut().status;
            status.code = code as u32;
            status.message = message;
        }
    }

    fn has_pending_call(&self, token: u32) -> bool {
        self.live.as_ref().is_some_and(|live| live.store.data().pending_calls.contains_key(&token))
    }

    /// Forgets a pending call; returns the context that made it.
    fn take_pending_call(&mut self, token: u32) -> Option<u32> {
        self.live.as_mut().and_then(|live| live.store.data_mut().pending_calls.remove(&token))
    }

    fn state(&mut self) -> &mut HostState {
        self.live.as_mut().expect("a live instance").store.data_mut()
    }

    fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        id
    }

    /// The budget of a call into a context of `plugin`: the context's `own`, else its
    /// plugin's, else the VM's (the start-up budget while starting).
    fn budget(&self, plugin: usize, own: Option<Duration>) -> Option<Duration> {
        if self.starting {
            return self.config.start_timeout;
        }
        own.or_else(|| self.plugins.get(plugin).and_then(|p| p.config.timeout)).or(self.config.timeout)
    }

    /// The plugin's name, else the VM's id, else the module's file.
    fn filter_name(&self, plugin: usize) -> String {
        match self.plugins.get(plugin) {
            Some(p) if !p.config.name.is_empty() => p.config.name.clone(),
            _ if !self.config.vm_id.is_empty() => self.config.vm_id.clone(),
            _ => self.module.name.clone(),
        }
    }

    fn failure(&self, plugin: usize, callback: Callback, kind: FailureKind) -> FilterError {
        FilterError { filter: self.filter_name(plugin), callback: callback.export_name(), kind }
    }

    /// Calls into a root context (only streams have budgets of their own).
    fn call(
        &mut self,
        plugin: usize,
        callback: Callback,
        context_id: u32,
        args: &[u32],
    ) -> Result<Option<i32>, FilterError> {
        self.call_within(plugin, callback, context_id, args, self.budget(plugin, None))
    }

    /// Calls into `context_id` with `timeout` as the deadline, charging its time to that
    /// context's request budget (a stream's). On failure the instance is discarded.
    fn call_within(
        &mut self,
        plugin: usize,
        callback: Callback,
        context_id: u32,
        args: &[u32],
        timeout: Option<Duration>,
    ) -> Result<Option<i32>, FilterError> {
        self.call_charged(plugin, callback, context_id, args, timeout, context_id)
    }

    /// `call_within`, charging `charged`'s request budget: the callback's deadline is what is
    /// left of it when that is less than `timeout`.
    fn call_charged(
        &mut self,
        plugin: usize,
        callback: Callback,
        context_id: u32,
        args: &[u32],
        timeout: Option<Duration>,
        charged: u32,
    ) -> Result<Option<i32>, FilterError> {
        let live = self.live.as_mut().expect("a live instance");
        let state = live.store.data_mut();
        let request = state.contexts.get(&charged).and_then(|c| Some((c.request_budget?, c.budget_left?)));
        let (timeout, capped) = match (timeout, request) {
            (Some(timeout), Some((_, left))) if left < timeout => (Some(left), true),
            (None, Some((_, left))) => (Some(left), true),
            _ => (timeout, false),
        };
        if capped && timeout == Some(Duration::ZERO) {
            let budget = request.unwrap_or_default().0;
            return Err(self.fail(plugin, callback.export_name(), FailureKind::RequestBudget(budget)));
        }
        let live = self.live.as_mut().expect("a live instance");
        let state = live.store.data_mut();
        state.current_context = context_id;
        state.effective_context = context_id;
        state.deadline = Deadline::budget(timeout);
        state.limiter.refused = false;
        state.local_response_sent = false;
        state.call_refusal_logged = false;
        if let Some(activity) = &self.activity {
            live.store.set_epoch_deadline(1);
            activity.mark();
        }
        let result = live.callbacks.call(&mut live.store, &self.module.callbacks, callback, args);
        let state = live.store.data_mut();
        flush_output(state);
        if let (Some((_, left)), Some(activity)) = (request, &self.activity) {
            let spent = state.deadline.spent(timeout, activity.period());
            if let Some(context) = state.contexts.get_mut(&charged) {
                context.budget_left = Some(left.saturating_sub(spent));
            }
        }
        state.deadline = Deadline::None;
        let refused = state.limiter.refused;
        result.map_err(|error| {
            let memory = refused.then_some(self.config.memory_limit);
            let kind = match classify(&error, timeout.unwrap_or_default(), memory) {
                FailureKind::Deadline(_) if capped => FailureKind::RequestBudget(request.unwrap_or_default().0),
                kind => kind,
            };
            self.fail(plugin, callback.export_name(), kind)
        })
    }

    /// Records a failure and discards the instance, keeping the root embeddings for the rebuild.
    fn fail(&mut self, plugin: usize, callback: &'static str, kind: FailureKind) -> FilterError {
        match kind.counter() {
            Some(FailureCounter::Timeouts) => self.stats.timeouts += 1,
            Some(FailureCounter::MemoryFailures) => self.stats.memory_failures += 1,
            Some(FailureCounter::Traps) => self.stats.traps += 1,
            None => {}
        }
        let error = FilterError { filter: self.filter_name(plugin), callback, kind };
        self.reset_point = None;
        if let Some(live) = self.live.take() {
            let mut state = live.store.into_data();
            self.next_token = state.next_token;
            for plugin in &mut self.plugins {
                if let Some(context) = state.contexts.remove(&plugin.root_id) {
                    plugin.parked = Some(context.embedding);
                }
            }
            // What is left are streams, gone with the instance.
            for context in state.contexts.values_mut() {
                context.embedding.instance_lost();
            }
        }
        self.generation += 1;
        error
    }

    /// Makes sure an instance is live: instantiates one and starts every plugin on it.
    fn ensure_live(&mut self) -> Result<(), FilterError> {
        if self.live.is_some() {
            return Ok(());
        }
        self.starting = true;
        let started = self.instantiate().and_then(|live| {
            self.live = Some(live);
            self.stats.instances_created += 1;
            let kept: Vec<usize> = (0..self.plugins.len()).filter(|&i| !self.plugins[i].removed).collect();
            kept.into_iter().try_for_each(|index| self.start_plugin(index))
        });
        self.starting = false;
        started
    }

    fn instantiate(&mut self) -> Result<Live, FilterError> {
        let module = &self.module;
        let limiter = MemoryLimiter::new(self.config.memory_limit);
        let mut state = HostState::new(module.abi, self.config.clone(), limiter);
        state.next_token = self.next_token;
        let mut store = Store::new(module.engine.wasmtime(), state);
        store.limiter(|state| &mut state.limiter);
        if let Some(activity) = self.activity.clone() {
            store.epoch_deadline_callback(move |store| {
                activity.mark();
                on_epoch_tick(store)
            });
        }
        let instance_error = |e: wasmtime::Error| {
            let kind = match e.is::<PoolConcurrencyLimitError>() {
                true => FailureKind::NoFreeSlot(describe(&e)),
                false => FailureKind::Instantiation(describe(&e)),
            };
            self.failure(usize::MAX, Callback::ContextCreate, kind)
        };
        let instance = module.pre.instantiate(&mut store).map_err(instance_error)?;
        let memory = module.callbacks.memory(&instance, &mut store);
        let allocator = module.callbacks.allocator(&instance, &mut store);
        let callbacks = Callbacks::new(instance);
        let state = store.data_mut();
        state.memory = memory;
        state.allocator = allocator;
        let mut live = Live { store, instance, callbacks };
        self.start_instance(&mut live, &instance)?;
        Ok(live)
    }

    /// Runs the module's start-up: `_initialize` (then `main`/`__main_void` if exported), or
    /// `_start` for command-style modules. Exiting with code 0 is a normal end.
    fn start_instance(&self, live: &mut Live, instance: &wasmtime::Instance) -> Result<(), FilterError> {
        let store = &mut live.store;
        let mut find = |name: &'static str| instance.get_func(&mut *store, name).map(|f| (name, f));
        let mut steps: Vec<(&'static str, Func)> = Vec::new();
        if let Some(initialize) = find("_initialize") {
            steps.push(initialize);
            steps.extend(find("main").or_else(|| find("__main_void")));
        } else {
            steps.extend(find("_start"));
        }
        for (name, func) in steps {
            let state = store.data_mut();
            state.deadline = Deadline::budget(self.config.start_timeout);
            if let Some(activity) = &self.activity {
                store.set_epoch_deadline(1);
                activity.mark();
            }
            let params = vec![wasmtime::Val::I32(0); func.ty(&*store).params().len()];
            let mut results = vec![wasmtime::Val::I32(0); func.ty(&*store).results().len()];
            let result = func.call(&mut *store, &params, &mut results);
            flush_output(store.data_mut());
            if let Err(error) = result {
                let kind = classify(&error, self.config.start_timeout.unwrap_or_default(), None);
                if kind != FailureKind::Exit(0) {
                    return Err(FilterError { filter: self.module.name.clone(), callback: name, kind });
                }
            }
        }
        Ok(())
    }

    /// Creates the plugin's root context on the live instance and configures it.
    fn start_plugin(&mut self, index: usize) -> Result<(), FilterError> {
        let root_id = self.new_context_id();
        let config = self.plugins[index].config.clone();
        let embedding = self.plugins[index].parked.take().expect("a parked root embedding");
        self.plugins[index].root_id = root_id;
        let state = self.state();
        let mut context = Context::new(root_id, embedding);
        for (level, line) in state.startup_log.drain(..) {
            if level >= context.embedding.log_level() {
                context.embedding.log(level, &line);
            }
        }
        state.contexts.insert(root_id, context);
        state.plugins.insert(root_id, config.clone());
        self.call(index, Callback::ContextCreate, root_id, &[root_id, 0])?;
        let vm_configuration = self.config.configuration.clone();
        let steps = [(Callback::VmStart, vm_configuration), (Callback::Configure, config.configuration.clone())];
        for (callback, configuration) in steps {
            let size = configuration.len() as u32;
            self.state().call.configuration = Some(configuration);
            let accepted = self.call(index, callback, root_id, &[root_id, size])?;
            self.state().call.configuration = None;
            if accepted == Some(0) {
                let state = self.state();
                let context = state.contexts.remove(&root_id);
                state.plugins.remove(&root_id);
                self.plugins[index].parked = context.map(|c| c.embedding);
                return Err(self.failure(index, callback, FailureKind::Refused));
            }
        }
        Ok(())
    }
}

/// A callback's arguments: the context id, then `args` (callbacks take at most 5 in all).
fn with_context(context_id: u32, args: &[u32]) -> [u32; 5] {
    let mut full = [0; 5];
    full[0] = context_id;
    for (slot, arg) in full[1..].iter_mut().zip(args) {
        *slot = *arg;
    }
    full
}
