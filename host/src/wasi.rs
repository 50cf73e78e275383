//! WASI preview1, sandboxed: the whole import surface exists (under both
//! `wasi_snapshot_preview1` and the older `wasi_unstable`, as Envoy does), but there is no
//! filesystem, no network and no process. stdout/stderr become log lines, clocks and random
//! work, the environment holds only what the configuration passes, and `proc_exit` ends the
//! call with an error.

use std::fmt;
use std::time::{Instant, UNIX_EPOCH};

use wasmtime::{Caller, IntoFunc, Linker};

use crate::guest::{AbiResult, Fault, Guest};
use crate::session::HostState;
use crate::types::{LogLevel, Status};

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

const CLOCK_REALTIME: i32 = 0;
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const STDIO: std::ops::Range<i32> = 0..3;
/// A log line longer than this is split.
const MAX_LINE: usize = 16 << 10;
/// What one callback may write to stdout and stderr together (bytes, and lines logged);
/// the rest is dropped, and the drop logged once: the proxy's log is no place for megabytes,
/// and writing them would hold the worker outside any deadline.
const OUTPUT_BYTES: usize = 64 << 10;
const OUTPUT_LINES: usize = 256;

/// The error `proc_exit` ends a call with.
#[derive(Debug)]
pub(crate) struct ProcExit(pub i32);

impl fmt::Display for ProcExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

/// `pending` first: every callback's end looks at it (see `HostState`).
#[repr(C)]
pub(crate) struct WasiState {
    /// Partial lines written to stdout (index 0) and stderr (index 1).
    pending: [Vec<u8>; 2],
    /// What the current callback may still write (bytes, lines), and what it wrote beyond.
    output_bytes_left: usize,
    output_lines_left: usize,
    output_dropped: usize,
    /// `KEY=VALUE` entries, each NUL-terminated.
    environment: Vec<Vec<u8>>,
    started: Instant,
}

impl WasiState {
    pub fn new(environment: &[(String, String)]) -> WasiState {
        let environment = environment.iter().map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect();
        WasiState {
            pending: [Vec::new(), Vec::new()],
            output_bytes_left: OUTPUT_BYTES,
            output_lines_left: OUTPUT_LINES,
            output_dropped: 0,
            environment,
            started: Instant::now(),
        }
    }
}

/// Emits what stdout/stderr hold as log lines, and what was dropped; called when a callback
/// ends (the next one has the whole output budget again).
pub(crate) fn flush_output(state: &mut HostState) {
    for stream in 0..2 {
        let pending = std::mem::take(&mut state.wasi.pending[stream]);
        log_line(state, stream, &pending);
    }
    let dropped = std::mem::take(&mut state.wasi.output_dropped);
    if dropped > 0 {
        let message = format!(
            "{dropped} bytes of stdout/stderr output dropped (a callback may write {} KiB in {OUTPUT_LINES} lines)",
            OUTPUT_BYTES >> 10
        );
        state.log(LogLevel::Warn, &message);
    }
    state.wasi.output_bytes_left = OUTPUT_BYTES;
    state.wasi.output_lines_left = OUTPUT_LINES;
}

/// Logs one line of output (empty ones are not), within the callback's line budget.
fn log_line(state: &mut HostState, stream: usize, line: &[u8]) {
    if line.is_empty() {
        return;
    }
    if state.wasi.output_lines_left == 0 {
        state.wasi.output_dropped += line.len();
        return;
    }
    state.wasi.output_lines_left -= 1;
    state.log(output_level(stream), &String::from_utf8_lossy(line));
}

fn output_level(stream: usize) -> LogLevel {
    if stream == 0 {
        LogLevel::Info
    } else {
        LogLevel::Error
    }
}

/// Adds `bytes` to a stream's output (`dropped` more were written beyond the budget): each
/// complete line is logged, the rest waits for more (or the callback's end).
fn write_output(state: &mut HostState, stream: usize, bytes: &[u8], dropped: usize) {
    state.wasi.output_dropped += dropped;
    let mut pending = std::mem::take(&mut state.wasi.pending[stream]);
    pending.extend_from_slice(bytes);
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(newline) => (&rest[..newline], start + newline + 1),
            None if rest.len() > MAX_LINE => (&rest[..MAX_LINE], start + MAX_LINE),
            None => break,
        };
        log_line(state, stream, line);
        start = next;
    }
    pending.drain(..start);
    state.wasi.pending[stream] = pending;
}

/// Runs a WASI function body: statuses for bad memory become EFAULT, traps end the call.
fn run(
    caller: &mut Caller<'_, HostState>,
    body: impl FnOnce(&mut Guest<'_, '_>) -> AbiResult<i32>,
) -> wasmtime::Result<i32> {
    let mut guest = Guest::new(caller);
    match body(&mut guest) {
        Ok(errno) => Ok(errno),
        Err(Fault::Status(Status::InvalidMemoryAccess)) => Ok(EFAULT),
        Err(Fault::Status(_)) => Ok(EINVAL),
        Err(Fault::Trap(error)) => Err(error),
    }
}

/// Defines `name` in both WASI namespaces.
fn define<Params, Results>(
    linker: &mut Linker<HostState>,
    name: &str,
    func: impl IntoFunc<HostState, Params, Results> + Clone,
) -> wasmtime::Result<()> {
    linker.func_wrap("wasi_snapshot_preview1", name, func.clone())?;
    linker.func_wrap("wasi_unstable", name, func)?;
    Ok(())
}

/// Defines functions that only answer a fixed errno, whatever their arguments.
macro_rules! stubs {
    ($linker:expr, $errno:expr, $( $name:literal ( $($ty:ty),* ) ),* $(,)?) => {
        $( define($linker, $name, |$(_: $ty),*| -> i32 { $errno })?; )*
    };
}

/// Copies NUL-terminated entries into the guest: a pointer per entry at `list`, the bytes
/// at `buffer` (WASI's layout for args and environment).
fn write_entries(g: &mut Guest<'_, '_>, entries: &[Vec<u8>], list: i32, buffer: i32) -> AbiResult<i32> {
    let mut at = buffer as u32;
    for (i, entry) in entries.iter().enumerate() {
        g.write_u32(list.wrapping_add(4 * i as i32), at)?;
        g.write(at as i32, entry)?;
        at = at.wrapping_add(entry.len() as u32);
    }
    Ok(SUCCESS)
}

/// Reads an iovec array: (pointer, length) pairs of u32.
/// The bytes the `count` iovecs at `iovs` point at, at most `limit` of them copied; and how
/// many there are in all.
fn gather(g: &Guest<'_, '_>, iovs: i32, count: i32, limit: usize) -> AbiResult<(Vec<u8>, usize)> {
    let raw = g.read(iovs, (count as u32).checked_mul(8).ok_or(Status::InvalidMemoryAccess)? as i32)?;
    let (mut bytes, mut total) = (Vec::new(), 0usize);
    for iov in raw.chunks_exact(8) {
        let ptr = u32::from_le_bytes(iov[..4].try_into().unwrap());
        let len = u32::from_le_bytes(iov[4..].try_into().unwrap());
        bytes.extend_from_slice(&g.read_prefix(ptr as i32, len as i32, limit - bytes.len())?);
        total = total.saturating_add(len as usize);
    }
    Ok((bytes, total))
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    define(linker, "args_sizes_get", |mut c: Caller<'_, HostState>, argc: i32, size: i32| {
        run(&mut c, |g| {
            g.write_u32(argc, 0)?;
            g.write_u32(size, 0)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "args_get", |_: i32, _: i32| SUCCESS)?;
    define(linker, "environ_sizes_get", |mut c: Caller<'_, HostState>, count: i32, size: i32| {
        run(&mut c, |g| {
            let environment = &g.state().wasi.environment;
            let (n, bytes) = (environment.len(), environment.iter().map(Vec::len).sum::<usize>());
            g.write_u32(count, n as u32)?;
            g.write_u32(size, bytes as u32)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "environ_get", |mut c: Caller<'_, HostState>, list: i32, buffer: i32| {
        run(&mut c, |g| {
            let environment = g.state().wasi.environment.clone();
            write_entries(g, &environment, list, buffer)
        })
    })?;
    define(linker, "clock_res_get", |mut c: Caller<'_, HostState>, _id: i32, ret: i32| {
        run(&mut c, |g| {
            g.write_u64(ret, 1)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "clock_time_get", |mut c: Caller<'_, HostState>, id: i32, _precision: i64, ret: i32| {
        run(&mut c, |g| {
            let nanos = if id == CLOCK_REALTIME {
                let now = g.state().now();
                now.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
            } else {
                g.state().wasi.started.elapsed().as_nanos() as u64
            };
            g.write_u64(ret, nanos)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "random_get", |mut c: Caller<'_, HostState>, buffer: i32, len: i32| {
        run(&mut c, |g| {
            g.read(buffer, len)?; // bounds check before allocating
            let mut bytes = vec![0u8; len as u32 as usize];
            getrandom::fill(&mut bytes).map_err(|_| Status::InternalFailure)?;
            g.write(buffer, &bytes)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "fd_write", |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, count: i32, ret: i32| {
        run(&mut c, |g| {
            if fd != 1 && fd != 2 {
                return Ok(EBADF);
            }
            let limit = g.state().wasi.output_bytes_left;
            let (bytes, written) = gather(g, iovs, count, limit)?;
            let state = g.state();
            state.wasi.output_bytes_left -= bytes.len();
            write_output(state, (fd - 1) as usize, &bytes, written - bytes.len());
            g.write_u32(ret, written.min(u32::MAX as usize) as u32)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "fd_read", |mut c: Caller<'_, HostState>, fd: i32, _iovs: i32, _count: i32, ret: i32| {
        run(&mut c, |g| {
            if fd != 0 {
                return Ok(EBADF);
            }
            g.write_u32(ret, 0)?; // stdin is empty
            Ok(SUCCESS)
        })
    })?;
    define(linker, "fd_fdstat_get", |mut c: Caller<'_, HostState>, fd: i32, ret: i32| {
        run(&mut c, |g| {
            if !STDIO.contains(&fd) {
                return Ok(EBADF);
            }
            let mut fdstat = [0u8; 24];
            fdstat[0] = FILETYPE_CHARACTER_DEVICE;
            fdstat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            g.write(ret, &fdstat)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "fd_filestat_get", |mut c: Caller<'_, HostState>, fd: i32, ret: i32| {
        run(&mut c, |g| {
            if !STDIO.contains(&fd) {
                return Ok(EBADF);
            }
            let mut filestat = [0u8; 64];
            filestat[16] = FILETYPE_CHARACTER_DEVICE;
            g.write(ret, &filestat)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "poll_oneoff", |mut c: Caller<'_, HostState>, subs: i32, events: i32, count: i32, ret: i32| {
        // Nothing here may block the proxy: every subscription (clock or fd) is reported as
        // ready at once, so a guest "sleep" returns immediately.
        run(&mut c, |g| {
            if count <= 0 {
                return Ok(EINVAL);
            }
            for i in 0..count {
                let sub = g.read(subs.wrapping_add(48 * i), 48)?;
                let mut event = [0u8; 32];
                event[..8].copy_from_slice(&sub[..8]); // userdata
                event[10] = sub[8]; // event type = subscription tag
                g.write(events.wrapping_add(32 * i), &event)?;
            }
            g.write_u32(ret, count as u32)?;
            Ok(SUCCESS)
        })
    })?;
    define(linker, "proc_exit", |code: i32| -> wasmtime::Result<()> { Err(ProcExit(code).into()) })?;
    define(linker, "sched_yield", || SUCCESS)?;
    define(linker, "fd_close", |fd: i32| if STDIO.contains(&fd) { SUCCESS } else { EBADF })?;
    define(linker, "fd_fdstat_set_flags", |fd: i32, _: i32| if STDIO.contains(&fd) { SUCCESS } else { EBADF })?;
    define(linker, "fd_seek", |fd: i32, _: i64, _: i32, _: i32| if STDIO.contains(&fd) { ESPIPE } else { EBADF })?;
    define(linker, "fd_tell", |fd: i32, _: i32| if STDIO.contains(&fd) { ESPIPE } else { EBADF })?;
    define(linker, "fd_sync", |fd: i32| if STDIO.contains(&fd) { SUCCESS } else { EBADF })?;
    define(linker, "fd_datasync", |fd: i32| if STDIO.contains(&fd) { SUCCESS } else { EBADF })?;
    // No preopened directories, so no file descriptor beyond stdio exists.
    stubs!(
        linker,
        EBADF,
        "fd_prestat_get"(i32, i32),
        "fd_prestat_dir_name"(i32, i32, i32),
        "fd_advise"(i32, i64, i64, i32),
        "fd_allocate"(i32, i64, i64),
        "fd_fdstat_set_rights"(i32, i64, i64),
        "fd_filestat_set_size"(i32, i64),
        "fd_filestat_set_times"(i32, i64, i64, i32),
        "fd_pread"(i32, i32, i32, i64, i32),
        "fd_pwrite"(i32, i32, i32, i64, i32),
        "fd_readdir"(i32, i32, i32, i64, i32),
        "fd_renumber"(i32, i32),
        "path_create_directory"(i32, i32, i32),
        "path_filestat_get"(i32, i32, i32, i32, i32),
        "path_filestat_set_times"(i32, i32, i32, i32, i64, i64, i32),
        "path_link"(i32, i32, i32, i32, i32, i32, i32),
        "path_open"(i32, i32, i32, i32, i32, i64, i64, i32, i32),
        "path_readlink"(i32, i32, i32, i32, i32, i32),
        "path_remove_directory"(i32, i32, i32),
        "path_rename"(i32, i32, i32, i32, i32, i32),
        "path_symlink"(i32, i32, i32, i32, i32),
        "path_unlink_file"(i32, i32, i32),
    );
    stubs!(
        linker,
        ENOSYS,
        "proc_raise"(i32),
        "sock_accept"(i32, i32, i32),
        "sock_recv"(i32, i32, i32, i32, i32, i32),
        "sock_send"(i32, i32, i32, i32, i32),
        "sock_shutdown"(i32, i32),
    );
    Ok(())
}
