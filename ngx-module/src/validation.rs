//! Starting every filter once at configuration time (`nginx -t`, start, reload), safely.
//!
//! The master must never run a thread (workers are forked from it) and must never hang or
//! crash. So the filters are started in a forked child (thousands of them in one child per
//! CPU, each starting a consecutive share): it runs the deadline ticker,
//! instantiates each filter's module, runs `on_vm_start`/`on_configure` under their budgets,
//! reports each outcome through a pipe and exits. A child that outlives its limit is killed.
//!
//! Besides refusing bad filters, the dry run tells which filters start work of their own
//! (a timer, a call, a queue, shared data) or start slowly (over 20 ms): those run in each
//! worker from its start, so no request waits for their start-up; the others only from their
//! first request, so idle filters cost no instance.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use inwasm_host::{EpochTicker, PluginConfig, Vm, DEFAULT_START_TIMEOUT};
use ngx::ffi::ngx_log_t;

use crate::child;
use crate::embedding::RootEmbedding;
use crate::root_link::RootLink;
use crate::wasm_block::{engine, ModuleDecl};
use crate::worker::failure_text;

/// How long the master waits for the child: a base, plus each filter's start-up budgets (its
/// steps are cut at theirs; this only guards against the unforeseen).
const CHILD_LIMIT: Duration = Duration::from_secs(30);
const CHILD_LIMIT_PER_FILTER: Duration = Duration::from_millis(100);
/// The start-up steps a filter's budget applies to (`_initialize`, `on_vm_start`, `on_configure`).
const START_STEPS: u32 = 3;

/// A filter that started: whether it does work of its own (see the module doc).
pub type Started = Result<bool, String>;

/// Filters one child starts at least: a configuration with more is shared among children, one
/// per CPU (forking and a ticker per child are not worth it for fewer).
const FILTERS_PER_CHILD: usize = 256;

/// Starts each `(module, plugin)` on a fresh instance in child processes (consecutive shares,
/// one child per CPU for thousands of filters); the outcomes in order.
pub fn start_all(filters: &[(&ModuleDecl, &PluginConfig)], log: *mut ngx_log_t) -> Vec<Started> {
    if filters.is_empty() {
        return Vec::new();
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = filters.len().div_ceil(cpus).max(FILTERS_PER_CHILD);
    // Every child is started before any is waited for, so they run side by side.
    let children: Vec<_> = filters
        .chunks(share)
        .map(|chunk| (chunk, child::spawn(|out| report_each(chunk, log, out).is_err() as i32)))
        .collect();
    children
        .into_iter()
        .flat_map(|(chunk, child)| match child {
            Ok((pid, report)) => collect(chunk, pid, report),
            Err(error) => vec![Err(error); chunk.len()],
        })
        .collect()
}

/// The outcomes of `filters` from the report of `child`, which is reaped (and killed first if
/// it outlives the filters' budgets).
fn collect(filters: &[(&ModuleDecl, &PluginConfig)], child: libc::pid_t, report: File) -> Vec<Started> {
    let budgets = filters.iter().map(|(module, _)| module.vm_config.start_timeout.unwrap_or_default() * START_STEPS);
    let limit = CHILD_LIMIT + budgets.map(|budget| budget + CHILD_LIMIT_PER_FILTER).sum::<Duration>();
    let (report, timed_out) = read_with_limit(report, child, limit);
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let mut outcomes = parse(&report);
    // The filter after the last reported one is the one that hung or crashed.
    if outcomes.len() < filters.len() {
        outcomes.push(Err(if timed_out {
            format!("the filter did not finish starting within {} s", limit.as_secs())
        } else if libc::WIFSIGNALED(status) {
            format!("the filter crashed while starting (signal {})", libc::WTERMSIG(status))
        } else {
            "the filter could not be started".to_string()
        }));
    }
    // Those after it were not tried; the configuration fails on it anyway.
    outcomes.resize_with(filters.len(), || Ok(true));
    outcomes
}

/// In the child: starts each filter and writes its outcome as it goes (so a crash or hang
/// still leaves the earlier ones reported): a kind byte (0 started, 1 started with work of
/// its own, 2 failed), then a u32 length and the message.
fn report_each(
    filters: &[(&ModuleDecl, &PluginConfig)],
    log: *mut ngx_log_t,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let _ticker = EpochTicker::start(engine(), EpochTicker::period_for(DEFAULT_START_TIMEOUT))?;
    for (decl, plugin) in filters {
        let (kind, message) = match start(decl, plugin, log) {
            Ok(false) => (0u8, String::new()),
            Ok(true) => (1, String::new()),
            Err(message) => (2, message),
        };
        out.write_all(&[kind])?;
        out.write_all(&(message.len() as u32).to_le_bytes())?;
        out.write_all(message.as_bytes())?;
    }
    out.flush()
}

/// A filter whose start-up takes longer than this starts with each worker too, so no request
/// waits for it (a WAF parsing its rule set takes about a second).
const SLOW_START: Duration = Duration::from_millis(20);

/// Starts a filter; whether it must start with each worker: it does work of its own, or its
/// start-up is slow.
fn start(decl: &ModuleDecl, plugin: &PluginConfig, log: *mut ngx_log_t) -> Started {
    let started = Instant::now();
    let mut vm = Vm::new(decl.module().clone(), decl.vm_config.clone()).map_err(|e| failure_text(&e))?;
    let link = RootLink::dry_run(log);
    let root = Box::new(RootEmbedding::new(&plugin.name, &decl.vm_config.vm_id, &link));
    vm.add_plugin(plugin.clone(), root).map_err(|e| failure_text(&e))?;
    Ok(link.did_background_work() || started.elapsed() > SLOW_START)
}

fn parse(mut report: &[u8]) -> Vec<Started> {
    let mut outcomes = Vec::new();
    while report.len() >= 5 {
        let kind = report[0];
        let len = u32::from_le_bytes(report[1..5].try_into().expect("4 bytes")) as usize;
        let Some(message) = report.get(5..5 + len) else { break };
        outcomes.push(match kind {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(String::from_utf8_lossy(message).into_owned()),
        });
        report = &report[5 + len..];
    }
    outcomes
}

/// Reads the child's report; kills the child if it outlives `limit` (then `true`).
fn read_with_limit(mut file: File, child: libc::pid_t, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut report = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready == 0 {
            // SAFETY: signals our own child, not yet reaped.
            unsafe { libc::kill(child, libc::SIGKILL) };
            return (report, true);
        }
        if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        let mut chunk = [0u8; 16384];
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => return (report, false),
            Ok(n) => report.extend_from_slice(&chunk[..n]),
        }
    }
}
