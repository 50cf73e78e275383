//! Process-wide pieces: the wasmtime engine, the epoch ticker that enforces deadlines, and
//! the shared data and queues every worker thread sees.
//!
//! Envoy is one process with worker threads, so unlike nginx there is no fork to fear: the
//! ticker thread starts with the first filter configuration and runs for the process's life.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use inwasm_host::stores::{QueueStore, SharedDataStore};
use inwasm_host::{Engine, EngineConfig, EpochTicker, LoadError, Module, DEFAULT_TIMEOUT};

use crate::mailbox::Mailbox;

struct Runtime {
    engine: Engine,
    /// Ticks as often as the shortest budget of any filter configured so far needs.
    ticker: EpochTicker,
    shared_data: SharedDataStore,
    queues: QueueStore<Arc<Mailbox>>,
}

fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let engine = Engine::new(EngineConfig::default()).map_err(|e| format!("wasmtime engine: {e}"))?;
            let period = EpochTicker::period_for(DEFAULT_TIMEOUT);
            let ticker = EpochTicker::start(&engine, period).map_err(|e| format!("deadline ticker: {e}"))?;
            Ok(Runtime { engine, ticker, shared_data: SharedDataStore::default(), queues: QueueStore::default() })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Compiles a `.wasm` or `.wat` file once (on Envoy's main thread, at config load).
pub fn compile(path: &std::path::Path) -> Result<Arc<Module>, String> {
    let engine = &runtime()?.engine;
    Module::from_file(engine, path, None).map_err(|e: LoadError| e.to_string())
}

/// Makes deadlines precise enough for a filter whose callbacks have `budget`.
pub fn keep_deadlines_for(budget: Option<Duration>) {
    if let (Ok(runtime), Some(budget)) = (runtime(), budget) {
        runtime.ticker.tighten(EpochTicker::period_for(budget));
    }
}

/// Shared data of every filter in the process, keyed by VM id and key.
pub fn shared_data() -> &'static SharedDataStore {
    &runtime().expect("the runtime exists once a filter is configured").shared_data
}

/// Shared queues of every filter in the process; each queue's owner is the mailbox of the
/// root context to tell about new items.
pub fn queues() -> &'static QueueStore<Arc<Mailbox>> {
    &runtime().expect("the runtime exists once a filter is configured").queues
}
