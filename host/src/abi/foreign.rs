//! proxy_call_foreign_function.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_call_foreign_function", |g,
                                                    name_ptr: i32,
                                                    name_len: i32,
                                                    args_ptr: i32,
                                                    args_len: i32,
                                                    ret_ptr: i32,
                                                    ret_len: i32| {
        let name = g.read_string(name_ptr, name_len)?;
        let args = g.read(args_ptr, args_len)?;
        let result = g.embedding()?.call_foreign_function(&name, &args)?;
        g.return_bytes(&result, ret_ptr, ret_len)
    });
    Ok(())
}
