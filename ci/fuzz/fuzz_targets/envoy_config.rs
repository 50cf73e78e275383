//! Envoy's `filter_config` (JSON from the operator): reading it never panics, and what it
//! accepts has limits within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../../envoy-filter/src/config.rs"]
#[allow(dead_code)]
mod config;

fuzz_target!(|json: &[u8]| {
    if let Ok(settings) = config::parse(config::FILTER_NAME.as_bytes(), json) {
        assert!(settings.vm.memory_limit > 0 && settings.vm.memory_limit <= inwasm_host::DEFAULT_MEMORY_LIMIT);
        assert!(settings.plugin.timeout.is_some_and(|t| !t.is_zero()));
    }
});
