//! Reporting a filter's failure: a log line naming the filter, the callback and the reason,
//! and the host's failure counters in Envoy's stats (`inwasm.<filter>.traps_total`, ...).

use inwasm_host::{FailureKind, FilterError};

use crate::filter_config::FilterConfig;
use crate::log;

/// The host's counters of each filter.
pub const HOST_COUNTERS: [&str; 4] = ["requests_total", "traps_total", "timeouts_total", "memory_failures_total"];

/// The host counter a failure adds to (none for a failure that only follows an earlier one).
fn counter(kind: &FailureKind) -> Option<&'static str> {
    match kind {
        FailureKind::Deadline(_) => Some("timeouts_total"),
        FailureKind::MemoryLimit(_) => Some("memory_failures_total"),
        FailureKind::InstanceLost => None,
        _ => Some("traps_total"),
    }
}

/// Logs and counts `error`; `outcome` says what became of the request.
pub fn failure(config: &FilterConfig, error: &FilterError, outcome: &str) {
    if let Some(name) = counter(&error.kind) {
        config.metrics.count(&host_metric(config, name));
    }
    log::error(&format!("inwasm: {error}; {outcome}"));
}

/// The name of a host counter of `config`'s filter.
pub fn host_metric(config: &FilterConfig, name: &str) -> String {
    format!("inwasm.{}.{name}", config.name())
}
