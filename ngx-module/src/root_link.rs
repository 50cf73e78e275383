//! How nginx events reach a plugin's root context: a link from the root's embedding to its
//! VM, used to deliver http call responses and ticks from the event loop (never from inside a
//! guest call), and the root's tick timer.

use std::cell::{Cell, RefCell};
use std::ptr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use inwasm_host::{FilterError, PluginId, Vm};
use ngx::ffi::{ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_log_t, ngx_msec_t, ngx_uint_t, NGX_LOG_ERR};

use crate::ffi::{guard, log_error};
use crate::worker::{failure_text, record_failure, revive_later, SharedVm};

pub struct RootLink {
    /// False for the configuration-time dry run (in the master's child), where there is no
    /// event loop and the live shared memory must not be touched.
    live: bool,
    target: RefCell<Option<(Weak<RefCell<Vm>>, PluginId)>>,
    log: *mut ngx_log_t,
    tick: RefCell<Option<Box<Tick>>>,
    /// A period set before the link was bound (in `on_configure`), armed when it is.
    pending_period: Cell<Option<Duration>>,
    /// In the dry run: the filter started work of its own (a timer, a call, a queue, shared
    /// data), so it must run in each worker from the start.
    background: Cell<bool>,
}

/// The root's `on_tick` timer: an nginx timer re-armed after each tick.
struct Tick {
    event: ngx_event_t,
    period: ngx_msec_t,
    link: Weak<RootLink>,
}

impl Drop for Tick {
    fn drop(&mut self) {
        if self.event.timer_set() != 0 {
            // SAFETY: our event, in nginx's timer tree while set.
            unsafe { ngx_del_timer(&mut self.event) };
        }
    }
}

impl RootLink {
    /// A link for a root in a worker.
    pub fn new(log: *mut ngx_log_t) -> Rc<RootLink> {
        RootLink::with_liveness(log, true)
    }

    /// A link for the configuration-time dry run.
    pub fn dry_run(log: *mut ngx_log_t) -> Rc<RootLink> {
        RootLink::with_liveness(log, false)
    }

    fn with_liveness(log: *mut ngx_log_t, live: bool) -> Rc<RootLink> {
        let (target, tick, pending_period) = (RefCell::new(None), RefCell::new(None), Cell::new(None));
        Rc::new(RootLink { live, target, log, tick, pending_period, background: Cell::new(false) })
    }

    /// Whether this is the configuration-time dry run; there, `background` work is noted.
    pub fn in_dry_run(&self, background: bool) -> bool {
        if !self.live && background {
            self.background.set(true);
        }
        !self.live
    }

    /// In the dry run: whether the filter started work of its own.
    pub fn did_background_work(&self) -> bool {
        self.background.get()
    }

    /// Points the link at the VM and plugin the root runs as, once it exists.
    pub fn bind(self: &Rc<Self>, vm: &SharedVm, plugin: PluginId) {
        *self.target.borrow_mut() = Some((Rc::downgrade(vm), plugin));
        if let Some(period) = self.pending_period.take() {
            self.set_tick_period(period);
        }
    }

    fn is_bound(&self) -> bool {
        self.target.borrow().is_some()
    }

    pub fn log(&self) -> *mut ngx_log_t {
        self.log
    }

    /// Runs `event` on the root's VM; failures are logged and counted like request failures.
    pub fn deliver(&self, event: impl FnOnce(&mut Vm, PluginId) -> Result<(), FilterError>) {
        let target = self.target.borrow().clone();
        let Some((vm, plugin)) = target else { return };
        let Some(vm) = vm.upgrade() else { return };
        let Ok(mut vm) = vm.try_borrow_mut() else {
            log_error(NGX_LOG_ERR as ngx_uint_t, self.log, "inwasm: event for a busy VM dropped");
            return;
        };
        if let Err(error) = event(&mut vm, plugin) {
            let counts = record_failure(&error);
            revive_later();
            let message = format!("inwasm: {}; this worker: {counts}", failure_text(&error));
            log_error(NGX_LOG_ERR as ngx_uint_t, self.log, &message);
        }
    }

    /// Whether the root's tick timer is running.
    pub fn is_ticking(&self) -> bool {
        self.tick.borrow().is_some()
    }

    /// Starts, changes or (with a zero period) stops the root's tick timer.
    pub fn set_tick_period(self: &Rc<Self>, period: Duration) {
        if self.in_dry_run(!period.is_zero()) {
            return;
        }
        if !self.is_bound() {
            self.pending_period.set(Some(period));
            return;
        }
        let mut tick = self.tick.borrow_mut();
        if period.is_zero() {
            *tick = None;
            return;
        }
        let period = period.as_millis().max(1) as ngx_msec_t;
        let timer = tick.get_or_insert_with(|| {
            // SAFETY: an all-zero event is nginx's idle event.
            let event = unsafe { std::mem::zeroed() };
            let mut timer = Box::new(Tick { event, period, link: Rc::downgrade(self) });
            timer.event.handler = Some(on_tick);
            timer.event.log = self.log;
            timer.event.set_cancelable(1);
            timer.event.data = ptr::addr_of_mut!(*timer) as *mut _;
            timer
        });
        timer.period = period;
        // SAFETY: the event is boxed (it does not move) and deletes its timer when dropped.
        unsafe { ngx_add_timer(&mut timer.event, period) };
    }
}

/// A root's ticks may take a tenth of the worker's time: after a tick that ran for `d`, the
/// next comes no sooner than `BUSY_SHARE_INVERSE - 1` times `d` later (and its period).
const BUSY_SHARE_INVERSE: u32 = 10;

unsafe extern "C" fn on_tick(event: *mut ngx_event_t) {
    // SAFETY: a tick's event carries its `Tick`, alive while its timer is set (the drop of
    // a `Tick` deletes its timer); the reference ends before the tick runs.
    let Some(link) = (unsafe { (*((*event).data as *const Tick)).link.upgrade() }) else { return };
    guard(link.log, (), || {
        let started = Instant::now();
        // `on_tick` may stop or change the timer (dropping this Tick): touch it no more.
        link.deliver(|vm, plugin| vm.on_tick(plugin));
        let rest = started.elapsed() * (BUSY_SHARE_INVERSE - 1);
        if let Some(timer) = link.tick.borrow_mut().as_mut() {
            if timer.event.timer_set() == 0 {
                let wait = timer.period.max(rest.as_millis().min(ngx_msec_t::MAX as u128) as ngx_msec_t);
                // SAFETY: as in `set_tick_period`.
                unsafe { ngx_add_timer(&mut timer.event, wait) };
            }
        }
    });
}
