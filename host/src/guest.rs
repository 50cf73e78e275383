//! Checked access to a guest's linear memory, and returning data through its allocator.
//!
//! Every pointer and length a guest passes is untrusted: each access is bounds-checked and a
//! bad one becomes `INVALID_MEMORY_ACCESS` for the guest, never a host fault.

use wasmtime::{Caller, Memory};

use crate::embedding::Embedding;
use crate::session::{Context, HostState};
use crate::serialization::deserialize_map;
use crate::types::{LogLevel, Status};
use crate::Pairs;

/// Why a host function did not succeed: a status for the guest, or a trap that ends the call.
pub(crate) enum Fault {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fault {
    fn from(status: Status) -> Fault {
        Fault::Status(status)
    }
}

impl From<wasmtime::Error> for Fault {
    fn from(error: wasmtime::Error) -> Fault {
        Fault::Trap(error)
    }
}

pub(crate) type AbiResult<T = ()> = Result<T, Fault>;

/// A host function's view of the calling guest.
pub(crate) struct Guest<'a, 'b> {
    caller: &'a mut Caller<'b, HostState>,
}

impl<'a, 'b> Guest<'a, 'b> {
    pub fn new(caller: &'a mut Caller<'b, HostState>) -> Self {
        Guest { caller }
    }

    pub fn state(&mut self) -> &mut HostState {
        self.caller.data_mut()
    }

    /// The effective context's embedding.
    pub fn embedding(&mut self) -> Result<&mut dyn Embedding, Status> {
        Ok(self.state().effective()?.embedding.as_mut())
    }

    /// The embedding of the effective context's root context.
    pub fn root_embedding(&mut self) -> Result<&mut dyn Embedding, Status> {
        Ok(self.state().effective_root()?.embedding.as_mut())
    }

    pub fn effective_context(&mut self) -> Result<&mut Context, Status> {
        self.state().effective()
    }

    fn memory(&self) -> Result<Memory, Status> {
        self.caller.data().memory.ok_or(Status::InvalidMemoryAccess)
    }

    /// A copy of `len` bytes at `ptr`.
    pub fn read(&self, ptr: i32, len: i32) -> AbiResult<Vec<u8>> {
        let memory = self.memory()?;
        Ok(checked(memory.data(&*self.caller), ptr, len)?.to_vec())
    }

    /// A serialized map (headers, trailers, metadata), parsed where it lies.
    pub fn read_map(&mut self, ptr: i32, len: i32) -> AbiResult<Pairs> {
        self.with_bytes([(ptr, len)], |_, [bytes]| Ok(deserialize_map(bytes)?))
    }

    /// Runs `f` with the bytes of each `(ptr, len)` range, in place, and the host state: what
    /// a host function passes on to the embedding needs no copy.
    pub fn with_bytes<const N: usize, T>(
        &mut self,
        ranges: [(i32, i32); N],
        f: impl FnOnce(&mut HostState, [&[u8]; N]) -> AbiResult<T>,
    ) -> AbiResult<T> {
        let memory = self.memory()?;
        let (data, state) = memory.data_and_store_mut(&mut *self.caller);
        let data: &[u8] = data;
        let mut slices = [&data[..0]; N];
        for (slice, (ptr, len)) in slices.iter_mut().zip(ranges) {
            *slice = checked(data, ptr, len)?;
        }
        f(state, slices)
    }

    /// A copy of at most `max` of the `len` bytes at `ptr` (all of which must be in bounds).
    pub fn read_prefix(&self, ptr: i32, len: i32, max: usize) -> AbiResult<Vec<u8>> {
        let memory = self.memory()?;
        let all = checked(memory.data(&*self.caller), ptr, len)?;
        Ok(all[..all.len().min(max)].to_vec())
    }

    /// A UTF-8 string at `ptr` (invalid UTF-8 is a `BadArgument`).
    pub fn read_string(&self, ptr: i32, len: i32) -> AbiResult<String> {
        String::from_utf8(self.read(ptr, len)?).map_err(|_| Fault::Status(Status::BadArgument))
    }

    pub fn write(&mut self, ptr: i32, bytes: &[u8]) -> AbiResult {
        let memory = self.memory()?;
        let len = i32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
        let data = memory.data_mut(&mut *self.caller);
        let start = offset(ptr);
        checked(data, ptr, len)?;
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    pub fn write_u32(&mut self, ptr: i32, value: u32) -> AbiResult {
        self.write(ptr, &value.to_le_bytes())
    }

    pub fn write_u64(&mut self, ptr: i32, value: u64) -> AbiResult {
        self.write(ptr, &value.to_le_bytes())
    }

    /// Hands `bytes` to the guest: allocates a buffer with the guest's allocator, copies the
    /// bytes in and stores its address and length at `ret_ptr` and `ret_len`. Empty data is
    /// returned as (0, 0) without allocating, as Envoy does.
    pub fn return_bytes(&mut self, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> AbiResult {
        let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
        // Check the out-pointers first: a bad one must not cost an allocation.
        {
            let memory = self.memory()?;
            let data = memory.data(&*self.caller);
            checked(data, ret_ptr, 4)?;
            checked(data, ret_len, 4)?;
        }
        let address = if bytes.is_empty() { 0 } else { self.allocate(len)? };
        if !bytes.is_empty() {
            self.write(address as i32, bytes)?;
        }
        self.write_u32(ret_ptr, address)?;
        self.write_u32(ret_len, len)
    }

    fn allocate(&mut self, len: u32) -> AbiResult<u32> {
        // Taken out while it runs (it needs the store), then put back.
        let allocator = self.caller.data_mut().allocator.take().ok_or(Status::InternalFailure)?;
        let result = allocator.call(&mut *self.caller, len as i32);
        self.caller.data_mut().allocator = Some(allocator);
        match result? {
            0 => Err(Status::InvalidMemoryAccess.into()),
            address => Ok(address as u32),
        }
    }

    /// Turns a host function's outcome into what the guest receives. The first time an
    /// embedding answers `Unimplemented` for a function, the host says so in the log.
    pub fn finish(&mut self, function: &'static str, result: AbiResult) -> wasmtime::Result<i32> {
        match result {
            Ok(()) => Ok(Status::Ok as i32),
            Err(Fault::Status(Status::Unimplemented)) => {
                let state = self.state();
                if state.unimplemented_reported.insert(function) {
                    state.log(LogLevel::Warn, &format!("{function} is not supported by this proxy"));
                }
                Ok(Status::Unimplemented as i32)
            }
            Err(Fault::Status(status)) => Ok(status as i32),
            Err(Fault::Trap(error)) => Err(error),
        }
    }
}

fn offset(ptr: i32) -> usize {
    ptr as u32 as usize
}

/// The `len` bytes at `ptr`, if they lie inside `memory`.
fn checked(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let start = offset(ptr);
    let end = start.checked_add(len as u32 as usize).ok_or(Status::InvalidMemoryAccess)?;
    memory.get(start..end).ok_or(Status::InvalidMemoryAccess)
}
