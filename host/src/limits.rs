//! Resource limits: linear-memory caps and callback deadlines (which the epoch ticker,
//! `ticker.rs`, drives).

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Result, StoreContextMut, UpdateDeadline};

use crate::session::HostState;

/// Most tables and table elements an instance may have (proxy-wasm filters use one table).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
const MAX_TABLES: usize = 4;

/// Caps an instance's linear memory and remembers whether a growth was refused, so that the
/// trap that usually follows (the guest's allocator aborting) is reported as a memory failure.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub refused: bool,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter { limit, refused: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        let allowed = desired <= self.limit;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The error a callback stops with when its deadline passes.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// The running callback's time budget.
///
/// The clock is not read when a callback starts: almost every callback ends before the next
/// epoch tick, and a clock read per call cost more than the rest of the call's bookkeeping.
/// The budget starts at the first tick the callback lives to see instead. It began at most
/// one tick period before that, so a callback is never stopped early, and at most two
/// periods late (one for the unknown start, one for the tick that finds the budget spent).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Deadline {
    #[default]
    None,
    /// A budget that has not seen a tick yet.
    Budget(Duration),
    At(Instant),
}

impl Deadline {
    pub fn budget(timeout: Option<Duration>) -> Deadline {
        timeout.map_or(Deadline::None, Deadline::Budget)
    }

    /// About how long a callback that ran under `timeout` took, ticks `period` apart: a
    /// callback that saw no tick is counted as nothing (it took less than a period), one that
    /// did from a period before its first tick (so no clock is read for fast callbacks).
    pub fn spent(&self, timeout: Option<Duration>, period: Duration) -> Duration {
        match (self, timeout) {
            (Deadline::At(at), Some(timeout)) => at
                .checked_sub(timeout)
                .map_or(Duration::ZERO, |start| (Instant::now() + period).saturating_duration_since(start)),
            _ => Duration::ZERO,
        }
    }
}

/// Runs on every epoch tick that reaches a running callback: starts its budget's clock at
/// the first, stops it once the budget is spent, otherwise checks again on the next tick.
pub(crate) fn on_epoch_tick(mut store: StoreContextMut<'_, HostState>) -> Result<UpdateDeadline> {
    let deadline = &mut store.data_mut().deadline;
    match *deadline {
        Deadline::Budget(budget) => *deadline = Deadline::At(Instant::now() + budget),
        Deadline::At(at) if Instant::now() >= at => return Err(DeadlineExceeded.into()),
        _ => {}
    }
    Ok(UpdateDeadline::Continue(1))
}
