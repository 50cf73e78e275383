//! nginx dynamic module running proxy-wasm filters on the inwasm host.
//!
//! Two nginx modules live in this library: `ngx_inwasm_module` (core: the `wasm {}` block,
//! per-worker runtime) and `ngx_http_inwasm_module` (HTTP: `proxy_wasm` chains and the hooks
//! that run them). Every entry point from nginx catches panics (`ffi::guard`).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod chains;
mod child;
mod embedding;
mod ffi;
mod framing;
mod headers;
mod http_call;
mod http_module;
mod metrics;
mod modules;
mod properties;
mod request;
mod request_line;
mod response;
mod root_link;
mod shared_data;
mod shared_queues;
mod shm;
mod shortcuts;
mod tenant;
mod validation;
mod wasm_block;
mod worker;

pub use http_module::ngx_http_inwasm_module;
pub use wasm_block::ngx_inwasm_module;

use std::ffi::c_char;
use std::ptr;

use ngx::ffi::ngx_module_t;

// What nginx's `load_module` looks up (ngx::ngx_modules! only handles a single module).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx_module_t; 3] =
    [ptr::addr_of!(ngx_inwasm_module), ptr::addr_of!(ngx_http_inwasm_module), ptr::null()];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const c_char; 3] =
    [c"ngx_inwasm_module".as_ptr(), c"ngx_http_inwasm_module".as_ptr(), ptr::null()];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const c_char; 1] = [ptr::null()];
