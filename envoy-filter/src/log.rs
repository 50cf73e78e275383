//! Envoy's log (the `dynamic_modules` logger), at proxy-wasm's levels.

use inwasm_host::LogLevel;

use crate::abi::{self, log_level, ModuleBuffer};

fn envoy_level(level: LogLevel) -> u32 {
    match level {
        LogLevel::Trace => log_level::TRACE,
        LogLevel::Debug => log_level::DEBUG,
        LogLevel::Info => log_level::INFO,
        LogLevel::Warn => log_level::WARN,
        LogLevel::Error => log_level::ERROR,
        LogLevel::Critical => log_level::CRITICAL,
    }
}

pub fn line(level: LogLevel, message: &str) {
    // SAFETY: the message outlives the call, which only reads it; Envoy's logger may be used
    // from any thread.
    unsafe { abi::envoy_dynamic_module_callback_log(envoy_level(level), ModuleBuffer::of(message.as_bytes())) };
}

pub fn error(message: &str) {
    line(LogLevel::Error, message);
}

/// A filter's own log line, named after the filter.
pub fn filter_line(filter: &str, level: LogLevel, message: &str) {
    line(level, &format!("[wasm] filter \"{filter}\": {message}"));
}

/// The lowest level Envoy's log lets through.
pub fn threshold() -> LogLevel {
    [LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error]
        .into_iter()
        // SAFETY: only a level is passed; Envoy's logger may be asked from any thread.
        .find(|level| unsafe { abi::envoy_dynamic_module_callback_log_enabled(envoy_level(*level)) })
        .unwrap_or(LogLevel::Critical)
}
