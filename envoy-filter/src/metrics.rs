//! A configuration's metrics: the filter's counters, gauges and histograms
//! (`proxy_define_metric`, ...) and the host's own failure counters, kept here (so filters
//! can read them back) and mirrored into Envoy's stats (`<metrics_namespace>.<name>`).
//!
//! Semantics are Envoy's: a counter only goes up (an increment <= 0 is `BAD_ARGUMENT`,
//! recording adds), a gauge goes both ways (recording sets it), a histogram records values
//! and cannot be read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use inwasm_host::{HostResult, MetricType, Status};

use crate::abi::{self, ConfigHandle, ModuleBuffer, METRICS_SUCCESS};

struct Metric {
    kind: MetricType,
    name: String,
    value: AtomicU64,
    /// Its id in Envoy's stats, when Envoy took the definition.
    envoy_id: Option<usize>,
}

pub struct MetricRegistry {
    config: ConfigHandle,
    metrics: Mutex<Vec<std::sync::Arc<Metric>>>,
}

impl MetricRegistry {
    pub fn new(config: ConfigHandle) -> MetricRegistry {
        MetricRegistry { config, metrics: Mutex::new(Vec::new()) }
    }

    /// The id of metric `name` of `kind`, defining it on first use (by any instance).
    pub fn define(&self, kind: MetricType, name: &str) -> u32 {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = metrics.iter().position(|m| m.kind == kind && m.name == name) {
            return id as u32;
        }
        let envoy_id = self.define_in_envoy(kind, name);
        metrics.push(std::sync::Arc::new(Metric { kind, name: name.to_string(), value: AtomicU64::new(0), envoy_id }));
        metrics.len() as u32 - 1
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

    fn metric(&self, id: u32) -> HostResult<std::sync::Arc<Metric>> {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.get(id as usize).cloned().ok_or(Status::NotFound)
    }

    fn define_in_envoy(&self, kind: MetricType, name: &str) -> Option<usize> {
        let define = match kind {
            MetricType::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricType::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricType::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
        };
        let mut id = 0usize;
        let result =
            unsafe { define(self.config.0, ModuleBuffer::of(name.as_bytes()), std::ptr::null_mut(), 0, &mut id) };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Passes a change on to Envoy: `delta` for counters, the new `value` for the others.
    fn mirror(&self, metric: &Metric, delta: u64, value: u64) {
        let Some(id) = metric.envoy_id else { return };
        let config = self.config.0;
        let none = std::ptr::null_mut();
        unsafe {
            match metric.kind {
                MetricType::Counter => {
                    abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(config, id, none, 0, delta)
                }
                MetricType::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(config, id, none, 0, value)
                }
                MetricType::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    config, id, none, 0, value,
                ),
            };
        }
    }
}
