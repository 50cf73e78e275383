//! Instances of a configuration's module: one per thread for isolation `none` (the main
//! thread's is made at config load, each worker's at its first request), or one per request
//! for isolation `stream`; and delivering a root context's pending events.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use inwasm_host::{FilterError, PluginId, StreamLimits, Vm};

use crate::embedding::{RootEmbedding, RootLink};
use crate::filter_config::FilterConfig;
use crate::mailbox::Mailbox;
use crate::report;

pub type SharedVm = Rc<RefCell<Vm>>;

pub struct Instance {
    pub vm: SharedVm,
    pub plugin: PluginId,
    pub mailbox: Arc<Mailbox>,
    config: Arc<FilterConfig>,
}

thread_local! {
    /// This thread's shared instance of each configuration, with the configuration's id (a
    /// thread serves few configurations: a list is the quickest to search).
    static SHARED: RefCell<Vec<(u64, Rc<Instance>)>> = const { RefCell::new(Vec::new()) };
}

fn find(config_id: u64) -> Option<Rc<Instance>> {
    SHARED.with(|s| s.borrow().iter().find(|(id, _)| *id == config_id).map(|(_, i)| i.clone()))
}

impl Instance {
    /// Instantiates the module and starts the filter's root context on it.
    pub fn start(config: &Arc<FilterConfig>, mailbox: Arc<Mailbox>) -> Result<Instance, FilterError> {
        let mut vm = Vm::new(config.module.clone(), config.settings.vm.clone())?;
        let link = RootLink::default();
        let root = RootEmbedding::new(config, &mailbox, &link);
        let plugin = vm.add_plugin(config.settings.plugin.clone(), Box::new(root))?;
        let vm = Rc::new(RefCell::new(vm));
        link.bind(&vm, plugin);
        Ok(Instance { vm, plugin, mailbox, config: config.clone() })
    }

    /// What each request's stream on this instance may spend.
    pub fn stream_limits(&self) -> StreamLimits {
        self.config.settings.stream
    }

    /// Runs what the root context has pending: a tick, queues with new items.
    pub fn deliver_pending(&self) {
        let pending = self.mailbox.take();
        let mut vm = self.vm.borrow_mut();
        let tick = pending.tick.then(|| vm.on_tick(self.plugin));
        let queues = pending.ready_queues.into_iter().map(|queue| vm.on_queue_ready(self.plugin, queue));
        for result in tick.into_iter().chain(queues) {
            if let Err(error) = result {
                report::failure(&self.config, &error, "root context");
            }
        }
    }
}

/// This thread's instance of `config`, started on first use.
pub fn shared(config: &Arc<FilterConfig>) -> Result<Rc<Instance>, FilterError> {
    if let Some(instance) = find(config.id) {
        return Ok(instance);
    }
    let instance = Rc::new(Instance::start(config, Arc::new(Mailbox::default()))?);
    SHARED.with(|s| {
        let mut shared = s.borrow_mut();
        // Instances of configurations Envoy has since destroyed go with this change.
        shared.retain(|(_, i)| !i.config.is_retired());
        shared.push((config.id, instance.clone()));
    });
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
