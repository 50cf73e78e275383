//! Metrics in nginx shared memory, aggregated across workers: the filters' own counters,
//! gauges and histograms (`proxy_define/increment/record/get_metric`) and the host's counters
//! per filter (requests, traps, timeouts, memory failures), served in Prometheus text format
//! by a location with `proxy_wasm_metrics;`.
//!
//! Semantics are Envoy's: a counter only goes up (an increment <= 0 is a `BadArgument`;
//! recording adds), a gauge goes both ways (recording sets it), a histogram records values.
//! A metric is identified by its filter and name, so every worker gets the same id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use allocator_api2::vec::Vec as ZoneVec;
use inwasm_host::{HostResult, MetricType, Status};
use ngx::collections::RbTreeMap;
use ngx::ffi::ngx_conf_t;

use crate::shm::{copy_in, Bytes, Key, ShmZone, ZoneAlloc};

/// Metrics the zone holds at most, and the longest name one may have; the zone has room for
/// all of them with names that long.
const CAPACITY: usize = 4096;
pub const MAX_NAME: usize = 256;
pub const ZONE_SIZE: usize = 4 << 20;
const _: () = assert!(CAPACITY * (std::mem::size_of::<Metric>() + 2 * MAX_NAME + 128) < ZONE_SIZE);
/// The host's own counters of each filter (requests, traps, timeouts, memory failures).
const HOST_COUNTERS_PER_FILTER: usize = 4;
/// Histogram bucket bounds (le), Prometheus style; `+Inf` is implied.
const BUCKETS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

struct Metric {
    kind: MetricType,
    filter: Bytes,
    name: Bytes,
    value: AtomicI64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

/// Defining a metric takes the zone's lock; updating or reading one does not (every request
/// counts one, in every worker): the metrics live in a table allocated once, so a defined
/// metric never moves, and `defined` publishes each new one after it is written.
pub struct MetricStore {
    ids: RbTreeMap<Key, u32, ZoneAlloc>,
    /// How many metrics each filter has defined (by filter name).
    per_filter: RbTreeMap<Key, usize, ZoneAlloc>,
    metrics: ZoneVec<Metric, ZoneAlloc>,
    /// `metrics`' elements, which never move (its capacity is reserved at once).
    table: *const Metric,
    defined: AtomicU32,
}

pub type MetricZone = ShmZone<MetricStore>;

/// Declares the metrics zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn declare(cf: *mut ngx_conf_t) -> Result<Box<MetricZone>, String> {
    let build = |alloc: ZoneAlloc| {
        let mut metrics = ZoneVec::new_in(alloc);
        metrics.try_reserve_exact(CAPACITY).ok()?;
        let table = metrics.as_ptr();
        let (ids, per_filter) = (RbTreeMap::try_new_in(alloc).ok()?, RbTreeMap::try_new_in(alloc).ok()?);
        Some(MetricStore { ids, per_filter, metrics, table, defined: AtomicU32::new(0) })
    };
    // SAFETY: per the caller.
    unsafe { ShmZone::declare(cf, "metrics", "*", ZONE_SIZE, build) }
}

/// The most metrics one filter may define (its own, besides the host's counters): an equal
/// share of the zone among the configuration's filters.
pub fn filter_quota(zone: &MetricZone) -> usize {
    let filters = zone.tenants();
    (CAPACITY / filters).saturating_sub(HOST_COUNTERS_PER_FILTER).max(1)
}

/// The id of `filter`'s metric `name`, defining it on first use. A filter past its share of
/// the zone, or a name longer than `MAX_NAME`, is refused (`INTERNAL_FAILURE`,
/// `BAD_ARGUMENT`); the host's own counters (`own` false) use the room kept for them.
pub fn define(zone: &MetricZone, filter: &str, kind: MetricType, name: &str) -> HostResult<u32> {
    define_counted(zone, filter, kind, name, true)
}

fn define_counted(zone: &MetricZone, filter: &str, kind: MetricType, name: &str, own: bool) -> HostResult<u32> {
    if name.len() > MAX_NAME || filter.len() > MAX_NAME {
        return Err(Status::BadArgument);
    }
    let key = [filter.as_bytes(), b"\0", name.as_bytes()].concat();
    let quota = filter_quota(zone);
    let mut store = zone.lock()?;
    if let Some(id) = store.ids.get(key.as_slice()) {
        return Ok(*id);
    }
    let alloc = *store.ids.allocator();
    let full = Status::InternalFailure;
    let defined = store.per_filter.get(filter.as_bytes()).copied().unwrap_or(0);
    if own && defined >= quota || store.metrics.len() == store.metrics.capacity() {
        return Err(full);
    }
    let metric = Metric {
        kind,
        filter: copy_in(alloc, filter.as_bytes()).ok_or(full)?,
        name: copy_in(alloc, name.as_bytes()).ok_or(full)?,
        value: AtomicI64::new(0),
        buckets: Default::default(),
        count: AtomicU64::new(0),
        sum: AtomicU64::new(0),
    };
    let id = store.metrics.len() as u32;
    store.ids.try_insert(Key(copy_in(alloc, &key).ok_or(full)?), id).map_err(|_| full)?;
    if own {
        match store.per_filter.get_mut(filter.as_bytes()) {
            Some(count) => *count += 1,
            None => drop(
                store
                    .per_filter
                    .try_insert(Key(copy_in(alloc, filter.as_bytes()).ok_or(full)?), 1)
                    .map_err(|_| full)?,
            ),
        }
    }
    store.metrics.push(metric);
    store.defined.store(id + 1, Ordering::Release);
    Ok(id)
}

fn with_metric<R>(zone: &MetricZone, id: u32, f: impl FnOnce(&Metric) -> HostResult<R>) -> HostResult<R> {
    let store = zone.unlocked()?;
    // SAFETY: without the lock, only these two fields are read (not the store as a whole,
    // which a definition may be changing): `table` is set once, `defined` is atomic, and a
    // metric below `defined` was written before it was published and never moves.
    let (table, defined) = unsafe { ((*store).table, &*std::ptr::addr_of!((*store).defined)) };
    if id >= defined.load(Ordering::Acquire) {
        return Err(Status::NotFound);
    }
    // SAFETY: as above: a published metric, in place for good.
    f(unsafe { &*table.add(id as usize) })
}

pub fn increment(zone: &MetricZone, id: u32, offset: i64) -> HostResult<()> {
    with_metric(zone, id, |metric| match metric.kind {
        MetricType::Counter if offset <= 0 => Err(Status::BadArgument),
        MetricType::Histogram => Err(Status::BadArgument),
        _ => {
            metric.value.fetch_add(offset, Ordering::Relaxed);
            Ok(())
        }
    })
}

pub fn record(zone: &MetricZone, id: u32, value: u64) -> HostResult<()> {
    with_metric(zone, id, |metric| {
        match metric.kind {
            MetricType::Counter => drop(metric.value.fetch_add(value as i64, Ordering::Relaxed)),
            MetricType::Gauge => metric.value.store(value as i64, Ordering::Relaxed),
            MetricType::Histogram => {
                for (bucket, bound) in metric.buckets.iter().zip(BUCKETS) {
                    if value <= bound {
                        bucket.fetch_add(1, Ordering::Relaxed);
                    }
                }
                metric.count.fetch_add(1, Ordering::Relaxed);
                metric.sum.fetch_add(value, Ordering::Relaxed);
            }
        }
        Ok(())
    })
}

pub fn get(zone: &MetricZone, id: u32) -> HostResult<u64> {
    with_metric(zone, id, |metric| match metric.kind {
        MetricType::Histogram => Err(Status::BadArgument),
        _ => Ok(metric.value.load(Ordering::Relaxed) as u64),
    })
}

thread_local! {
    /// Ids of the host's own counters in this worker, by counter name then filter.
    static HOST_COUNTERS: RefCell<HashMap<&'static str, HashMap<String, u32>>> = RefCell::new(HashMap::new());
    /// Ids of `inwasm_requests_total` in this worker, by filter index (counted per request).
    static REQUEST_COUNTERS: RefCell<Vec<Option<u32>>> = const { RefCell::new(Vec::new()) };
}

/// Adds one to `inwasm_requests_total` of filter `index` (named `filter`).
pub fn count_request(zone: &MetricZone, index: usize, filter: &str) {
    let id = REQUEST_COUNTERS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.len() <= index {
            ids.resize(index + 1, None);
        }
        if ids[index].is_none() {
            ids[index] = define_counted(zone, filter, MetricType::Counter, "inwasm_requests_total", false).ok();
        }
        ids[index]
    });
    if let Some(id) = id {
        let _ = increment(zone, id, 1);
    }
}

/// Adds one to the host's counter `name` for `filter` (e.g. `inwasm_requests_total`).
pub fn count(zone: &MetricZone, filter: &str, name: &'static str) {
    let id = HOST_COUNTERS.with(|ids| {
        let mut ids = ids.borrow_mut();
        let by_filter = ids.entry(name).or_default();
        if let Some(id) = by_filter.get(filter) {
            return Some(*id);
        }
        let id = define_counted(zone, filter, MetricType::Counter, name, false).ok()?;
        by_filter.insert(filter.to_string(), id);
        Some(id)
    });
    if let Some(id) = id {
        let _ = increment(zone, id, 1);
    }
}

/// Every metric in Prometheus text format, labelled with its filter.
pub fn prometheus(zone: &MetricZone) -> HostResult<String> {
    let store = zone.lock()?;
    let mut metrics: Vec<&Metric> = store.metrics.iter().collect();
    metrics.sort_by(|a, b| (&a.name[..], &a.filter[..]).cmp(&(&b.name[..], &b.filter[..])));
    let mut out = String::new();
    let mut last_name = None;
    for metric in metrics {
        let name = metric_name(&metric.name);
        let filter = label_value(&metric.filter);
        let kind = match metric.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        };
        if last_name.as_deref() != Some(name.as_str()) {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last_name = Some(name.clone());
        }
        if metric.kind != MetricType::Histogram {
            let _ = writeln!(out, "{name}{{filter=\"{filter}\"}} {}", metric.value.load(Ordering::Relaxed));
            continue;
        }
        for (bucket, bound) in metric.buckets.iter().zip(BUCKETS) {
            let _ =
                writeln!(out, "{name}_bucket{{filter=\"{filter}\",le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = metric.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{filter=\"{filter}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{filter=\"{filter}\"}} {}", metric.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_count{{filter=\"{filter}\"}} {count}");
    }
    Ok(out)
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, other characters as `_`.
fn metric_name(raw: &[u8]) -> String {
    let mut name: String = raw
        .iter()
        .map(|&b| if b.is_ascii_alphanumeric() || b == b'_' || b == b':' { b as char } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

fn label_value(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
