//! Shared queues in nginx shared memory: `proxy_register/resolve/enqueue/dequeue_shared_queue`
//! across workers, and `on_queue_ready` for the root context that registered the queue.
//!
//! Queues are named per module (VM id) and live in the default queue zone (1m, or
//! `shm_queue * SIZE`) unless `shm_queue NAME SIZE` gives queue NAME a zone of its own. Each
//! module may register at most [`MAX_QUEUES`] queues in a zone and hold its share of the
//! zone's bytes (an equal share among the configuration's modules); past that an enqueue drops
//! the queue's oldest items, and an item larger than the share is refused.
//!
//! The worker that registered a queue last is told about new items, once per item enqueued
//! (as Envoy does). nginx has no cross-worker wakeup, so an enqueue raises the registrant's
//! flag in the zone and each worker looks at its own flag every [`POLL`]: an idle worker
//! reads one word per zone, whatever the number of queues.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU32, Ordering};

use inwasm_host::{HostResult, Status};
use ngx::collections::{Queue as ZoneQueue, RbTreeMap};
use ngx::ffi::{ngx_add_timer, ngx_conf_t, ngx_event_t, ngx_msec_t, ngx_pid, ngx_process_slot, NGX_MAX_PROCESSES};

use crate::ffi::guard;
use crate::root_link::RootLink;
use crate::shm::{copy_in, Bytes, Key, ShmZone, ZoneAlloc};

/// The default queue zone's size when no `shm_queue *` is declared.
pub const DEFAULT_ZONE_SIZE: usize = 1 << 20;
/// How often a worker looks at its flag.
const POLL: ngx_msec_t = 10;
/// Queue ids carry their zone's index in the top byte.
const ZONE_SHIFT: u32 = 24;
/// The most queues one module may register in a zone.
pub const MAX_QUEUES: usize = 1024;
/// What an item costs its module besides its bytes.
const ITEM_OVERHEAD: usize = 32;
/// The most `on_queue_ready` calls a queue gets in one look (the rest come at the next).
const ANNOUNCED_AT_ONCE: u32 = 64;

struct Queue {
    /// The module that registered it.
    module: Bytes,
    items: ZoneQueue<Bytes, ZoneAlloc>,
    /// The worker to notify (its pid and process slot), and the notifications it owes.
    registrant: (i32, usize),
    unannounced: u32,
}

/// What a module holds in a zone.
#[derive(Default)]
struct Usage {
    bytes: usize,
    queues: usize,
}

pub struct QueueStore {
    /// Queue ids by module and name.
    ids: RbTreeMap<Key, u32, ZoneAlloc>,
    queues: RbTreeMap<u32, Queue, ZoneAlloc>,
    usage: RbTreeMap<Key, Usage, ZoneAlloc>,
    next_id: u32,
    /// Raised (incremented) for a worker, by process slot, when one of its queues gets items.
    flags: [AtomicU32; NGX_MAX_PROCESSES as usize],
}

pub type QueueZone = ShmZone<QueueStore>;

/// Declares a queue zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn declare(cf: *mut ngx_conf_t, name: &str, size: usize) -> Result<Box<QueueZone>, String> {
    let build = |alloc: ZoneAlloc| {
        Some(QueueStore {
            ids: RbTreeMap::try_new_in(alloc).ok()?,
            queues: RbTreeMap::try_new_in(alloc).ok()?,
            usage: RbTreeMap::try_new_in(alloc).ok()?,
            next_id: 1,
            flags: [const { AtomicU32::new(0) }; NGX_MAX_PROCESSES as usize],
        })
    };
    // SAFETY: per the caller.
    unsafe { ShmZone::declare(cf, "shm_queue", name, size, build) }
}

/// The zone of queue `name`, with its index.
fn zone_for<'a>(zones: &'a [Box<QueueZone>], name: &[u8]) -> HostResult<(usize, &'a QueueZone)> {
    let index =
        zones.iter().position(|z| z.name.as_bytes() == name).or_else(|| zones.iter().position(|z| z.name == "*"));
    index.map(|i| (i, &*zones[i])).ok_or(Status::InternalFailure)
}

fn key(vm_id: &[u8], name: &[u8]) -> Vec<u8> {
    [vm_id, b"\0", name].concat()
}

/// This worker's pid and process slot.
fn this_worker() -> (i32, usize) {
    // SAFETY: nginx sets both before a worker runs any module code.
    unsafe { (ngx_pid, ngx_process_slot as usize % NGX_MAX_PROCESSES as usize) }
}

/// Registers (or re-registers) queue `name` of `vm_id` for this worker; returns its id.
pub fn register(zones: &[Box<QueueZone>], vm_id: &[u8], name: &[u8]) -> HostResult<u32> {
    let (index, zone) = zone_for(zones, name)?;
    let mut store = zone.lock()?;
    let key = key(vm_id, name);
    if let Some(id) = store.ids.get(key.as_slice()).copied() {
        if let Some(queue) = store.queues.get_mut(&id) {
            queue.registrant = this_worker();
        }
        return Ok(id | (index as u32) << ZONE_SHIFT);
    }
    let alloc = *store.ids.allocator();
    let full = Status::InternalFailure;
    let usage = store.usage(vm_id).ok_or(full)?;
    if usage.queues >= MAX_QUEUES {
        return Err(full);
    }
    usage.queues += 1;
    let id = store.next_id;
    let queue = Queue {
        module: copy_in(alloc, vm_id).ok_or(full)?,
        items: ZoneQueue::try_new_in(alloc).map_err(|_| full)?,
        registrant: this_worker(),
        unannounced: 0,
    };
    store.queues.try_insert(id, queue).map_err(|_| full)?;
    store.ids.try_insert(Key(copy_in(alloc, &key).ok_or(full)?), id).map_err(|_| full)?;
    store.next_id += 1;
    Ok(id | (index as u32) << ZONE_SHIFT)
}

pub fn resolve(zones: &[Box<QueueZone>], vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
    let (index, zone) = zone_for(zones, name)?;
    let store = zone.lock()?;
    Ok(store.ids.get(key(vm_id, name).as_slice()).map(|id| id | (index as u32) << ZONE_SHIFT))
}

/// The zone and the id within it of queue `id`.
fn split(zones: &[Box<QueueZone>], id: u32) -> HostResult<(&QueueZone, u32)> {
    let zone = zones.get((id >> ZONE_SHIFT) as usize).ok_or(Status::NotFound)?;
    Ok((zone, id & ((1 << ZONE_SHIFT) - 1)))
}

pub fn enqueue(zones: &[Box<QueueZone>], id: u32, value: &[u8]) -> HostResult<()> {
    let (zone, local) = split(zones, id)?;
    let share = zone.share();
    let mut store = zone.lock()?;
    let cost = value.len() + ITEM_OVERHEAD;
    if cost > share {
        return Err(Status::InternalFailure);
    }
    let module = store.queues.get(&local).ok_or(Status::NotFound)?.module.to_vec();
    loop {
        let used = store.usage(&module).ok_or(Status::InternalFailure)?.bytes;
        if used + cost <= share {
            if let Some(item) = copy_in(*store.ids.allocator(), value) {
                let queue = store.queues.get_mut(&local).ok_or(Status::NotFound)?;
                if queue.items.push_back(item).is_ok() {
                    queue.unannounced = queue.unannounced.saturating_add(1);
                    let slot = queue.registrant.1;
                    store.usage(&module).ok_or(Status::InternalFailure)?.bytes += cost;
                    store.flags[slot].fetch_add(1, Ordering::Release);
                    return Ok(());
                }
            }
        }
        // Over the module's share, or the zone is full: the queue drops its oldest item.
        let queue = store.queues.get_mut(&local).ok_or(Status::NotFound)?;
        let Some(oldest) = queue.items.pop_front() else { return Err(Status::InternalFailure) };
        store.usage(&module).ok_or(Status::InternalFailure)?.bytes -= oldest.len() + ITEM_OVERHEAD;
    }
}

pub fn dequeue(zones: &[Box<QueueZone>], id: u32) -> HostResult<Option<Vec<u8>>> {
    let (zone, local) = split(zones, id)?;
    let mut store = zone.lock()?;
    let queue = store.queues.get_mut(&local).ok_or(Status::NotFound)?;
    let Some(item) = queue.items.pop_front() else { return Ok(None) };
    let module = queue.module.to_vec();
    let value = item.to_vec();
    drop(item);
    store.usage(&module).ok_or(Status::InternalFailure)?.bytes -= value.len() + ITEM_OVERHEAD;
    Ok(Some(value))
}

impl QueueStore {
    /// What module `vm_id` holds, recorded on first use.
    fn usage(&mut self, vm_id: &[u8]) -> Option<&mut Usage> {
        if self.usage.get(vm_id).is_none() {
            let key = Key(copy_in(*self.usage.allocator(), vm_id)?);
            self.usage.try_insert(key, Usage::default()).ok()?;
        }
        self.usage.get_mut(vm_id)
    }
}

/// The notifications queue `id` owes this worker (taken, at most `ANNOUNCED_AT_ONCE`; if more
/// are owed, the flag stays raised), if this worker registered it last.
fn take_unannounced(zones: &[Box<QueueZone>], id: u32) -> u32 {
    let Ok((zone, local)) = split(zones, id) else { return 0 };
    let Ok(mut store) = zone.lock() else { return 0 };
    let (pid, slot) = this_worker();
    let Some(queue) = store.queues.get_mut(&local).filter(|queue| queue.registrant.0 == pid) else { return 0 };
    let taken = queue.unannounced.min(ANNOUNCED_AT_ONCE);
    queue.unannounced -= taken;
    if queue.unannounced > 0 {
        store.flags[slot].fetch_add(1, Ordering::Release);
    }
    taken
}

/// The queues this worker's roots registered, the flags last seen (by zone index), and the
/// timer that looks at them.
struct Watch {
    queues: Vec<(u32, Weak<RootLink>)>,
    seen: HashMap<usize, u32>,
    timer: Box<ngx_event_t>,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Has this worker tell `link`'s root when queue `id` has items.
pub fn watch(id: u32, link: &Rc<RootLink>) {
    WATCH.with(|watch| {
        let mut watch = watch.borrow_mut();
        let watch = watch.get_or_insert_with(|| {
            // SAFETY: an all-zero event is nginx's idle event.
            let mut timer: Box<ngx_event_t> = Box::new(unsafe { std::mem::zeroed() });
            timer.handler = Some(poll);
            timer.log = link.log();
            timer.set_cancelable(1);
            // SAFETY: the event is boxed in the worker's watch, which lives with the worker.
            unsafe { ngx_add_timer(&mut *timer, POLL) };
            Watch { queues: Vec::new(), seen: HashMap::new(), timer }
        });
        watch.queues.retain(|(queued, link)| *queued != id && link.strong_count() > 0);
        watch.queues.push((id, Rc::downgrade(link)));
    });
}

/// Which zones raised this worker's flag since it last looked.
fn raised_zones(zones: &[Box<QueueZone>]) -> Vec<usize> {
    let slot = this_worker().1;
    let flags: Vec<(usize, u32)> = (zones.iter().enumerate())
        .filter_map(|(index, zone)| {
            let store = zone.unlocked().ok()?;
            // SAFETY: the flags are atomics at a fixed place in the store, read without the
            // lock on purpose (only they are).
            let flag = unsafe { &*ptr::addr_of!((*store).flags[slot]) };
            Some((index, flag.load(Ordering::Acquire)))
        })
        .collect();
    WATCH.with(|watch| {
        let mut watch = watch.borrow_mut();
        let Some(watch) = watch.as_mut() else { return Vec::new() };
        flags
            .into_iter()
            .filter(|(index, flag)| watch.seen.insert(*index, *flag) != Some(*flag))
            .map(|(i, _)| i)
            .collect()
    })
}

unsafe extern "C" fn poll(event: *mut ngx_event_t) {
    // SAFETY: nginx runs timer handlers with their live event; the cycle is the worker's.
    unsafe {
        guard((*event).log, (), || {
            let Some(conf) = crate::wasm_block::WasmConf::of_cycle(ngx::ffi::ngx_cycle) else { return };
            let raised = raised_zones(&conf.queue_zones);
            if !raised.is_empty() {
                let queues = WATCH.with(|w| w.borrow().as_ref().map(|w| w.queues.clone()).unwrap_or_default());
                for (id, link) in queues.into_iter().filter(|(id, _)| raised.contains(&((id >> ZONE_SHIFT) as usize))) {
                    let Some(link) = link.upgrade() else { continue };
                    for _ in 0..take_unannounced(&conf.queue_zones, id) {
                        link.deliver(|vm, plugin| vm.on_queue_ready(plugin, id));
                    }
                }
            }
        });
        WATCH.with(|watch| {
            if let Some(watch) = watch.borrow_mut().as_mut() {
                ngx_add_timer(ptr::addr_of_mut!(*watch.timer), POLL);
            }
        });
    }
}
