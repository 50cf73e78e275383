//! A store living in an nginx shared memory zone, seen by every worker: the zone is declared
//! at configuration time, the store is built in it (slab-allocated) when nginx maps it, kept
//! across reloads, and guarded by a cross-process read-write lock.

use std::borrow::Borrow;
use std::cell::Cell;
use std::ffi::c_void;
use std::hash::{Hash, Hasher};
use std::ptr::{self, NonNull};

use allocator_api2::vec::Vec as SlabVec;
use inwasm_host::{HostResult, Status};
use ngx::allocator::allocate;
use ngx::core::SlabPool;
use ngx::ffi::{ngx_conf_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_str_t, NGX_ERROR, NGX_OK};
use ngx::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::wasm_block::ngx_inwasm_module;

/// Bytes in shared memory.
pub type Bytes = SlabVec<u8, SlabPool>;

/// Copies `bytes` into the zone; `None` when it is full.
pub fn copy_in(pool: &SlabPool, bytes: &[u8]) -> Option<Bytes> {
    let mut out = Bytes::new_in(pool.clone());
    out.try_reserve_exact(bytes.len()).ok()?;
    out.extend_from_slice(bytes);
    Some(out)
}

/// A map key in shared memory, looked up by byte slice. Hashes as the slice does (the
/// rbtree map's hasher is deterministic, the same in every worker).
pub struct Key(pub Bytes);

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0[..].hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.0[..] == other.0[..]
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.0[..].cmp(&other.0[..])
    }
}

/// A store of type `T` in a shared memory zone.
pub struct ShmZone<T> {
    pub name: String,
    store: Cell<*mut RwLock<T>>,
    build: fn(SlabPool) -> Option<T>,
}

impl<T> ShmZone<T> {
    /// Declares zone `kind_name` of `size` bytes; `build` makes the store once it is mapped.
    ///
    /// # Safety
    /// `cf` must be nginx's configuration being parsed.
    pub unsafe fn declare(
        cf: *mut ngx_conf_t,
        kind: &str,
        name: &str,
        size: usize,
        build: fn(SlabPool) -> Option<T>,
    ) -> Result<Box<ShmZone<T>>, String> {
        // SAFETY: a configuration being parsed (per the caller) has a pool and takes shared
        // zones; the zone's data is the boxed `ShmZone`, which lives with the configuration.
        unsafe {
            let zone_name = format!("inwasm_{kind}_{name}");
            let mut source = ngx_str_t { len: zone_name.len(), data: zone_name.as_ptr() as *mut u8 };
            let mut text = ngx_str_t { len: zone_name.len(), data: ngx::ffi::ngx_pstrdup((*cf).pool, &mut source) };
            let tag = ptr::addr_of_mut!(ngx_inwasm_module) as *mut c_void;
            let zone = ngx_shared_memory_add(cf, &mut text, size, tag);
            if zone.is_null() {
                return Err(format!("cannot add shared memory zone \"{zone_name}\""));
            }
            if !(*zone).data.is_null() {
                return Err(format!("{kind} zone \"{name}\" is declared twice"));
            }
            let mut shm = Box::new(ShmZone { name: name.to_string(), store: Cell::new(ptr::null_mut()), build });
            (*zone).init = Some(init_zone::<T>);
            (*zone).data = ptr::addr_of_mut!(*shm) as *mut c_void;
            Ok(shm)
        }
    }

    fn store(&self) -> HostResult<&RwLock<T>> {
        // SAFETY: null until nginx maps the zone, then the store built in it, which lives as
        // long as the zone.
        unsafe { self.store.get().as_ref() }.ok_or(Status::InternalFailure)
    }

    pub fn read(&self) -> HostResult<RwLockReadGuard<'_, T>> {
        Ok(self.store()?.read())
    }

    pub fn write(&self) -> HostResult<RwLockWriteGuard<'_, T>> {
        Ok(self.store()?.write())
    }

    /// The store without taking the lock: the caller keeps to what is safe to share so.
    pub fn unlocked(&self) -> HostResult<*const T> {
        Ok(self.store()?.data_ptr())
    }
}

/// Maps the store into a zone: a new one, or the one a reload keeps.
unsafe extern "C" fn init_zone<T>(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls it with the mapped zone whose data `declare` set, and `old` the data
    // of the same zone in the previous cycle (a `ShmZone<T>` too: the tag and name match).
    unsafe {
        let shm = &*((*zone).data as *const ShmZone<T>);
        if let Some(old) = (old as *const ShmZone<T>).as_ref() {
            shm.store.set(old.store.get());
            return NGX_OK as ngx_int_t;
        }
        let Some(pool) = SlabPool::from_shm_zone(&*zone) else { return NGX_ERROR as ngx_int_t };
        let Some(store) = (shm.build)(pool.clone()) else { return NGX_ERROR as ngx_int_t };
        match allocate(RwLock::new(store), &pool) {
            Ok(store) => {
                shm.store.set(NonNull::as_ptr(store));
                NGX_OK as ngx_int_t
            }
            Err(_) => NGX_ERROR as ngx_int_t,
        }
    }
}
