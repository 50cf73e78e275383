//! proxy_get_buffer_bytes, proxy_get_buffer_status, proxy_set_buffer_bytes and ABI 0.1.0's
//! proxy_get_configuration. Configuration, call-response and foreign-call buffers are held by
//! the host; bodies and L4 data belong to the embedding.

use wasmtime::Linker;

use super::abi_fn;
use crate::guest::{AbiResult, Guest};
use crate::session::HostState;
use crate::types::{BufferType, Status};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_get_buffer_bytes", |g,
                                               buffer: i32,
                                               start: i32,
                                               max_len: i32,
                                               ret_ptr: i32,
                                               ret_len: i32| {
        let bytes = contents(&mut g, buffer_type(buffer)?)?;
        let start = (start as u32 as usize).min(bytes.len());
        let end = start.saturating_add(max_len as u32 as usize).min(bytes.len());
        g.return_bytes(&bytes[start..end], ret_ptr, ret_len)
    });
    abi_fn!(linker, "proxy_get_buffer_status", |g, buffer: i32, ret_len: i32, ret_flags: i32| {
        let len = contents(&mut g, buffer_type(buffer)?)?.len();
        g.write_u32(ret_len, len as u32)?;
        g.write_u32(ret_flags, 0)
    });
    abi_fn!(linker, "proxy_set_buffer_bytes", |g, buffer: i32, start: i32, len: i32, data_ptr: i32, data_len: i32| {
        let buffer = buffer_type(buffer)?;
        if !matches!(
            buffer,
            BufferType::HttpRequestBody
                | BufferType::HttpResponseBody
                | BufferType::DownstreamData
                | BufferType::UpstreamData
        ) {
            return Err(Status::BadArgument.into());
        }
        let data = g.read(data_ptr, data_len)?;
        let embedding = g.embedding()?;
        let current = embedding.buffer(buffer)?;
        let updated = splice(current, start as u32 as usize, len as u32 as usize, &data)?;
        Ok(embedding.set_buffer(buffer, updated)?)
    });
    abi_fn!(linker, "proxy_get_configuration", |g, ret_ptr: i32, ret_len: i32| {
        let configuration = g.state().call.configuration.clone().unwrap_or_default();
        g.return_bytes(&configuration, ret_ptr, ret_len)
    });
    Ok(())
}

fn buffer_type(raw: i32) -> Result<BufferType, Status> {
    BufferType::from_raw(raw).ok_or(Status::BadArgument)
}

fn contents(g: &mut Guest<'_, '_>, buffer: BufferType) -> AbiResult<Vec<u8>> {
    let state = g.state();
    Ok(match buffer {
        BufferType::VmConfiguration => state.vm.configuration.clone(),
        BufferType::PluginConfiguration => {
            state.effective_plugin().map(|plugin| plugin.configuration.clone()).unwrap_or_default()
        }
        BufferType::HttpCallResponseBody => state.call.http_response_body.clone(),
        BufferType::GrpcReceiveBuffer => state.call.grpc_message.clone(),
        BufferType::CallData => state.call.foreign_args.clone(),
        _ => g.embedding()?.buffer(buffer)?,
    })
}

/// Envoy's rules for writing into a body: at 0 with length 0 prepends, at 0 covering the
/// whole buffer replaces it, at or past the end appends; anything else is a `BadArgument`.
fn splice(mut current: Vec<u8>, start: usize, len: usize, data: &[u8]) -> Result<Vec<u8>, Status> {
    if start == 0 && len == 0 {
        let mut updated = data.to_vec();
        updated.extend_from_slice(&current);
        Ok(updated)
    } else if start == 0 && len >= current.len() {
        Ok(data.to_vec())
    } else if start >= current.len() {
        current.extend_from_slice(data);
        Ok(current)
    } else {
        Err(Status::BadArgument)
    }
}

#[cfg(test)]
mod tests {
    use super::splice;
    use crate::types::Status;

    #[test]
    fn splice_follows_envoy() {
        assert_eq!(splice(b"body".to_vec(), 0, 0, b">").unwrap(), b">body");
        assert_eq!(splice(b"body".to_vec(), 0, 4, b"new").unwrap(), b"new");
        assert_eq!(splice(b"body".to_vec(), 0, 99, b"new").unwrap(), b"new");
        assert_eq!(splice(b"body".to_vec(), 4, 0, b"<").unwrap(), b"body<");
        assert_eq!(splice(b"body".to_vec(), 2, 1, b"x"), Err(Status::BadArgument));
        assert_eq!(splice(Vec::new(), 0, 0, b"x").unwrap(), b"x");
    }
}
