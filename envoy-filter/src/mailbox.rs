//! Events for one root context, posted from any thread and run on the root's own thread.
//!
//! Envoy's dynamic-module ABI gives no timer on a worker thread and no way to run code there
//! except inside one of its requests. So a root context on a worker gets its ticks and queue
//! notifications at the start of that worker's next request through the filter; a root on
//! Envoy's main thread (each filter configuration has one) is woken at once through the
//! configuration's scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::abi::{self, SchedulerPtr};

/// The configuration scheduler that wakes the main thread; deleted when the configuration is.
struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's scheduler commit may be called from any thread; the pointer is only used
// under the mailbox's lock and deleted once, under it too.
unsafe impl Send for Scheduler {}

/// The event id committed to the configuration scheduler.
pub const WAKE_EVENT: u64 = 1;

#[derive(Default)]
pub struct Mailbox {
    /// Something was posted since the last `take` (checked first: requests look every time).
    posted: AtomicBool,
    tick_due: AtomicBool,
    ready_queues: Mutex<Vec<u32>>,
    wake: Mutex<Option<Scheduler>>,
}

/// What a root context has to run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub tick: bool,
    pub ready_queues: Vec<u32>,
}

impl Mailbox {
    /// A mailbox on Envoy's main thread, woken through `scheduler` (which it now owns).
    pub fn on_main_thread(scheduler: SchedulerPtr) -> Mailbox {
        Mailbox { wake: Mutex::new((!scheduler.is_null()).then_some(Scheduler(scheduler))), ..Mailbox::default() }
    }

    pub fn is_main_thread(&self) -> bool {
        self.lock_wake().is_some()
    }

    /// The root's tick period has passed (several unanswered ticks make one).
    pub fn post_tick(&self) {
        if !self.tick_due.swap(true, Ordering::AcqRel) {
            self.posted.store(true, Ordering::Release);
            self.wake();
        }
    }

    /// A queue the root registered has items.
    pub fn post_queue_ready(&self, queue_id: u32) {
        let mut ready = self.ready_queues.lock().unwrap_or_else(|p| p.into_inner());
        if !ready.contains(&queue_id) {
            ready.push(queue_id);
            drop(ready);
            self.posted.store(true, Ordering::Release);
            self.wake();
        }
    }

    /// Takes what is pending.
    pub fn take(&self) -> Pending {
        if !self.posted.swap(false, Ordering::AcqRel) {
            return Pending::default();
        }
        let tick = self.tick_due.swap(false, Ordering::AcqRel);
        let ready_queues = std::mem::take(&mut *self.ready_queues.lock().unwrap_or_else(|p| p.into_inner()));
        Pending { tick, ready_queues }
    }

    /// Stops waking the main thread and deletes the scheduler (the configuration is going).
    pub fn close(&self) {
        if let Some(scheduler) = self.lock_wake().take() {
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler.0) };
        }
    }

    fn wake(&self) {
        if let Some(scheduler) = self.lock_wake().as_ref() {
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler.0, WAKE_EVENT) };
        }
    }

    fn lock_wake(&self) -> std::sync::MutexGuard<'_, Option<Scheduler>> {
        self.wake.lock().unwrap_or_else(|p| p.into_inner())
    }
}
