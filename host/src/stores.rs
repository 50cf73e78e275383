//! Shared data and shared queues held in this process's memory, with Envoy's semantics, for
//! embeddings whose instances all live in one process (Envoy's worker threads, the in-memory
//! test proxy). Thread-safe. (nginx, whose workers are processes, keeps them in shared memory.)

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::types::{HostResult, Status};

/// Key-value data with compare-and-swap: `cas == 0` always writes; a write to an existing key
/// with another cas fails with `CasMismatch`; every write gives the key a new cas (one
/// counter for the whole store, starting at 1, as in Envoy).
#[derive(Debug)]
pub struct SharedDataStore {
    inner: Mutex<DataState>,
}

#[derive(Debug)]
struct DataState {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for SharedDataStore {
    fn default() -> Self {
        SharedDataStore { inner: Mutex::new(DataState { entries: HashMap::new(), next_cas: 1 }) }
    }
}

impl SharedDataStore {
    /// The value and cas of `key`.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.lock().entries.get(key).cloned()
    }

    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        let mut state = self.lock();
        if let Some((_, current)) = state.entries.get(key) {
            if cas != 0 && cas != *current {
                return Err(Status::CasMismatch);
            }
        }
        let next = state.next_cas;
        state.next_cas = next.wrapping_add(1).max(1);
        state.entries.insert(key.to_vec(), (value.to_vec(), next));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DataState> {
        // A panic while holding the lock cannot leave the map half-written: take it anyway.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Named queues keyed by (VM id, name). A queue's id is stable; registering it again (from
/// any instance) keeps the id and makes the new registrant its owner, the one told of new
/// items. `O` is whatever the embedding needs to reach the owner.
#[derive(Debug)]
pub struct QueueStore<O> {
    inner: Mutex<Vec<Queue<O>>>,
}

#[derive(Debug)]
struct Queue<O> {
    vm_id: Vec<u8>,
    name: Vec<u8>,
    owner: Option<O>,
    items: VecDeque<Vec<u8>>,
}

impl<O> Default for QueueStore<O> {
    fn default() -> Self {
        QueueStore { inner: Mutex::new(Vec::new()) }
    }
}

impl<O: Clone> QueueStore<O> {
    /// Registers (or re-registers) a queue. `take_ownership` decides, from the current owner,
    /// whether `owner` replaces it.
    pub fn register(
        &self,
        vm_id: &[u8],
        name: &[u8],
        owner: O,
        take_ownership: impl FnOnce(Option<&O>) -> bool,
    ) -> u32 {
        let mut queues = self.lock();
        match queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            Some(index) => {
                let queue = &mut queues[index];
                if take_ownership(queue.owner.as_ref()) {
                    queue.owner = Some(owner);
                }
                index as u32 + 1
            }
            None => {
                let owner = take_ownership(None).then_some(owner);
                queues.push(Queue { vm_id: vm_id.to_vec(), name: name.to_vec(), owner, items: VecDeque::new() });
                queues.len() as u32
            }
        }
    }

    pub fn resolve(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        self.lock().iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    /// Appends an item; returns the owner to notify.
    pub fn enqueue(&self, queue_id: u32, value: &[u8]) -> HostResult<Option<O>> {
        let mut queues = self.lock();
        let queue = queues.get_mut((queue_id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        queue.items.push_back(value.to_vec());
        Ok(queue.owner.clone())
    }

    /// The oldest item, `None` when the queue is empty.
    pub fn dequeue(&self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        let mut queues = self.lock();
        let queue = queues.get_mut((queue_id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        Ok(queue.items.pop_front())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Queue<O>>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_envoy() {
        let store = SharedDataStore::default();
        assert_eq!(store.get(b"k"), None);
        store.set(b"k", b"a", 0).unwrap();
        let (value, cas) = store.get(b"k").unwrap();
        assert_eq!((value.as_slice(), cas), (&b"a"[..], 1));
        assert_eq!(store.set(b"k", b"b", cas + 1), Err(Status::CasMismatch));
        store.set(b"k", b"b", cas).unwrap();
        assert_eq!(store.get(b"k").unwrap(), (b"b".to_vec(), 2));
        store.set(b"new", b"x", 77).unwrap();
    }

    #[test]
    fn queues_keep_ids_and_owners_as_asked() {
        let queues = QueueStore::default();
        let id = queues.register(b"vm", b"q", "first", |_| true);
        assert_eq!(queues.register(b"vm", b"q", "second", |current| current.is_none()), id);
        assert_eq!(queues.resolve(b"vm", b"q"), Some(id));
        assert_eq!(queues.resolve(b"other", b"q"), None);
        assert_eq!(queues.enqueue(id, b"1").unwrap(), Some("first"));
        assert_eq!(queues.dequeue(id).unwrap(), Some(b"1".to_vec()));
        assert_eq!(queues.dequeue(id).unwrap(), None);
        assert_eq!(queues.enqueue(99, b"x"), Err(Status::NotFound));
    }
}
