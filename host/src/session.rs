//! Per-instance state: the store data every host function works on.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Memory, TypedFunc};

use crate::embedding::Embedding;
use crate::limits::{Deadline, MemoryLimiter};
use crate::plugin::{PluginConfig, VmConfig};
use crate::types::{AbiVersion, LogLevel, Status};
use crate::Pairs;
use crate::wasi::WasiState;

/// Hashes the host's small integer ids (context ids, call tokens) with one multiply: they
/// are looked up on every host call, where SipHash costs more than the lookup.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.write_u8(*b));
    }
    fn write_u8(&mut self, b: u8) {
        self.write_u64(u64::from(b));
    }
    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits hashbrown uses.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Properties a filter set on a context.
pub(crate) type Properties = HashMap<Vec<u8>, Vec<u8>, BuildHasherDefault<DefaultHasher>>;

/// One proxy-wasm context: a plugin's root context or a stream under it.
pub(crate) struct Context {
    /// The root context this one belongs to (itself for a root context).
    pub root_id: u32,
    pub embedding: Box<dyn Embedding>,
    /// Properties a filter set that the embedding did not take. Hashed with fixed keys: a
    /// filter only slows its own lookups, and a map with random keys reads a thread-local
    /// to make, on every stream.
    pub properties: Properties,
    /// This context's callback budget, when it differs from its plugin's.
    pub timeout: Option<Duration>,
    /// A stream's budget across all its callbacks (its request's), and what is left of it.
    pub request_budget: Option<Duration>,
    pub budget_left: Option<Duration>,
}

impl Context {
    pub fn new(root_id: u32, embedding: Box<dyn Embedding>) -> Context {
        let (timeout, request_budget, budget_left) = (None, None, None);
        Context { root_id, embedding, properties: HashMap::default(), timeout, request_budget, budget_left }
    }
}

/// Data only valid during one callback (an http call's response, a gRPC message, ...).
#[derive(Default)]
pub(crate) struct CallData {
    pub http_response_headers: Pairs,
    pub http_response_body: Vec<u8>,
    pub http_response_trailers: Pairs,
    pub grpc_metadata: Pairs,
    pub grpc_message: Vec<u8>,
    pub foreign_args: Vec<u8>,
    /// The buffer `proxy_get_configuration` (ABI 0.1.0) returns in this callback.
    pub configuration: Option<Vec<u8>>,
}

/// The kinds of outgoing calls, which Envoy numbers apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    Http = 0,
    GrpcCall = 1,
    GrpcStream = 2,
}

impl CallKind {
    fn noun(self) -> &'static str {
        match self {
            CallKind::Http => "http call",
            CallKind::GrpcCall => "gRPC call",
            CallKind::GrpcStream => "gRPC stream",
        }
    }
}

/// The most calls one context (a stream, or a root) may have in flight at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

/// What the guest sees through `proxy_get_status`: the outcome of the last call it made.
pub(crate) struct CallStatus {
    pub code: u32,
    pub message: Vec<u8>,
}

/// The fields every callback and host call touches come first, in declaration order
/// (`repr(C)`), so that they share a few cache lines: between a request's phases the
/// kernel's network path evicts them, and each line is a miss.
#[repr(C)]
pub(crate) struct HostState {
    /// The context the host called into, and the one host calls act on.
    pub current_context: u32,
    pub effective_context: u32,
    /// The running callback answered with a local response (the stream must stop).
    pub local_response_sent: bool,
    /// A call was refused for too many in flight, and said so, in the running callback.
    pub call_refusal_logged: bool,
    /// When the running callback must stop; checked on each epoch tick.
    pub deadline: Deadline,
    pub limiter: MemoryLimiter,
    pub contexts: IdMap<Context>,
    pub memory: Option<Memory>,
    pub allocator: Option<TypedFunc<i32, i32>>,
    pub wasi: WasiState,
    pub abi: AbiVersion,
    pub vm: Arc<VmConfig>,
    pub plugins: IdMap<Arc<PluginConfig>>,
    pub call: CallData,
    pub status: CallStatus,
    /// Calls issued so far, by kind (see `take_token`).
    pub next_token: [u32; 3],
    /// Http/gRPC calls this instance issued that have not completed: token, and the context
    /// that issued it (a stream's calls are dropped when it ends, as Envoy cancels them).
    pub pending_calls: IdMap<u32>,
    /// Host functions already reported as unimplemented by the embedding.
    pub unimplemented_reported: HashSet<&'static str>,
    /// Lines logged before any context existed (during start-up), handed to the first root.
    pub startup_log: Vec<(LogLevel, String)>,
    /// Where a header value is copied on its way to the guest, kept so that reading a header
    /// allocates nothing on the host.
    pub header_value: Vec<u8>,
}

impl HostState {
    pub fn new(abi: AbiVersion, vm: Arc<VmConfig>, limiter: MemoryLimiter) -> HostState {
        let wasi = WasiState::new(&vm.environment);
        HostState {
            abi,
            vm,
            contexts: IdMap::default(),
            plugins: IdMap::default(),
            current_context: 0,
            effective_context: 0,
            call: CallData::default(),
            status: CallStatus { code: Status::Ok as u32, message: Vec::new() },
            next_token: [0; 3],
            pending_calls: IdMap::default(),
            memory: None,
            allocator: None,
            limiter,
            deadline: Deadline::None,
            wasi,
            call_refusal_logged: false,
            unimplemented_reported: HashSet::new(),
            local_response_sent: false,
            startup_log: Vec::new(),
            header_value: Vec::new(),
        }
    }

    pub fn effective(&mut self) -> Result<&mut Context, Status> {
        self.contexts.get_mut(&self.effective_context).ok_or(Status::NotFound)
    }

    /// The root context of the effective context (where calls, timers and queues live).
    pub fn effective_root(&mut self) -> Result<&mut Context, Status> {
        let root_id = self.effective()?.root_id;
        self.contexts.get_mut(&root_id).ok_or(Status::NotFound)
    }

    /// The plugin of the effective context.
    pub fn effective_plugin(&self) -> Option<&Arc<PluginConfig>> {
        let root_id = self.contexts.get(&self.effective_context)?.root_id;
        self.plugins.get(&root_id)
    }

    /// Logs through the effective context (or any context when none is current), filtered
    /// by the embedding's level. Before any context exists the line is kept for the first.
    pub fn log(&mut self, level: LogLevel, message: &str) {
        let id = self.effective_context;
        let context = match self.contexts.get_mut(&id) {
            Some(context) => context,
            None => match self.contexts.values_mut().next() {
                Some(context) => context,
                None => return self.startup_log.push((level, message.to_string())),
            },
        };
        if level >= context.embedding.log_level() {
            context.embedding.log(level, message);
        }
    }

    /// The effective context's clock, or the system's before any context exists.
    pub fn now(&mut self) -> std::time::SystemTime {
        self.effective().map(|c| c.embedding.now()).unwrap_or_else(|_| std::time::SystemTime::now())
    }

    /// A token for a new outgoing call of the effective context, unless that context has
    /// `MAX_CALLS_IN_FLIGHT` already (then InternalFailure, said once per callback).
    pub fn start_call(&mut self, kind: CallKind) -> Result<u32, Status> {
        let caller = self.effective_context;
        if self.pending_calls.values().filter(|context| **context == caller).count() >= MAX_CALLS_IN_FLIGHT {
            if !std::mem::replace(&mut self.call_refusal_logged, true) {
                let message = format!("{} refused: a context may have {MAX_CALLS_IN_FLIGHT} calls in flight", kind.noun());
                self.log(LogLevel::Warn, &message);
            }
            return Err(Status::InternalFailure);
        }
        Ok(self.take_token(kind))
    }

    /// The kind of call `token` is (the kinds are numbered apart).
    pub fn call_kind(token: u32) -> Option<CallKind> {
        [CallKind::Http, CallKind::GrpcCall, CallKind::GrpcStream].into_iter().find(|kind| token % 4 == *kind as u32)
    }

    /// A fresh token for an outgoing call, remembered until its outcome is delivered.
    /// Numbered as Envoy does: each kind counts on its own, in steps of 4 from its offset
    /// (http calls 4, 8, 12, ...; gRPC calls 5, 9, ...; gRPC streams 6, 10, ...).
    fn take_token(&mut self, kind: CallKind) -> u32 {
        let count = &mut self.next_token[kind as usize];
        *count = count.wrapping_add(1).max(1);
        let token = count.wrapping_mul(4).wrapping_add(kind as u32);
        self.pending_calls.insert(token, self.effective_context);
        token
    }
}
