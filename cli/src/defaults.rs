//! What nginx and Envoy run a filter with by default: their engine (so compiled code is keyed
//! as theirs is), its deadline ticker, and a filter's VM and plugin configuration.

use std::path::Path;
use std::time::Duration;

use inwasm_host::{Engine, EngineConfig, EpochTicker, PluginConfig, VmConfig};

use crate::args::Usage;

/// The engine, with its deadline ticker running for as long as the command does.
pub fn engine() -> Result<Engine, Usage> {
    let engine = Engine::new(EngineConfig::default()).map_err(|e| Usage::new(format!("wasmtime engine: {e}")))?;
    let ticker = EpochTicker::start(&engine, Duration::from_millis(1))
        .map_err(|e| Usage::new(format!("cannot start the deadline ticker: {e}")))?;
    std::mem::forget(ticker);
    Ok(engine)
}

/// The configuration of filter file `path` (named after it) with these configurations and,
/// when given, this callback budget.
pub fn filter_configs(
    path: &str,
    configuration: Vec<u8>,
    vm_configuration: Vec<u8>,
    timeout: Option<Duration>,
) -> (VmConfig, PluginConfig) {
    let name = Path::new(path).file_stem().map_or("filter".into(), |s| s.to_string_lossy().into_owned());
    let defaults = VmConfig::default();
    let vm = VmConfig {
        vm_id: name.clone(),
        configuration: vm_configuration,
        timeout: timeout.or(defaults.timeout),
        ..defaults
    };
    (vm, PluginConfig { name, root_id: String::new(), configuration, timeout: None })
}
