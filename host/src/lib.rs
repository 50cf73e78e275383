//! inwasm-host: a proxy-wasm host on wasmtime that knows nothing about any proxy.
//!
//! A proxy compiles modules once ([`Engine`], [`Module`]), instantiates them per worker or
//! per request ([`Vm`]), and implements [`Embedding`] for each context so filters can reach
//! headers, bodies, properties, calls, timers, shared data, queues and metrics. The host does
//! the ABI (0.1.0, 0.2.0 and 0.2.1), guest memory access, the lifecycle and the limits.
//!
//! Where to look: `abi/` holds the host functions, one file per ABI area; `wasi.rs` the
//! sandboxed WASI; `vm.rs` the lifecycle; `module.rs` compilation and vetting; `recycling.rs`, `snapshot.rs` and `page_scan.rs` returning an
//! instance to its state after start-up, `kept.rs` the instances kept for a filter's isolated requests; `cache.rs` the
//! compiled-code cache; `limits.rs` deadlines and memory caps; `ticker.rs` the epoch ticker; `session.rs` per-instance state.
//!
//! Without its default feature `runtime` the crate is only the ABI's types, wire formats,
//! configuration and embedding traits, with no wasmtime (for fuzzing them alone).

mod embedding;
pub mod grpc;
pub mod grpc_client;
pub mod http1_client;
mod pairs;
mod plugin;
pub mod serialization;
pub mod stores;
mod types;

/// Items that need the wasmtime runtime (the `runtime` feature).
macro_rules! with_runtime {
    ($($item:item)*) => { $(#[cfg(feature = "runtime")] $item)* };
}

with_runtime! {
    mod abi;
    mod cache;
    mod callbacks;
    mod engine;
    mod error;
    mod function_cache;
    mod guest;
    mod kept;
    mod limits;
    mod module;
    mod page_scan;
    mod recycling;
    mod session;
    mod snapshot;
    mod ticker;
    pub mod testing;
    mod vm;
    mod wasi;
}

pub use embedding::*;
pub use pairs::Pairs;
pub use plugin::{
    default_request_budget, PluginConfig, StreamLimits, VmConfig, DEFAULT_BACKGROUND_TIMEOUT, DEFAULT_MEMORY_LIMIT,
    DEFAULT_START_TIMEOUT, DEFAULT_TIMEOUT,
};
pub use types::*;

with_runtime! {
    pub use cache::{content_digest, CacheOutcome, CodeCache};
    pub use engine::{
        Engine, EngineConfig, HostFunction, PoolingConfig, DEFAULT_MAX_INSTANCE_SIZE, DEFAULT_MAX_TABLE_ELEMENTS,
    };
    pub use error::{FailureCounter, FailureKind, FilterError, InstanceLimit, LoadError};
    pub use ticker::EpochTicker;
    pub use kept::KeptInstances;
    pub use module::Module;
    pub use snapshot::NotResettable;
    pub use vm::{PluginId, StreamId, Vm, VmStats};
}
