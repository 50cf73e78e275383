//! The epoch ticker: the thread that advances an engine's epoch, which is what lets deadlines
//! fire, and the activity mark that lets it sleep while no filter runs.
//!
//! An idle ticker still woke a thousand times a second; on a virtual machine that kept an
//! idle nginx worker at 2.6% of a CPU. So callbacks mark the engine's activity when they
//! start and at every tick they live to see; the ticker clears the mark at each tick and,
//! after `IDLE_AFTER` without one, sleeps until the next callback starts. A callback
//! that runs on (a loop) keeps marking at each tick, so the ticker never sleeps under it.
//! Host functions never block, so a callback cannot sit unmarked in one for long.
//!
//! Under load each tick costs too: waking the thread preempts a busy worker on its CPU. On a
//! virtual machine a 1 ms tick cost an nginx worker 0.2 us per request (1.5% of its time at
//! 73,000 requests a second). So the period follows the shortest budget in use
//! ([`EpochTicker::period_for`]): a callback is cut within two ticks of its budget, and a
//! tick of a twentieth of the budget keeps that within a tenth.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the ticker goes on without a callback before it sleeps.
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// The tick period's bounds: deadlines no finer than the shortest, wake-ups no rarer than
/// the longest (at the longest, a 100 ms budget is cut by 110 ms).
const FINEST_PERIOD: Duration = Duration::from_millis(1);
const COARSEST_PERIOD: Duration = Duration::from_millis(5);

/// Whether callbacks ran since the ticker last looked, the ticker's sleep, and its period.
#[derive(Default)]
pub(crate) struct Activity {
    marked: AtomicBool,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// The tick period in nanoseconds (read at each tick, so it can be tightened).
    period: AtomicU64,
}

impl Activity {
    /// The tick period: how far apart the ticks a callback sees are.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period.load(Relaxed))
    }

    /// Called as a callback starts and at each tick it sees. Once marked, a load and no
    /// write, so threads running callbacks do not contend for the line.
    pub fn mark(&self) {
        if self.marked.load(Relaxed) {
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
        activity.period.store(period.as_nanos() as u64, SeqCst);
        let wasmtime = engine.wasmtime().clone();
        let thread = std::thread::Builder::new().name("inwasm-epoch".into()).spawn({
            let (stop, activity) = (stop.clone(), activity.clone());
            move || {
                let mut idle = Duration::ZERO;
                while !stop.load(SeqCst) {
                    let tick = Duration::from_nanos(activity.period.load(SeqCst));
                    std::thread::sleep(tick);
                    wasmtime.increment_epoch();
                    idle = if activity.marked.swap(false, SeqCst) { Duration::ZERO } else { idle + tick };
                    if idle >= IDLE_AFTER {
                        activity.sleep_until_marked(&stop);
                        idle = Duration::ZERO;
                    }
                }
            }
        })?;
        Ok(EpochTicker { stop, activity, thread: Some(thread) })
    }

    /// The period for callbacks whose shortest budget is `shortest`: a twentieth of it,
    /// from 1 to 5 ms.
    pub fn period_for(shortest: Duration) -> Duration {
        (shortest / 20).clamp(FINEST_PERIOD, COARSEST_PERIOD)
    }

    /// Ticks at least as often as `period` from now on (for budgets configured later).
    pub fn tighten(&self, period: Duration) {
        self.activity.period.fetch_min(period.as_nanos() as u64, SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_a_twentieth_of_the_shortest_budget_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(EpochTicker::period_for(ms(100)), ms(5));
        assert_eq!(EpochTicker::period_for(ms(40)), ms(2));
        assert_eq!(EpochTicker::period_for(ms(20)), ms(1));
        assert_eq!(EpochTicker::period_for(ms(2)), ms(1));
        assert_eq!(EpochTicker::period_for(Duration::from_secs(10)), ms(5));
    }
}
