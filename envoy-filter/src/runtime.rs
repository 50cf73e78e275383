//! Process-wide pieces: the wasmtime engine, the epoch ticker that enforces deadlines, and
//! the shared data and queues every worker thread sees.
//!
//! Envoy is one process with worker threads, so unlike nginx there is no fork to fear: the
//! ticker thread starts with the first filter configuration and runs for the process's life.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use inwasm_host::stores::{QueueStore, SharedDataStore};
use inwasm_host::{
    content_digest, CacheOutcome, CodeCache, Engine, EngineConfig, EpochTicker, LoadError, LogLevel, Module,
    DEFAULT_TIMEOUT,
};

use crate::log;
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

/// The compiled module of a `.wasm` or `.wat` file (on Envoy's main thread, at config load):
/// each distinct content compiled once in the process, whatever the filter configurations
/// naming it, and through the compiled-code cache in `cache_dir` (an unusable directory only
/// costs the cache, with a warning).
pub fn compile(path: &Path, cache_dir: Option<&Path>) -> Result<Arc<Module>, String> {
    static COMPILED: Mutex<Vec<([u8; 32], Arc<Module>)>> = Mutex::new(Vec::new());
    let engine = &runtime()?.engine;
    let bytes = Module::read_file(path).map_err(|e: LoadError| e.to_string())?;
    let digest = content_digest(&bytes);
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, module)) = compiled.iter().find(|(known, _)| *known == digest) {
        return Ok(module.clone());
    }
    let cache = cache_dir.and_then(|dir| match std::fs::create_dir_all(dir) {
        Ok(()) => Some(CodeCache::new(dir)),
        Err(error) => {
            log::line(LogLevel::Warn, &format!("inwasm: no compiled-code cache in {}: {error}", dir.display()));
            None
        }
    });
    let started = Instant::now();
    let module = Module::with_digest(engine, &path.display().to_string(), &bytes, cache.as_ref().map(|c| (c, digest)))
        .map_err(|e| e.to_string())?;
    let how = match module.cache_outcome() {
        CacheOutcome::Hit => "loaded from the compiled-code cache",
        CacheOutcome::Disabled => "compiled",
        CacheOutcome::Miss | CacheOutcome::Replaced(_) => "compiled and cached",
    };
    log::line(LogLevel::Info, &format!("inwasm: module {}: {how} in {:.2?}", path.display(), started.elapsed()));
    compiled.push((digest, module.clone()));
    Ok(module)
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
