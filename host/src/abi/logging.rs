//! proxy_log, proxy_get_log_level.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::{LogLevel, Status};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_log", |g, level: i32, ptr: i32, len: i32| {
        let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
        let message = g.read(ptr, len)?;
        g.state().log(level, &String::from_utf8_lossy(&message));
        Ok(())
    });
    abi_fn!(linker, "proxy_get_log_level", |g, ret_level: i32| {
        let level = g.embedding()?.log_level();
        g.write_u32(ret_level, level as u32)
    });
    Ok(())
}
