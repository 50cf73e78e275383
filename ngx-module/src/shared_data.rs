//! Shared data (`proxy_get/set_shared_data`) in nginx shared memory, seen by every worker.
//!
//! `shm_kv NAME SIZE [eviction=lru|none]` in `wasm {}` declares a zone; keys `NAME/...` live
//! in it, all others in the default zone (`shm_kv * SIZE`, or 1m when not declared). Keys are
//! namespaced by the module (its VM id), so tenants never see each other's data. Semantics are
//! Envoy's: a write with cas 0 always succeeds, a write with another key's cas fails with
//! `CasMismatch`, every write gives the key a new cas. When a zone is full the least recently
//! used keys are evicted (or, with `eviction=none`, the write fails).

use std::borrow::Borrow;
use std::cell::Cell;
use std::ffi::c_void;
use std::hash::{Hash, Hasher};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

use allocator_api2::vec::Vec as SlabVec;
use inwasm_host::{HostResult, Status};
use ngx::allocator::allocate;
use ngx::collections::RbTreeMap;
use ngx::core::SlabPool;
use ngx::ffi::{ngx_conf_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_str_t, NGX_ERROR, NGX_OK};
use ngx::sync::RwLock;

use crate::wasm_block::ngx_inwasm_module;

/// The default zone's size when no `shm_kv *` is declared.
pub const DEFAULT_ZONE_SIZE: usize = 1 << 20;

type Bytes = SlabVec<u8, SlabPool>;

/// A key in shared memory, looked up by byte slice.
struct Key(Bytes);

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// Hashes as the byte slice does, so lookups by slice find it (the map's hasher is
/// deterministic, the same in every worker).
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

struct Entry {
    value: Bytes,
    cas: u32,
    /// Logical time of the last read or write, for LRU eviction.
    used: AtomicU64,
}

struct Store {
    map: RbTreeMap<Key, Entry, SlabPool>,
    next_cas: u32,
    clock: AtomicU64,
}

type SharedStore = RwLock<Store>;

/// One `shm_kv` zone: once nginx has mapped it, the store inside it.
pub struct KvZone {
    pub name: String,
    evict: bool,
    store: Cell<*mut SharedStore>,
}

impl KvZone {
    /// Declares the zone with nginx (mapped when the configuration is complete).
    pub unsafe fn declare(cf: *mut ngx_conf_t, name: &str, size: usize, evict: bool) -> Result<Box<KvZone>, String> {
        let zone_name = format!("inwasm_kv_{name}");
        let mut text =
            ngx_str_t { len: zone_name.len(), data: ngx::ffi::ngx_pstrdup((*cf).pool, &mut str_of(&zone_name)) };
        let tag = ptr::addr_of_mut!(ngx_inwasm_module) as *mut c_void;
        let zone = ngx_shared_memory_add(cf, &mut text, size, tag);
        if zone.is_null() {
            return Err(format!("cannot add shared memory zone \"{zone_name}\""));
        }
        if !(*zone).data.is_null() {
            return Err(format!("shm_kv \"{name}\" is declared twice"));
        }
        let mut kv = Box::new(KvZone { name: name.to_string(), evict, store: Cell::new(ptr::null_mut()) });
        (*zone).init = Some(init_zone);
        (*zone).data = ptr::addr_of_mut!(*kv) as *mut c_void;
        Ok(kv)
    }

    fn store(&self) -> HostResult<&SharedStore> {
        unsafe { self.store.get().as_ref() }.ok_or(Status::InternalFailure)
    }

    pub fn get(&self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        let store = self.store()?.read();
        let now = store.clock.fetch_add(1, Ordering::Relaxed);
        Ok(store.map.get(key).map(|entry| {
            entry.used.store(now, Ordering::Relaxed);
            (entry.value.to_vec(), entry.cas)
        }))
    }

    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        let mut store = self.store()?.write();
        if let Some(entry) = store.map.get(key) {
            if cas != 0 && cas != entry.cas {
                return Err(Status::CasMismatch);
            }
        }
        loop {
            match store.insert(key, value) {
                Ok(()) => return Ok(()),
                Err(()) if self.evict && store.evict_one(key) => continue,
                Err(()) => return Err(Status::InternalFailure),
            }
        }
    }
}

impl Store {
    /// Writes `key` with a new cas; `Err` when the zone has no room.
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), ()> {
        let pool = self.map.allocator().clone();
        let copy = |bytes: &[u8]| {
            let mut out = Bytes::new_in(pool.clone());
            out.try_reserve_exact(bytes.len()).map_err(drop)?;
            out.extend_from_slice(bytes);
            Ok::<Bytes, ()>(out)
        };
        let (key, value) = (copy(key)?, copy(value)?);
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        let used = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
        self.map.try_insert(Key(key), Entry { value, cas: self.next_cas, used }).map(drop).map_err(drop)
    }

    /// Removes the least recently used key other than `keep`; false when there is none.
    fn evict_one(&mut self, keep: &[u8]) -> bool {
        let victim = self
            .map
            .iter()
            .filter(|(key, _)| key.0[..] != *keep)
            .min_by_key(|(_, entry)| entry.used.load(Ordering::Relaxed))
            .map(|(key, _)| key.0.to_vec());
        victim.is_some_and(|victim| self.map.remove(victim.as_slice()).is_some())
    }
}

fn str_of(text: &str) -> ngx_str_t {
    ngx_str_t { len: text.len(), data: text.as_ptr() as *mut u8 }
}

/// Maps the store into a zone: a new one, or the one a reload keeps.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    let kv = &*((*zone).data as *const KvZone);
    if let Some(old) = (old as *const KvZone).as_ref() {
        kv.store.set(old.store.get());
        return NGX_OK as ngx_int_t;
    }
    let Some(pool) = SlabPool::from_shm_zone(&*zone) else { return NGX_ERROR as ngx_int_t };
    let Ok(map) = RbTreeMap::try_new_in(pool.clone()) else { return NGX_ERROR as ngx_int_t };
    let store = RwLock::new(Store { map, next_cas: 0, clock: AtomicU64::new(0) });
    match allocate(store, &pool) {
        Ok(store) => {
            kv.store.set(NonNull::as_ptr(store));
            NGX_OK as ngx_int_t
        }
        Err(_) => NGX_ERROR as ngx_int_t,
    }
}

/// The zone a key belongs to: `NAME/...` goes to zone NAME when declared, else the default.
pub fn zone_for<'a>(zones: &'a [Box<KvZone>], key: &[u8]) -> Option<&'a KvZone> {
    let named = key.iter().position(|b| *b == b'/').and_then(|slash| {
        let prefix = &key[..slash];
        zones.iter().find(|z| z.name.as_bytes() == prefix)
    });
    named.or_else(|| zones.iter().find(|z| z.name == "*")).map(|z| &**z)
}

/// The key as stored: the module's VM id, a NUL, then the filter's key.
pub fn namespaced(vm_id: &str, key: &[u8]) -> Vec<u8> {
    [vm_id.as_bytes(), b"\0", key].concat()
}
