//! One `proxy_wasm` filter configuration: its settings, its compiled module, and what all its
//! instances share across Envoy's threads (metrics, the main thread's mailbox). Created on
//! Envoy's main thread, where the filter is started once so a filter that refuses its
//! configuration (or a bad module) makes the configuration fail to load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use inwasm_host::{MetricType, Module};

use crate::abi::{self, ConfigEnvoyPtr, ConfigHandle};
use crate::config::{self, FilterSettings};
use crate::instances::{self, Instance};
use crate::mailbox::Mailbox;
use crate::metrics::MetricRegistry;
use crate::{report, runtime};

pub struct FilterConfig {
    /// Distinguishes configurations in each thread's instance table.
    pub id: u64,
    pub settings: FilterSettings,
    pub module: Arc<Module>,
    pub metrics: MetricRegistry,
    pub envoy: ConfigHandle,
    /// The main thread's root context, woken through the configuration's scheduler.
    pub main_mailbox: Arc<Mailbox>,
    /// Http calls the main thread's root made with no stream to carry them: callout id to token.
    pub config_callouts: Mutex<HashMap<u64, u32>>,
    /// Envoy destroyed the configuration; instances left on workers are dropped.
    retired: AtomicBool,
    /// The metric id of each of the host's counters (`report::HOST_COUNTERS`, in order).
    pub host_counters: [u32; 4],
}

/// Every configuration Envoy has loaded and not yet destroyed, in load order.
static LOADED: Mutex<Vec<Weak<FilterConfig>>> = Mutex::new(Vec::new());

// Envoy's worker threads share a configuration.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<FilterConfig>()
};

impl FilterConfig {
    /// Reads, compiles and starts the filter (on Envoy's main thread).
    ///
    /// # Safety
    /// `envoy` must be the configuration Envoy is loading (its `config_new` hook runs this),
    /// and outlive what is returned.
    pub unsafe fn load(envoy: ConfigEnvoyPtr, filter_name: &[u8], json: &[u8]) -> Result<Arc<FilterConfig>, String> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let settings = config::parse(filter_name, json)?;
        let module = runtime::compile(&settings.module, settings.cache_dir.as_deref())?;
        runtime::keep_deadlines_for(settings.plugin.timeout.or(settings.vm.timeout));
        // SAFETY: `envoy` is the configuration Envoy is loading (per the caller); the scheduler
        // goes to the main thread's mailbox, which deletes it.
        let scheduler = unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy) };
        let metrics = MetricRegistry::new(ConfigHandle(envoy), &settings.plugin.name);
        let config = Arc::new(FilterConfig {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            settings,
            module,
            metrics,
            envoy: ConfigHandle(envoy),
            main_mailbox: Arc::new(Mailbox::on_main_thread(scheduler)),
            config_callouts: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
            host_counters: [0; 4],
        });
        // Envoy takes metric definitions only now, while the configuration loads.
        let mut config = config;
        let counters = report::HOST_COUNTERS.map(|name| {
            config.metrics.define(MetricType::Counter, &report::host_metric(&config, name)).unwrap_or(u32::MAX)
        });
        Arc::get_mut(&mut config).expect("not shared yet").host_counters = counters;
        match Instance::start(&config, config.main_mailbox.clone()) {
            Ok(instance) => {
                config.metrics.mark_loaded();
                instances::install(&config, instance);
                let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
                loaded.retain(|c| c.strong_count() > 0);
                loaded.push(Arc::downgrade(&config));
                Ok(config)
            }
            Err(error) => {
                config.main_mailbox.close();
                Err(error.to_string())
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.plugin.name
    }

    pub fn vm_id(&self) -> &str {
        &self.settings.vm.vm_id
    }

    /// Envoy is destroying the configuration (main thread).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.main_mailbox.close();
        instances::uninstall(self.id);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The live configurations for which `belongs` holds, in load order.
    pub fn loaded(belongs: impl Fn(&FilterConfig) -> bool) -> Vec<Arc<FilterConfig>> {
        let loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        loaded.iter().filter_map(Weak::upgrade).filter(|c| !c.is_retired() && belongs(c)).collect()
    }
}
