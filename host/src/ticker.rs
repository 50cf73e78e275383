//! The epoch ticker: the thread that advances an engine's epoch, which is what lets deadlines
//! fire, and the activity mark that lets it sleep while no filter runs.
//!
//! An idle ticker still woke a thousand times a second; on a virtual machine that kept an
//! idle nginx worker at 2.6% of a CPU. So callbacks mark the engine's activity when they
//! start and at every tick they live to see; the ticker clears the mark at each tick and,
//! after `IDLE_TICKS` ticks without one, sleeps until the next callback starts. A callback
//! that runs on (a loop) keeps marking at each tick, so the ticker never sleeps under it.
//! Host functions never block, so a callback cannot sit unmarked in one for long.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Ticks without a callback after which the ticker sleeps.
const IDLE_TICKS: u32 = 100;

/// Whether callbacks ran since the ticker last looked, and the ticker's sleep.
#[derive(Default)]
pub(crate) struct Activity {
    marked: AtomicBool,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Activity {
    /// Called as a callback starts and at each tick it sees. Once marked, a load and no
    /// write, so threads running callbacks do not contend for the line.
    pub fn mark(&self) {
        if self.marked.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        self.marked.store(true, SeqCst);
        if self.sleeping.load(SeqCst) {
            self.wake_ticker();
        }
    }

    fn wake_ticker(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// In the ticker: sleeps until a callback marks activity or `stop` is set. A mark made
    /// after `sleeping` is set is either seen by the check below or sees `sleeping` and
    /// notifies, which it can only do once the ticker waits (it takes the lock).
    fn sleep_until_marked(&self, stop: &AtomicBool) {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleeping.store(true, SeqCst);
        while !self.marked.load(SeqCst) && !stop.load(SeqCst) {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleeping.store(false, SeqCst);
    }
}

/// A thread that advances an engine's epoch at a fixed period while filters run. Start it
/// in the process that runs filters (for nginx: in each worker, never in the master before
/// fork). Dropping it stops the thread.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    activity: Arc<Activity>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &crate::Engine, period: Duration) -> std::io::Result<EpochTicker> {
        let (stop, activity) = (Arc::new(AtomicBool::new(false)), engine.activity().clone());
        let wasmtime = engine.wasmtime().clone();
        let thread = std::thread::Builder::new().name("inwasm-epoch".into()).spawn({
            let (stop, activity) = (stop.clone(), activity.clone());
            move || {
                let mut idle_ticks = 0;
                while !stop.load(SeqCst) {
                    std::thread::sleep(period);
                    wasmtime.increment_epoch();
                    idle_ticks = if activity.marked.swap(false, SeqCst) { 0 } else { idle_ticks + 1 };
                    if idle_ticks >= IDLE_TICKS {
                        activity.sleep_until_marked(&stop);
                        idle_ticks = 0;
                    }
                }
            }
        })?;
        Ok(EpochTicker { stop, activity, thread: Some(thread) })
    }

    /// Whether the ticker is asleep for want of callbacks.
    pub fn is_sleeping(&self) -> bool {
        self.activity.sleeping.load(SeqCst)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        self.activity.wake_ticker();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
