//! proxy_get_current_time_nanoseconds, proxy_set_tick_period_milliseconds.

use std::time::{Duration, UNIX_EPOCH};

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_get_current_time_nanoseconds", |g, ret_time: i32| {
        let now = g.state().now();
        let nanos = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        g.write_u64(ret_time, nanos)
    });
    abi_fn!(linker, "proxy_set_tick_period_milliseconds", |g, period: i32| {
        let period = Duration::from_millis(period as u32 as u64);
        Ok(g.root_embedding()?.set_tick_period(period)?)
    });
    Ok(())
}
