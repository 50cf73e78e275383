//! proxy_set_effective_context, proxy_done, proxy_get_status.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::Status;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_set_effective_context", |g, context_id: i32| {
        let state = g.state();
        let id = context_id as u32;
        if !state.contexts.contains_key(&id) {
            return Err(Status::BadArgument.into());
        }
        state.effective_context = id;
        Ok(())
    });
    // A root context signals the end of an asynchronous shutdown. The host does not wait for
    // it (contexts are torn down when their stream or VM ends), so it only acknowledges.
    abi_fn!(linker, "proxy_done", |g| {
        g.effective_context()?;
        Ok(())
    });
    abi_fn!(linker, "proxy_get_status", |g, ret_code: i32, ret_ptr: i32, ret_len: i32| {
        let (code, message) = {
            let status = &g.state().status;
            (status.code, status.message.clone())
        };
        g.write_u32(ret_code, code)?;
        g.return_bytes(&message, ret_ptr, ret_len)
    });
    Ok(())
}
