//! Shared queues in nginx shared memory: `proxy_register/resolve/enqueue/dequeue_shared_queue`
//! across workers, and `on_queue_ready` for the root context that registered the queue.
//!
//! Queues are named per module (VM id) and live in the default queue zone (1m, or
//! `shm_queue * SIZE`) unless `shm_queue NAME SIZE` gives queue NAME a zone of its own. A full
//! zone drops the queue's oldest items. The worker that registered a queue last is told about
//! new items: each worker checks the queues its roots registered every `POLL` (nginx has no
//! cross-worker wakeup), so an item enqueued anywhere reaches the registrant within that time.

use std::cell::RefCell;
use std::ptr;
use std::rc::{Rc, Weak};

use allocator_api2::vec::Vec as SlabVec;
use inwasm_host::{HostResult, Status};
use ngx::collections::RbTreeMap;
use ngx::core::SlabPool;
use ngx::ffi::{ngx_add_timer, ngx_conf_t, ngx_event_t, ngx_msec_t, ngx_pid};

use crate::ffi::guard;
use crate::root_link::RootLink;
use crate::shm::{copy_in, Bytes, Key, ShmZone};

/// The default queue zone's size when no `shm_queue *` is declared.
pub const DEFAULT_ZONE_SIZE: usize = 1 << 20;
/// How often a worker looks for items in the queues its roots registered.
const POLL: ngx_msec_t = 10;
/// Queue ids carry their zone's index in the top byte.
const ZONE_SHIFT: u32 = 24;

struct Queue {
    id: u32,
    items: SlabVec<Bytes, SlabPool>,
    /// The worker to notify.
    registrant: i32,
}

pub struct QueueStore {
    queues: RbTreeMap<Key, Queue, SlabPool>,
    next_id: u32,
}

pub type QueueZone = ShmZone<QueueStore>;

/// Declares a queue zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn declare(cf: *mut ngx_conf_t, name: &str, size: usize) -> Result<Box<QueueZone>, String> {
    // SAFETY: per the caller.
    unsafe {
        ShmZone::declare(cf, "queue", name, size, |pool| {
            Some(QueueStore { queues: RbTreeMap::try_new_in(pool).ok()?, next_id: 1 })
        })
    }
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

/// Registers (or re-registers) queue `name` of `vm_id` for this worker; returns its id.
pub fn register(zones: &[Box<QueueZone>], vm_id: &[u8], name: &[u8]) -> HostResult<u32> {
    let (index, zone) = zone_for(zones, name)?;
    let mut store = zone.write()?;
    // SAFETY: nginx sets its process id before any worker runs a filter.
    let pid = unsafe { ngx_pid };
    let key = key(vm_id, name);
    if let Some(queue) = store.queues.get_mut(key.as_slice()) {
        queue.registrant = pid;
        return Ok(queue.id | (index as u32) << ZONE_SHIFT);
    }
    let pool = store.queues.allocator().clone();
    let id = store.next_id;
    let queue = Queue { id, items: SlabVec::new_in(pool.clone()), registrant: pid };
    let key = copy_in(&pool, &key).ok_or(Status::InternalFailure)?;
    store.queues.try_insert(Key(key), queue).map_err(|_| Status::InternalFailure)?;
    store.next_id += 1;
    Ok(id | (index as u32) << ZONE_SHIFT)
}

pub fn resolve(zones: &[Box<QueueZone>], vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
    let (index, zone) = zone_for(zones, name)?;
    let store = zone.read()?;
    Ok(store.queues.get(key(vm_id, name).as_slice()).map(|q| q.id | (index as u32) << ZONE_SHIFT))
}

/// Runs `f` on the queue with this id.
fn with_queue<R>(zones: &[Box<QueueZone>], id: u32, f: impl FnOnce(&mut Queue) -> R) -> HostResult<R> {
    let zone = zones.get((id >> ZONE_SHIFT) as usize).ok_or(Status::NotFound)?;
    let local = id & ((1 << ZONE_SHIFT) - 1);
    let mut store = zone.write()?;
    let queue = store.queues.iter_mut().map(|(_, q)| q).find(|q| q.id == local).ok_or(Status::NotFound)?;
    Ok(f(queue))
}

pub fn enqueue(zones: &[Box<QueueZone>], id: u32, value: &[u8]) -> HostResult<()> {
    with_queue(zones, id, |queue| {
        let pool = queue.items.allocator().clone();
        loop {
            let item = copy_in(&pool, value).filter(|_| queue.items.try_reserve(1).is_ok());
            match item {
                Some(item) => {
                    queue.items.push(item);
                    return Ok(());
                }
                None if !queue.items.is_empty() => drop(queue.items.remove(0)),
                None => return Err(Status::InternalFailure),
            }
        }
    })?
}

pub fn dequeue(zones: &[Box<QueueZone>], id: u32) -> HostResult<Option<Vec<u8>>> {
    with_queue(zones, id, |queue| (!queue.items.is_empty()).then(|| queue.items.remove(0).to_vec()))
}

/// Whether this worker should hear about items in queue `id`.
fn ready_here(zones: &[Box<QueueZone>], id: u32) -> bool {
    // SAFETY: as in `register`.
    let pid = unsafe { ngx_pid };
    with_queue(zones, id, |queue| queue.registrant == pid && !queue.items.is_empty()).unwrap_or(false)
}

/// The queues this worker's roots registered, and the timer that watches them.
struct Watch {
    queues: Vec<(u32, Weak<RootLink>)>,
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
            Watch { queues: Vec::new(), timer }
        });
        watch.queues.retain(|(queued, link)| *queued != id && link.strong_count() > 0);
        watch.queues.push((id, Rc::downgrade(link)));
    });
}

unsafe extern "C" fn poll(event: *mut ngx_event_t) {
    // SAFETY: nginx runs timer handlers with their live event; the cycle is the worker's.
    unsafe {
        guard((*event).log, (), || {
            let queues = WATCH.with(|w| w.borrow().as_ref().map(|w| w.queues.clone()).unwrap_or_default());
            let Some(conf) = crate::wasm_block::WasmConf::of_cycle(ngx::ffi::ngx_cycle) else { return };
            for (id, link) in queues {
                let Some(link) = link.upgrade() else { continue };
                if ready_here(&conf.queue_zones, id) {
                    link.deliver(|vm, plugin| vm.on_queue_ready(plugin, id));
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
