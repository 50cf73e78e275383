//! Errors a user sees: why a module cannot be loaded, and why a filter call failed.

use std::fmt;
use std::time::Duration;

use wasmtime::{FrameInfo, Trap, WasmBacktrace};

use crate::limits::DeadlineExceeded;
use crate::wasi::ProcExit;

/// Why a module could not be compiled or accepted. `module` names the file or module;
/// `limit` the instance limit it does not fit in, when that is why (the proxy names the
/// setting that raises it).
#[derive(Debug)]
pub struct LoadError {
    pub module: String,
    pub reason: String,
    pub limit: Option<InstanceLimit>,
}

/// An engine-wide limit on instances (see [`PoolingConfig`](crate::PoolingConfig)), or a
/// VM's memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceLimit {
    TableElements,
    Tables,
    Memory,
}

impl LoadError {
    pub(crate) fn new(module: &str, reason: impl Into<String>) -> LoadError {
        LoadError { module: module.to_string(), reason: reason.into(), limit: None }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wasm module \"{}\": {}", self.module, self.reason)
    }
}

impl std::error::Error for LoadError {}

/// How a filter call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (a panic in the SDKs ends as `unreachable`); message and backtrace.
    Trap(String),
    /// The callback ran past its budget and was interrupted.
    Deadline(Duration),
    /// The stream's callbacks together ran past its request's budget.
    RequestBudget(Duration),
    /// The guest tried to grow its memory past the limit (in bytes).
    MemoryLimit(usize),
    /// The guest called WASI `proc_exit`.
    Exit(i32),
    /// The filter refused its configuration (`on_vm_start`/`on_configure` returned false).
    Refused,
    /// The instance this stream ran on failed earlier; the stream cannot continue.
    InstanceLost,
    /// A new instance could not be created.
    Instantiation(String),
    /// A new instance could not be created because every slot of the process's instance
    /// pool is taken: releasing an idle instance makes room.
    NoFreeSlot(String),
}

/// Which failure counter a failure adds to, the same in every proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCounter {
    Traps,
    /// A callback's deadline or a request's budget.
    Timeouts,
    MemoryFailures,
}

impl FailureKind {
    /// The counter this failure adds to; none for one that only follows an earlier failure
    /// (a lost instance).
    pub fn counter(&self) -> Option<FailureCounter> {
        match self {
            FailureKind::Deadline(_) | FailureKind::RequestBudget(_) => Some(FailureCounter::Timeouts),
            FailureKind::MemoryLimit(_) => Some(FailureCounter::MemoryFailures),
            FailureKind::InstanceLost => None,
            _ => Some(FailureCounter::Traps),
        }
    }
}

/// A failed filter call: which filter, which callback, and why. The instance it ran on is
/// discarded and rebuilt on next use (except for `Refused`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub filter: String,
    pub callback: &'static str,
    pub kind: FailureKind,
}

impl FilterError {
    pub fn is_timeout(&self) -> bool {
        self.kind.counter() == Some(FailureCounter::Timeouts)
    }
    pub fn is_memory_limit(&self) -> bool {
        self.kind.counter() == Some(FailureCounter::MemoryFailures)
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter \"{}\" ", self.filter)?;
        match &self.kind {
            FailureKind::Trap(message) => write!(f, "trapped in {}: {message}", self.callback),
            FailureKind::Deadline(limit) => {
                write!(f, "exceeded its deadline of {} ms in {}", limit.as_millis(), self.callback)
            }
            FailureKind::RequestBudget(limit) => write!(
                f,
                "exceeded its request budget of {} ms (all its callbacks for one request) in {}",
                limit.as_millis(),
                self.callback
            ),
            FailureKind::MemoryLimit(limit) => {
                write!(f, "exceeded its memory limit of {} bytes in {}", limit, self.callback)
            }
            FailureKind::Exit(code) => write!(f, "exited with code {code} in {}", self.callback),
            FailureKind::Refused => write!(f, "rejected its configuration ({} returned false)", self.callback),
            FailureKind::InstanceLost => write!(f, "lost its instance to an earlier failure ({})", self.callback),
            FailureKind::Instantiation(reason) => write!(f, "could not be instantiated: {reason}"),
            FailureKind::NoFreeSlot(reason) => {
                write!(f, "could not be instantiated: {reason} (every instance slot of this process is in use)")
            }
        }
    }
}

impl std::error::Error for FilterError {}

/// Classifies an error that ended a guest call.
pub(crate) fn classify(error: &wasmtime::Error, timeout: Duration, memory_refused: Option<usize>) -> FailureKind {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return FailureKind::Deadline(timeout);
    }
    if let Some(exit) = error.downcast_ref::<ProcExit>() {
        return FailureKind::Exit(exit.0);
    }
    if let Some(limit) = memory_refused {
        return FailureKind::MemoryLimit(limit);
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => format!("stack overflow: {}", describe(error)),
        _ => describe(error),
    };
    FailureKind::Trap(message)
}

/// How many of a failure's innermost and outermost wasm frames its message shows.
const INNER_FRAMES: usize = 8;
const OUTER_FRAMES: usize = 4;

/// An error on one line for a log: its causes, outermost first, then the wasm frames it
/// went through, innermost first (the outermost, unless the trace was cut, is the callback
/// the host called). Never the host's own Rust backtrace, which wasmtime captures when
/// RUST_BACKTRACE is set: that says nothing about the filter.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let trace = error.downcast_ref::<WasmBacktrace>();
    let trace_text = trace.map(|t| t.to_string());
    let causes: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| Some(cause) != trace_text.as_ref())
        .map(|cause| cause.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut line = causes.join(": ");
    if let Some(frames) = trace.map(WasmBacktrace::frames).filter(|f| !f.is_empty()) {
        let shown: Vec<String> = if frames.len() > INNER_FRAMES + OUTER_FRAMES {
            let inner = frames[..INNER_FRAMES].iter().map(frame);
            let skipped = format!("({} more)", frames.len() - INNER_FRAMES - OUTER_FRAMES);
            let outer = frames[frames.len() - OUTER_FRAMES..].iter().map(frame);
            inner.chain(std::iter::once(skipped)).chain(outer).collect()
        } else {
            frames.iter().map(frame).collect()
        };
        line.push_str("; wasm backtrace: ");
        line.push_str(&shown.join(" < "));
    }
    line
}

/// A wasm frame as `function@0xoffset` (the offset into the module's bytes), its name
/// demangled when it is a Rust or C++ symbol.
fn frame(frame: &FrameInfo) -> String {
    let name = match frame.func_name() {
        Some(name) => demangle(name),
        None => format!("func[{}]", frame.func_index()),
    };
    match frame.module_offset() {
        Some(offset) => format!("{name}@{offset:#x}"),
        None => name,
    }
}

/// The longest function name a message shows (names come from the filter, so any length).
const NAME_CHARS: usize = 200;

fn demangle(name: &str) -> String {
    let name = if let Ok(rust) = rustc_demangle::try_demangle(name) {
        format!("{rust:#}")
    } else if let Some(cpp) = name.starts_with("_Z").then(|| cpp_demangle::Symbol::new(name).ok()).flatten() {
        cpp.demangle().unwrap_or_else(|_| name.to_string())
    } else {
        name.to_string()
    };
    match name.char_indices().nth(NAME_CHARS) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name,
    }
}
