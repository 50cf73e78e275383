//! Everything a proxy provides to filters, in one place, grouped by capability.
//!
//! A proxy (nginx, Envoy, the in-memory test proxy) implements [`Embedding`] once per context:
//! one object for each plugin's root context and one for each stream (request). Every method
//! has a safe default that answers `Status::Unimplemented` (or the neutral value), so an
//! embedding overrides exactly what it supports; the host logs the first use of anything
//! unimplemented and the guest sees the status, never a trap.
//!
//! Methods are called while the guest is running. They must not call back into the
//! [`Vm`](crate::Vm) that is calling them: record what has to happen (a resumed request, a
//! local response) and act on it when the callback has returned.

use std::time::{Duration, SystemTime};

use crate::types::{BufferType, HostResult, LogLevel, MapType, MetricType, Status, StreamType};
use crate::Pairs;

/// Log sink and level.
pub trait Logging {
    fn log(&mut self, _level: LogLevel, _message: &str) {}
    /// The lowest level the proxy wants; messages below it are dropped by the host.
    fn log_level(&self) -> LogLevel {
        LogLevel::Info
    }
}

/// Wall clock, as the guest sees it through `proxy_get_current_time_nanoseconds` and WASI.
pub trait Clock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Request/response headers and trailers. The two required pieces are `header_map` and
/// `set_header_map`; the rest derive from them and may be overridden for speed.
/// Keys are compared case-insensitively, as HTTP header names are; keys the host passes in
/// are already lower case, as Envoy's are. A map the context does not have reads as empty
/// (as in Envoy: the SDKs treat any other answer to a read as fatal).
pub trait HeaderMaps {
    fn header_map(&mut self, _map: MapType) -> HostResult<Pairs> {
        Ok(Pairs::new())
    }
    fn set_header_map(&mut self, _map: MapType, _pairs: Pairs) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn header_map_size(&mut self, map: MapType) -> HostResult<usize> {
        Ok(self.header_map(map)?.len())
    }
    /// Appends the first value of `key` to `value` (Envoy answers the first of repeated
    /// headers); `false` when there is none.
    fn header_value(&mut self, map: MapType, key: &[u8], value: &mut Vec<u8>) -> HostResult<bool> {
        Ok(append_first_value(&self.header_map(map)?, key, value))
    }
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let mut pairs = self.header_map(map)?;
        pairs.push(key, value);
        self.set_header_map(map, pairs)
    }
    /// Sets `key` to `value`, replacing every existing value (adds it when absent).
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let mut pairs = self.header_map(map)?;
        pairs.retain(|_, k, _| !k.eq_ignore_ascii_case(key));
        pairs.push(key, value);
        self.set_header_map(map, pairs)
    }
    fn remove_header(&mut self, map: MapType, key: &[u8]) -> HostResult<()> {
        let mut pairs = self.header_map(map)?;
        pairs.retain(|_, k, _| !k.eq_ignore_ascii_case(key));
        self.set_header_map(map, pairs)
    }
}

/// Appends the first value of `key` in `pairs` to `value`; `false` when there is none.
pub fn append_first_value(pairs: &Pairs, key: &[u8], value: &mut Vec<u8>) -> bool {
    pairs.first_value(key).map(|found| value.extend_from_slice(found)).is_some()
}

/// Request and response bodies (and L4 data). The host implements the ABI's slicing and
/// prepend/append/replace rules on top of these two whole-buffer operations. A buffer the
/// context does not have reads as empty.
pub trait Buffers {
    /// The bytes currently buffered (for bodies: what the filter has been shown so far).
    fn buffer(&mut self, _buffer: BufferType) -> HostResult<Vec<u8>> {
        Ok(Vec::new())
    }
    fn set_buffer(&mut self, _buffer: BufferType, _bytes: Vec<u8>) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
}

/// Envoy-style attributes (`request.path`, `source.address`, ...). A path is its segments.
/// Values are encoded as Envoy does: strings raw, integers 8-byte little endian, maps in pair
/// serialization (see [`crate::serialization`]). The host answers `plugin_name`,
/// `plugin_root_id` and `plugin_vm_id` itself, and keeps values a filter sets when the
/// embedding does not take them (`set_property` returning `NotFound`).
pub trait Properties {
    fn property(&mut self, _path: &[&[u8]]) -> HostResult<Option<Vec<u8>>> {
        Ok(None)
    }
    fn set_property(&mut self, _path: &[&[u8]], _value: &[u8]) -> HostResult<()> {
        Err(Status::NotFound)
    }
}

/// A response produced by the filter instead of the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: Vec<u8>,
    pub body: Vec<u8>,
    pub headers: Pairs,
    /// -1 when the filter gave no gRPC status.
    pub grpc_status: i32,
}

/// The HTTP status of a request one of whose filters failed (trapped, ran out of time or
/// memory) without fail-open: 503, as from Envoy's Wasm filter. A gRPC request gets it as gRPC
/// status 14, unavailable (`LocalResponse::into_grpc`).
pub const FILTER_FAILED_STATUS: u32 = 503;

impl Default for LocalResponse {
    /// An empty 200 with no gRPC status.
    fn default() -> Self {
        LocalResponse { status: 200, details: Vec::new(), body: Vec::new(), headers: Pairs::new(), grpc_status: -1 }
    }
}

/// Flow control of the current stream.
pub trait StreamControl {
    fn send_local_response(&mut self, _response: LocalResponse) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn continue_stream(&mut self, _stream: StreamType) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn close_stream(&mut self, _stream: StreamType) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn clear_route_cache(&mut self) -> HostResult<()> {
        Ok(())
    }
    /// The stream's instance failed outside the stream's own callbacks (a root context's
    /// callback, say, while the stream waited for it): the stream is gone, and a request that
    /// waits for it must not wait on.
    fn instance_lost(&mut self) {}
}

/// An outgoing HTTP call (`proxy_http_call`). Pseudo-headers `:method`, `:path` and
/// `:authority` are always present (the host checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallRequest {
    pub upstream: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
    /// `None` when the filter gave 0 (no timeout).
    pub timeout: Option<Duration>,
}

/// The response to an http call, handed back with
/// [`Vm::on_http_call_response`](crate::Vm::on_http_call_response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

/// HTTP calls. Asked of the root context's embedding; when the call ends the proxy delivers
/// the outcome with [`Vm::on_http_call_response`](crate::Vm::on_http_call_response).
pub trait HttpCalls {
    fn http_call(&mut self, _token: u32, _request: HttpCallRequest) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// The stream that made call `token` is gone: its answer is not wanted (stop the call).
    fn cancel_http_call(&mut self, _token: u32) {}
}

/// A gRPC call or stream (`proxy_grpc_call` / `proxy_grpc_stream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallRequest {
    pub upstream: Vec<u8>,
    pub service: String,
    pub method: String,
    pub initial_metadata: Pairs,
    /// The request message for unary calls; `None` for streams.
    pub message: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

/// gRPC calls and streams. Asked of the root context's embedding; the proxy delivers what
/// comes back with the `Vm::on_grpc_*` functions (`grpc_client::ResponseReader` reads a
/// response into them). The host only asks about tokens of calls still pending.
pub trait GrpcCalls {
    fn grpc_call(&mut self, _token: u32, _request: GrpcCallRequest) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// Sends a message on stream `token` (end of stream: half-close after it).
    fn grpc_send(&mut self, _token: u32, _message: &[u8], _end_of_stream: bool) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// Ends call or stream `token` at once (reset it); nothing more of it is delivered.
    fn grpc_cancel(&mut self, _token: u32) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// Half-closes stream `token`: the filter sends no more, the answer still comes.
    fn grpc_close(&mut self, _token: u32) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// The stream that made call `token` is gone: stop the call (as `grpc_cancel`).
    fn cancel_grpc_call(&mut self, token: u32) {
        let _ = self.grpc_cancel(token);
    }
}

/// The root context's periodic timer (`on_tick`). A zero period stops it. The proxy calls
/// [`Vm::on_tick`](crate::Vm::on_tick) each period.
pub trait Timers {
    fn set_tick_period(&mut self, _period: Duration) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
}

/// Key-value data shared by every instance of a VM id, with compare-and-swap.
/// Semantics (Envoy's): `cas == 0` always writes; otherwise a write to an existing key whose
/// cas differs fails with `CasMismatch`; every write gives the key a new cas.
pub trait SharedData {
    /// The value and its cas, or `None` when the key is absent.
    fn get_shared_data(&mut self, _key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        Err(Status::Unimplemented)
    }
    fn set_shared_data(&mut self, _key: &[u8], _value: &[u8], _cas: u32) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
}

/// Named queues shared across instances. `register_shared_queue` binds the queue to the
/// calling root context, which the proxy notifies with
/// [`Vm::on_queue_ready`](crate::Vm::on_queue_ready) after each enqueue.
pub trait SharedQueues {
    fn register_shared_queue(&mut self, _name: &[u8]) -> HostResult<u32> {
        Err(Status::Unimplemented)
    }
    fn resolve_shared_queue(&mut self, _vm_id: &[u8], _name: &[u8]) -> HostResult<Option<u32>> {
        Err(Status::Unimplemented)
    }
    fn enqueue_shared_queue(&mut self, _queue_id: u32, _value: &[u8]) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    /// `None` when the queue is empty.
    fn dequeue_shared_queue(&mut self, _queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        Err(Status::Unimplemented)
    }
}

/// Counters, gauges and histograms, with Envoy's semantics: counters only go up (an increment
/// <= 0 is a `BadArgument`; recording a value adds it), gauges go both ways (recording sets
/// them), histograms record values.
pub trait Metrics {
    fn define_metric(&mut self, _kind: MetricType, _name: &str) -> HostResult<u32> {
        Err(Status::Unimplemented)
    }
    fn increment_metric(&mut self, _metric_id: u32, _offset: i64) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn record_metric(&mut self, _metric_id: u32, _value: u64) -> HostResult<()> {
        Err(Status::Unimplemented)
    }
    fn get_metric(&mut self, _metric_id: u32) -> HostResult<u64> {
        Err(Status::Unimplemented)
    }
}

/// Proxy-specific functions reachable through `proxy_call_foreign_function`.
pub trait ForeignFunctions {
    fn call_foreign_function(&mut self, _name: &str, _args: &[u8]) -> HostResult<Vec<u8>> {
        Err(Status::NotFound)
    }
}

/// The whole capability surface of a proxy, as seen by one context.
pub trait Embedding:
    Logging
    + Clock
    + HeaderMaps
    + Buffers
    + Properties
    + StreamControl
    + HttpCalls
    + GrpcCalls
    + Timers
    + SharedData
    + SharedQueues
    + Metrics
    + ForeignFunctions
{
}
