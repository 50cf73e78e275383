//! The bytes an upstream answers an http call with (through nginx): parsing never panics,
//! whether the connection is still open or closed, and a complete response has a status.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../../ngx-module/src/http_wire.rs"]
#[allow(dead_code)]
mod http_wire;

fuzz_target!(|bytes: &[u8]| {
    for closed in [false, true] {
        if let http_wire::Parsed::Complete(response) = http_wire::parse_response(bytes, closed) {
            assert!(response.headers.iter().any(|(k, _)| k == b":status"));
        }
    }
});
