//! proxy_get_shared_data, proxy_set_shared_data.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::Status;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_get_shared_data", |g,
                                              key_ptr: i32,
                                              key_len: i32,
                                              ret_ptr: i32,
                                              ret_len: i32,
                                              ret_cas: i32| {
        let key = g.read(key_ptr, key_len)?;
        let (value, cas) = g.embedding()?.get_shared_data(&key)?.ok_or(Status::NotFound)?;
        g.write_u32(ret_cas, cas)?;
        g.return_bytes(&value, ret_ptr, ret_len)
    });
    abi_fn!(linker, "proxy_set_shared_data", |g,
                                              key_ptr: i32,
                                              key_len: i32,
                                              value_ptr: i32,
                                              value_len: i32,
                                              cas: i32| {
        let key = g.read(key_ptr, key_len)?;
        let value = g.read(value_ptr, value_len)?;
        Ok(g.embedding()?.set_shared_data(&key, &value, cas as u32)?)
    });
    Ok(())
}
