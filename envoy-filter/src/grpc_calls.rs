//! gRPC calls and streams for filters (`proxy_grpc_call`, `proxy_grpc_stream`), each carried
//! as an Envoy HTTP stream to a cluster (`start_http_stream`) that this module writes and
//! reads as Envoy's gRPC client does (`inwasm_host::grpc_client`).
//!
//! The target is named as Envoy's Wasm filter takes it: a serialized `GrpcService` (its
//! `envoy_grpc` cluster, authority and initial metadata), or else a cluster name.
//!
//! A call made while a stream's hook runs is carried by that stream: its events come back on
//! this worker through the stream's hooks, and it ends with the stream. The main thread's
//! root context, with no stream, calls through the configuration. Each thread keeps its calls
//! in one table, found by carrier and Envoy stream id (Envoy's hooks) or by VM and token (the
//! filter's sends and cancels).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Weak;

use inwasm_host::grpc_client::{self, with_details, GrpcEvent, ResponseReader};
use inwasm_host::{GrpcCallRequest, HostResult, Pairs, PluginId, Status, Vm};

use crate::abi::callout_init;
use crate::carrier::{Carrier, Outgoing};

/// The root context a call's events go to.
#[derive(Clone)]
pub struct Caller {
    pub vm: Weak<RefCell<Vm>>,
    pub plugin: PluginId,
}

struct Call {
    caller: Caller,
    token: u32,
    reader: ResponseReader,
    /// Envoy's response code details for the answer, as far as they show (see `details`).
    details: Option<&'static str>,
}

/// Events read from a call's response, for its caller.
pub struct Delivery {
    pub caller: Caller,
    pub token: u32,
    pub events: Vec<GrpcEvent>,
}

#[derive(Default)]
struct Table {
    by_stream: HashMap<Carrier, HashMap<u64, Call>>,
    by_token: HashMap<(usize, u32), (Carrier, u64)>,
}

thread_local! {
    static CALLS: RefCell<Table> = RefCell::new(Table::default());
}

fn vm_key(caller: &Caller) -> usize {
    caller.vm.as_ptr() as usize
}

/// Starts call `token` of `caller` through `carrier`.
pub fn start(carrier: Carrier, caller: Caller, token: u32, request: GrpcCallRequest) -> HostResult<()> {
    let target = grpc_client::target(&request.upstream)?;
    let mut metadata = target.metadata;
    metadata.extend(&request.initial_metadata);
    let headers =
        grpc_client::request_headers(&target.authority, &request.service, &request.method, request.timeout, &metadata);
    let unary = request.message.is_some();
    let body = request.message.as_deref().map(grpc_client::frame).unwrap_or_default();
    // A unary call's deadline is Envoy's too; a stream has none (as in Envoy's Wasm filter).
    let timeout_ms = request.timeout.filter(|_| unary).map_or(0, |t| t.as_millis() as u64);
    let outgoing = Outgoing { cluster: &target.cluster, headers: &headers, body: &body, timeout_ms };
    // SAFETY: the carrier is live (a stream whose hook runs now, or the main thread's
    // configuration).
    let id = match unsafe { carrier.start_stream(&outgoing, unary) } {
        Ok(id) => id,
        Err(callout_init::CLUSTER_NOT_FOUND) if target.by_name => return Err(Status::ParseFailure),
        Err(_) => return Err(Status::InternalFailure),
    };
    CALLS.with(|calls| {
        let mut calls = calls.borrow_mut();
        calls.by_token.insert((vm_key(&caller), token), (carrier, id));
        let call = Call { caller, token, reader: ResponseReader::new(unary), details: None };
        calls.by_stream.entry(carrier).or_default().insert(id, call);
    });
    Ok(())
}

/// Sends `message` on stream `token` of `caller`'s VM (an empty `message` with `end_stream`
/// half-closes it).
pub fn send(caller: &Caller, token: u32, message: Option<&[u8]>, end_stream: bool) -> HostResult<()> {
    let (carrier, id) = find(caller, token).ok_or(Status::NotFound)?;
    let data = message.map(grpc_client::frame).unwrap_or_default();
    // SAFETY: the table only holds streams of live carriers (a carrier's entries go when it ends).
    let sent = unsafe { carrier.send_data(id, &data, end_stream) };
    sent.then_some(()).ok_or(Status::NotFound)
}

/// Ends call `token` of `caller`'s VM at once: nothing more of it is delivered.
pub fn cancel(caller: &Caller, token: u32) {
    let Some((carrier, id)) = find(caller, token) else { return };
    forget(carrier, id);
    reset(carrier, id);
}

fn find(caller: &Caller, token: u32) -> Option<(Carrier, u64)> {
    CALLS.with(|calls| calls.borrow().by_token.get(&(vm_key(caller), token)).copied())
}

fn forget(carrier: Carrier, id: u64) {
    CALLS.with(|calls| {
        let mut calls = calls.borrow_mut();
        let Some(streams) = calls.by_stream.get_mut(&carrier) else { return };
        let Some(call) = streams.remove(&id) else { return };
        if streams.is_empty() {
            calls.by_stream.remove(&carrier);
        }
        calls.by_token.remove(&(vm_key(&call.caller), call.token));
    })
}

/// Resets Envoy's stream `id` (its reset hook runs at once and finds no call).
fn reset(carrier: Carrier, id: u64) {
    // SAFETY: the table only holds streams of live carriers (as in `send`).
    unsafe { carrier.reset_stream(id) }
}

/// Envoy's stream `id` has its response headers.
pub fn on_headers(carrier: Carrier, id: u64, headers: Pairs, end_stream: bool) -> Option<Delivery> {
    let details = details(&headers);
    read(carrier, id, end_stream, details, |reader| reader.on_headers(headers, end_stream))
}

/// Envoy's stream `id` has more of its response body.
pub fn on_data(carrier: Carrier, id: u64, data: &[u8], end_stream: bool) -> Option<Delivery> {
    read(carrier, id, end_stream, None, |reader| reader.on_data(data, end_stream))
}

/// Envoy's stream `id` has its response trailers.
pub fn on_trailers(carrier: Carrier, id: u64, trailers: Pairs) -> Option<Delivery> {
    let details = details(&trailers);
    read(carrier, id, true, details, |reader| reader.on_trailers(trailers))
}

/// Reads one event of Envoy's stream `id` into its call (`ends_stream`: Envoy's stream ends
/// with it; `details`: what the event's headers or trailers show of Envoy's details). A call
/// that ends is forgotten, and its stream reset if Envoy's goes on.
fn read(
    carrier: Carrier,
    id: u64,
    ends_stream: bool,
    details: Option<&'static str>,
    read: impl FnOnce(&mut ResponseReader) -> Vec<GrpcEvent>,
) -> Option<Delivery> {
    let (delivery, closed) = CALLS.with(|calls| {
        let mut calls = calls.borrow_mut();
        let call = calls.by_stream.get_mut(&carrier)?.get_mut(&id)?;
        call.details = call.details.or(details);
        let mut events = read(&mut call.reader);
        for event in &mut events {
            if let GrpcEvent::Close(_, message) = event {
                with_details(message, call.details);
            }
        }
        Some((Delivery { caller: call.caller.clone(), token: call.token, events }, call.reader.is_closed()))
    })?;
    if closed {
        forget(carrier, id);
        if !ends_stream {
            reset(carrier, id);
        }
    }
    Some(delivery)
}

/// Envoy's response code details for a call's answer, as Envoy's gRPC client adds them to
/// the status message: an answer from the upstream has the router's
/// `x-envoy-upstream-service-time`; the router's own answer to a call past its deadline says
/// so. (Other local answers' details do not show.)
fn details(headers: &Pairs) -> Option<&'static str> {
    let has = |name: &[u8], value: Option<&[u8]>| {
        headers.iter().any(|(k, v)| k == name && value.is_none_or(|value| v == value))
    };
    if has(b"x-envoy-upstream-service-time", None) {
        Some("via_upstream")
    } else if has(b"grpc-message", Some(grpc_client::DEADLINE_MESSAGE.as_bytes())) {
        Some("response_timeout")
    } else {
        None
    }
}

/// Envoy's stream `id` ended without the call having ended (Envoy's gRPC client makes this
/// a failure too).
pub fn ended(carrier: Carrier, id: u64) -> Option<Delivery> {
    read(carrier, id, true, None, |reader| reader.on_reset())
}

/// The carrier is gone, and with it its streams (Envoy resets them): each call still open
/// ends UNAVAILABLE for the root context that made it (a stream's own calls ended with it).
pub fn carrier_ended(carrier: Carrier) -> Vec<Delivery> {
    let calls = CALLS.with(|calls| {
        let mut calls = calls.borrow_mut();
        // (Most streams carry no call: then nothing is hashed or allocated.)
        if calls.by_stream.is_empty() {
            return HashMap::new();
        }
        let streams = calls.by_stream.remove(&carrier).unwrap_or_default();
        for call in streams.values() {
            calls.by_token.remove(&(vm_key(&call.caller), call.token));
        }
        streams
    });
    if calls.is_empty() {
        return Vec::new();
    }
    let message = "the request that carried the call ended".to_string();
    calls
        .into_values()
        .map(|call| Delivery {
            events: vec![GrpcEvent::Close(inwasm_host::grpc::status::UNAVAILABLE, message.clone())],
            caller: call.caller,
            token: call.token,
        })
        .collect()
}

impl Delivery {
    /// Hands the events to the caller's VM (`vm`, borrowed by the caller of this).
    pub fn deliver(self, vm: &mut Vm) -> Result<(), inwasm_host::FilterError> {
        let (plugin, token) = (self.caller.plugin, self.token);
        self.events.into_iter().try_for_each(|event| vm.on_grpc_event(plugin, token, event))
    }
}
