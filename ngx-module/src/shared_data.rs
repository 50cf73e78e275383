//! Shared data (`proxy_get/set_shared_data`) in nginx shared memory, seen by every worker.
//!
//! `shm_kv NAME SIZE [eviction=lru|none] [namespace=module|shared] [quota=SIZE]` in `wasm {}`
//! declares a zone; keys `NAME/...` live in it, all others in the default zone (`shm_kv *
//! SIZE`, or 1m when not declared). Keys are namespaced by the module (its VM id), so tenants
//! never see each other's data, unless the zone says `namespace=shared`: then every module
//! reads and writes the same keys (modules that cooperate, as filters sharing a VM id do in
//! Envoy). Semantics are Envoy's: a write with cas 0 always succeeds, a write with another
//! key's cas fails with `CasMismatch`, every write gives the key a new cas.
//!
//! Each namespace may hold at most its quota (by default an equal share of the zone among the
//! configuration's modules): past it, or when the zone is full, the namespace's own least
//! recently used keys are evicted (never another's), or, with `eviction=none`, the write
//! fails. Eviction is O(1): each namespace keeps its keys in a list by last use.

use std::ptr::NonNull;

use inwasm_host::{HostResult, Status};
use ngx::collections::queue::{NgxQueue, NgxQueueEntry};
use ngx::collections::RbTreeMap;
use ngx::ffi::{ngx_conf_t, ngx_queue_init, ngx_queue_remove, ngx_queue_t};

use crate::shm::{copy_in, Bytes, Key, ShmZone, ZoneAlloc};

/// The default zone's size when no `shm_kv *` is declared.
pub const DEFAULT_ZONE_SIZE: usize = 1 << 20;
/// What an entry costs a namespace besides its key and value (map node, list links, sizes).
const ENTRY_OVERHEAD: usize = 128;

/// A key's value, in its namespace's list by last use (least recent first).
struct Entry {
    value: Bytes,
    cas: u32,
    /// The key (its bytes live in the map's key, which does not move while the entry exists).
    key: (NonNull<u8>, usize),
    namespace: NonNull<Namespace>,
    lru: ngx_queue_t,
}

// SAFETY: `Entry` embeds the `ngx_queue_t` its namespace's list links through (`lru`).
unsafe impl NgxQueueEntry for Entry {
    fn from_queue(queue: NonNull<ngx_queue_t>) -> NonNull<Self> {
        // SAFETY: every link in a namespace's list is the `lru` field of an `Entry`.
        unsafe { nginx_sys::ngx_queue_data!(queue, Entry, lru) }
    }
    fn to_queue(&mut self) -> &mut ngx_queue_t {
        &mut self.lru
    }
}

impl Entry {
    fn cost(&self) -> usize {
        self.key.1 + self.value.len() + ENTRY_OVERHEAD
    }
}

/// A module's keys (or, in a shared zone, everyone's).
struct Namespace {
    used: usize,
    /// Sentinel of the list of its entries by last use.
    lru: ngx_queue_t,
}

pub struct KvStore {
    map: RbTreeMap<Key, Entry, ZoneAlloc>,
    namespaces: RbTreeMap<Key, Namespace, ZoneAlloc>,
    next_cas: u32,
}

/// A `shm_kv` zone: its store in shared memory, and how it is used.
pub struct KvZone {
    /// Boxed: nginx's shared memory zone points at it.
    store: Box<ShmZone<KvStore>>,
    options: KvOptions,
}

/// What a `shm_kv` line chose besides its name and size.
#[derive(Clone, Copy)]
pub struct KvOptions {
    /// Evict the least recently used keys when full (`eviction=lru`) or fail the write.
    pub evict: bool,
    /// Each module has its own keys (`namespace=module`) or all share them (`shared`).
    pub per_module: bool,
    /// Bytes each namespace may hold (`quota=SIZE`); 0: an equal share of the zone.
    pub quota: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions { evict: true, per_module: true, quota: 0 }
    }
}

/// Declares a `shm_kv` zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn declare(cf: *mut ngx_conf_t, name: &str, size: usize, options: KvOptions) -> Result<KvZone, String> {
    if options.quota > size {
        return Err(format!("shm_kv \"{name}\": quota={} is more than the zone ({size} bytes)", options.quota));
    }
    let build = |alloc: ZoneAlloc| {
        let (map, namespaces) = (RbTreeMap::try_new_in(alloc).ok()?, RbTreeMap::try_new_in(alloc).ok()?);
        Some(KvStore { map, namespaces, next_cas: 0 })
    };
    // SAFETY: per the caller.
    let store = unsafe { ShmZone::declare(cf, "shm_kv", name, size, build) }?;
    Ok(KvZone { store, options })
}

impl KvZone {
    pub fn name(&self) -> &str {
        &self.store.name
    }

    /// Notes how many modules the configuration has (each gets an equal share by default).
    pub fn set_tenants(&self, modules: usize) {
        self.store.set_tenants(if self.options.per_module { modules } else { 1 });
    }

    /// The namespace of a module's keys, and the key as stored: the module's VM id, a NUL,
    /// then the filter's key (in a zone that holds modules apart).
    fn stored_key<'k>(&self, vm_id: &'k str, key: &[u8]) -> (&'k [u8], Vec<u8>) {
        match self.options.per_module {
            true => (vm_id.as_bytes(), [vm_id.as_bytes(), b"\0", key].concat()),
            false => (b"", key.to_vec()),
        }
    }

    /// What a namespace may hold.
    pub fn quota(&self) -> usize {
        match self.options.quota {
            0 => self.store.share(),
            quota => quota,
        }
    }
}

/// Key `key` of module `vm_id`: its value and cas (the key becomes its namespace's most
/// recently used).
pub fn get(zone: &KvZone, vm_id: &str, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
    let (_, key) = zone.stored_key(vm_id, key);
    let mut store = zone.store.lock()?;
    Ok(store.map.get_mut(key.as_slice()).map(|entry| {
        entry.touch();
        (entry.value.to_vec(), entry.cas)
    }))
}

/// Writes key `key` of module `vm_id` if `cas` is 0 or the key's current cas.
pub fn set(zone: &KvZone, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
    let (namespace, key) = zone.stored_key(vm_id, key);
    let mut store = zone.store.lock()?;
    if let Some(entry) = store.map.get(key.as_slice()) {
        if cas != 0 && cas != entry.cas {
            return Err(Status::CasMismatch);
        }
    }
    let (cost, quota) = (key.len() + value.len() + ENTRY_OVERHEAD, zone.quota());
    if cost > quota {
        return Err(Status::InternalFailure);
    }
    let space = store.namespace(namespace).ok_or(Status::InternalFailure)?;
    loop {
        // The key's old value goes with the write.
        let old = store.map.get(key.as_slice()).map_or(0, Entry::cost);
        // SAFETY: a namespace of this store, whose node never moves while it exists.
        let used = unsafe { space.as_ref().used } - old;
        if used + cost <= quota {
            store.remove(&key);
            if let Some(()) = store.insert(space, &key, value) {
                return Ok(());
            }
        }
        // Over its quota, or the zone is full: the namespace makes room from its own keys.
        if !zone.options.evict || !store.evict_oldest(space) {
            return Err(Status::InternalFailure);
        }
    }
}

impl Entry {
    /// Makes the entry its namespace's most recently used.
    fn touch(&mut self) {
        // SAFETY: the entry is in its namespace's list; the namespace outlives its entries.
        unsafe {
            ngx_queue_remove(&mut self.lru);
            NgxQueue::<Entry>::from_ptr_mut(&mut (*self.namespace.as_ptr()).lru).push_back(self);
        }
    }
}

impl KvStore {
    /// The namespace called `name`, made on first use.
    fn namespace(&mut self, name: &[u8]) -> Option<NonNull<Namespace>> {
        if let Some(space) = self.namespaces.get_mut(name) {
            return Some(NonNull::from(space));
        }
        let key = Key(copy_in(*self.namespaces.allocator(), name)?);
        // SAFETY: an all-zero sentinel, linked to itself below once the namespace sits in its
        // map node (which does not move).
        let lru = unsafe { std::mem::zeroed() };
        let space = self.namespaces.try_insert(key, Namespace { used: 0, lru }).ok()?;
        // SAFETY: the sentinel, in place for good.
        unsafe { ngx_queue_init(&mut space.lru) };
        Some(NonNull::from(space))
    }

    /// Stores `key` in `space` with a new cas; `None` when the zone has no room.
    fn insert(&mut self, space: NonNull<Namespace>, key: &[u8], value: &[u8]) -> Option<()> {
        let alloc = *self.map.allocator();
        let (key, value) = (copy_in(alloc, key)?, copy_in(alloc, value)?);
        let key_bytes = (NonNull::new(key.as_ptr() as *mut u8)?, key.len());
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        // SAFETY: an all-zero link, linked below once the entry sits in its map node.
        let lru = unsafe { std::mem::zeroed() };
        let entry = Entry { value, cas: self.next_cas, key: key_bytes, namespace: space, lru };
        let entry = self.map.try_insert(Key(key), entry).ok()?;
        let cost = entry.cost();
        // SAFETY: the namespace outlives its entries; the entry's node does not move.
        unsafe {
            (*space.as_ptr()).used += cost;
            NgxQueue::<Entry>::from_ptr_mut(&mut (*space.as_ptr()).lru).push_back(entry);
        }
        Some(())
    }

    /// Removes `key`, if stored, from its namespace too.
    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.map.get_mut(key) {
            // SAFETY: the entry is in its namespace's list; the namespace outlives it.
            unsafe {
                ngx_queue_remove(&mut entry.lru);
                (*entry.namespace.as_ptr()).used -= entry.cost();
            }
            self.map.remove(key);
        }
    }

    /// Evicts the least recently used key of `space`; false when it has none.
    fn evict_oldest(&mut self, space: NonNull<Namespace>) -> bool {
        // SAFETY: a namespace of this store; its list holds its live entries.
        let oldest = unsafe { NgxQueue::<Entry>::from_ptr_mut(&mut (*space.as_ptr()).lru).iter_mut().next() };
        let Some(oldest) = oldest else { return false };
        // SAFETY: the entry's key bytes live in its map node until it is removed.
        let key = unsafe { std::slice::from_raw_parts(oldest.key.0.as_ptr(), oldest.key.1) }.to_vec();
        self.remove(&key);
        true
    }
}

/// The zone a key belongs to: `NAME/...` goes to zone NAME when declared, else the default.
pub fn zone_for<'a>(zones: &'a [KvZone], key: &[u8]) -> Option<&'a KvZone> {
    let named = key.iter().position(|b| *b == b'/').and_then(|slash| {
        let prefix = &key[..slash];
        zones.iter().find(|z| z.name().as_bytes() == prefix)
    });
    named.or_else(|| zones.iter().find(|z| z.name() == "*"))
}
