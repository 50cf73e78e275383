//! The host's embedding for Envoy: what a filter reaches from a root context (logging, http
//! calls, ticks, queues) and from a stream (headers, bodies, properties, local responses),
//! and what both share (shared data, queues, metrics).
//!
//! The host calls these while the guest runs: anything that makes Envoy run the filter chain
//! (a local response, a resumed stream) is queued (`stream::defer`) and happens right after.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use inwasm_host::*;

use crate::abi::{self, callout_init};
use crate::body::{self, Direction};
use crate::carrier::{Carrier, Outgoing};
use crate::filter_config::FilterConfig;
use crate::grpc_calls::{self, Caller};
use crate::headers::{self, envoy_map};
use crate::mailbox::Mailbox;
use crate::stream::{self, Action, Callout, SharedStream};
use crate::{log, properties, runtime, ticks};

/// Shared data is namespaced by VM id, as in Envoy: `<len><vm id><key>`.
fn namespaced(vm_id: &str, key: &[u8]) -> Vec<u8> {
    let mut full = (vm_id.len() as u32).to_le_bytes().to_vec();
    full.extend_from_slice(vm_id.as_bytes());
    full.extend_from_slice(key);
    full
}

/// An empty VM id names the caller's own (as filters resolve their own queues).
fn vm_id_or_own<'a>(asked: &'a [u8], own: &'a str) -> &'a [u8] {
    if asked.is_empty() {
        own.as_bytes()
    } else {
        asked
    }
}

/// Logging, shared data, queue access and metrics: the same for root and stream contexts.
macro_rules! common_capabilities {
    ($embedding:ty) => {
        impl Logging for $embedding {
            fn log(&mut self, level: LogLevel, message: &str) {
                log::filter_line(self.config.name(), level, message);
            }
            fn log_level(&self) -> LogLevel {
                log::threshold()
            }
        }

        impl Clock for $embedding {}

        impl SharedData for $embedding {
            fn get_shared_data(&mut self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
                Ok(runtime::shared_data().get(&namespaced(self.config.vm_id(), key)))
            }
            fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
                runtime::shared_data().set(&namespaced(self.config.vm_id(), key), value, cas)
            }
        }

        impl Metrics for $embedding {
            fn define_metric(&mut self, kind: MetricType, name: &str) -> HostResult<u32> {
                self.config.metrics.define(kind, name)
            }
            fn increment_metric(&mut self, id: u32, offset: i64) -> HostResult<()> {
                self.config.metrics.increment(id, offset)
            }
            fn record_metric(&mut self, id: u32, value: u64) -> HostResult<()> {
                self.config.metrics.record(id, value)
            }
            fn get_metric(&mut self, id: u32) -> HostResult<u64> {
                self.config.metrics.get(id)
            }
        }

        impl SharedQueues for $embedding {
            fn register_shared_queue(&mut self, name: &[u8]) -> HostResult<u32> {
                self.register_queue(name)
            }
            fn resolve_shared_queue(&mut self, vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
                Ok(runtime::queues().resolve(vm_id_or_own(vm_id, self.config.vm_id()), name))
            }
            fn enqueue_shared_queue(&mut self, queue_id: u32, value: &[u8]) -> HostResult<()> {
                if let Some(owner) = runtime::queues().enqueue(queue_id, value)? {
                    owner.post_queue_ready(queue_id);
                }
                Ok(())
            }
            fn dequeue_shared_queue(&mut self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
                runtime::queues().dequeue(queue_id)
            }
        }

        impl ForeignFunctions for $embedding {}
        impl Embedding for $embedding {}
    };
}

/// A root context: its VM (not kept alive by the link) and plugin.
type RootTarget = (Weak<RefCell<Vm>>, PluginId);

/// Where a root context's events reach it, known once it is started.
#[derive(Clone, Default)]
pub struct RootLink(Rc<RefCell<Option<RootTarget>>>);

impl RootLink {
    pub fn bind(&self, vm: &Rc<RefCell<Vm>>, plugin: PluginId) {
        *self.0.borrow_mut() = Some((Rc::downgrade(vm), plugin));
    }

    fn target(&self) -> Option<RootTarget> {
        self.0.borrow().clone()
    }
}

pub struct RootEmbedding {
    config: Arc<FilterConfig>,
    mailbox: Arc<Mailbox>,
    link: RootLink,
}

impl RootEmbedding {
    pub fn new(config: &Arc<FilterConfig>, mailbox: &Arc<Mailbox>, link: &RootLink) -> RootEmbedding {
        RootEmbedding { config: config.clone(), mailbox: mailbox.clone(), link: link.clone() }
    }

    /// The main thread's root keeps a queue it registered (it is told of items at once);
    /// otherwise the last root to register it is told (at its worker's next request).
    fn register_queue(&self, name: &[u8]) -> HostResult<u32> {
        let ours_is_main = self.mailbox.is_main_thread();
        let take = |current: Option<&Arc<Mailbox>>| ours_is_main || !current.is_some_and(|m| m.is_main_thread());
        Ok(runtime::queues().register(self.config.vm_id().as_bytes(), name, self.mailbox.clone(), take))
    }

    /// What carries a call made now: the stream whose hook runs (the answer comes back on
    /// this thread), else, on the main thread, the configuration.
    fn carrier(&self) -> HostResult<Carrier> {
        match stream::current() {
            Some(current) => Ok(Carrier::Filter(current.borrow().envoy)),
            None if self.mailbox.is_main_thread() => Ok(Carrier::Config(self.config.envoy.0)),
            None => Err(Status::InternalFailure),
        }
    }

    /// This root context, as its calls' answers find it.
    fn caller(&self) -> HostResult<Caller> {
        let (vm, plugin) = self.link.target().ok_or(Status::InternalFailure)?;
        Ok(Caller { vm, plugin })
    }

    fn start_call(&self, token: u32, request: &HttpCallRequest) -> HostResult<()> {
        let timeout_ms = request.timeout.map_or(0, |t| t.as_millis() as u64);
        let outgoing = Outgoing {
            cluster: request.upstream.as_bytes(),
            headers: &request.headers,
            body: &request.body,
            timeout_ms,
        };
        // SAFETY: the carrier is live (a stream whose hook runs now, or the main thread's
        // configuration).
        let id = match unsafe { self.carrier()?.http_callout(&outgoing) } {
            Ok(id) => id,
            Err(callout_init::MISSING_REQUIRED_HEADERS | callout_init::CLUSTER_NOT_FOUND) => {
                return Err(Status::BadArgument)
            }
            Err(_) => return Err(Status::InternalFailure),
        };
        match stream::current() {
            Some(current) => {
                let Caller { vm, plugin } = self.caller()?;
                current.borrow_mut().callouts.insert(id, Callout { vm, plugin, token });
            }
            None => {
                self.config.config_callouts.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token);
            }
        }
        Ok(())
    }
}

common_capabilities!(RootEmbedding);

impl HeaderMaps for RootEmbedding {}
impl Buffers for RootEmbedding {}
impl Properties for RootEmbedding {}
impl StreamControl for RootEmbedding {}

impl HttpCalls for RootEmbedding {
    fn http_call(&mut self, token: u32, request: HttpCallRequest) -> HostResult<()> {
        self.start_call(token, &request)
    }
}

impl GrpcCalls for RootEmbedding {
    fn grpc_call(&mut self, token: u32, request: GrpcCallRequest) -> HostResult<()> {
        grpc_calls::start(self.carrier()?, self.caller()?, token, request)
    }

    fn grpc_send(&mut self, token: u32, message: &[u8], end_of_stream: bool) -> HostResult<()> {
        grpc_calls::send(&self.caller()?, token, Some(message), end_of_stream)
    }

    fn grpc_close(&mut self, token: u32) -> HostResult<()> {
        grpc_calls::send(&self.caller()?, token, None, true)
    }

    fn grpc_cancel(&mut self, token: u32) -> HostResult<()> {
        grpc_calls::cancel(&self.caller()?, token);
        Ok(())
    }
}

impl Timers for RootEmbedding {
    fn set_tick_period(&mut self, period: Duration) -> HostResult<()> {
        ticks::set_period(&self.mailbox, period);
        Ok(())
    }
}

/// A request's stream context.
pub struct StreamEmbedding {
    config: Arc<FilterConfig>,
    stream: SharedStream,
}

impl StreamEmbedding {
    pub fn new(config: &Arc<FilterConfig>, stream: &SharedStream) -> StreamEmbedding {
        StreamEmbedding { config: config.clone(), stream: stream.clone() }
    }

    /// Queues belong to root contexts (the host asks the root).
    fn register_queue(&self, _name: &[u8]) -> HostResult<u32> {
        Err(Status::Unimplemented)
    }

    fn envoy(&self) -> abi::FilterEnvoyPtr {
        self.stream.borrow().envoy
    }

    fn body(&self, buffer: BufferType) -> Option<(Direction, bool)> {
        let direction = match buffer {
            BufferType::HttpRequestBody => Direction::Request,
            BufferType::HttpResponseBody => Direction::Response,
            _ => return None,
        };
        Some((direction, self.stream.borrow().body_event == Some(direction)))
    }
}

common_capabilities!(StreamEmbedding);

impl StreamEmbedding {
    /// Runs `edit` on the local response's headers when `map` is the response headers and a
    /// local response is passing through this filter.
    fn local_headers<R>(&self, map: MapType, edit: impl FnOnce(&mut Pairs) -> R) -> Option<R> {
        if map != MapType::HttpResponseHeaders {
            return None;
        }
        self.stream.borrow_mut().local_response.as_mut().map(|(headers, _)| edit(headers))
    }
}

impl StreamEmbedding {
    /// Runs `edit` on Envoy's map behind `map`. A change to the request headers clears the
    /// stream's route cache, as Envoy's Wasm filter does, so a rewritten `:authority`,
    /// `:path` or routing header picks the route again.
    fn edit_envoy_map(&self, map: MapType, edit: impl FnOnce(abi::FilterEnvoyPtr, u32) -> bool) -> HostResult<()> {
        let envoy = self.envoy();
        let edited = edit(envoy, envoy_map(map).ok_or(Status::BadArgument)?);
        if edited && map == MapType::HttpRequestHeaders {
            // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
            unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(envoy) };
        }
        edited.then_some(()).ok_or(Status::NotFound)
    }
}

impl HeaderMaps for StreamEmbedding {
    fn header_map(&mut self, map: MapType) -> HostResult<Pairs> {
        if let Some(pairs) = self.local_headers(map, |h| h.clone()) {
            return Ok(pairs);
        }
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        Ok(envoy_map(map).map_or_else(Pairs::new, |map| unsafe { headers::all(self.envoy(), map) }))
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> HostResult<()> {
        if let Some(()) = self.local_headers(map, |h| *h = pairs.clone()) {
            return Ok(());
        }
        // SAFETY: `envoy` (from `edit_envoy_map`) is this stream's filter, live while its
        // callbacks run.
        self.edit_envoy_map(map, |envoy, map| unsafe { headers::replace_all(envoy, map, &pairs) })
    }

    fn header_map_size(&mut self, map: MapType) -> HostResult<usize> {
        if let Some(size) = self.local_headers(map, |h| h.len()) {
            return Ok(size);
        }
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        Ok(envoy_map(map).map_or(0, |map| unsafe { headers::count(self.envoy(), map) }))
    }

    fn header_value(&mut self, map: MapType, key: &[u8], value: &mut Vec<u8>) -> HostResult<bool> {
        if let Some(found) = self.local_headers(map, |h| append_first_value(h, key, value)) {
            return Ok(found);
        }
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        Ok(envoy_map(map)
            .and_then(|map| unsafe { headers::value(self.envoy(), map, key) })
            .map(|found| value.extend_from_slice(found))
            .is_some())
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        if let Some(()) = self.local_headers(map, |h| h.push(key, value)) {
            return Ok(());
        }
        // SAFETY: as in `set_header_map`.
        self.edit_envoy_map(map, |envoy, map| unsafe { headers::add(envoy, map, key, value) })
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let replaced = self.local_headers(map, |h| {
            h.retain(|_, k, _| !k.eq_ignore_ascii_case(key));
            h.push(key, value);
        });
        if replaced.is_some() {
            return Ok(());
        }
        // SAFETY: as in `set_header_map`.
        self.edit_envoy_map(map, |envoy, map| unsafe { headers::set_one(envoy, map, key, Some(value)) })
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> HostResult<()> {
        if let Some(()) = self.local_headers(map, |h| h.retain(|_, k, _| !k.eq_ignore_ascii_case(key))) {
            return Ok(());
        }
        // SAFETY: as in `set_header_map`.
        self.edit_envoy_map(map, |envoy, map| unsafe { headers::set_one(envoy, map, key, None) })
    }
}

impl Buffers for StreamEmbedding {
    fn buffer(&mut self, buffer: BufferType) -> HostResult<Vec<u8>> {
        if buffer == BufferType::HttpResponseBody {
            if let Some((_, body)) = &self.stream.borrow().local_response {
                return Ok(body.clone());
            }
        }
        Ok(match self.body(buffer) {
            // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
            Some((direction, in_event)) => unsafe { body::read(self.envoy(), direction, in_event) },
            None => Vec::new(),
        })
    }

    fn set_buffer(&mut self, buffer: BufferType, bytes: Vec<u8>) -> HostResult<()> {
        if buffer == BufferType::HttpResponseBody {
            if let Some((_, body)) = &mut self.stream.borrow_mut().local_response {
                *body = bytes;
                return Ok(());
            }
        }
        let (direction, in_event) = self.body(buffer).ok_or(Status::BadArgument)?;
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        unsafe { body::write(self.envoy(), direction, in_event, &bytes) }.then_some(()).ok_or(Status::NotFound)
    }
}

impl Properties for StreamEmbedding {
    fn property(&mut self, path: &[&[u8]]) -> HostResult<Option<Vec<u8>>> {
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        Ok(unsafe { properties::get(self.envoy(), path) })
    }
}

impl StreamControl for StreamEmbedding {
    fn send_local_response(&mut self, response: LocalResponse) -> HostResult<()> {
        stream::defer(&self.stream, Action::Respond(response));
        Ok(())
    }

    fn continue_stream(&mut self, direction: StreamType) -> HostResult<()> {
        let action = match direction {
            StreamType::Request => Action::ContinueRequest,
            StreamType::Response => Action::ContinueResponse,
            _ => return Err(Status::BadArgument),
        };
        stream::defer(&self.stream, action);
        Ok(())
    }

    fn close_stream(&mut self, _direction: StreamType) -> HostResult<()> {
        stream::defer(&self.stream, Action::Reset);
        Ok(())
    }

    fn clear_route_cache(&mut self) -> HostResult<()> {
        // SAFETY: `envoy` is this stream's filter, live while its callbacks run.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.envoy()) };
        Ok(())
    }
}

impl HttpCalls for StreamEmbedding {}
impl GrpcCalls for StreamEmbedding {}
impl Timers for StreamEmbedding {}
