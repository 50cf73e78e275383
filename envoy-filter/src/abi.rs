//! The part of Envoy's dynamic-module C ABI ("v0.2.0", Envoy 1.40) this module uses: the
//! types, and the callbacks the Envoy executable exports (resolved when Envoy loads us).
//! The event hooks Envoy calls are defined in `hooks.rs`.
//!
//! Enums Envoy passes in are plain integers here (Envoy may append values); pointers Envoy
//! hands out are valid only during the hook that received them unless said otherwise.

use std::ffi::c_void;

pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

pub type ConfigEnvoyPtr = *mut c_void;
pub type FilterEnvoyPtr = *mut c_void;
pub type SchedulerPtr = *mut c_void;

/// A filter configuration's Envoy pointer, usable from any thread for the config-level
/// callbacks that allow it (stats).
#[derive(Clone, Copy)]
pub struct ConfigHandle(pub ConfigEnvoyPtr);

// SAFETY: Envoy's configuration outlives every filter (and so every use of the handle); the
// callbacks used through it from other threads (stats) are thread-safe in Envoy.
unsafe impl Send for ConfigHandle {}
// SAFETY: as for `Send`: the handle is a copyable pointer, and sharing it only hands out
// copies, used as above.
unsafe impl Sync for ConfigHandle {}

/// Bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// # Safety
    /// The buffer must point at `length` readable bytes that stay valid and unchanged for
    /// `'a` (or be null with any length).
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: not null, so `length` readable bytes valid for 'a (per the caller).
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// Bytes owned by this module, read by Envoy during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// A null buffer (`http_set_header` removes the header).
    pub const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    pub key: ModuleBuffer,
    pub value: ModuleBuffer,
}

impl ModuleHeader {
    pub fn of(key: &[u8], value: &[u8]) -> ModuleHeader {
        ModuleHeader { key: ModuleBuffer::of(key), value: ModuleBuffer::of(value) }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key: EnvoyBuffer,
    pub value: EnvoyBuffer,
}

/// Envoy's array of `count` entries at `ptr` (null when empty).
///
/// # Safety
/// `ptr` must be null or point at `count` entries that stay valid for `'a`.
pub unsafe fn envoy_array<'a, T>(ptr: *const T, count: usize) -> &'a [T] {
    if ptr.is_null() || count == 0 {
        &[]
    } else {
        // SAFETY: per the caller.
        unsafe { std::slice::from_raw_parts(ptr, count) }
    }
}

/// Envoy's headers as pairs.
///
/// # Safety
/// As `envoy_array`, and each header's buffers valid.
pub unsafe fn envoy_pairs(headers: *const EnvoyHeader, count: usize) -> inwasm_host::Pairs {
    // SAFETY: per the caller.
    let headers = unsafe { envoy_array(headers, count) };
    // SAFETY: per the caller.
    headers.iter().map(|h| unsafe { (h.key.as_slice(), h.value.as_slice()) }).collect()
}

/// Envoy's chunks of bytes, joined.
///
/// # Safety
/// As `envoy_array`, and each chunk valid.
pub unsafe fn envoy_bytes(chunks: *const EnvoyBuffer, count: usize) -> Vec<u8> {
    // SAFETY: per the caller.
    let chunks = unsafe { envoy_array(chunks, count) };
    // SAFETY: per the caller.
    chunks.iter().flat_map(|c| unsafe { c.as_slice() }.iter().copied()).collect()
}

/// `envoy_dynamic_module_type_http_header_type`.
pub mod header_type {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const REQUEST_TRAILERS: u32 = 1;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const RESPONSE_TRAILERS: u32 = 3;
}

/// `envoy_dynamic_module_type_http_body_type`: the data of the current body event
/// ("received") and what earlier events buffered.
pub mod body_type {
    pub const RECEIVED_REQUEST: u32 = 0;
    pub const BUFFERED_REQUEST: u32 = 1;
    pub const RECEIVED_RESPONSE: u32 = 2;
    pub const BUFFERED_RESPONSE: u32 = 3;
}

/// `envoy_dynamic_module_type_log_level`.
pub mod log_level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
    pub const CRITICAL: u32 = 5;
}

/// Header and body hook results.
pub mod status {
    pub const CONTINUE: u32 = 0;
    /// Headers and trailers: StopIteration. Bodies: StopIterationAndBuffer.
    pub const STOP_ITERATION: u32 = 1;
    /// Headers: StopAllIterationAndWatermark (no body events until the filter continues).
    pub const STOP_ALL_ITERATION: u32 = 4;
}

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub mod callout_init {
    pub const SUCCESS: u32 = 0;
    pub const MISSING_REQUIRED_HEADERS: u32 = 1;
    pub const CLUSTER_NOT_FOUND: u32 = 2;
}

/// `envoy_dynamic_module_type_http_callout_result`.
pub mod callout_result {
    pub const SUCCESS: u32 = 0;
    pub const EXCEED_RESPONSE_BUFFER_LIMIT: u32 = 2;
}

/// `envoy_dynamic_module_type_metrics_result`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_attribute_id` values this module maps properties to.
pub mod attribute {
    pub const REQUEST_PATH: u32 = 0;
    pub const REQUEST_URL_PATH: u32 = 1;
    pub const REQUEST_HOST: u32 = 2;
    pub const REQUEST_SCHEME: u32 = 3;
    pub const REQUEST_METHOD: u32 = 4;
    pub const REQUEST_REFERER: u32 = 6;
    pub const REQUEST_USER_AGENT: u32 = 7;
    pub const REQUEST_ID: u32 = 9;
    pub const REQUEST_PROTOCOL: u32 = 10;
    pub const REQUEST_QUERY: u32 = 11;
    pub const REQUEST_DURATION: u32 = 12;
    pub const REQUEST_SIZE: u32 = 13;
    pub const REQUEST_TOTAL_SIZE: u32 = 14;
    pub const RESPONSE_CODE: u32 = 15;
    pub const RESPONSE_CODE_DETAILS: u32 = 16;
    pub const RESPONSE_FLAGS: u32 = 17;
    pub const RESPONSE_GRPC_STATUS: u32 = 18;
    pub const RESPONSE_SIZE: u32 = 21;
    pub const RESPONSE_TOTAL_SIZE: u32 = 22;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const SOURCE_PORT: u32 = 25;
    pub const DESTINATION_ADDRESS: u32 = 26;
    pub const DESTINATION_PORT: u32 = 27;
    pub const CONNECTION_ID: u32 = 28;
    pub const CONNECTION_MTLS: u32 = 29;
    pub const CONNECTION_REQUESTED_SERVER_NAME: u32 = 30;
    pub const CONNECTION_TLS_VERSION: u32 = 31;
    pub const CONNECTION_TERMINATION_DETAILS: u32 = 40;
    pub const UPSTREAM_ADDRESS: u32 = 41;
    pub const UPSTREAM_PORT: u32 = 42;
    pub const UPSTREAM_TLS_VERSION: u32 = 43;
    pub const UPSTREAM_LOCAL_ADDRESS: u32 = 51;
    pub const UPSTREAM_TRANSPORT_FAILURE_REASON: u32 = 52;
    pub const XDS_CLUSTER_NAME: u32 = 57;
    pub const XDS_ROUTE_NAME: u32 = 61;
    pub const XDS_VIRTUAL_HOST_NAME: u32 = 63;
    pub const XDS_FILTER_CHAIN_NAME: u32 = 66;
}

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoyPtr, header_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoyPtr,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_drain_body(filter: FilterEnvoyPtr, body_type: u32, bytes: usize) -> bool;
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(filter: FilterEnvoyPtr) -> bool;
    pub fn envoy_dynamic_module_callback_http_received_buffered_response_body(filter: FilterEnvoyPtr) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut u64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut bool,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);
    pub fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterEnvoyPtr);
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);
    pub fn envoy_dynamic_module_callback_http_filter_reset_stream(
        filter: FilterEnvoyPtr,
        reason: u32,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_start_http_stream(
        filter: FilterEnvoyPtr,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_stream_send_data(
        filter: FilterEnvoyPtr,
        stream_id: u64,
        data: ModuleBuffer,
        end_stream: bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_reset_http_stream(filter: FilterEnvoyPtr, stream_id: u64);
    pub fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: ConfigEnvoyPtr,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_stream_send_data(
        config: ConfigEnvoyPtr,
        stream_id: u64,
        data: ModuleBuffer,
        end_stream: bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_config_reset_http_stream(config: ConfigEnvoyPtr, stream_id: u64);

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: ConfigEnvoyPtr) -> SchedulerPtr;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: SchedulerPtr, event: u64);
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
    pub fn envoy_dynamic_module_callback_http_get_metadata_string(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_number(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut f64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_bool(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_keys_count(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_metadata_keys(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_namespaces_count(
        filter: FilterEnvoyPtr,
        source: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_metadata_namespaces(
        filter: FilterEnvoyPtr,
        source: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_size(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_number(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        index: usize,
        result: *mut f64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_string(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        index: usize,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_bool(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        index: usize,
        result: *mut bool,
    ) -> bool;

    /// A scheduler that runs events on the stream's worker thread (through
    /// `envoy_dynamic_module_on_http_filter_scheduled`); committing from any thread is safe and
    /// does nothing once the stream is gone.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterEnvoyPtr) -> SchedulerPtr;
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event: u64);
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// `envoy_dynamic_module_type_metadata_source`.
pub mod metadata_source {
    pub const DYNAMIC: u32 = 0;
    pub const ROUTE: u32 = 1;
    pub const CLUSTER: u32 = 2;
    pub const HOST: u32 = 3;
}
