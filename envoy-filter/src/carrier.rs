//! What carries a call a filter makes: the Envoy stream whose hook runs (the answer comes
//! back to that stream's filter, on its worker thread) or, on the main thread, the filter
//! configuration. Envoy's ABI has each call in both flavours; this picks one.

use inwasm_host::Pairs;

use crate::abi::{self, callout_init, ConfigEnvoyPtr, FilterEnvoyPtr, ModuleBuffer, ModuleHeader};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carrier {
    Filter(FilterEnvoyPtr),
    Config(ConfigEnvoyPtr),
}

/// A request a carrier sends to a cluster.
pub struct Outgoing<'a> {
    pub cluster: &'a [u8],
    pub headers: &'a Pairs,
    pub body: &'a [u8],
    /// 0: none.
    pub timeout_ms: u64,
}

impl Carrier {
    /// Sends `request` as a one-shot http callout: its id, or Envoy's reason for refusing it
    /// (`callout_init`).
    ///
    /// # Safety
    /// The carrier must be live (a stream whose hook runs now, or the main thread's
    /// configuration).
    pub unsafe fn http_callout(self, request: &Outgoing<'_>) -> Result<u64, u32> {
        let mut headers = module_headers(request.headers);
        let (cluster, body, mut id) = (ModuleBuffer::of(request.cluster), ModuleBuffer::of(request.body), 0u64);
        let (headers_ptr, headers_len, timeout) = (headers.as_mut_ptr(), headers.len(), request.timeout_ms);
        // SAFETY: the carrier is live (per the caller); the headers and body outlive the
        // call, which copies them.
        let result = unsafe {
            match self {
                Carrier::Filter(envoy) => abi::envoy_dynamic_module_callback_http_filter_http_callout(
                    envoy,
                    &mut id,
                    cluster,
                    headers_ptr,
                    headers_len,
                    body,
                    timeout,
                ),
                Carrier::Config(envoy) => abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                    envoy,
                    &mut id,
                    cluster,
                    headers_ptr,
                    headers_len,
                    body,
                    timeout,
                ),
            }
        };
        (result == callout_init::SUCCESS).then_some(id).ok_or(result)
    }

    /// Starts `request` as a stream (`end_stream`: nothing more to send): its id, or Envoy's
    /// reason for refusing it (`callout_init`).
    ///
    /// # Safety
    /// As `http_callout`.
    pub unsafe fn start_stream(self, request: &Outgoing<'_>, end_stream: bool) -> Result<u64, u32> {
        let mut headers = module_headers(request.headers);
        let (cluster, body, mut id) = (ModuleBuffer::of(request.cluster), ModuleBuffer::of(request.body), 0u64);
        let (headers_ptr, headers_len, timeout) = (headers.as_mut_ptr(), headers.len(), request.timeout_ms);
        // SAFETY: as in `http_callout`.
        let result = unsafe {
            match self {
                Carrier::Filter(envoy) => abi::envoy_dynamic_module_callback_http_filter_start_http_stream(
                    envoy,
                    &mut id,
                    cluster,
                    headers_ptr,
                    headers_len,
                    body,
                    end_stream,
                    timeout,
                ),
                Carrier::Config(envoy) => abi::envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                    envoy,
                    &mut id,
                    cluster,
                    headers_ptr,
                    headers_len,
                    body,
                    end_stream,
                    timeout,
                ),
            }
        };
        (result == callout_init::SUCCESS).then_some(id).ok_or(result)
    }

    /// Sends `data` on stream `id`; false when Envoy has no such stream.
    ///
    /// # Safety
    /// The carrier must be live.
    pub unsafe fn send_data(self, id: u64, data: &[u8], end_stream: bool) -> bool {
        let data = ModuleBuffer::of(data);
        // SAFETY: the carrier is live (per the caller); the data outlives the call.
        unsafe {
            match self {
                Carrier::Filter(envoy) => {
                    abi::envoy_dynamic_module_callback_http_stream_send_data(envoy, id, data, end_stream)
                }
                Carrier::Config(envoy) => {
                    abi::envoy_dynamic_module_callback_http_filter_config_stream_send_data(envoy, id, data, end_stream)
                }
            }
        }
    }

    /// Resets stream `id` (its reset hook runs at once).
    ///
    /// # Safety
    /// The carrier must be live.
    pub unsafe fn reset_stream(self, id: u64) {
        // SAFETY: the carrier is live (per the caller).
        unsafe {
            match self {
                Carrier::Filter(envoy) => abi::envoy_dynamic_module_callback_http_filter_reset_http_stream(envoy, id),
                Carrier::Config(envoy) => {
                    abi::envoy_dynamic_module_callback_http_filter_config_reset_http_stream(envoy, id)
                }
            }
        }
    }
}

fn module_headers(pairs: &Pairs) -> Vec<ModuleHeader> {
    pairs.iter().map(|(k, v)| ModuleHeader::of(k, v)).collect()
}
