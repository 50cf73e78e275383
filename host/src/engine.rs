//! The engine: wasmtime configured for proxy filters, and the linker with every host function.
//!
//! Create it where modules are compiled (for nginx: the master, at config load). It starts no
//! thread: wasmtime's parallel compilation is not built in, and the epoch ticker that drives
//! deadlines is started separately, by the process that runs filters.
//!
//! Each module a process instantiates keeps one open file there (the memory image its
//! instances map copy-on-write, made at its first instance), so the engine raises the
//! process's soft open-file limit to its hard limit, as Go's runtime does: a thousand modules
//! would not fit under the usual soft limit of 1024 (nginx's check of every filter at
//! configuration time instantiates them all).

use std::sync::Arc;

use wasmtime::{Config, Enabled, Extern, InstanceAllocationStrategy, Linker, PoolingAllocationConfig, Store, ValType};

use crate::function_cache::FunctionCache;
use crate::limits::MemoryLimiter;
use crate::plugin::{VmConfig, DEFAULT_MEMORY_LIMIT};
use crate::session::HostState;
use crate::ticker::Activity;
use crate::types::AbiVersion;

/// Sizes of the pooling allocator, which makes instantiation a matter of microseconds by
/// reusing pre-reserved slots and copy-on-write memory images.
#[derive(Clone, Debug)]
pub struct PoolingConfig {
    /// Instances alive at once (per process).
    pub max_instances: u32,
    /// The largest linear memory any instance may have; no VM's memory limit may exceed it.
    pub max_memory: usize,
    /// Bytes of each freed instance's memory (and table) reset in place rather than given
    /// back to the kernel: a slot used again then takes no page faults for them, and no
    /// `madvise` (whose TLB flush reaches every thread). Only dirty pages are reset where
    /// the kernel can tell them apart (Linux 6.7's PAGEMAP_SCAN).
    pub keep_resident: usize,
    /// The most elements a module's table may have (upstream Go puts nearly every function
    /// in table 0: a WAF with its rule engine has 20,114), and the most tables.
    pub max_table_elements: usize,
    pub max_tables: u32,
    /// The most an instance's own state (globals, function references) may take.
    pub max_instance_size: usize,
}

/// Default pool limits, sized for real modules (large Go, .NET, Python-in-wasm filters):
/// they only reserve address space, which is plentiful.
pub const DEFAULT_MAX_TABLE_ELEMENTS: usize = 1 << 18;
pub const DEFAULT_MAX_INSTANCE_SIZE: usize = 16 << 20;

impl Default for PoolingConfig {
    fn default() -> Self {
        PoolingConfig {
            max_instances: 1000,
            max_memory: DEFAULT_MEMORY_LIMIT,
            keep_resident: 1 << 20,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            max_tables: 4,
            max_instance_size: DEFAULT_MAX_INSTANCE_SIZE,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Enforce callback deadlines with epoch interruption (a small cost on every loop).
    pub deadlines: bool,
    /// `None` allocates each instance on demand.
    pub pooling: Option<PoolingConfig>,
    /// Keep each function compiled, so modules sharing it compile it once: for processes
    /// that compile many modules and end (or call [`Engine::forget_compiled_functions`]),
    /// as what is kept stays in memory (up to 256 MiB).
    pub share_compiled_functions: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { deadlines: true, pooling: Some(PoolingConfig::default()), share_compiled_functions: false }
    }
}

/// A configured wasmtime engine and the linker that provides the proxy-wasm and WASI imports.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    /// Marked by callbacks, so the epoch ticker can sleep while none runs.
    activity: Arc<Activity>,
    function_cache: Option<Arc<FunctionCache>>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> wasmtime::Result<Engine> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(config.deadlines);
        if let Some(pooling) = &config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_core_instances(pooling.max_instances)
                .total_memories(pooling.max_instances)
                .total_tables(pooling.max_instances)
                .max_memory_size(pooling.max_memory)
                .table_elements(pooling.max_table_elements)
                .max_tables_per_module(pooling.max_tables)
                .max_core_instance_size(pooling.max_instance_size)
                .linear_memory_keep_resident(pooling.keep_resident)
                .table_keep_resident(pooling.keep_resident)
                .pagemap_scan(Enabled::Auto);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let function_cache = config.share_compiled_functions.then(Arc::<FunctionCache>::default);
        if let Some(cache) = &function_cache {
            wasm.enable_incremental_compilation(cache.clone())?;
        }
        raise_open_file_limit();
        let wasmtime = wasmtime::Engine::new(&wasm)?;
        let mut linker = Linker::new(&wasmtime);
        crate::abi::add_to_linker(&mut linker)?;
        crate::wasi::add_to_linker(&mut linker)?;
        let activity = Arc::default();
        Ok(Engine { inner: Arc::new(EngineInner { wasmtime, linker, config, activity, function_cache }) })
    }

    /// Frees the functions kept for compiling (see [`EngineConfig::share_compiled_functions`]).
    pub fn forget_compiled_functions(&self) {
        if let Some(cache) = &self.inner.function_cache {
            cache.clear();
        }
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.inner.activity
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Every function the host provides to modules (the proxy-wasm ABI under `env`, WASI under
    /// `wasi_snapshot_preview1` and `wasi_unstable`), with its type.
    pub fn host_functions(&self) -> Vec<HostFunction> {
        let state = HostState::new(AbiVersion::V0_2_1, Arc::new(VmConfig::default()), MemoryLimiter::new(0));
        let mut store = Store::new(&self.inner.wasmtime, state);
        let mut found: Vec<(String, String, Extern)> = Vec::new();
        for (module, name, item) in self.inner.linker.iter(&mut store) {
            found.push((module.to_string(), name.to_string(), item));
        }
        found
            .into_iter()
            .filter_map(|(module, name, item)| {
                let ty = item.into_func()?.ty(&store);
                Some(HostFunction { module, name, params: ty.params().collect(), results: ty.results().collect() })
            })
            .collect()
    }
}

/// Raises the soft limit on open files to the hard limit (nothing when it is there already).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: both calls only read or write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A function the host provides: where modules import it from, and its type.
#[derive(Clone, Debug)]
pub struct HostFunction {
    pub module: String,
    pub name: String,
    pub params: Vec<ValType>,
    pub results: Vec<ValType>,
}
