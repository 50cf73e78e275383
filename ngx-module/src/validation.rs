//! Starting a filter once at configuration time (`nginx -t`, start, reload), safely.
//!
//! The master must never run a thread (workers are forked from it) and must never hang or
//! crash. So the filter is started in a forked child: the child runs the deadline ticker,
//! instantiates the module, runs `on_vm_start`/`on_configure` under their budgets, reports
//! through a pipe and exits. A child that hangs past `CHILD_LIMIT` is killed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use inwasm_host::{EpochTicker, PluginConfig, Vm};
use ngx::ffi::ngx_log_t;

use crate::embedding::RootEmbedding;
use crate::root_link::RootLink;
use crate::wasm_block::{engine, ModuleDecl};
use crate::worker::EPOCH_PERIOD;

/// How long the master waits for a validating child (whose filter calls have budgets of
/// their own; this only guards against the unforeseen).
const CHILD_LIMIT: Duration = Duration::from_secs(30);

/// Starts `plugin` on a fresh instance of `decl` in a child process; `Err` says why it failed.
pub fn validate(decl: &ModuleDecl, plugin: &PluginConfig, log: *mut ngx_log_t) -> Result<(), String> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("cannot create a pipe: {}", std::io::Error::last_os_error()));
    }
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            let outcome = start_filter(decl, plugin, log);
            let message = outcome.as_ref().err().map(String::as_bytes).unwrap_or_default();
            let mut file = std::fs::File::from(write_end);
            let _ = std::io::Write::write_all(&mut file, message);
            // No atexit handlers, no flushing of the master's buffers: just leave.
            unsafe { libc::_exit(outcome.is_err() as i32) }
        }
        child => {
            drop(write_end);
            let message = read_with_limit(read_end, child);
            let mut status = 0;
            unsafe { libc::waitpid(child, &mut status, 0) };
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else if libc::WIFEXITED(status) {
                Err(message)
            } else {
                Err(format!("the filter crashed while starting (signal {})", libc::WTERMSIG(status)))
            }
        }
    }
}

fn start_filter(decl: &ModuleDecl, plugin: &PluginConfig, log: *mut ngx_log_t) -> Result<(), String> {
    let _ticker = EpochTicker::start(engine(), EPOCH_PERIOD).map_err(|e| e.to_string())?;
    let mut vm = Vm::new(decl.module.clone(), decl.vm_config.clone()).map_err(|e| e.to_string())?;
    let root = Box::new(RootEmbedding::new(&plugin.name, &decl.vm_config.vm_id, &RootLink::dry_run(log)));
    vm.add_plugin(plugin.clone(), root).map(drop).map_err(|e| e.to_string())
}

/// Reads the child's report; kills the child if it outlives `CHILD_LIMIT`.
fn read_with_limit(read_end: OwnedFd, child: libc::pid_t) -> String {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + CHILD_LIMIT;
    let mut message = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
        if ready == 0 {
            unsafe { libc::kill(child, libc::SIGKILL) };
            return format!("the filter did not finish starting within {} s", CHILD_LIMIT.as_secs());
        }
        if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = unsafe { libc::read(read_end.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            return String::from_utf8_lossy(&message).into_owned();
        }
        message.extend_from_slice(&chunk[..n as usize]);
    }
}
