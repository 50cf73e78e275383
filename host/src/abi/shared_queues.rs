//! Shared queues: register (bound to the caller's root context), resolve, enqueue, dequeue.

use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::Status;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_register_shared_queue", |g, name_ptr: i32, name_len: i32, ret_id: i32| {
        let name = g.read(name_ptr, name_len)?;
        let id = g.root_embedding()?.register_shared_queue(&name)?;
        g.write_u32(ret_id, id)
    });
    abi_fn!(linker, "proxy_resolve_shared_queue", |g,
                                                   vm_id_ptr: i32,
                                                   vm_id_len: i32,
                                                   name_ptr: i32,
                                                   name_len: i32,
                                                   ret_id: i32| {
        let vm_id = g.read(vm_id_ptr, vm_id_len)?;
        let name = g.read(name_ptr, name_len)?;
        let id = g.embedding()?.resolve_shared_queue(&vm_id, &name)?.ok_or(Status::NotFound)?;
        g.write_u32(ret_id, id)
    });
    abi_fn!(linker, "proxy_enqueue_shared_queue", |g, queue_id: i32, value_ptr: i32, value_len: i32| {
        let value = g.read(value_ptr, value_len)?;
        Ok(g.embedding()?.enqueue_shared_queue(queue_id as u32, &value)?)
    });
    abi_fn!(linker, "proxy_dequeue_shared_queue", |g, queue_id: i32, ret_ptr: i32, ret_len: i32| {
        let value = g.embedding()?.dequeue_shared_queue(queue_id as u32)?.ok_or(Status::Empty)?;
        g.return_bytes(&value, ret_ptr, ret_len)
    });
    Ok(())
}
