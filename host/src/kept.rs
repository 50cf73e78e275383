//! The instances a proxy keeps for one filter's isolated requests (isolation `stream`): each
//! is reset when its request ends and serves a later request of the filter, up to
//! [`KeptInstances::LIMIT`]. A filter whose instances turn out not to be resettable gets a
//! fresh instance per request from then on, and the proxy is told why once, to log it.

use crate::snapshot::NotResettable;
use crate::vm::Vm;

/// One filter's kept instances, on one thread. `T` is what the proxy holds for an instance
/// (its VM and the filter's plugin on it).
pub struct KeptInstances<T> {
    idle: Vec<T>,
    fresh_only: bool,
}

impl<T> KeptInstances<T> {
    /// As many as one thread's requests of a filter usually overlap: each kept instance
    /// holds a slot of the instance pool and its memory.
    pub const LIMIT: usize = 64;

    /// None kept yet. `fresh_only`: the filter's requests get a fresh instance each from the
    /// start (one that works in the background, whose state cannot be returned to).
    pub const fn new(fresh_only: bool) -> KeptInstances<T> {
        KeptInstances { idle: Vec::new(), fresh_only }
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    /// An instance an earlier request left, reset.
    pub fn take(&mut self) -> Option<T> {
        self.idle.pop()
    }

    /// Makes `vm`, just started for a request, return to its state now when reset, unless
    /// the filter's instances are not reset. Returns why not when this is how the filter's
    /// instances were found not to be resettable.
    pub fn prepare(&mut self, vm: &mut Vm) -> Option<NotResettable> {
        if self.fresh_only {
            return None;
        }
        vm.keep_reset_point().err().and_then(|reason| self.use_fresh_only(reason))
    }

    /// Takes back `instance` when its request has ended: `reset` (which resets its VM) runs
    /// and the instance is kept for a later request, unless enough are kept, its VM cannot
    /// be reset, or the filter's instances are not reset (it is then dropped). Returns why
    /// not when this is how the filter's instances were found not to be resettable.
    pub fn give_back(
        &mut self,
        mut instance: T,
        reset: impl FnOnce(&mut T) -> Result<(), NotResettable>,
    ) -> Option<NotResettable> {
        if self.fresh_only || self.idle.len() >= Self::LIMIT {
            return None;
        }
        match reset(&mut instance) {
            Ok(()) => {
                self.idle.push(instance);
                None
            }
            // It failed, served more than its filter, or has work in flight.
            Err(NotResettable::Changed) => None,
            Err(reason) => self.use_fresh_only(reason),
        }
    }

    /// From now on each request gets a fresh instance; `reason` is returned the first time.
    fn use_fresh_only(&mut self, reason: NotResettable) -> Option<NotResettable> {
        self.idle.clear();
        (!std::mem::replace(&mut self.fresh_only, true)).then_some(reason)
    }
}
