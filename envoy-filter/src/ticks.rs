//! The tick timer of every root context: one thread that posts a tick to a root's mailbox
//! each time its period (`proxy_set_tick_period_milliseconds`) passes.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::mailbox::Mailbox;

struct Timer {
    mailbox: Weak<Mailbox>,
    period: Duration,
    next: Instant,
}

#[derive(Default)]
struct Timers {
    timers: Mutex<Vec<Timer>>,
    changed: Condvar,
}

fn timers() -> &'static Timers {
    static TIMERS: OnceLock<Timers> = OnceLock::new();
    static THREAD: OnceLock<()> = OnceLock::new();
    let timers = TIMERS.get_or_init(Timers::default);
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new().name("inwasm-ticks".into()).spawn(move || run(timers));
        if let Err(error) = spawned {
            crate::log::error(&format!("inwasm: cannot start the tick timer thread: {error}"));
        }
    });
    timers
}

/// Starts, changes or (with a zero period) stops the ticks of the root behind `mailbox`.
pub fn set_period(mailbox: &Arc<Mailbox>, period: Duration) {
    let timers = timers();
    let mut list = timers.timers.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|t| !std::ptr::eq(t.mailbox.as_ptr(), Arc::as_ptr(mailbox)));
    if !period.is_zero() {
        let period = period.max(Duration::from_millis(1));
        list.push(Timer { mailbox: Arc::downgrade(mailbox), period, next: Instant::now() + period });
    }
    timers.changed.notify_one();
}

fn run(timers: &Timers) {
    let mut list = timers.timers.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        list.retain(|t| t.mailbox.strong_count() > 0);
        for timer in list.iter_mut().filter(|t| t.next <= now) {
            if let Some(mailbox) = timer.mailbox.upgrade() {
                mailbox.post_tick();
            }
            timer.next += timer.period;
            if timer.next <= now {
                timer.next = now + timer.period;
            }
        }
        let wait =
            list.iter().map(|t| t.next.saturating_duration_since(now)).min().unwrap_or(Duration::from_secs(3600));
        list = timers.changed.wait_timeout(list, wait).unwrap_or_else(|p| p.into_inner()).0;
    }
}
