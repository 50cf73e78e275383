//! Events for one root context, posted from any thread and run on the root's own thread.
//!
//! Envoy's dynamic-module ABI has no timer on a worker thread, so a root context is woken
//! through a scheduler Envoy offers: the configuration's for the root on Envoy's main thread
//! (each filter configuration has one), woken at once; a waiting stream's for a root on a
//! worker. A stream the filter paused registers its scheduler here while it waits, so a tick,
//! a queue item or a call's answer that should resume it runs when it is due; with no stream
//! waiting, the worker's root gets its events at the start of the worker's next request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::abi::{self, SchedulerPtr};

/// The event id committed to a scheduler to wake the root.
pub const WAKE_EVENT: u64 = 1;

/// Queue notifications a root may have waiting before they merge.
const MAX_NOTIFICATIONS: usize = 1024;

/// How the root is woken.
enum Waker {
    /// On a worker: the schedulers of its waiting streams (keyed by their filter), if any.
    Streams(Vec<(usize, SchedulerPtr)>),
    /// On the main thread: the configuration's scheduler (owned; deleted when it closes).
    Config(SchedulerPtr),
    Closed,
}

// SAFETY: Envoy's schedulers may be committed from any thread; each pointer is only used
// under the mailbox's lock (never committed and deleted at once) and deleted once, under it.
unsafe impl Send for Waker {}

pub struct Mailbox {
    /// Something was posted since the last `take` (checked first: requests look every time).
    posted: AtomicBool,
    tick_due: AtomicBool,
    ready_queues: Mutex<Vec<u32>>,
    waker: Mutex<Waker>,
}

impl Default for Mailbox {
    fn default() -> Mailbox {
        Mailbox::with(Waker::Streams(Vec::new()))
    }
}

/// What a root context has to run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub tick: bool,
    pub ready_queues: Vec<u32>,
}

impl Mailbox {
    fn with(waker: Waker) -> Mailbox {
        Mailbox {
            posted: AtomicBool::new(false),
            tick_due: AtomicBool::new(false),
            ready_queues: Mutex::new(Vec::new()),
            waker: Mutex::new(waker),
        }
    }

    /// A mailbox on Envoy's main thread, woken through `scheduler` (which it now owns).
    pub fn on_main_thread(scheduler: SchedulerPtr) -> Mailbox {
        Mailbox::with(if scheduler.is_null() { Waker::Closed } else { Waker::Config(scheduler) })
    }

    pub fn is_main_thread(&self) -> bool {
        matches!(*self.lock_waker(), Waker::Config(_))
    }

    /// The root's tick period has passed (several unanswered ticks make one).
    pub fn post_tick(&self) {
        if !self.tick_due.swap(true, Ordering::AcqRel) {
            self.posted.store(true, Ordering::Release);
            self.wake();
        }
    }

    /// A queue the root registered has a new item: one notification per item, as in Envoy's
    /// Wasm filter (past `MAX_NOTIFICATIONS` waiting, one per queue: they only say "look").
    pub fn post_queue_ready(&self, queue_id: u32) {
        let mut ready = self.ready_queues.lock().unwrap_or_else(|p| p.into_inner());
        if ready.len() >= MAX_NOTIFICATIONS && ready.contains(&queue_id) {
            return;
        }
        ready.push(queue_id);
        drop(ready);
        self.posted.store(true, Ordering::Release);
        self.wake();
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

    /// A stream of this (worker's) root waits: it wakes the root through `scheduler` (which the
    /// mailbox now owns) until `stop_waiting(stream)`. Events posted before it came are run now.
    pub fn wait_with(&self, stream: usize, scheduler: SchedulerPtr) {
        let mut waker = self.lock_waker();
        let Waker::Streams(streams) = &mut *waker else {
            // SAFETY: a scheduler Envoy made for the caller, not used anywhere else.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler) };
            return;
        };
        streams.push((stream, scheduler));
        if self.posted.load(Ordering::Acquire) {
            // SAFETY: a live scheduler, used under the lock.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler, WAKE_EVENT) };
        }
    }

    /// The stream no longer waits (it ended): its scheduler is deleted.
    pub fn stop_waiting(&self, stream: usize) {
        if let Waker::Streams(streams) = &mut *self.lock_waker() {
            if let Some(index) = streams.iter().position(|(s, _)| *s == stream) {
                let (_, scheduler) = streams.swap_remove(index);
                // SAFETY: a scheduler this mailbox owned, removed from it under the lock.
                unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler) };
            }
        }
    }

    /// Stops waking the main thread and deletes the scheduler (the configuration is going).
    pub fn close(&self) {
        let mut waker = self.lock_waker();
        if let Waker::Config(scheduler) = std::mem::replace(&mut *waker, Waker::Closed) {
            // SAFETY: the configuration's scheduler, owned here and now forgotten.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler) };
        }
    }

    fn wake(&self) {
        match &*self.lock_waker() {
            // SAFETY: a live scheduler, used under the lock.
            Waker::Config(scheduler) => unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(*scheduler, WAKE_EVENT)
            },
            // One waiting stream is enough: the root runs everything pending when woken.
            Waker::Streams(streams) => {
                if let Some((_, scheduler)) = streams.last() {
                    // SAFETY: as above.
                    unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(*scheduler, WAKE_EVENT) };
                }
            }
            Waker::Closed => {}
        }
    }

    fn lock_waker(&self) -> MutexGuard<'_, Waker> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let waker = std::mem::replace(self.waker.get_mut().unwrap_or_else(|p| p.into_inner()), Waker::Closed);
        if let Waker::Streams(streams) = waker {
            for (_, scheduler) in streams {
                // SAFETY: schedulers this mailbox owned; nothing can commit them any more.
                unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler) };
            }
        }
    }
}
