//! Per-worker runtime: the epoch ticker that enforces deadlines, and the shared instances
//! (isolation `none`: one VM per module, holding every filter of that module as a plugin).
//! Created in each worker after fork; the master never runs it. A filter that does work of
//! its own (timers, calls, queues, shared data: see `validation`) starts with the worker; the
//! others start at their first request, so an idle filter costs no instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use inwasm_host::{EpochTicker, FailureKind, FilterError, PluginId, Vm};
use ngx::ffi::{ngx_cycle_t, ngx_int_t, ngx_log_t, NGX_LOG_ERR, NGX_OK};

use crate::embedding::RootEmbedding;
use crate::ffi::{guard_status, log_error};
use crate::metrics;
use crate::root_link::RootLink;
use crate::wasm_block::{engine, FilterDecl, ModuleDecl, WasmConf};

/// How often the epoch advances, i.e. the precision of deadlines.
pub const EPOCH_PERIOD: Duration = Duration::from_millis(1);

pub type SharedVm = Rc<RefCell<Vm>>;

struct Worker {
    _ticker: EpochTicker,
    /// The shared VM of each module, once started, by module index.
    vms: Vec<Option<SharedVm>>,
    /// Each filter's plugin on its module's shared VM, once started, by filter index.
    plugins: Vec<Option<PluginId>>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    static FAILURES: RefCell<HashMap<String, FailureCounts>> = RefCell::new(HashMap::new());
}

/// Failures of one filter in this worker, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct FailureCounts {
    pub traps: u64,
    pub timeouts: u64,
    pub memory_failures: u64,
}

impl fmt::Display for FailureCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} traps, {} timeouts, {} memory failures", self.traps, self.timeouts, self.memory_failures)
    }
}

/// Counts a filter failure in this worker; returns the filter's counts so far. Failures
/// that only follow from an earlier one (a lost instance) are not counted again.
pub fn record_failure(error: &FilterError) -> FailureCounts {
    FAILURES.with(|failures| {
        let mut failures = failures.borrow_mut();
        let counts = failures.entry(error.filter.clone()).or_default();
        let metric = match error.kind {
            FailureKind::Deadline(_) => {
                counts.timeouts += 1;
                "inwasm_timeouts_total"
            }
            FailureKind::MemoryLimit(_) => {
                counts.memory_failures += 1;
                "inwasm_memory_failures_total"
            }
            FailureKind::InstanceLost => return *counts,
            _ => {
                counts.traps += 1;
                "inwasm_traps_total"
            }
        };
        if let Some(zone) = WasmConf::metrics() {
            metrics::count(zone, &error.filter, metric);
        }
        *counts
    })
}

pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let log = (*cycle).log;
    guard_status(log, || {
        let Some(conf) = WasmConf::of_cycle(cycle) else {
            return NGX_OK as ngx_int_t;
        };
        if conf.modules.is_empty() {
            return NGX_OK as ngx_int_t;
        }
        let ticker = match EpochTicker::start(engine(), EPOCH_PERIOD) {
            Ok(ticker) => ticker,
            Err(error) => {
                log_error(NGX_LOG_ERR as usize, log, &format!("inwasm: cannot start the deadline ticker: {error}"));
                return ngx::ffi::NGX_ERROR as ngx_int_t;
            }
        };
        let worker =
            Worker { _ticker: ticker, vms: vec![None; conf.modules.len()], plugins: vec![None; conf.filters.len()] };
        WORKER.with(|w| *w.borrow_mut() = Some(worker));
        for (index, filter) in conf.filters.iter().enumerate().filter(|(_, f)| f.background) {
            if let Err(message) = shared_instance(index) {
                log_error(NGX_LOG_ERR as usize, log, &format!("inwasm: filter \"{}\": {message}", filter.plugin.name));
            }
        }
        NGX_OK as ngx_int_t
    })
}

pub unsafe extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    guard_status((*cycle).log, || {
        WORKER.with(|w| w.borrow_mut().take());
        NGX_OK as ngx_int_t
    });
}

/// Starts `filter` as a plugin on `vm`, with its root linked to the VM for events.
pub fn start_plugin(vm: &SharedVm, filter: &FilterDecl, log: *mut ngx_log_t) -> Result<PluginId, String> {
    let link = RootLink::new(log);
    let vm_id = vm.borrow().module_vm_id().to_string();
    let root = Box::new(RootEmbedding::new(&filter.plugin.name, &vm_id, &link));
    let plugin = vm.borrow_mut().add_plugin(filter.plugin.clone(), root).map_err(|e| e.to_string())?;
    link.bind(vm, plugin);
    Ok(plugin)
}

/// The shared VM and plugin of a filter in this worker, started on first use.
pub fn shared_instance(filter: usize) -> Result<(SharedVm, PluginId), String> {
    let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.ok_or("no wasm configuration")?;
    let decl = &conf.filters[filter];
    let (vm, plugin) = WORKER.with(|w| {
        let w = w.borrow();
        let w = w.as_ref().ok_or("the worker has no wasm runtime")?;
        Ok::<_, String>((w.vms[decl.module].clone(), w.plugins[filter]))
    })?;
    if let (Some(vm), Some(plugin)) = (&vm, plugin) {
        return Ok((vm.clone(), plugin));
    }
    // Started outside the worker's borrow: the guest runs (on_vm_start, on_configure).
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    let vm = match vm {
        Some(vm) => vm,
        None => {
            let module = &conf.modules[decl.module];
            Rc::new(RefCell::new(Vm::new(module.module.clone(), module.vm_config.clone()).map_err(|e| e.to_string())?))
        }
    };
    let plugin = start_plugin(&vm, decl, log)?;
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.vms[decl.module] = Some(vm.clone());
            w.plugins[filter] = Some(plugin);
        }
    });
    Ok((vm, plugin))
}

/// A fresh VM of `module` with the filter's plugin started on it (isolation stream/filter).
pub fn fresh_instance(
    decl: &ModuleDecl,
    filter: &FilterDecl,
    log: *mut ngx_log_t,
) -> Result<(SharedVm, PluginId), String> {
    let vm = Rc::new(RefCell::new(Vm::new(decl.module.clone(), decl.vm_config.clone()).map_err(|e| e.to_string())?));
    let plugin = start_plugin(&vm, filter, log)?;
    Ok((vm, plugin))
}
