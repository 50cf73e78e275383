//! An instance's state at a point (after start-up), and returning the instance to it: what
//! lets one instance serve request after request with none of them seeing what an earlier
//! one left, at a fraction of a fresh instance's cost.
//!
//! Globals: every mutable global is exported for this when the module is prepared
//! (`recycling.rs`); each is set back to its value.
//!
//! Memory: its bytes at the point are kept aside (shared by the instances of a module whose
//! memory was the same then). A reset copies back the pages written since the instance was
//! created, which Linux's `PAGEMAP_SCAN` (6.7; `page_scan.rs`) tells apart with no page
//! fault: a written page of the memory's mapping is a private (anonymous) page, while a page
//! never written still maps the module's image or the zero page, so it holds what it held at
//! the point (and the scan is skipped while no page fault says a page may have become
//! written: `WrittenPages`). Nothing is paid while a request runs; each reset copies back
//! what start-up wrote as well (upstream Go's runtime: about 130 pages, a request about 30). Tracking only
//! what each request writes (userfaultfd's write protection) was measured slower: a page's
//! first write then costs a fault, several times the copy of a page.
//!
//! Where the kernel cannot scan, instances are not reused.

use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Global, Instance, Memory, Store, Val};

use crate::page_scan::{PageScanner, Pages, WrittenPages};
use crate::recycling::{GLOBAL_PREFIX, MARKER};
use crate::session::HostState;

/// A memory's bytes at a reset point.
pub(crate) struct MemoryImage(Box<[u8]>);

/// The last image a module's instances took, for the next to share when equal.
#[derive(Default)]
pub(crate) struct LastImage(Mutex<Weak<MemoryImage>>);

impl LastImage {
    /// The image of `bytes`: the last one when equal, else a new copy (then the last one).
    fn of(&self, bytes: &[u8]) -> Arc<MemoryImage> {
        let mut last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(image) = last.upgrade().filter(|image| *image.0 == *bytes) {
            return image;
        }
        let image = Arc::new(MemoryImage(bytes.into()));
        *last = Arc::downgrade(&image);
        image
    }
}

/// An instance's memory and mutable globals at a point.
pub(crate) struct Snapshot {
    memory: Memory,
    image: Arc<MemoryImage>,
    globals: Vec<(Global, Val)>,
    scanner: Arc<PageScanner>,
    written: WrittenPages,
}

/// Why an instance cannot be reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotResettable {
    /// The module changes tables or segments, or has no memory of its own (see `recycling`).
    Module,
    /// This system cannot tell written pages apart (Linux before 6.7, or no /proc).
    NoPageScan,
    /// The memory grew since the point (a memory cannot shrink).
    MemoryGrew,
    /// The VM is not as it was: it failed, its plugins changed, or work is in flight.
    Changed,
}

impl std::fmt::Display for NotResettable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotResettable::Module => "its module changes tables or segments, or has no memory of its own",
            NotResettable::NoPageScan => "this kernel cannot tell written pages apart (PAGEMAP_SCAN came in Linux 6.7)",
            NotResettable::MemoryGrew => "its memory grows during requests",
            NotResettable::Changed => "it failed, its filters changed, or it has work in flight",
        })
    }
}

impl NotResettable {
    /// What a proxy logs, once, when `filter`'s isolated requests get a fresh instance each
    /// because of this.
    pub fn fallback_notice(self, filter: &str) -> String {
        format!("filter \"{filter}\": each isolated request gets a fresh instance, as an instance cannot be reset: {self}")
    }
}

impl Snapshot {
    /// The state of `instance` now.
    pub fn take(
        instance: &Instance,
        store: &mut Store<HostState>,
        last: &LastImage,
    ) -> Result<Snapshot, NotResettable> {
        let memory = instance.get_memory(&mut *store, MARKER).ok_or(NotResettable::Module)?;
        let scanner = PageScanner::current().ok_or(NotResettable::NoPageScan)?;
        let globals: Vec<Global> = instance
            .exports(&mut *store)
            .filter(|export| export.name().starts_with(GLOBAL_PREFIX))
            .filter_map(|export| export.into_global())
            .collect();
        let globals = globals.into_iter().map(|global| (global, global.get(&mut *store))).collect();
        let image = last.of(memory.data(&*store));
        // Copying read every page, which maps each: the next scans would walk them all.
        // Unmap those still clean (a read maps them back as they are).
        let data = memory.data(&*store);
        let (base, len) = (data.as_ptr() as usize, data.len());
        let unreadable = |_| NotResettable::NoPageScan;
        scanner
            .for_each(Pages::Clean, base, len, |pages| {
                // SAFETY: dropping a clean page's mapping changes nothing a read sees: the page
                // is the module image's or the zero page, mapped again as it is on the next touch.
                unsafe { libc::madvise((base + pages.start) as *mut libc::c_void, pages.len(), libc::MADV_DONTNEED) };
            })
            .map_err(unreadable)?;
        // No huge page may form over the memory behind the guest's back: khugepaged makes
        // untouched pages written ones without a fault, which `WrittenPages` would then miss.
        // Nor may KSM merge its pages: a written page of zeros merged into the zero page would
        // look untouched. (Without KSM in the kernel the second call fails, harmlessly.)
        // SAFETY: both only change how the kernel may back the range, not what it holds.
        unsafe {
            if libc::madvise(base as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) != 0 {
                return Err(NotResettable::NoPageScan);
            }
            libc::madvise(base as *mut libc::c_void, len, libc::MADV_UNMERGEABLE);
        }
        Ok(Snapshot { memory, image, globals, scanner, written: WrittenPages::default() })
    }

    /// Returns the instance to this state.
    pub fn restore(&mut self, store: &mut Store<HostState>) -> Result<(), NotResettable> {
        let memory = self.memory.data_mut(&mut *store);
        if memory.len() != self.image.0.len() {
            return Err(NotResettable::MemoryGrew);
        }
        if self.scanner.is_stale() {
            self.scanner = PageScanner::current().ok_or(NotResettable::NoPageScan)?;
            self.written = WrittenPages::default();
        }
        let (base, len) = (memory.as_ptr() as usize, memory.len());
        let written = self.written.current(&self.scanner, base, len).map_err(|_| NotResettable::NoPageScan)?;
        for run in written {
            memory[run.clone()].copy_from_slice(&self.image.0[run.clone()]);
        }
        for (global, value) in &self.globals {
            // The value was read from this global, so it has its type.
            let _ = global.set(&mut *store, *value);
        }
        Ok(())
    }
}

