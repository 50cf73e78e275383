//! Reporting a filter's failure: a log line naming the filter, the callback and the reason,
//! and the host's failure counters in Envoy's stats (`inwasm.<filter>.traps_total`, ...).

use inwasm_host::{FailureCounter, FailureKind, FilterError};

use crate::filter_config::FilterConfig;
use crate::log;

/// The host's counters of each filter.
pub const HOST_COUNTERS: [&str; 4] = ["requests_total", "traps_total", "timeouts_total", "memory_failures_total"];

/// Which of `HOST_COUNTERS` a failure adds to (none for a failure that only follows an
/// earlier one).
fn counter(kind: &FailureKind) -> Option<usize> {
    Some(match kind.counter()? {
        FailureCounter::Traps => 1,
        FailureCounter::Timeouts => 2,
        FailureCounter::MemoryFailures => 3,
    })
}

/// Adds one to a request through `config`'s filter.
pub fn request(config: &FilterConfig) {
    let _ = config.metrics.increment(config.host_counters[0], 1);
}

/// Logs and counts `error`; `outcome` says what became of the request.
pub fn failure(config: &FilterConfig, error: &FilterError, outcome: &str) {
    if let Some(index) = counter(&error.kind) {
        let _ = config.metrics.increment(config.host_counters[index], 1);
    }
    log::error(&format!("inwasm: {error}; {outcome}"));
}

/// The name of a host counter of `config`'s filter.
pub fn host_metric(config: &FilterConfig, name: &str) -> String {
    format!("inwasm.{}.{name}", config.name())
}
