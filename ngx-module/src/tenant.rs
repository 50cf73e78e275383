//! What a filter's calls to shared data, shared queues and metrics do, for its root context
//! and its streams alike, and the log line when a limit of the shared zones stops one (at
//! most one a second per filter and limit, so a flood of refused calls is not a flood of
//! lines).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use inwasm_host::{HostResult, MetricType, Status};
use ngx::ffi::{ngx_log_t, ngx_uint_t, NGX_LOG_WARN};

use crate::ffi::log_error;
use crate::metrics::{self, MetricZone};
use crate::shared_data::{self, KvZone};
use crate::shared_queues::{self, QueueZone, MAX_QUEUES};
use crate::wasm_block::WasmConf;

/// A filter calling the host: its name, its module's VM id, and where its lines go.
pub struct Tenant<'a> {
    pub filter: &'a str,
    pub vm_id: &'a str,
    pub log: *mut ngx_log_t,
}

thread_local! {
    /// When each (filter, limit) was last logged in this worker.
    static LOGGED: RefCell<HashMap<(String, &'static str), Instant>> = RefCell::new(HashMap::new());
}

impl Tenant<'_> {
    /// Logs that `limit` stopped a call, unless it was logged for this filter in the last second.
    pub fn limit_hit(&self, limit: &'static str, message: impl FnOnce() -> String) {
        let due = LOGGED.with(|logged| {
            let mut logged = logged.borrow_mut();
            let now = Instant::now();
            let last = logged.entry((self.filter.to_string(), limit)).or_insert(now - Duration::from_secs(2));
            let due = now.duration_since(*last) >= Duration::from_secs(1);
            if due {
                *last = now;
            }
            due
        });
        if due {
            let line = format!("inwasm: filter \"{}\": {}", self.filter, message());
            log_error(NGX_LOG_WARN as ngx_uint_t, self.log, &line);
        }
    }

    pub fn get_shared_data(&self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        shared_data::get(kv_zone(key)?, self.vm_id, key)
    }

    pub fn set_shared_data(&self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        let zone = kv_zone(key)?;
        let stored = shared_data::set(zone, self.vm_id, key, value, cas);
        if stored == Err(Status::InternalFailure) {
            self.limit_hit("shm_kv", || {
                format!(
                    "shared data \"{}\" ({} bytes) did not fit: module \"{}\" may hold {} bytes of shm_kv zone \"{}\"",
                    String::from_utf8_lossy(key),
                    value.len(),
                    self.vm_id,
                    zone.quota(),
                    zone.name()
                )
            });
        }
        stored
    }

    pub fn register_shared_queue(&self, name: &[u8]) -> HostResult<u32> {
        let registered = shared_queues::register(queue_zones()?, self.vm_id.as_bytes(), name);
        if registered == Err(Status::InternalFailure) {
            self.limit_hit("shm_queue", || {
                format!(
                    "cannot register queue \"{}\": a module may have {MAX_QUEUES} queues in a zone",
                    String::from_utf8_lossy(name)
                )
            });
        }
        registered
    }

    pub fn resolve_shared_queue(&self, vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
        // An empty VM id names the caller's own module (as filters resolve their own queues).
        let vm_id = if vm_id.is_empty() { self.vm_id.as_bytes() } else { vm_id };
        shared_queues::resolve(queue_zones()?, vm_id, name)
    }

    pub fn enqueue_shared_queue(&self, queue_id: u32, value: &[u8]) -> HostResult<()> {
        let enqueued = shared_queues::enqueue(queue_zones()?, queue_id, value);
        if enqueued == Err(Status::InternalFailure) {
            self.limit_hit("shm_queue", || {
                format!(
                    "an item of {} bytes is more than module \"{}\" may hold in its queue's zone",
                    value.len(),
                    self.vm_id
                )
            });
        }
        enqueued
    }

    pub fn dequeue_shared_queue(&self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        shared_queues::dequeue(queue_zones()?, queue_id)
    }

    pub fn define_metric(&self, kind: MetricType, name: &str) -> HostResult<u32> {
        let zone = metric_zone()?;
        let defined = metrics::define(zone, self.filter, kind, name);
        match defined {
            Err(Status::InternalFailure) => self.limit_hit("metrics", || {
                format!("cannot define metric \"{name}\": a filter may define {} metrics", metrics::filter_quota(zone))
            }),
            Err(Status::BadArgument) => self.limit_hit("metric names", || {
                format!("cannot define metric \"{name}\": names are at most {} bytes", metrics::MAX_NAME)
            }),
            _ => {}
        }
        defined
    }

    pub fn increment_metric(&self, metric_id: u32, offset: i64) -> HostResult<()> {
        metrics::increment(metric_zone()?, metric_id, offset)
    }

    pub fn record_metric(&self, metric_id: u32, value: u64) -> HostResult<()> {
        metrics::record(metric_zone()?, metric_id, value)
    }

    pub fn get_metric(&self, metric_id: u32) -> HostResult<u64> {
        metrics::get(metric_zone()?, metric_id)
    }
}

fn kv_zone(key: &[u8]) -> HostResult<&'static KvZone> {
    // SAFETY: the worker's cycle.
    let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.ok_or(Status::InternalFailure)?;
    shared_data::zone_for(&conf.kv_zones, key).ok_or(Status::InternalFailure)
}

fn queue_zones() -> HostResult<&'static [Box<QueueZone>]> {
    // SAFETY: the worker's cycle.
    let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.ok_or(Status::InternalFailure)?;
    Ok(&conf.queue_zones)
}

fn metric_zone() -> HostResult<&'static MetricZone> {
    WasmConf::metrics().ok_or(Status::InternalFailure)
}
