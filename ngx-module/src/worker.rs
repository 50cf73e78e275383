//! Per-worker runtime: the epoch ticker that enforces deadlines, and the shared instances
//! (isolation `none`: one VM per module, holding every filter of that module as a plugin).
//! Created in each worker after fork; the master never runs it. A filter that does work of
//! its own (timers, calls, queues, shared data: see `validation`) starts with the worker; the
//! others start at their first request, so an idle filter costs no instance.
//!
//! The VMs a request has of its own (isolation `stream` and `filter`) are reset when it ends
//! and kept for the filter's next request, as many as [`IDLE_PER_FILTER`]: a reset costs a
//! fraction of a fresh instance's start-up (see `Vm::reset`).
//!
//! The process's instance pool has a fixed number of slots. When a new instance finds them
//! all taken, the kept per-request VMs are released first, then the least recently used
//! shared VM that is idle (no request on it, no call or timer pending, no filter that works
//! in the background); its next request starts it again, as its first did.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ptr;
use std::rc::Rc;

use inwasm_host::{EpochTicker, FailureCounter, FailureKind, FilterError, KeptInstances, NotResettable, PluginId, Vm};
use ngx::ffi::{
    ngx_cycle_t, ngx_event_t, ngx_int_t, ngx_post_event, ngx_posted_events, ngx_uint_t, NGX_LOG_ERR, NGX_OK,
};

use crate::embedding::RootEmbedding;
use crate::ffi::{cycle_log, guard, guard_status, log_error};
use crate::http_call;
use crate::metrics;
use crate::root_link::RootLink;
use crate::wasm_block::{engine, FilterDecl, ModuleDecl, WasmConf};

pub type SharedVm = Rc<RefCell<Vm>>;

struct Worker {
    _ticker: EpochTicker,
    /// The shared VM of each module, once started, by module index.
    vms: Vec<Option<SharedVm>>,
    /// Each filter's plugin on its module's shared VM (and the link its root's events come
    /// through), once started, by filter index.
    plugins: Vec<Option<(PluginId, Rc<RootLink>)>>,
    /// The filters of each module, by module index.
    module_filters: Vec<Vec<usize>>,
    /// When each module's shared VM was last used, counted in uses of any shared VM.
    last_used: Vec<u64>,
    uses: u64,
    /// Per-request VMs reset after their request, ready for the next, by filter index (a
    /// filter that works in the background gets a fresh one per request).
    kept: Vec<KeptInstances<(SharedVm, PluginId)>>,
}

impl Worker {
    fn new(conf: &WasmConf, ticker: EpochTicker) -> Worker {
        let mut module_filters = vec![Vec::new(); conf.modules.len()];
        for (index, filter) in conf.filters.iter().enumerate() {
            module_filters[filter.module].push(index);
        }
        Worker {
            _ticker: ticker,
            vms: vec![None; conf.modules.len()],
            plugins: vec![None; conf.filters.len()],
            module_filters,
            last_used: vec![0; conf.modules.len()],
            uses: 0,
            kept: conf.filters.iter().map(|filter| KeptInstances::new(filter.background)).collect(),
        }
    }

    /// Whether `module`'s shared VM can be dropped without losing anything but its state:
    /// no request holds it, no call awaits an answer, no filter of it works in the background
    /// or has a timer running.
    fn is_idle(&self, conf: &WasmConf, module: usize, vm: &SharedVm) -> bool {
        Rc::strong_count(vm) == 1
            && !vm.borrow().has_work_in_flight()
            && !self.module_filters[module].iter().any(|&index| {
                conf.filters[index].background
                    || self.plugins[index].as_ref().is_some_and(|(_, link)| link.is_ticking())
            })
    }

    /// Releases a kept per-request VM (of the filter that has most), else the least recently
    /// used idle shared VM; false when none is idle.
    fn release_idle_vm(&mut self, conf: &WasmConf) -> bool {
        if let Some(kept) = self.kept.iter_mut().max_by_key(|kept| kept.len()).filter(|kept| !kept.is_empty()) {
            kept.take();
            return true;
        }
        let oldest = (self.vms.iter().enumerate())
            .filter(|(module, vm)| vm.as_ref().is_some_and(|vm| self.is_idle(conf, *module, vm)))
            .min_by_key(|(module, _)| self.last_used[*module])
            .map(|(module, _)| module);
        let Some(module) = oldest else { return false };
        self.vms[module] = None;
        for &index in &self.module_filters[module] {
            self.plugins[index] = None;
        }
        true
    }
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// Posted after a shared instance failed, to build it again from the event loop.
    static REVIVAL: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
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

/// A filter failure as the log tells it: what happened and, when a limit stopped the filter,
/// the setting that gives it more room (filters that inspect bodies, like WAFs, often need
/// more time than the defaults).
pub fn failure_text(error: &FilterError) -> String {
    let setting = match error.kind {
        FailureKind::Deadline(_) if START_STEPS.contains(&error.callback) => "start_timeout",
        FailureKind::Deadline(_) if BACKGROUND_CALLBACKS.contains(&error.callback) => "background_timeout",
        FailureKind::Deadline(_) => "proxy_wasm_timeout",
        FailureKind::RequestBudget(_) => "proxy_wasm_request_timeout",
        FailureKind::MemoryLimit(_) => "memory_limit",
        _ => return error.to_string(),
    };
    format!("{error} (raise {setting} if the filter needs more)")
}

/// Callbacks that run the filter's start-up, and those its root runs on its own.
const START_STEPS: [&str; 5] = ["_initialize", "_start", "main", "proxy_on_vm_start", "proxy_on_configure"];
const BACKGROUND_CALLBACKS: [&str; 3] = ["proxy_on_tick", "proxy_on_queue_ready", "proxy_on_http_call_response"];

/// Has the event loop build again, as soon as it can, the shared instances that failed, so
/// no request pays for a start-up (a WAF's rule set takes about a second to parse).
pub fn revive_later() {
    REVIVAL.with(|revival| {
        let mut revival = revival.borrow_mut();
        let event = revival.get_or_insert_with(|| {
            // SAFETY: an all-zero event is nginx's idle event.
            let mut event: Box<ngx_event_t> = Box::new(unsafe { std::mem::zeroed() });
            event.handler = Some(revive);
            event.log = cycle_log();
            event
        });
        if event.posted() == 0 {
            // SAFETY: the event is boxed in this worker's thread-local, which outlives it.
            unsafe { ngx_post_event(&mut **event, ptr::addr_of_mut!(ngx_posted_events)) };
        }
    });
}

/// The revival event: every shared instance without a live instance starts again.
unsafe extern "C" fn revive(_event: *mut ngx_event_t) {
    guard(cycle_log(), (), || {
        let vms: Vec<SharedVm> =
            WORKER.with(|w| w.borrow().as_ref().map(|w| w.vms.iter().flatten().cloned().collect()).unwrap_or_default());
        for vm in vms.iter().filter(|vm| !vm.borrow().has_instance()) {
            let Ok(mut vm) = vm.try_borrow_mut() else { continue };
            if let Err(error) = vm.revive() {
                let counts = record_failure(&error);
                log_error(
                    NGX_LOG_ERR as usize,
                    cycle_log(),
                    &format!("inwasm: {}; this worker: {counts}", failure_text(&error)),
                );
            }
        }
    });
}

/// Counts a filter failure in this worker; returns the filter's counts so far. Failures
/// that only follow from an earlier one (a lost instance) are not counted again.
pub fn record_failure(error: &FilterError) -> FailureCounts {
    FAILURES.with(|failures| {
        let mut failures = failures.borrow_mut();
        let counts = failures.entry(error.filter.clone()).or_default();
        let metric = match error.kind.counter() {
            Some(FailureCounter::Timeouts) => {
                counts.timeouts += 1;
                "inwasm_timeouts_total"
            }
            Some(FailureCounter::MemoryFailures) => {
                counts.memory_failures += 1;
                "inwasm_memory_failures_total"
            }
            Some(FailureCounter::Traps) => {
                counts.traps += 1;
                "inwasm_traps_total"
            }
            None => return *counts,
        };
        if let Some(zone) = WasmConf::metrics() {
            metrics::count(zone, &error.filter, metric);
        }
        *counts
    })
}

pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls it in a new worker with the worker's cycle.
    unsafe {
        let log = (*cycle).log;
        guard_status(log, || {
            let Some(conf) = WasmConf::of_cycle(cycle) else {
                return NGX_OK as ngx_int_t;
            };
            if conf.modules.is_empty() {
                return NGX_OK as ngx_int_t;
            }
            let ticker = match EpochTicker::start(engine(), conf.tick_period()) {
                Ok(ticker) => ticker,
                Err(error) => {
                    log_error(NGX_LOG_ERR as usize, log, &format!("inwasm: cannot start the deadline ticker: {error}"));
                    return ngx::ffi::NGX_ERROR as ngx_int_t;
                }
            };
            let worker = Worker::new(conf, ticker);
            WORKER.with(|w| *w.borrow_mut() = Some(worker));
            for (index, filter) in conf.filters.iter().enumerate().filter(|(_, f)| f.background) {
                if let Err(message) = shared_instance(index) {
                    log_error(
                        NGX_LOG_ERR as usize,
                        log,
                        &format!("inwasm: filter \"{}\": {message}", filter.plugin.name),
                    );
                }
            }
            NGX_OK as ngx_int_t
        })
    }
}

pub unsafe extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    // SAFETY: nginx calls it in an exiting worker with the worker's cycle.
    let log = unsafe { (*cycle).log };
    guard_status(log, || {
        http_call::close_all();
        WORKER.with(|w| w.borrow_mut().take());
        REVIVAL.with(|revival| {
            if let Some(event) = revival.borrow_mut().as_mut().filter(|event| event.posted() != 0) {
                // SAFETY: our event, posted.
                unsafe { ngx::ffi::ngx_delete_posted_event(&mut **event) };
            }
        });
        NGX_OK as ngx_int_t
    });
}

/// Starts `filter` as a plugin on `vm`, with its root linked to the VM for events.
pub fn start_plugin(vm: &SharedVm, filter: &FilterDecl) -> Result<PluginId, String> {
    start_linked_plugin(vm, filter).map(|(plugin, _)| plugin)
}

/// `start_plugin`, also returning the link (through which the worker sees the root's timer).
/// A root logs to the cycle's log, never a request's: a per-request instance's root may have
/// calls or timers that outlive the request.
fn start_linked_plugin(vm: &SharedVm, filter: &FilterDecl) -> Result<(PluginId, Rc<RootLink>), String> {
    let link = RootLink::new(cycle_log());
    let vm_id = vm.borrow().module_vm_id().to_string();
    let root = Box::new(RootEmbedding::new(&filter.plugin.name, &vm_id, &link));
    let plugin = vm.borrow_mut().add_plugin(filter.plugin.clone(), root).map_err(|e| e.to_string())?;
    link.bind(vm, plugin);
    Ok((plugin, link))
}

/// A new VM of `decl`; when the instance pool is full, idle shared VMs are released (least
/// recently used first) until it fits.
fn new_vm(conf: &WasmConf, decl: &ModuleDecl) -> Result<SharedVm, String> {
    loop {
        match Vm::new(decl.module().clone(), decl.vm_config.clone()) {
            Ok(vm) => return Ok(Rc::new(RefCell::new(vm))),
            Err(error) if matches!(error.kind, FailureKind::NoFreeSlot(_)) => {
                let released = WORKER.with(|w| w.borrow_mut().as_mut().is_some_and(|w| w.release_idle_vm(conf)));
                if !released {
                    return Err(error.to_string());
                }
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// The shared VM and plugin of a filter in this worker, started on first use. A VM new to the
/// worker starts the root contexts of all its module's filters, in configuration order (as
/// Envoy's Wasm filter starts a worker's), so their context ids are the same as there.
pub fn shared_instance(filter: usize) -> Result<(SharedVm, PluginId), String> {
    // SAFETY: the worker's cycle.
    let conf = unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }.ok_or("no wasm configuration")?;
    let decl = &conf.filters[filter];
    let (vm, plugin) = WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.as_mut().ok_or("the worker has no wasm runtime")?;
        w.uses += 1;
        w.last_used[decl.module] = w.uses;
        Ok::<_, String>((w.vms[decl.module].clone(), w.plugins[filter].as_ref().map(|(plugin, _)| *plugin)))
    })?;
    if let (Some(vm), Some(plugin)) = (&vm, plugin) {
        return Ok((vm.clone(), plugin));
    }
    // Started outside the worker's borrow: the guest runs (on_vm_start, on_configure).
    let (vm, siblings) = match vm {
        Some(vm) => (vm, Vec::new()),
        None => {
            let siblings = (0..conf.filters.len()).filter(|&i| i != filter && conf.filters[i].module == decl.module);
            (new_vm(conf, &conf.modules[decl.module])?, siblings.collect())
        }
    };
    let start = |index: usize| -> Result<PluginId, String> {
        let (plugin, link) = start_linked_plugin(&vm, &conf.filters[index])?;
        WORKER.with(|w| {
            if let Some(w) = w.borrow_mut().as_mut() {
                w.vms[decl.module] = Some(vm.clone());
                w.plugins[index] = Some((plugin, link));
            }
        });
        Ok(plugin)
    };
    for &sibling in siblings.iter().filter(|&&i| i < filter) {
        report_sibling(start(sibling));
    }
    let plugin = start(filter)?;
    for &sibling in siblings.iter().filter(|&&i| i > filter) {
        report_sibling(start(sibling));
    }
    Ok((vm, plugin))
}

/// A sibling's failure to start is its own (logged; it is tried again at its first use).
fn report_sibling(started: Result<PluginId, String>) {
    if let Err(message) = started {
        log_error(NGX_LOG_ERR as ngx_uint_t, cycle_log(), &format!("inwasm: {message}"));
    }
}

/// A VM of a request's own for `filter` (isolation stream or filter): one an earlier request
/// left, reset, or a fresh one with the filter's plugin started on it. A fresh one that is
/// `reusable` (it will hold this filter alone) keeps its state after start-up, to be reset
/// to at the request's end.
pub fn request_instance(conf: &WasmConf, filter: usize, reusable: bool) -> Result<(SharedVm, PluginId), String> {
    let kept = reusable.then(|| WORKER.with(|w| w.borrow_mut().as_mut().and_then(|w| w.kept[filter].take())));
    if let Some(kept) = kept.flatten() {
        return Ok(kept);
    }
    let decl = &conf.filters[filter];
    let vm = new_vm(conf, &conf.modules[decl.module])?;
    let plugin = start_plugin(&vm, decl)?;
    if reusable {
        let refused =
            WORKER.with(|w| w.borrow_mut().as_mut().and_then(|w| w.kept[filter].prepare(&mut vm.borrow_mut())));
        say_fresh_only(filter, refused);
    }
    Ok((vm, plugin))
}

/// Takes back the VMs an ended request had of its own: each is reset and kept for its
/// filter's next request, or dropped (there are enough kept, which it is not reset for;
/// something still holds it; or it failed).
pub fn recycle(vms: impl Iterator<Item = (usize, PluginId, SharedVm)>) {
    for (filter, plugin, vm) in vms {
        if Rc::strong_count(&vm) != 1 {
            continue;
        }
        let refused = WORKER.with(|w| {
            let mut w = w.borrow_mut();
            w.as_mut()?.kept[filter].give_back((vm, plugin), |(vm, _)| vm.borrow_mut().reset())
        });
        say_fresh_only(filter, refused);
    }
}

/// Logs why `filter`'s requests get a fresh instance each from now on (said once per filter:
/// `refused` is only given the first time).
fn say_fresh_only(filter: usize, refused: Option<NotResettable>) {
    let Some(reason) = refused else { return };
    // SAFETY: the worker's cycle.
    let Some(conf) = (unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }) else { return };
    let message = format!("inwasm: {}", reason.fallback_notice(&conf.filters[filter].plugin.name));
    log_error(ngx::ffi::NGX_LOG_NOTICE as ngx_uint_t, cycle_log(), &message);
}
