//! proxy_define_metric, proxy_increment_metric, proxy_record_metric, proxy_get_metric.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::{MetricType, Status};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_define_metric", |g, kind: i32, name_ptr: i32, name_len: i32, ret_id: i32| {
        let kind = MetricType::from_raw(kind).ok_or(Status::BadArgument)?;
        let name = g.read_string(name_ptr, name_len)?;
        let id = g.embedding()?.define_metric(kind, &name)?;
        g.write_u32(ret_id, id)
    });
    abi_fn!(linker, "proxy_increment_metric", |g, metric_id: i32, offset: i64| {
        Ok(g.embedding()?.increment_metric(metric_id as u32, offset)?)
    });
    abi_fn!(linker, "proxy_record_metric", |g, metric_id: i32, value: i64| {
        Ok(g.embedding()?.record_metric(metric_id as u32, value as u64)?)
    });
    abi_fn!(linker, "proxy_get_metric", |g, metric_id: i32, ret_value: i32| {
        let value = g.embedding()?.get_metric(metric_id as u32)?;
        g.write_u64(ret_value, value)
    });
    Ok(())
}
