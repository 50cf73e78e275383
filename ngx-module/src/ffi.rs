//! Small safe-ish helpers over nginx's C types, and the panic barrier every entry point from
//! nginx goes through.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ngx::ffi::{ngx_int_t, ngx_log_error_core, ngx_log_t, ngx_pnalloc, ngx_pool_t, ngx_str_t, ngx_uint_t, NGX_ERROR};

/// The bytes of an `ngx_str_t` (empty for a null or empty string).
///
/// # Safety
/// `s` must describe valid memory that outlives the returned slice.
pub unsafe fn bytes<'a>(s: &ngx_str_t) -> &'a [u8] {
    if s.len == 0 || s.data.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(s.data, s.len)
    }
}

/// Copies `data` into `pool` as an `ngx_str_t`; `None` when the pool is out of memory.
///
/// # Safety
/// `pool` must be a valid pool.
pub unsafe fn pool_str(pool: *mut ngx_pool_t, data: &[u8]) -> Option<ngx_str_t> {
    if data.is_empty() {
        return Some(ngx_str_t { len: 0, data: ptr::null_mut() });
    }
    let copy = ngx_pnalloc(pool, data.len()) as *mut u8;
    if copy.is_null() {
        return None;
    }
    ptr::copy_nonoverlapping(data.as_ptr(), copy, data.len());
    Some(ngx_str_t { len: data.len(), data: copy })
}

/// Runs `body`, turning a panic into `on_panic` so no unwind ever crosses into nginx.
pub fn guard<T>(log: *mut ngx_log_t, on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log_error(ngx::ffi::NGX_LOG_ALERT as ngx_uint_t, log, &format!("inwasm: internal error: {message}"));
            on_panic
        }
    }
}

/// `guard` for handlers that return an nginx status.
pub fn guard_status(log: *mut ngx_log_t, body: impl FnOnce() -> ngx_int_t) -> ngx_int_t {
    guard(log, NGX_ERROR as ngx_int_t, body)
}

/// Writes one line to an nginx log at `level` (no formatting by nginx: `%` is safe).
pub fn log_error(level: ngx_uint_t, log: *mut ngx_log_t, message: &str) {
    if log.is_null() || level > unsafe { (*log).log_level } {
        return;
    }
    // nginx truncates long lines itself (NGX_MAX_ERROR_STR).
    let line = message.replace('\0', "\\0");
    unsafe { ngx_log_error_core(level, log, 0, c"%*s".as_ptr(), line.len(), line.as_ptr()) };
}
