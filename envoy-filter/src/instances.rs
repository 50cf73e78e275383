//! Instances of a configuration's module: one per thread for isolation `none` (the main
//! thread's is made at config load, each worker's at its first request), or one per request
//! for isolation `stream` (reset when the request ends and kept for the next, as many as
//! [`KeptInstances::LIMIT`]: a reset costs a fraction of a fresh instance's start-up); and
//! delivering a root context's pending events.
//!
//! As in Envoy's Wasm filter, configurations with the same module and VM configuration (VM
//! id, `vm_configuration`, limits) share one VM per thread, each with its own root context:
//! they see one copy of the module's globals, and context ids are unique across them.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::{self, Arc};

use inwasm_host::{FilterError, KeptInstances, Module, NotResettable, PluginId, StreamLimits, Vm, VmConfig};

use crate::config::Isolation;
use crate::embedding::{RootEmbedding, RootLink};
use crate::filter_config::FilterConfig;
use crate::mailbox::Mailbox;
use crate::report;

pub type SharedVm = Rc<RefCell<Vm>>;

/// One configuration's root context on a VM of this thread.
pub struct Instance {
    pub vm: SharedVm,
    pub plugin: PluginId,
    pub mailbox: Arc<Mailbox>,
    config: Arc<FilterConfig>,
}

/// What makes two configurations share a VM.
struct VmKey {
    module: Arc<Module>,
    config: VmConfig,
}

impl VmKey {
    fn of(config: &FilterConfig) -> VmKey {
        VmKey { module: config.module.clone(), config: config.settings.vm.clone() }
    }

    fn matches(&self, other: &VmKey) -> bool {
        Arc::ptr_eq(&self.module, &other.module) && self.config == other.config
    }
}

thread_local! {
    /// This thread's shared instance of each configuration, with the configuration's id (a
    /// thread serves few configurations: a list is the quickest to search).
    static SHARED: RefCell<Vec<(u64, Rc<Instance>)>> = const { RefCell::new(Vec::new()) };
    /// This thread's shared VMs, alive while an instance uses them.
    static VMS: RefCell<Vec<(VmKey, Weak<RefCell<Vm>>)>> = const { RefCell::new(Vec::new()) };
    /// Isolation `stream` instances reset after their request, ready for the next, by
    /// configuration (a retired configuration's go with [`forget_retired_kept`]).
    static KEPT: RefCell<Vec<(sync::Weak<FilterConfig>, KeptInstances<Instance>)>> = const { RefCell::new(Vec::new()) };
}

/// Drops this thread's kept instances of configurations Envoy has destroyed since.
fn forget_retired_kept() {
    KEPT.with(|k| k.borrow_mut().retain(|(config, _)| config.upgrade().is_some_and(|c| !c.is_retired())));
}

/// `f` on this thread's kept instances of `config`.
fn kept<R>(config: &Arc<FilterConfig>, f: impl FnOnce(&mut KeptInstances<Instance>) -> R) -> R {
    KEPT.with(|k| {
        let mut kept = k.borrow_mut();
        // (A weak reference keeps its allocation: no other configuration can have its address.)
        let index = kept.iter().position(|(kept_config, _)| kept_config.as_ptr() == Arc::as_ptr(config));
        let index = index.unwrap_or_else(|| {
            kept.push((Arc::downgrade(config), KeptInstances::new(false)));
            kept.len() - 1
        });
        f(&mut kept[index].1)
    })
}

fn find(config_id: u64) -> Option<Rc<Instance>> {
    SHARED.with(|s| s.borrow().iter().find(|(id, _)| *id == config_id).map(|(_, i)| i.clone()))
}

/// This thread's VM for `config`'s key, made on first use.
fn shared_vm(config: &FilterConfig) -> Result<SharedVm, FilterError> {
    let key = VmKey::of(config);
    let found = VMS.with(|v| v.borrow().iter().find(|(k, _)| k.matches(&key)).and_then(|(_, vm)| vm.upgrade()));
    if let Some(vm) = found {
        return Ok(vm);
    }
    let vm = Rc::new(RefCell::new(Vm::new(config.module.clone(), config.settings.vm.clone())?));
    VMS.with(|v| {
        let mut vms = v.borrow_mut();
        vms.retain(|(_, vm)| vm.strong_count() > 0);
        vms.push((key, Rc::downgrade(&vm)));
    });
    Ok(vm)
}

impl Instance {
    /// Starts the filter's root context on this thread's VM for it (a fresh one for isolation
    /// `stream`).
    pub fn start(config: &Arc<FilterConfig>, mailbox: Arc<Mailbox>) -> Result<Instance, FilterError> {
        let vm = match config.settings.isolation {
            Isolation::None => shared_vm(config)?,
            Isolation::Stream => Rc::new(RefCell::new(Vm::new(config.module.clone(), config.settings.vm.clone())?)),
        };
        let link = RootLink::default();
        let root = RootEmbedding::new(config, &mailbox, &link);
        let plugin = vm.borrow_mut().add_plugin(config.settings.plugin.clone(), Box::new(root))?;
        link.bind(&vm, plugin);
        Ok(Instance { vm, plugin, mailbox, config: config.clone() })
    }

    /// An instance of `config` for one request (isolation `stream`): one an earlier request
    /// left, reset, or a fresh one that keeps its state after start-up to be reset to.
    pub fn for_request(config: &Arc<FilterConfig>) -> Result<Instance, FilterError> {
        if let Some(kept) = kept(config, KeptInstances::take) {
            return Ok(kept);
        }
        let instance = Instance::start(config, Arc::new(Mailbox::default()))?;
        let refused = kept(config, |kept| kept.prepare(&mut instance.vm.borrow_mut()));
        say_fresh_only(config, refused);
        Ok(instance)
    }

    /// Takes back a request's own instance when the request ends: reset and kept for the
    /// configuration's next request, or dropped (there are enough kept, which it is not reset
    /// for; something still holds it; its configuration is gone; or it failed).
    pub fn recycle(self: Rc<Instance>) {
        let Ok(instance) = Rc::try_unwrap(self) else { return };
        if Rc::strong_count(&instance.vm) != 1 || instance.config.is_retired() {
            return;
        }
        forget_retired_kept();
        let config = instance.config.clone();
        let refused = kept(&config, |kept| kept.give_back(instance, |instance| instance.vm.borrow_mut().reset()));
        say_fresh_only(&config, refused);
    }

    /// What each request's stream on this instance may spend.
    pub fn stream_limits(&self) -> StreamLimits {
        self.config.settings.stream
    }

    /// Runs what the root context has pending: a tick, queues with new items.
    pub fn deliver_pending(&self) {
        // (Only from an event of Envoy's, never inside a guest call: the VM is free.)
        let Ok(mut vm) = self.vm.try_borrow_mut() else { return };
        let pending = self.mailbox.take();
        let tick = pending.tick.then(|| vm.on_tick(self.plugin));
        let queues = pending.ready_queues.into_iter().map(|queue| vm.on_queue_ready(self.plugin, queue));
        for result in tick.into_iter().chain(queues) {
            if let Err(error) = result {
                report::failure(&self.config, &error, "root context");
            }
        }
    }
}

impl Drop for Instance {
    /// A VM other configurations still use loses this configuration's root context (one
    /// used by this instance alone goes with it).
    fn drop(&mut self) {
        if Rc::strong_count(&self.vm) == 1 {
            return;
        }
        let Ok(mut vm) = self.vm.try_borrow_mut() else { return };
        if let Err(error) = vm.remove_plugin(self.plugin) {
            drop(vm);
            report::failure(&self.config, &error, "while its root context ended");
        }
    }
}

/// Logs why `config`'s requests get a fresh instance each on this thread from now on (said
/// once: `refused` is only given the first time).
fn say_fresh_only(config: &FilterConfig, refused: Option<NotResettable>) {
    if let Some(reason) = refused {
        crate::log::line(inwasm_host::LogLevel::Info, &format!("inwasm: {}", reason.fallback_notice(config.name())));
    }
}

/// This thread's instance of `config`, started on first use, with those of the other
/// configurations sharing its VM (in the order they loaded, as Envoy's Wasm filter starts a
/// worker's root contexts: their context ids are V8's).
pub fn shared(config: &Arc<FilterConfig>) -> Result<Rc<Instance>, FilterError> {
    if let Some(instance) = find(config.id) {
        return Ok(instance);
    }
    let key = VmKey::of(config);
    let siblings = FilterConfig::loaded(|other| other.id != config.id && key.matches(&VmKey::of(other)));
    let (earlier, later): (Vec<_>, Vec<_>) = siblings.into_iter().partition(|sibling| sibling.id < config.id);
    let start_sibling = |sibling: &Arc<FilterConfig>| {
        if find(sibling.id).is_none() {
            if let Err(error) = start_shared(sibling) {
                report::failure(sibling, &error, "its root context did not start on this thread");
            }
        }
    };
    earlier.iter().for_each(start_sibling);
    let instance = start_shared(config)?;
    later.iter().for_each(start_sibling);
    Ok(instance)
}

fn start_shared(config: &Arc<FilterConfig>) -> Result<Rc<Instance>, FilterError> {
    let instance = Rc::new(Instance::start(config, Arc::new(Mailbox::default()))?);
    SHARED.with(|s| {
        let mut shared = s.borrow_mut();
        // Instances of configurations Envoy has since destroyed go with this change.
        shared.retain(|(_, i)| !i.config.is_retired());
        shared.push((config.id, instance.clone()));
    });
    forget_retired_kept();
    Ok(instance)
}

/// Makes `instance` this thread's instance of `config` (the main thread's, at config load).
pub fn install(config: &Arc<FilterConfig>, instance: Instance) {
    SHARED.with(|s| s.borrow_mut().push((config.id, Rc::new(instance))));
}

pub fn uninstall(config_id: u64) {
    let removed: Vec<_> = SHARED.with(|s| {
        let mut shared = s.borrow_mut();
        let (gone, kept) = shared.drain(..).partition(|(id, _)| *id == config_id);
        *shared = kept;
        gone
    });
    drop(removed);
}

/// The main thread's instance of a configuration (only there).
pub fn installed(config_id: u64) -> Option<Rc<Instance>> {
    find(config_id)
}
