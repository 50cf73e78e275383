//! A store living in an nginx shared memory zone, seen by every worker: the zone is declared
//! at configuration time, the store is built in it when nginx maps it, kept across reloads,
//! and used only under the zone's own slab mutex. That is the lock nginx's master releases
//! when a worker dies holding it, so a crashed worker never leaves a zone locked; and since
//! every use of a store holds it, the store allocates with the "locked" slab functions.

use std::borrow::Borrow;
use std::cell::Cell;
use std::ffi::c_void;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::vec::Vec as ZoneVec;
use inwasm_host::{HostResult, Status};
use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock,
    ngx_slab_alloc_locked, ngx_slab_free_locked, ngx_slab_pool_t, ngx_str_t, NGX_ERROR, NGX_OK,
};

use crate::wasm_block::ngx_inwasm_module;

/// The smallest zone nginx's slab allocator can work in (as nginx's own modules require:
/// eight 4 KiB pages).
pub const MIN_ZONE_SIZE: usize = 32 << 10;

/// Allocation in a zone whose mutex the caller holds (every use of a store does).
#[derive(Clone, Copy)]
pub struct ZoneAlloc(NonNull<ngx_slab_pool_t>);

// SAFETY: allocations go through nginx's slab functions for the zone, always under the
// zone's mutex (see the module doc), so they are never concurrent; what they return is
// aligned as asked (`allocate` checks) and lives until freed.
unsafe impl Allocator for ZoneAlloc {
    fn allocate(&self, layout: std::alloc::Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(NonNull::<u8>::dangling(), 0));
        }
        // Small slab allocations are aligned to their size rounded up to a power of two.
        let size = layout.size().max(layout.align());
        // SAFETY: the zone's pool, its mutex held.
        let memory =
            NonNull::new(unsafe { ngx_slab_alloc_locked(self.0.as_ptr(), size) } as *mut u8).ok_or(AllocError)?;
        if memory.align_offset(layout.align()) != 0 {
            // SAFETY: just allocated from this pool.
            unsafe { ngx_slab_free_locked(self.0.as_ptr(), memory.as_ptr() as *mut c_void) };
            return Err(AllocError);
        }
        Ok(NonNull::slice_from_raw_parts(memory, layout.size()))
    }

    unsafe fn deallocate(&self, memory: NonNull<u8>, layout: std::alloc::Layout) {
        if layout.size() != 0 {
            // SAFETY: allocated from this pool (the caller's contract), its mutex held.
            unsafe { ngx_slab_free_locked(self.0.as_ptr(), memory.as_ptr() as *mut c_void) };
        }
    }
}

/// Bytes in shared memory.
pub type Bytes = ZoneVec<u8, ZoneAlloc>;

/// Copies `bytes` into the zone; `None` when it is full.
pub fn copy_in(alloc: ZoneAlloc, bytes: &[u8]) -> Option<Bytes> {
    let mut out = Bytes::new_in(alloc);
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
    size: usize,
    /// How many modules share the zone (each gets an equal share of it by default).
    tenants: Cell<usize>,
    pool: Cell<*mut ngx_slab_pool_t>,
    store: Cell<*mut T>,
    build: Box<dyn Fn(ZoneAlloc) -> Option<T>>,
}

impl<T> ShmZone<T> {
    /// Declares zone `inwasm_KIND_NAME` of `size` bytes for `directive`; `build` makes the
    /// store once nginx maps it.
    ///
    /// # Safety
    /// `cf` must be nginx's configuration being parsed.
    pub unsafe fn declare(
        cf: *mut ngx_conf_t,
        directive: &'static str,
        name: &str,
        size: usize,
        build: impl Fn(ZoneAlloc) -> Option<T> + 'static,
    ) -> Result<Box<ShmZone<T>>, String> {
        if size < MIN_ZONE_SIZE {
            return Err(format!("{directive} \"{name}\": {size} bytes is too small (at least 32k)"));
        }
        let zone_name = format!("inwasm_{directive}_{name}");
        // SAFETY: a configuration being parsed (per the caller) has a pool and takes shared
        // zones; the zone's data is the boxed `ShmZone`, which lives with the configuration.
        unsafe {
            let mut source = ngx_str_t { len: zone_name.len(), data: zone_name.as_ptr() as *mut u8 };
            let mut text = ngx_str_t { len: zone_name.len(), data: ngx::ffi::ngx_pstrdup((*cf).pool, &mut source) };
            let tag = ptr::addr_of_mut!(ngx_inwasm_module) as *mut c_void;
            let zone = ngx_shared_memory_add(cf, &mut text, size, tag);
            if zone.is_null() {
                return Err(format!("cannot add shared memory zone \"{zone_name}\""));
            }
            if !(*zone).data.is_null() {
                return Err(format!("{directive} \"{name}\" is declared twice"));
            }
            let mut shm = Box::new(ShmZone {
                name: name.to_string(),
                size,
                tenants: Cell::new(1),
                pool: Cell::new(ptr::null_mut()),
                store: Cell::new(ptr::null_mut()),
                build: Box::new(build),
            });
            (*zone).init = Some(init_zone::<T>);
            (*zone).data = ptr::addr_of_mut!(*shm) as *mut c_void;
            Ok(shm)
        }
    }

    /// Notes how many modules share the zone.
    pub fn set_tenants(&self, modules: usize) {
        self.tenants.set(modules.max(1));
    }

    /// How many modules (or filters) share the zone.
    pub fn tenants(&self) -> usize {
        self.tenants.get()
    }

    /// Each module's share of the zone, in bytes of what it stores.
    pub fn share(&self) -> usize {
        self.size / self.tenants.get()
    }

    /// The store, locked for this use.
    pub fn lock(&self) -> HostResult<ZoneGuard<'_, T>> {
        let (pool, store) = (self.pool.get(), self.store.get());
        if pool.is_null() || store.is_null() {
            return Err(Status::InternalFailure);
        }
        // SAFETY: the zone's pool, mapped for as long as this process serves its cycle.
        unsafe { ngx_shmtx_lock(ptr::addr_of_mut!((*pool).mutex)) };
        // SAFETY: the store built in the zone, used by one holder of the mutex at a time.
        Ok(ZoneGuard { pool, store: unsafe { &mut *store } })
    }

    /// The store without taking the lock: the caller keeps to what is safe to share so.
    pub fn unlocked(&self) -> HostResult<*const T> {
        let store = self.store.get();
        (!store.is_null()).then_some(store as *const T).ok_or(Status::InternalFailure)
    }
}

/// A store with its zone's mutex held; released when dropped.
pub struct ZoneGuard<'a, T> {
    pool: *mut ngx_slab_pool_t,
    store: &'a mut T,
}

impl<T> Deref for ZoneGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.store
    }
}

impl<T> DerefMut for ZoneGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.store
    }
}

impl<T> Drop for ZoneGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the mutex this guard holds.
        unsafe { ngx_shmtx_unlock(ptr::addr_of_mut!((*self.pool).mutex)) };
    }
}

/// Maps the store into a zone: a new one, or the one a reload keeps.
unsafe extern "C" fn init_zone<T>(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls it with the mapped zone whose data `declare` set, and `old` the data
    // of the same zone in the previous cycle (a `ShmZone<T>` too: the tag and name match).
    // The zone starts with nginx's slab pool; nothing else uses it yet.
    unsafe {
        let shm = &*((*zone).data as *const ShmZone<T>);
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        shm.pool.set(pool);
        if let Some(old) = (old as *const ShmZone<T>).as_ref() {
            shm.store.set(old.store.get());
            return NGX_OK as ngx_int_t;
        }
        // The stores say when the zone is full; nginx need not log each failed allocation.
        (*pool).set_log_nomem(0);
        let alloc = ZoneAlloc(NonNull::new_unchecked(pool));
        ngx_shmtx_lock(ptr::addr_of_mut!((*pool).mutex));
        let store = (shm.build)(alloc).and_then(|store| {
            let memory = alloc.allocate(std::alloc::Layout::new::<T>()).ok()?.cast::<T>();
            memory.as_ptr().write(store);
            Some(memory.as_ptr())
        });
        ngx_shmtx_unlock(ptr::addr_of_mut!((*pool).mutex));
        match store {
            Some(store) => {
                shm.store.set(store);
                NGX_OK as ngx_int_t
            }
            None => NGX_ERROR as ngx_int_t,
        }
    }
}
