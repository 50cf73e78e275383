//! Shared data (`proxy_get/set_shared_data`) in nginx shared memory, seen by every worker.
//!
//! `shm_kv NAME SIZE [eviction=lru|none] [namespace=module|shared]` in `wasm {}` declares a
//! zone; keys `NAME/...` live in it, all others in the default zone (`shm_kv * SIZE`, or 1m
//! when not declared). Keys are namespaced by the module (its VM id), so tenants never see
//! each other's data, unless the zone says `namespace=shared`: then every module reads and
//! writes the same keys (modules that cooperate, as filters sharing a VM id do in Envoy). Semantics are
//! Envoy's: a write with cas 0 always succeeds, a write with another key's cas fails with
//! `CasMismatch`, every write gives the key a new cas. When a zone is full the least recently
//! used keys are evicted (or, with `eviction=none`, the write fails).

use std::sync::atomic::{AtomicU64, Ordering};

use inwasm_host::{HostResult, Status};
use ngx::collections::RbTreeMap;
use ngx::core::SlabPool;
use ngx::ffi::ngx_conf_t;

use crate::shm::{copy_in, Bytes, Key, ShmZone};

/// The default zone's size when no `shm_kv *` is declared.
pub const DEFAULT_ZONE_SIZE: usize = 1 << 20;

struct Entry {
    value: Bytes,
    cas: u32,
    /// Logical time of the last read or write, for LRU eviction.
    used: AtomicU64,
}

pub struct KvStore {
    map: RbTreeMap<Key, Entry, SlabPool>,
    next_cas: u32,
    clock: AtomicU64,
    evict: bool,
}

/// A `shm_kv` zone: its store in shared memory, and whose keys it holds apart.
pub struct KvZone {
    /// Boxed: nginx's shared memory zone points at it.
    store: Box<ShmZone<KvStore>>,
    per_module: bool,
}

/// What a `shm_kv` line chose besides its name and size.
pub struct KvOptions {
    /// Evict the least recently used keys when full (`eviction=lru`) or fail the write.
    pub evict: bool,
    /// Each module has its own keys (`namespace=module`) or all share them (`shared`).
    pub per_module: bool,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions { evict: true, per_module: true }
    }
}

/// Declares a `shm_kv` zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn declare(cf: *mut ngx_conf_t, name: &str, size: usize, options: KvOptions) -> Result<KvZone, String> {
    // SAFETY: per the caller.
    unsafe {
        let build = if options.evict { build_evicting } else { build_strict };
        Ok(KvZone { store: ShmZone::declare(cf, "kv", name, size, build)?, per_module: options.per_module })
    }
}

impl KvZone {
    pub fn name(&self) -> &str {
        &self.store.name
    }

    /// The key as stored: the module's VM id, a NUL, then the filter's key (in a zone that
    /// holds modules apart).
    fn stored_key(&self, vm_id: &str, key: &[u8]) -> Vec<u8> {
        match self.per_module {
            true => [vm_id.as_bytes(), b"\0", key].concat(),
            false => key.to_vec(),
        }
    }
}

fn build_evicting(pool: SlabPool) -> Option<KvStore> {
    build(pool, true)
}

fn build_strict(pool: SlabPool) -> Option<KvStore> {
    build(pool, false)
}

fn build(pool: SlabPool, evict: bool) -> Option<KvStore> {
    let map = RbTreeMap::try_new_in(pool).ok()?;
    Some(KvStore { map, next_cas: 0, clock: AtomicU64::new(0), evict })
}

/// Key `key` of module `vm_id`: its value and cas.
pub fn get(zone: &KvZone, vm_id: &str, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
    let key = zone.stored_key(vm_id, key);
    let key = key.as_slice();
    let store = zone.store.read()?;
    let now = store.clock.fetch_add(1, Ordering::Relaxed);
    Ok(store.map.get(key).map(|entry| {
        entry.used.store(now, Ordering::Relaxed);
        (entry.value.to_vec(), entry.cas)
    }))
}

/// Writes key `key` of module `vm_id` if `cas` is 0 or the key's current cas.
pub fn set(zone: &KvZone, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
    let key = zone.stored_key(vm_id, key);
    let key = key.as_slice();
    let mut store = zone.store.write()?;
    if let Some(entry) = store.map.get(key) {
        if cas != 0 && cas != entry.cas {
            return Err(Status::CasMismatch);
        }
    }
    loop {
        match store.insert(key, value) {
            Some(()) => return Ok(()),
            None if store.evict && store.evict_one(key) => continue,
            None => return Err(Status::InternalFailure),
        }
    }
}

impl KvStore {
    /// Writes `key` with a new cas; `None` when the zone has no room.
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<()> {
        let pool = self.map.allocator().clone();
        let (key, value) = (copy_in(&pool, key)?, copy_in(&pool, value)?);
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        let used = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
        self.map.try_insert(Key(key), Entry { value, cas: self.next_cas, used }).ok().map(drop)
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

/// The zone a key belongs to: `NAME/...` goes to zone NAME when declared, else the default.
pub fn zone_for<'a>(zones: &'a [KvZone], key: &[u8]) -> Option<&'a KvZone> {
    let named = key.iter().position(|b| *b == b'/').and_then(|slash| {
        let prefix = &key[..slash];
        zones.iter().find(|z| z.name().as_bytes() == prefix)
    });
    named.or_else(|| zones.iter().find(|z| z.name() == "*"))
}
