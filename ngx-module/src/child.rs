//! Child processes of the master that do work it must not (compile, run filters) and report
//! through a pipe. The master runs no thread, so a forked child may go on running Rust.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

/// Forks a child that runs `work` with the write end of a pipe, then leaves with `_exit` and
/// the status `work` returns (no atexit handlers, no flushing of the master's buffers); its
/// pid and the pipe's read end.
pub fn spawn(work: impl FnOnce(&mut File) -> i32) -> Result<(libc::pid_t, File), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("cannot create a pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the pipe's two new descriptors, owned by nothing else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the master runs no thread, so the child may go on.
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            let status = work(&mut File::from(write_end));
            // SAFETY: ends the child at once, as intended.
            unsafe { libc::_exit(status) }
        }
        child => Ok((child, File::from(read_end))),
    }
}
