//! What one Envoy stream shares between its filter (which drives the callbacks) and its
//! embedding (what the guest reaches), and the actions the guest asked for that must wait
//! until the guest has returned.
//!
//! A local response or a resumed stream makes Envoy run more of the filter chain at once,
//! this filter's own response callbacks included. Doing that while the guest runs would
//! re-enter its instance, so (as Envoy's Wasm filter does) such actions are queued and run
//! right after each guest call, from the hook that made it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use inwasm_host::{grpc, LocalResponse, Pairs, PluginId, Vm};

use crate::abi::{self, header_type, FilterEnvoyPtr, ModuleBuffer, ModuleHeader};
use crate::body::Direction;
use crate::headers;

/// An http call issued through this stream on behalf of a root context.
pub struct Callout {
    pub vm: Weak<RefCell<Vm>>,
    pub plugin: PluginId,
    pub token: u32,
}

pub struct StreamState {
    pub envoy: FilterEnvoyPtr,
    /// The body event running now, if any (only then does Envoy have "received" data).
    pub body_event: Option<Direction>,
    /// This filter paused the body in that direction: Envoy buffers it.
    pub buffering: [bool; 2],
    /// This filter stopped Envoy's iteration in that direction and has not continued it.
    pub paused: [bool; 2],
    /// The response headers went on: a failure can no longer answer 500.
    pub response_started: bool,
    /// The filter has had `on_response_headers`.
    pub response_seen: bool,
    /// Envoy completed the stream: no more actions on it.
    pub completed: bool,
    /// A local response on its way through this filter's own response callbacks (Envoy does
    /// not run them for a response the filter sent): its headers, with `:status`, and body.
    pub local_response: Option<(Pairs, Vec<u8>)>,
    pub callouts: HashMap<u64, Callout>,
}

pub type SharedStream = Rc<RefCell<StreamState>>;

impl StreamState {
    pub fn new(envoy: FilterEnvoyPtr) -> SharedStream {
        Rc::new(RefCell::new(StreamState {
            envoy,
            body_event: None,
            buffering: [false; 2],
            paused: [false; 2],
            response_started: false,
            response_seen: false,
            completed: false,
            local_response: None,
            callouts: HashMap::new(),
        }))
    }
}

/// What the guest asked of a stream.
pub enum Action {
    Respond(LocalResponse),
    ContinueRequest,
    ContinueResponse,
    Reset,
    /// Something for the instance the guest was running in when Envoy asked it.
    Call(Box<dyn FnOnce()>),
}

thread_local! {
    static PENDING: RefCell<VecDeque<(SharedStream, Action)>> = const { RefCell::new(VecDeque::new()) };
    static CURRENT: RefCell<Option<SharedStream>> = const { RefCell::new(None) };
}

pub fn defer(stream: &SharedStream, action: Action) {
    PENDING.with(|p| p.borrow_mut().push_back((stream.clone(), action)));
}

/// Takes back a queued continue of `stream` in `direction`: the guest resumed the stream
/// during the very callback that paused it, so the callback simply continues.
pub fn take_continue(stream: &SharedStream, direction: Direction) -> bool {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let found = pending.iter().position(|(s, a)| Rc::ptr_eq(s, stream) && a.continues() == Some(direction));
        found.map(|index| pending.remove(index)).is_some()
    })
}

/// Takes back a queued local response of `stream` (to run it through the filter first).
pub fn take_local_response(stream: &SharedStream) -> Option<LocalResponse> {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let index = pending.iter().position(|(s, a)| Rc::ptr_eq(s, stream) && matches!(a, Action::Respond(_)))?;
        match pending.remove(index) {
            Some((_, Action::Respond(response))) => Some(response),
            _ => None,
        }
    })
}

/// Runs the queued actions (some make Envoy call this module's hooks again, which may queue
/// and run more). A continue only goes to a stream this filter has stopped.
pub fn run_deferred() {
    while let Some((stream, action)) = PENDING.with(|p| p.borrow_mut().pop_front()) {
        let envoy = {
            let mut state = stream.borrow_mut();
            if state.completed {
                continue;
            }
            if let Some(direction) = action.continues() {
                if !std::mem::take(&mut state.paused[direction.index()]) {
                    continue;
                }
            }
            state.envoy
        };
        // SAFETY: a stream that has not completed is live (Envoy completes a stream before it
        // destroys its filter), and actions are only queued for streams of this thread.
        unsafe { perform(envoy, action) };
    }
}

impl Action {
    fn continues(&self) -> Option<Direction> {
        match self {
            Action::ContinueRequest => Some(Direction::Request),
            Action::ContinueResponse => Some(Direction::Response),
            _ => None,
        }
    }
}

/// Does `action` on the stream.
///
/// # Safety
/// `envoy` must be a live stream of this thread.
unsafe fn perform(envoy: FilterEnvoyPtr, action: Action) {
    // SAFETY: a live stream of this thread (per the caller); the headers and buffers outlive
    // `send_response`, which copies them.
    unsafe {
        match action {
            Action::Respond(response) => {
                // Envoy makes a local reply to a gRPC request a gRPC one (HTTP 200, the body as
                // `grpc-message`); the status it takes from a `grpc-status` header, if any.
                let grpc_status = is_grpc_request(envoy)
                    .then(|| response.grpc_status_code().to_string().into_bytes())
                    .filter(|_| response.headers.first_value(b"grpc-status").is_none());
                let mut headers: Vec<ModuleHeader> = response
                    .headers
                    .iter()
                    .filter(|(k, _)| k.first() != Some(&b':'))
                    .map(|(k, v)| ModuleHeader::of(k, v))
                    .chain(grpc_status.as_ref().map(|status| ModuleHeader::of(b"grpc-status", status)))
                    .collect();
                abi::envoy_dynamic_module_callback_http_send_response(
                    envoy,
                    response.status,
                    headers.as_mut_ptr(),
                    headers.len(),
                    ModuleBuffer::of(&response.body),
                    ModuleBuffer::of(&response.details),
                );
            }
            Action::ContinueRequest => abi::envoy_dynamic_module_callback_http_filter_continue_decoding(envoy),
            Action::ContinueResponse => abi::envoy_dynamic_module_callback_http_filter_continue_encoding(envoy),
            Action::Reset => {
                abi::envoy_dynamic_module_callback_http_filter_reset_stream(envoy, 0, ModuleBuffer::of(b""))
            }
            Action::Call(call) => call(),
        }
    }
}

/// Whether the stream's request is gRPC (by its `content-type`).
///
/// # Safety
/// `envoy` must be a live stream of this thread.
unsafe fn is_grpc_request(envoy: FilterEnvoyPtr) -> bool {
    // SAFETY: per the caller; the value is read at once.
    let content_type = unsafe { headers::value(envoy, header_type::REQUEST_HEADERS, b"content-type") };
    content_type.is_some_and(grpc::is_grpc_content_type)
}

/// Marks `stream` as the one this thread's hook serves while the guard lives: root contexts
/// issue their http calls through it.
pub struct Entered(Option<SharedStream>);

pub fn enter(stream: &SharedStream) -> Entered {
    Entered(CURRENT.with(|c| c.replace(Some(stream.clone()))))
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.0.take());
    }
}

/// The stream this thread's current hook serves.
pub fn current() -> Option<SharedStream> {
    CURRENT.with(|c| c.borrow().clone())
}
