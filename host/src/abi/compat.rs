//! Functions some toolchains import beside the ABI, defined as Envoy defines them:
//! Emscripten-built C++ SDK filters import `emscripten_notify_memory_growth` (a notice that
//! needs no action) and `pthread_equal`.

use wasmtime::Linker;

use crate::session::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "emscripten_notify_memory_growth", |_memory_index: i32| {})?;
    linker.func_wrap("env", "pthread_equal", |a: i32, b: i32| -> i32 { (a == b) as i32 })?;
    Ok(())
}
