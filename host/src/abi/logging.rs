//! proxy_log, proxy_get_log_level.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::{LogLevel, Status};

/// The longest log line passed on, in bytes.
const MAX_LOG_LINE: usize = 16 << 10;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_log", |g, level: i32, ptr: i32, len: i32| {
        let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
        // A log line is cut at `MAX_LOG_LINE`: the proxy's log is no place for megabytes, and
        // writing them would eat the callback's budget.
        let message = g.read_prefix(ptr, len, MAX_LOG_LINE)?;
        let mut text = String::from_utf8_lossy(&message).into_owned();
        let cut = len as u32 as usize - message.len();
        if cut > 0 {
            text.push_str(&format!(" [{cut} more bytes cut]"));
        }
        g.state().log(level, &text);
        Ok(())
    });
    abi_fn!(linker, "proxy_get_log_level", |g, ret_level: i32| {
        let level = g.embedding()?.log_level();
        g.write_u32(ret_level, level as u32)
    });
    Ok(())
}
