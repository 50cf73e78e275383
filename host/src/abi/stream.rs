//! Stream flow control: continue/close (0.2.x and 0.1.0 forms), clear_route_cache and
//! send_local_response.

use wasmtime::Linker;

use super::abi_fn;
use super::headers::read_header_map;
use crate::embedding::LocalResponse;
use crate::session::HostState;
use crate::types::{Status, StreamType};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_continue_stream", |g, stream: i32| {
        let stream = StreamType::from_raw(stream).ok_or(Status::BadArgument)?;
        Ok(g.embedding()?.continue_stream(stream)?)
    });
    abi_fn!(linker, "proxy_close_stream", |g, stream: i32| {
        let stream = StreamType::from_raw(stream).ok_or(Status::BadArgument)?;
        Ok(g.embedding()?.close_stream(stream)?)
    });
    abi_fn!(linker, "proxy_continue_request", |g| { Ok(g.embedding()?.continue_stream(StreamType::Request)?) });
    abi_fn!(linker, "proxy_continue_response", |g| { Ok(g.embedding()?.continue_stream(StreamType::Response)?) });
    abi_fn!(linker, "proxy_clear_route_cache", |g| { Ok(g.embedding()?.clear_route_cache()?) });
    abi_fn!(linker, "proxy_send_local_response", |g,
                                                  status: i32,
                                                  details_ptr: i32,
                                                  details_len: i32,
                                                  body_ptr: i32,
                                                  body_len: i32,
                                                  headers_ptr: i32,
                                                  headers_len: i32,
                                                  grpc_status: i32| {
        let response = LocalResponse {
            status: status as u32,
            details: g.read(details_ptr, details_len)?,
            body: g.read(body_ptr, body_len)?,
            headers: read_header_map(&mut g, headers_ptr, headers_len)?,
            grpc_status,
        };
        g.embedding()?.send_local_response(response)?;
        g.state().local_response_sent = true;
        Ok(())
    });
    Ok(())
}
