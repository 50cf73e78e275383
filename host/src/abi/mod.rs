//! The proxy-wasm host functions (imports from module `env`), one file per ABI area.
//! Each area registers its functions with `add_to_linker`.

mod buffers;
mod compat;
mod context;
mod foreign;
mod grpc;
mod headers;
mod http_calls;
mod logging;
mod metrics;
mod properties;
mod shared_data;
mod shared_queues;
mod stream;
mod time;

use wasmtime::Linker;

use crate::session::HostState;

/// Defines one host function: its body sees the guest as `$guest` and returns
/// `AbiResult`; statuses go back to the guest, traps end the call.
macro_rules! abi_fn {
    ($linker:expr, $name:literal, |$guest:ident $(, $arg:ident : $ty:ty)*| $body:block) => {
        $linker.func_wrap(
            "env",
            $name,
            |mut caller: wasmtime::Caller<'_, $crate::session::HostState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                #[allow(unused_mut)]
                let mut $guest = $crate::guest::Guest::new(&mut caller);
                #[allow(clippy::redundant_closure_call)]
                let result: $crate::guest::AbiResult = (|| $body)();
                $guest.finish($name, result)
            },
        )?;
    };
}
pub(crate) use abi_fn;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    time::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    http_calls::add_to_linker(linker)?;
    grpc::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    shared_queues::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    foreign::add_to_linker(linker)?;
    compat::add_to_linker(linker)?;
    Ok(())
}
