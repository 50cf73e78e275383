//! A configuration's metrics: the filter's counters, gauges and histograms
//! (`proxy_define_metric`, ...) and the host's own failure counters, kept here (so filters
//! can read them back) and mirrored into Envoy's stats.
//!
//! Semantics are Envoy's: a counter only goes up (an increment <= 0 is `BAD_ARGUMENT`,
//! recording adds), a gauge goes both ways (recording sets it), a histogram records values
//! and cannot be read.
//!
//! Envoy takes new stat names only while a configuration loads. A metric defined then is
//! `<metrics_namespace>.<name>`; one a filter first defines later (filters often name metrics
//! after what a request carries) goes under one of three labelled stats defined at load,
//! `<metrics_namespace>.{counter,gauge,histogram}.name.<name>` (Prometheus:
//! `..._counter{name="<name>"}`), and the log says so once per metric.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use inwasm_host::{HostResult, LogLevel, MetricType, Status};

use crate::abi::{self, ConfigHandle, ModuleBuffer, METRICS_SUCCESS};
use crate::log;

/// The most metrics one configuration may define (as many as one nginx zone holds).
pub const MAX_METRICS: usize = 4096;
/// The longest metric name, in bytes.
pub const MAX_NAME: usize = 256;

/// Where a metric is in Envoy's stats.
#[derive(Clone, Copy)]
enum EnvoyStat {
    /// Defined while the configuration loaded: its own stat, by id.
    Own(usize),
    /// Defined later: the labelled stat of its kind, with its name as the label.
    Labelled(usize),
    /// Envoy refused it.
    None,
}

struct Metric {
    kind: MetricType,
    name: String,
    value: AtomicU64,
    envoy: EnvoyStat,
}

#[derive(Default)]
struct Table {
    metrics: Vec<Arc<Metric>>,
    ids: HashMap<(u8, String), u32>,
}

pub struct MetricRegistry {
    config: ConfigHandle,
    table: Mutex<Table>,
    /// The labelled stat of each kind (counter, gauge, histogram) for late definitions.
    labelled: [Option<usize>; 3],
    /// Envoy no longer takes definitions: the configuration has loaded.
    loaded: AtomicBool,
    full_reported: AtomicBool,
    filter: String,
}

fn kind_index(kind: MetricType) -> usize {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
    }
}

const KIND_NAMES: [&str; 3] = ["counter", "gauge", "histogram"];
const LABEL: &str = "name";

impl MetricRegistry {
    /// The registry of a configuration Envoy is loading (`filter` names it in the log).
    pub fn new(config: ConfigHandle, filter: &str) -> MetricRegistry {
        let labelled = [MetricType::Counter, MetricType::Gauge, MetricType::Histogram]
            .map(|kind| define_in_envoy(config, kind, KIND_NAMES[kind_index(kind)], &[LABEL]));
        MetricRegistry {
            config,
            table: Mutex::new(Table::default()),
            labelled,
            loaded: AtomicBool::new(false),
            full_reported: AtomicBool::new(false),
            filter: filter.to_string(),
        }
    }

    /// The configuration has loaded: later definitions go under the labelled stats.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// The id of metric `name` of `kind`, defining it on first use (by any instance).
    pub fn define(&self, kind: MetricType, name: &str) -> HostResult<u32> {
        if name.len() > MAX_NAME {
            return Err(Status::BadArgument);
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind_index(kind) as u8, name.to_string());
        if let Some(id) = table.ids.get(&key) {
            return Ok(*id);
        }
        if table.metrics.len() >= MAX_METRICS {
            if !self.full_reported.swap(true, Ordering::Relaxed) {
                log::line(
                    LogLevel::Warn,
                    &format!(
                        "inwasm: filter \"{}\" has defined {MAX_METRICS} metrics, the most a filter may; \
                         further definitions fail",
                        self.filter
                    ),
                );
            }
            return Err(Status::InternalFailure);
        }
        let envoy = if self.loaded.load(Ordering::Acquire) {
            self.labelled_stat(kind, name)
        } else {
            define_in_envoy(self.config, kind, name, &[]).map_or(EnvoyStat::None, EnvoyStat::Own)
        };
        let id = table.metrics.len() as u32;
        table.metrics.push(Arc::new(Metric { kind, name: name.to_string(), value: AtomicU64::new(0), envoy }));
        table.ids.insert(key, id);
        Ok(id)
    }

    fn labelled_stat(&self, kind: MetricType, name: &str) -> EnvoyStat {
        let index = kind_index(kind);
        let Some(id) = self.labelled[index] else { return EnvoyStat::None };
        log::line(
            LogLevel::Info,
            &format!(
                "inwasm: filter \"{}\" defined metric \"{name}\" after its configuration loaded: Envoy's stats \
                 have it as {}.{LABEL}.{name} in the module's metrics namespace",
                self.filter, KIND_NAMES[index]
            ),
        );
        EnvoyStat::Labelled(id)
    }

    pub fn increment(&self, id: u32, offset: i64) -> HostResult<()> {
        let metric = self.metric(id)?;
        match metric.kind {
            MetricType::Counter if offset <= 0 => Err(Status::BadArgument),
            MetricType::Histogram => Err(Status::BadArgument),
            _ => {
                let value = metric.value.fetch_add(offset as u64, Ordering::Relaxed).wrapping_add(offset as u64);
                self.mirror(&metric, offset.unsigned_abs(), value);
                Ok(())
            }
        }
    }

    pub fn record(&self, id: u32, value: u64) -> HostResult<()> {
        let metric = self.metric(id)?;
        match metric.kind {
            MetricType::Counter => {
                let total = metric.value.fetch_add(value, Ordering::Relaxed).wrapping_add(value);
                self.mirror(&metric, value, total);
            }
            MetricType::Gauge | MetricType::Histogram => {
                metric.value.store(value, Ordering::Relaxed);
                self.mirror(&metric, value, value);
            }
        }
        Ok(())
    }

    pub fn get(&self, id: u32) -> HostResult<u64> {
        let metric = self.metric(id)?;
        match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(metric.value.load(Ordering::Relaxed)),
        }
    }

    fn metric(&self, id: u32) -> HostResult<Arc<Metric>> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.metrics.get(id as usize).cloned().ok_or(Status::NotFound)
    }

    /// Passes a change on to Envoy: `delta` for counters, the new `value` for the others.
    fn mirror(&self, metric: &Metric, delta: u64, value: u64) {
        let mut label = [ModuleBuffer::of(metric.name.as_bytes())];
        let (id, labels, count) = match metric.envoy {
            EnvoyStat::Own(id) => (id, std::ptr::null_mut(), 0),
            EnvoyStat::Labelled(id) => (id, label.as_mut_ptr(), 1),
            EnvoyStat::None => return,
        };
        let config = self.config.0;
        // SAFETY: `config` is the live configuration these metrics belong to (Envoy destroys it
        // only after every filter of it); `labels` points at `count` buffers that outlive the
        // call, and `id` is one Envoy returned for this kind of stat (labelled or not).
        unsafe {
            match metric.kind {
                MetricType::Counter => abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config, id, labels, count, delta,
                ),
                MetricType::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(config, id, labels, count, value)
                }
                MetricType::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    config, id, labels, count, value,
                ),
            };
        }
    }
}

/// Defines a stat in Envoy (only possible while the configuration loads); its id, if taken.
fn define_in_envoy(config: ConfigHandle, kind: MetricType, name: &str, labels: &[&str]) -> Option<usize> {
    let define = match kind {
        MetricType::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
        MetricType::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        MetricType::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
    };
    let mut labels: Vec<ModuleBuffer> = labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
    let mut id = 0usize;
    // SAFETY: `config` is the configuration Envoy is loading; the name and label buffers live
    // across the call and `id` is a valid place for Envoy to write.
    let result =
        unsafe { define(config.0, ModuleBuffer::of(name.as_bytes()), labels.as_mut_ptr(), labels.len(), &mut id) };
    (result == METRICS_SUCCESS).then_some(id)
}
