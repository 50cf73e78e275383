//! proxy_http_call. The call belongs to the root context (as in Envoy); its outcome comes
//! back through `Vm::on_http_call_response`.

use std::time::Duration;

use wasmtime::Linker;

use super::abi_fn;
use crate::embedding::HttpCallRequest;
use crate::session::{CallKind, HostState};
use crate::types::Status;
use crate::Pairs;

const REQUIRED_HEADERS: [&[u8]; 3] = [b":method", b":path", b":authority"];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_http_call", |g,
                                        upstream_ptr: i32,
                                        upstream_len: i32,
                                        headers_ptr: i32,
                                        headers_len: i32,
                                        body_ptr: i32,
                                        body_len: i32,
                                        trailers_ptr: i32,
                                        trailers_len: i32,
                                        timeout_ms: i32,
                                        ret_token: i32| {
        // A bad token pointer must fail before the call starts, not orphan it.
        g.write_u32(ret_token, 0)?;
        let upstream = g.read_string(upstream_ptr, upstream_len)?;
        let headers = authority_from_host(g.read_map(headers_ptr, headers_len)?);
        let present = |name: &[u8]| headers.exact_value(name).is_some();
        if timeout_ms < 0 || !REQUIRED_HEADERS.iter().all(|name| present(name)) {
            return Err(Status::BadArgument.into());
        }
        let request = HttpCallRequest {
            upstream,
            headers,
            body: g.read(body_ptr, body_len)?,
            trailers: g.read_map(trailers_ptr, trailers_len)?,
            timeout: (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms as u32 as u64)),
        };
        let token = g.state().start_call(CallKind::Http)?;
        if let Err(status) = g.root_embedding().and_then(|root| root.http_call(token, request)) {
            g.state().pending_calls.remove(&token);
            return Err(status.into());
        }
        g.write_u32(ret_token, token)
    });
    Ok(())
}

/// A call's `host` header as its `:authority` when it has none (as Envoy takes it).
fn authority_from_host(mut headers: Pairs) -> Pairs {
    if headers.exact_value(b":authority").is_none() {
        if let Some(host) = headers.position(b"host") {
            headers.set_name(host, b":authority");
        }
    }
    headers
}
