//! inwasm-host: a proxy-wasm host on wasmtime that knows nothing about any proxy.
//!
//! A proxy compiles modules once ([`Engine`], [`Module`]), instantiates them per worker or
//! per request ([`Vm`]), and implements [`Embedding`] for each context so filters can reach
//! headers, bodies, properties, calls, timers, shared data, queues and metrics. The host does
//! the ABI (0.1.0, 0.2.0 and 0.2.1), guest memory access, the lifecycle and the limits.
//!
//! Where to look: `abi/` holds the host functions, one file per ABI area; `wasi.rs` the
//! sandboxed WASI; `vm.rs` the lifecycle; `module.rs` compilation and vetting; `cache.rs` the
//! compiled-code cache; `limits.rs` deadlines and memory caps; `session.rs` per-instance state.

mod abi;
mod cache;
mod callbacks;
mod embedding;
mod engine;
mod error;
mod guest;
mod limits;
mod module;
mod plugin;
pub mod serialization;
mod session;
pub mod stores;
pub mod testing;
mod types;
mod vm;
mod wasi;

pub use cache::{CacheOutcome, CodeCache};
pub use embedding::*;
pub use engine::{Engine, EngineConfig, HostFunction, PoolingConfig};
pub use error::{FailureKind, FilterError, LoadError};
pub use limits::EpochTicker;
pub use module::Module;
pub use plugin::{PluginConfig, VmConfig, DEFAULT_MEMORY_LIMIT, DEFAULT_START_TIMEOUT, DEFAULT_TIMEOUT};
pub use types::*;
pub use vm::{HttpCallResponse, PluginId, StreamId, Vm, VmStats};
