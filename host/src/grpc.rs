//! gRPC as both hosts answer it: which requests are gRPC, and a local response (a filter's, or
//! the host's own when a filter fails) in the form a gRPC client understands, as Envoy sends
//! local replies to gRPC requests: HTTP 200, `content-type: application/grpc`, the status in
//! `grpc-status` and the text in `grpc-message`, with no body ("trailers-only").

use crate::embedding::LocalResponse;

/// gRPC status codes the hosts produce themselves.
pub mod status {
    pub const UNKNOWN: u32 = 2;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

const CONTENT_TYPE: &[u8] = b"application/grpc";

/// Whether a request with this `content-type` is gRPC: `application/grpc` or
/// `application/grpc+<codec>` (gRPC-Web is not).
pub fn is_grpc_content_type(content_type: &[u8]) -> bool {
    content_type.strip_prefix(CONTENT_TYPE).is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
}

/// The gRPC status a client infers from an HTTP status (gRPC's own mapping, as Envoy uses).
pub fn status_for_http(http_status: u32) -> u32 {
    match http_status {
        400 => status::INTERNAL,
        401 => status::UNAUTHENTICATED,
        403 => status::PERMISSION_DENIED,
        404 => status::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => status::UNAVAILABLE,
        _ => status::UNKNOWN,
    }
}

/// `text` as a `grpc-message` value: percent-encoded outside printable ASCII, and `%` itself.
pub fn encode_message(text: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(text.len());
    for &byte in text {
        if (b' '..=b'~').contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            encoded.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    encoded
}

impl LocalResponse {
    /// The gRPC status this response carries: the filter's, else the one its HTTP status maps to.
    pub fn grpc_status_code(&self) -> u32 {
        u32::try_from(self.grpc_status).unwrap_or_else(|_| status_for_http(self.status))
    }

    /// This response as a gRPC request gets it: HTTP 200 with the status in `grpc-status` and
    /// the body as `grpc-message` (a `grpc-status` or `grpc-message` header the filter set
    /// itself wins), no body.
    pub fn into_grpc(self) -> LocalResponse {
        let code = self.grpc_status_code();
        let has = |name: &[u8]| self.headers.first_value(name).is_some();
        let (has_status, has_message) = (has(b"grpc-status"), has(b"grpc-message"));
        let mut headers = self.headers;
        headers.retain(|_, k, _| !k.eq_ignore_ascii_case(b"content-type"));
        headers.push(b"content-type", CONTENT_TYPE);
        if !has_status {
            headers.push_number(b"grpc-status", code.into());
        }
        if !has_message && !self.body.is_empty() {
            headers.push(b"grpc-message", encode_message(&self.body));
        }
        LocalResponse { status: 200, headers, body: Vec::new(), grpc_status: code as i32, details: self.details }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/json"));
    }

    #[test]
    fn a_failure_reaches_a_grpc_client_as_unavailable() {
        let failed = LocalResponse {
            status: 503,
            details: b"wasm_fail_stream".to_vec(),
            body: b"filter failed: 100%".to_vec(),
            headers: [("content-type", "text/plain")].into_iter().collect(),
            grpc_status: -1,
        };
        let grpc = failed.into_grpc();
        assert_eq!(grpc.status, 200);
        assert!(grpc.body.is_empty());
        let header = |name: &[u8]| grpc.headers.exact_value(name).map(<[u8]>::to_vec);
        assert_eq!(header(b"grpc-status").as_deref(), Some(&b"14"[..]));
        assert_eq!(header(b"grpc-message").as_deref(), Some(&b"filter failed: 100%25"[..]));
        assert_eq!(header(b"content-type").as_deref(), Some(&b"application/grpc"[..]));
    }

    #[test]
    fn a_filters_own_grpc_status_wins() {
        let denied = LocalResponse { status: 403, grpc_status: 16, ..LocalResponse::default() };
        assert_eq!(denied.into_grpc().grpc_status, 16);
        assert_eq!(LocalResponse { status: 403, grpc_status: -1, ..LocalResponse::default() }.grpc_status_code(), 7);
    }
}
