//! The event hooks Envoy calls (`envoy_dynamic_module_on_*`). Envoy refuses a module that
//! lacks any of its HTTP hooks, so the ones this module has no use for (watermarks) exist
//! and do nothing.
//!
//! Every hook catches panics: none crosses into Envoy.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::abi::{envoy_bytes, envoy_pairs, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ABI_VERSION};
use crate::carrier::Carrier;
use crate::filter::{callout_response, internal_error, HttpFilter};
use crate::filter_config::FilterConfig;
use crate::grpc_calls::{self, Delivery};
use crate::mailbox::WAKE_EVENT;
use crate::{instances, log, report};

/// Runs `body`; a panic is logged and answered with `fallback()`.
fn guard<T>(hook: &str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error(&format!("inwasm: internal error in {hook}: {message}"));
        fallback()
    })
}

/// # Safety
/// `ptr` must be a configuration this module returned and Envoy has not destroyed.
unsafe fn config<'a>(ptr: *const c_void) -> &'a Arc<FilterConfig> {
    // SAFETY: `ptr` is the `Box<Arc<FilterConfig>>` that `config_new` leaked, not yet freed
    // (per the caller).
    unsafe { &*(ptr as *const Arc<FilterConfig>) }
}

/// # Safety
/// `ptr` must be a filter this module returned and Envoy has not destroyed.
unsafe fn filter<'a>(ptr: *const c_void) -> &'a HttpFilter {
    // SAFETY: `ptr` is the `Box<HttpFilter>` that `filter_new` leaked, not yet freed (per the
    // caller).
    unsafe { &*(ptr as *const HttpFilter) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy hands over the configuration it is loading (which outlives the filter
    // configuration made of it), and the name and text valid during this hook; `load` keeps
    // copies of what it needs.
    unsafe {
        guard("filter config", std::ptr::null, || match FilterConfig::load(envoy, name.as_slice(), config.as_slice()) {
            Ok(config) => Box::into_raw(Box::new(config)) as *const c_void,
            Err(message) => {
                log::error(&format!("inwasm: proxy_wasm filter_config: {message}"));
                std::ptr::null()
            }
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: *const c_void) {
    // SAFETY: Envoy destroys a configuration once, with what `config_new` returned (a leaked
    // `Box<Arc<FilterConfig>>`; Envoy rejects a null one and never destroys it).
    unsafe {
        guard(
            "filter config destroy",
            || (),
            || {
                let config = Box::from_raw(ptr as *mut Arc<FilterConfig>);
                // Envoy resets the configuration's streams without telling: its calls go.
                drop(grpc_calls::carrier_ended(Carrier::Config(config.envoy.0)));
                config.retire();
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    event: u64,
) {
    // SAFETY: Envoy runs a configuration's events with what `config_new` returned, while it lives.
    unsafe {
        guard(
            "config scheduled",
            || (),
            || {
                if event == WAKE_EVENT {
                    if let Some(instance) = instances::installed(config(ptr).id) {
                        instance.deliver_pending();
                    }
                }
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: Envoy calls it with the live configuration `config_new` returned, and the response's
    // headers and chunks valid during the call.
    unsafe {
        guard(
            "config http callout",
            || (),
            || {
                let config = config(ptr);
                let token = config.config_callouts.lock().unwrap_or_else(|p| p.into_inner()).remove(&callout_id);
                let (Some(token), Some(instance)) = (token, instances::installed(config.id)) else { return };
                let response = callout_response(result, headers, headers_size, chunks, chunks_size);
                let delivered = instance.vm.borrow_mut().on_http_call_response(instance.plugin, token, response);
                if let Err(error) = delivered {
                    report::failure(config, &error, "in the main thread's root context");
                }
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    envoy: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: Envoy makes filters of a live configuration, which `config_ptr` is (from `config_new`).
    unsafe {
        guard("filter new", std::ptr::null, || {
            Box::into_raw(Box::new(HttpFilter::new(config(config_ptr), envoy))) as *const c_void
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: *const c_void) {
    // SAFETY: Envoy destroys a filter once, with what `filter_new` returned (a leaked
    // `Box<HttpFilter>`; Envoy skips a null one).
    unsafe { guard("filter destroy", || (), || drop(Box::from_raw(ptr as *mut HttpFilter))) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("request headers", || internal_error(envoy), || filter(ptr).on_request_headers(end_of_stream)) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("request body", || internal_error(envoy), || filter(ptr).on_request_body(end_of_stream)) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("request trailers", || internal_error(envoy), || filter(ptr).on_request_trailers()) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("response headers", || internal_error(envoy), || filter(ptr).on_response_headers(end_of_stream)) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("response body", || internal_error(envoy), || filter(ptr).on_response_body(end_of_stream)) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
) -> u32 {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("response trailers", || internal_error(envoy), || filter(ptr).on_response_trailers()) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: FilterEnvoyPtr,
    ptr: *const c_void,
) {
    // SAFETY: `ptr` is the filter `filter_new` made for this stream (never null: making one
    // cannot panic), live until Envoy destroys it after the stream's hooks.
    unsafe { guard("stream complete", || (), || filter(ptr).on_stream_complete()) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: Envoy calls it only while the filter `filter_new` made (`ptr`) lives, with the
    // response's headers and chunks valid during the call.
    unsafe {
        guard(
            "http callout",
            || (),
            || filter(ptr).on_callout_done(callout_id, result, headers, headers_size, chunks, chunks_size),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    event: u64,
) {
    // SAFETY: Envoy runs a stream's scheduled events only while its filter (`ptr`, from
    // `filter_new`) lives.
    unsafe {
        guard(
            "filter scheduled",
            || (),
            || {
                if event == WAKE_EVENT {
                    filter(ptr).on_scheduled();
                }
            },
        )
    }
}

// The HTTP streams that carry gRPC calls (`grpc_calls`). The call is looked up before the
// filter: a stream reset while its filter is being destroyed has no call left.

/// Hands what a filter's carried call read to the filter.
///
/// # Safety
/// `ptr` must be a filter this module returned and Envoy has not destroyed.
unsafe fn to_filter(ptr: *const c_void, delivery: Option<Delivery>) {
    if let Some(delivery) = delivery {
        // SAFETY: per the caller.
        unsafe { filter(ptr) }.on_grpc(delivery);
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    headers: *const EnvoyHeader,
    headers_size: usize,
    end_stream: bool,
) {
    // SAFETY: `ptr` is only used while the call is still in the table, which a filter's calls
    // leave before it is freed (in its drop); the headers are valid during the call.
    unsafe {
        guard(
            "gRPC call headers",
            || (),
            || {
                let headers = envoy_pairs(headers, headers_size);
                to_filter(ptr, grpc_calls::on_headers(Carrier::Filter(envoy), stream_id, headers, end_stream))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    end_stream: bool,
) {
    // SAFETY: `ptr` is only used while the call is still in the table, which a filter's calls
    // leave before it is freed (in its drop); the chunks are valid during the call.
    unsafe {
        guard(
            "gRPC call data",
            || (),
            || {
                let data = envoy_bytes(data, data_count);
                to_filter(ptr, grpc_calls::on_data(Carrier::Filter(envoy), stream_id, &data, end_stream))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    trailers: *const EnvoyHeader,
    trailers_size: usize,
) {
    // SAFETY: `ptr` is only used while the call is still in the table, which a filter's calls
    // leave before it is freed (in its drop); the trailers are valid during the call.
    unsafe {
        guard(
            "gRPC call trailers",
            || (),
            || {
                let trailers = envoy_pairs(trailers, trailers_size);
                to_filter(ptr, grpc_calls::on_trailers(Carrier::Filter(envoy), stream_id, trailers))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
) {
    // SAFETY: `ptr` is only used while the call is still in the table, which a filter's calls
    // leave before it is freed (in its drop).
    unsafe { guard("gRPC call end", || (), || to_filter(ptr, grpc_calls::ended(Carrier::Filter(envoy), stream_id))) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    envoy: FilterEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: `ptr` is only used while the call is still in the table, which a filter's calls
    // leave before it is freed (in its drop).
    unsafe { guard("gRPC call reset", || (), || to_filter(ptr, grpc_calls::ended(Carrier::Filter(envoy), stream_id))) }
}

/// Hands what a call of the main thread's root read to that root.
fn to_main_root(ptr: *const c_void, delivery: Option<Delivery>) {
    let Some(delivery) = delivery else { return };
    let Some(vm) = delivery.caller.vm.upgrade() else { return };
    let Ok(mut vm) = vm.try_borrow_mut() else { return };
    if let Err(error) = delivery.deliver(&mut vm) {
        // SAFETY: Envoy calls the configuration's hooks while it lives.
        report::failure(unsafe { config(ptr) }, &error, "in the main thread's root context");
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    headers: *const EnvoyHeader,
    headers_size: usize,
    end_stream: bool,
) {
    // SAFETY: Envoy calls it with the live configuration `config_new` returned, and the headers
    // valid during the call.
    unsafe {
        guard(
            "gRPC call headers",
            || (),
            || {
                let headers = envoy_pairs(headers, headers_size);
                to_main_root(ptr, grpc_calls::on_headers(Carrier::Config(envoy), stream_id, headers, end_stream))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    end_stream: bool,
) {
    // SAFETY: Envoy calls it with the live configuration `config_new` returned, and the chunks
    // valid during the call.
    unsafe {
        guard(
            "gRPC call data",
            || (),
            || {
                let data = envoy_bytes(data, data_count);
                to_main_root(ptr, grpc_calls::on_data(Carrier::Config(envoy), stream_id, &data, end_stream))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    trailers: *const EnvoyHeader,
    trailers_size: usize,
) {
    // SAFETY: Envoy calls it with the live configuration `config_new` returned, and the trailers
    // valid during the call.
    unsafe {
        guard(
            "gRPC call trailers",
            || (),
            || {
                let trailers = envoy_pairs(trailers, trailers_size);
                to_main_root(ptr, grpc_calls::on_trailers(Carrier::Config(envoy), stream_id, trailers))
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
) {
    guard("gRPC call end", || (), || to_main_root(ptr, grpc_calls::ended(Carrier::Config(envoy), stream_id)))
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    envoy: ConfigEnvoyPtr,
    ptr: *const c_void,
    stream_id: u64,
    _reason: u32,
) {
    guard("gRPC call reset", || (), || to_main_root(ptr, grpc_calls::ended(Carrier::Config(envoy), stream_id)))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _ptr: *const c_void,
) {
}
