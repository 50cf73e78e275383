//! Root-context timer: the plugin configuration is the tick period in ms (default 10).
//! Each tick logs `tick N` and stores the count (decimal) in shared data `ticks`; the third
//! tick stops the timer with a period of 0. Creates no HTTP context.
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Ticker>::default());
}}

#[derive(Default)]
struct Ticker {
    ticks: u32,
}

impl Context for Ticker {}

impl RootContext for Ticker {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let period = String::from_utf8_lossy(&config).trim().parse().unwrap_or(10);
        self.set_tick_period(Duration::from_millis(period));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        log::info!("tick {}", self.ticks);
        if let Err(status) = self.set_shared_data("ticks", Some(self.ticks.to_string().as_bytes()), None) {
            log::warn!("shared data unavailable: {status:?}");
        }
        if self.ticks == 3 {
            self.set_tick_period(Duration::ZERO);
        }
    }
}
