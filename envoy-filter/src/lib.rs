//! inwasm for Envoy: a dynamic module (Envoy's C ABI for shared-library HTTP filters) that
//! runs proxy-wasm filters on the inwasm host, with the same deadlines, memory limits and
//! sandbox as in nginx.
//!
//! Where to look: `hooks.rs` is every entry point from Envoy; `config.rs` the filter
//! configuration; `filter_config.rs` a loaded configuration; `instances.rs` the per-thread
//! and per-request instances; `filter.rs` one stream's callbacks; `embedding.rs` what a filter
//! reaches; `stream.rs` per-stream state and the actions run after each guest call;
//! `headers.rs`, `body.rs`, `properties.rs` (and `metadata.rs`), `metrics.rs` the Envoy side of each; `mailbox.rs`
//! and `ticks.rs` how root contexts get ticks and queue notifications; `abi.rs` the C ABI.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod abi;
mod body;
mod carrier;
mod config;
mod embedding;
mod filter;
mod filter_config;
mod grpc_calls;
mod headers;
mod hooks;
mod instances;
mod log;
mod mailbox;
mod metadata;
mod metrics;
mod properties;
mod report;
mod runtime;
mod stream;
mod ticks;
