//! Envoy's attribute names (`request.path`, `source.address`, ...) answered through the
//! dynamic-module attribute callbacks, in proxy-wasm's encodings: strings raw, integers
//! 8-byte little endian, booleans one byte, header maps in pair serialization; metadata
//! properties through `metadata.rs`.

use inwasm_host::serialization::property;

use crate::abi::{self, attribute::*, header_type, EnvoyBuffer, FilterEnvoyPtr};
use crate::{headers, metadata};

enum Kind {
    Text(u32),
    Int(u32),
    Bool(u32),
    /// A header map, without its pseudo-headers.
    Headers(u32),
}

fn kind(path: &[&[u8]]) -> Option<Kind> {
    use Kind::*;
    Some(match path {
        [b"request", b"path"] => Text(REQUEST_PATH),
        [b"request", b"url_path"] => Text(REQUEST_URL_PATH),
        [b"request", b"host"] => Text(REQUEST_HOST),
        [b"request", b"scheme"] => Text(REQUEST_SCHEME),
        [b"request", b"method"] => Text(REQUEST_METHOD),
        [b"request", b"headers"] => Headers(header_type::REQUEST_HEADERS),
        [b"request", b"referer"] => Text(REQUEST_REFERER),
        [b"request", b"useragent"] => Text(REQUEST_USER_AGENT),
        [b"request", b"id"] => Text(REQUEST_ID),
        [b"request", b"protocol"] => Text(REQUEST_PROTOCOL),
        [b"request", b"query"] => Text(REQUEST_QUERY),
        [b"request", b"duration"] => Int(REQUEST_DURATION),
        [b"request", b"size"] => Int(REQUEST_SIZE),
        [b"request", b"total_size"] => Int(REQUEST_TOTAL_SIZE),
        [b"response", b"code"] => Int(RESPONSE_CODE),
        [b"response", b"code_details"] => Text(RESPONSE_CODE_DETAILS),
        [b"response", b"flags"] => Int(RESPONSE_FLAGS),
        [b"response", b"grpc_status"] => Int(RESPONSE_GRPC_STATUS),
        [b"response", b"headers"] => Headers(header_type::RESPONSE_HEADERS),
        [b"response", b"trailers"] => Headers(header_type::RESPONSE_TRAILERS),
        [b"response", b"size"] => Int(RESPONSE_SIZE),
        [b"response", b"total_size"] => Int(RESPONSE_TOTAL_SIZE),
        [b"source", b"address"] => Text(SOURCE_ADDRESS),
        [b"source", b"port"] => Int(SOURCE_PORT),
        [b"destination", b"address"] => Text(DESTINATION_ADDRESS),
        [b"destination", b"port"] => Int(DESTINATION_PORT),
        [b"connection", b"id"] => Int(CONNECTION_ID),
        [b"connection", b"mtls"] => Bool(CONNECTION_MTLS),
        [b"connection", b"requested_server_name"] => Text(CONNECTION_REQUESTED_SERVER_NAME),
        [b"connection", b"tls_version"] => Text(CONNECTION_TLS_VERSION),
        [b"connection", b"termination_details"] => Text(CONNECTION_TERMINATION_DETAILS),
        [b"upstream", b"address"] => Text(UPSTREAM_ADDRESS),
        [b"upstream", b"port"] => Int(UPSTREAM_PORT),
        [b"upstream", b"tls_version"] => Text(UPSTREAM_TLS_VERSION),
        [b"upstream", b"local_address"] => Text(UPSTREAM_LOCAL_ADDRESS),
        [b"upstream", b"transport_failure_reason"] => Text(UPSTREAM_TRANSPORT_FAILURE_REASON),
        [b"xds", b"cluster_name"] => Text(XDS_CLUSTER_NAME),
        [b"xds", b"route_name"] => Text(XDS_ROUTE_NAME),
        [b"xds", b"virtual_host_name"] => Text(XDS_VIRTUAL_HOST_NAME),
        [b"xds", b"filter_chain_name"] => Text(XDS_FILTER_CHAIN_NAME),
        _ => return None,
    })
}

/// The value of a property, or `None` when Envoy has none for this stream.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn get(filter: FilterEnvoyPtr, path: &[&[u8]]) -> Option<Vec<u8>> {
    // SAFETY: a live stream of this thread (per the caller); each result is a valid place to
    // write, and the string Envoy points `result` at is copied at once.
    unsafe {
        if metadata::is_metadata(path) {
            return metadata::get(filter, path);
        }
        match kind(path)? {
            Kind::Text(id) => {
                let mut result = EnvoyBuffer::EMPTY;
                abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, id, &mut result)
                    .then(|| result.as_slice().to_vec())
            }
            Kind::Int(id) => {
                let mut result = 0u64;
                abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(filter, id, &mut result)
                    .then(|| property::int(result as i64))
            }
            Kind::Bool(id) => {
                let mut result = false;
                abi::envoy_dynamic_module_callback_http_filter_get_attribute_bool(filter, id, &mut result)
                    .then(|| property::boolean(result))
            }
            Kind::Headers(map) => {
                let mut pairs = headers::all(filter, map);
                pairs.retain(|_, k, _| k.first() != Some(&b':'));
                Some(property::map(&pairs))
            }
        }
    }
}
