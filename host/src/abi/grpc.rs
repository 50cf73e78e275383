//! gRPC calls and streams. Like http calls, the root context's embedding carries them; their
//! events come back through the `Vm::on_grpc_*` deliveries, to the context that made them.
//! Unknown tokens are NotFound; `proxy_grpc_close` half-closes a stream (its close still
//! comes) and cancels a call; `proxy_grpc_cancel` ends either at once, with no more events.

use std::time::Duration;

use wasmtime::Linker;

use super::abi_fn;
use crate::embedding::GrpcCallRequest;
use crate::guest::{AbiResult, Guest};
use crate::serialization::deserialize_map;
use crate::session::{CallKind, HostState};
use crate::types::Status;

struct Target {
    upstream: Vec<u8>,
    service: String,
    method: String,
}

fn target(g: &Guest<'_, '_>, raw: [i32; 6]) -> AbiResult<Target> {
    Ok(Target {
        upstream: g.read(raw[0], raw[1])?,
        service: g.read_string(raw[2], raw[3])?,
        method: g.read_string(raw[4], raw[5])?,
    })
}

fn start(
    g: &mut Guest<'_, '_>,
    target: Target,
    metadata: Vec<u8>,
    message: Option<Vec<u8>>,
    timeout_ms: i32,
    ret_token: i32,
) -> AbiResult {
    // A bad token pointer must fail before the call starts, not orphan it.
    g.write_u32(ret_token, 0)?;
    let kind = if message.is_some() { CallKind::GrpcCall } else { CallKind::GrpcStream };
    let request = GrpcCallRequest {
        upstream: target.upstream,
        service: target.service,
        method: target.method,
        initial_metadata: deserialize_map(&metadata)?,
        message,
        timeout: (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms as u32 as u64)),
    };
    let token = g.state().start_call(kind)?;
    if let Err(status) = g.root_embedding().and_then(|root| root.grpc_call(token, request)) {
        g.state().pending_calls.remove(&token);
        return Err(status.into());
    }
    g.write_u32(ret_token, token)
}

/// The kind of the pending call `token`, or NotFound.
fn pending_kind(g: &mut Guest<'_, '_>, token: u32) -> AbiResult<CallKind> {
    let kind = HostState::call_kind(token).filter(|kind| *kind != CallKind::Http);
    match kind.filter(|_| g.state().pending_calls.contains_key(&token)) {
        Some(kind) => Ok(kind),
        None => Err(Status::NotFound.into()),
    }
}

/// Ends call `token` for good: no more of its events reach the filter.
fn cancel(g: &mut Guest<'_, '_>, token: u32) -> AbiResult {
    pending_kind(g, token)?;
    g.state().pending_calls.remove(&token);
    Ok(g.root_embedding()?.grpc_cancel(token)?)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_grpc_call", |g,
                                        upstream_ptr: i32,
                                        upstream_len: i32,
                                        service_ptr: i32,
                                        service_len: i32,
                                        method_ptr: i32,
                                        method_len: i32,
                                        metadata_ptr: i32,
                                        metadata_len: i32,
                                        message_ptr: i32,
                                        message_len: i32,
                                        timeout_ms: i32,
                                        ret_token: i32| {
        let target = target(&g, [upstream_ptr, upstream_len, service_ptr, service_len, method_ptr, method_len])?;
        let metadata = g.read(metadata_ptr, metadata_len)?;
        let message = g.read(message_ptr, message_len)?;
        start(&mut g, target, metadata, Some(message), timeout_ms, ret_token)
    });
    abi_fn!(linker, "proxy_grpc_stream", |g,
                                          upstream_ptr: i32,
                                          upstream_len: i32,
                                          service_ptr: i32,
                                          service_len: i32,
                                          method_ptr: i32,
                                          method_len: i32,
                                          metadata_ptr: i32,
                                          metadata_len: i32,
                                          ret_token: i32| {
        let target = target(&g, [upstream_ptr, upstream_len, service_ptr, service_len, method_ptr, method_len])?;
        let metadata = g.read(metadata_ptr, metadata_len)?;
        start(&mut g, target, metadata, None, 0, ret_token)
    });
    abi_fn!(linker, "proxy_grpc_send", |g, token: i32, message_ptr: i32, message_len: i32, end_stream: i32| {
        let token = token as u32;
        if pending_kind(&mut g, token)? != CallKind::GrpcStream {
            return Err(Status::BadArgument.into());
        }
        let message = g.read(message_ptr, message_len)?;
        Ok(g.root_embedding()?.grpc_send(token, &message, end_stream != 0)?)
    });
    abi_fn!(linker, "proxy_grpc_cancel", |g, token: i32| { cancel(&mut g, token as u32) });
    abi_fn!(linker, "proxy_grpc_close", |g, token: i32| {
        let token = token as u32;
        match pending_kind(&mut g, token)? {
            CallKind::GrpcStream => Ok(g.root_embedding()?.grpc_close(token)?),
            _ => cancel(&mut g, token),
        }
    });
    Ok(())
}
