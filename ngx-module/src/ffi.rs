//! Small safe-ish helpers over nginx's C types, and the panic barrier every entry point from
//! nginx goes through.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use std::ffi::c_char;

use ngx::ffi::{
    ngx_conf_log_error, ngx_conf_t, ngx_int_t, ngx_log_error_core, ngx_log_t, ngx_pnalloc, ngx_pool_t, ngx_str_t,
    ngx_uint_t, NGX_ERROR, NGX_LOG_EMERG,
};

/// The bytes of an `ngx_str_t` (empty for a null or empty string).
///
/// # Safety
/// `s` must describe valid memory that outlives the returned slice.
pub unsafe fn bytes<'a>(s: &ngx_str_t) -> &'a [u8] {
    // SAFETY: a non-empty string's `len` bytes at `data` are valid for 'a (the caller's contract).
    unsafe {
        if s.len == 0 || s.data.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(s.data, s.len)
        }
    }
}

/// Copies `data` into `pool` as an `ngx_str_t`; `None` when the pool is out of memory.
///
/// # Safety
/// `pool` must be a valid pool.
pub unsafe fn pool_str(pool: *mut ngx_pool_t, data: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: a valid pool (the caller's contract) hands out `len` writable bytes or null.
    unsafe {
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
}

/// A copy of `data` in lower case (ASCII) from `pool`; `None` when the pool is out of memory.
///
/// # Safety
/// `pool` must be a valid pool.
pub unsafe fn pool_str_lowercase(pool: *mut ngx_pool_t, data: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: a valid pool (the caller's contract).
    let copy = unsafe { pool_str(pool, data) }?;
    if !copy.data.is_null() {
        // SAFETY: the pool's fresh copy, `len` bytes that nothing else points to yet.
        unsafe { std::slice::from_raw_parts_mut(copy.data, copy.len) }.make_ascii_lowercase();
    }
    Some(copy)
}

/// The current cycle's log, which lives as long as the cycle (unlike a request's or a
/// connection's).
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: nginx sets the current cycle before any module code runs, and it lives while
    // this process serves it.
    unsafe { (*ngx::ffi::ngx_cycle).log }
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

/// Writes one line to an nginx log at `level` (no formatting by nginx: `%` is safe). `log` is
/// null or a live nginx log: every log this module holds is the cycle's, a connection's or a
/// request's, used only while that lives.
pub fn log_error(level: ngx_uint_t, log: *mut ngx_log_t, message: &str) {
    // SAFETY: a non-null log is live (see above).
    if log.is_null() || level > unsafe { (*log).log_level } {
        return;
    }
    // nginx truncates long lines itself (NGX_MAX_ERROR_STR).
    let line = message.replace('\0', "\\0");
    // SAFETY: a live log; "%*s" reads exactly `line.len()` bytes of `line`.
    unsafe { ngx_log_error_core(level, log, 0, c"%*s".as_ptr(), line.len(), line.as_ptr()) };
}

/// A time in nginx's syntax (`50ms`, `2s`, `1m`), more than zero.
pub fn parse_time(value: &[u8]) -> Option<std::time::Duration> {
    let mut s = ngx_str_t { len: value.len(), data: value.as_ptr() as *mut u8 };
    // SAFETY: nginx's parser reads the `len` bytes of a live string.
    let ms = unsafe { ngx::ffi::ngx_parse_time(&mut s, 0) };
    (ms != NGX_ERROR as ngx_int_t && ms > 0).then(|| std::time::Duration::from_millis(ms as u64))
}

/// The arguments of the directive being parsed (the directive's name first).
///
/// # Safety
/// `cf` must be nginx's configuration being parsed, its arguments valid for 'a.
pub unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a [u8]> {
    // SAFETY: while a directive is parsed, `cf->args` is an array of strings (its words).
    unsafe { (*(*cf).args).as_slice::<ngx_str_t>().iter().map(|s| bytes(s)).collect() }
}

/// Reports a configuration error at the current file and line and fails the directive.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn conf_error(cf: *mut ngx_conf_t, message: &str) -> *mut c_char {
    let message = message.replace('\0', "\\0");
    // SAFETY: a configuration being parsed; "%*s" reads exactly `message.len()` bytes.
    unsafe { ngx_conf_log_error(NGX_LOG_EMERG as ngx_uint_t, cf, 0, c"%*s".as_ptr(), message.len(), message.as_ptr()) };
    ngx::core::NGX_CONF_ERROR as *mut c_char
}

/// Runs a directive handler's `body` behind the panic barrier: an `Err` (or a panic) is
/// reported at the directive's file and line and fails the directive.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn directive(cf: *mut ngx_conf_t, body: impl FnOnce() -> Result<(), String>) -> *mut c_char {
    // SAFETY: a configuration being parsed has a log.
    let log = unsafe { (*cf).log };
    match guard(log, Err("internal error (see the alert above)".into()), body) {
        Ok(()) => ptr::null_mut(),
        // SAFETY: as above.
        Err(message) => unsafe { conf_error(cf, &message) },
    }
}
