//! An instance's state at a point (after start-up), and returning the instance to it: what
//! lets one instance serve request after request with none of them seeing what an earlier
//! one left, at a fraction of a fresh instance's cost.
//!
//! Globals: every mutable global is exported for this when the module is prepared
//! (`recycling.rs`); each is set back to its value.
//!
//! Memory: its bytes at the point are kept aside (shared by the instances of a module whose
//! memory was the same then). Returning copies back only the pages written since the
//! instance was created, which Linux's `PAGEMAP_SCAN` (6.7) tells apart with no page faults:
//! a written page of the memory's mapping is a private (anonymous) page, while a page never
//! written still maps the module's image or the zero page, so it holds what it held at the
//! point. Where the kernel cannot scan, instances are not reused.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use wasmtime::{Global, Instance, Memory, Store, Val};

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
        scanner.for_each(Pages::Clean, base, len, |pages| {
            // SAFETY: dropping a clean page's mapping changes nothing a read sees: the page
            // is the module image's or the zero page, mapped again as it is on the next touch.
            unsafe { libc::madvise((base + pages.start) as *mut libc::c_void, pages.len(), libc::MADV_DONTNEED) };
        })?;
        Ok(Snapshot { memory, image, globals, scanner })
    }

    /// Returns the instance to this state.
    pub fn restore(&mut self, store: &mut Store<HostState>) -> Result<(), NotResettable> {
        let memory = self.memory.data_mut(&mut *store);
        if memory.len() != self.image.0.len() {
            return Err(NotResettable::MemoryGrew);
        }
        if self.scanner.forks != FORKS.load(Ordering::Relaxed) {
            self.scanner = PageScanner::current().ok_or(NotResettable::NoPageScan)?;
        }
        let image = &self.image.0;
        self.scanner.for_each(Pages::Written, memory.as_ptr() as usize, memory.len(), |pages| {
            memory[pages.clone()].copy_from_slice(&image[pages]);
        })?;
        for (global, value) in &self.globals {
            // The value was read from this global, so it has its type.
            let _ = global.set(&mut *store, *value);
        }
        Ok(())
    }
}

/// The pages a scan looks for.
#[derive(Clone, Copy)]
enum Pages {
    /// Written since mapped: private copies (or swapped out), where a request's changes are.
    Written,
    /// Mapped but never written: the module image's pages or the zero page.
    Clean,
}

/// `/proc/self/pagemap` of this process, for `PAGEMAP_SCAN`.
struct PageScanner {
    pagemap: File,
    /// [`FORKS`] when it was opened: the file describes the process that opened it.
    forks: u64,
}

/// The last scanner opened, and forks of this process so far (counted by a handler).
static SCANNER: Mutex<Option<Arc<PageScanner>>> = Mutex::new(None);
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

impl PageScanner {
    /// This process's scanner, if the kernel has the scan.
    fn current() -> Option<Arc<PageScanner>> {
        static COUNTING: Once = Once::new();
        // SAFETY: the handler only bumps an atomic, which is safe in a forked child.
        COUNTING.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(count_fork));
        });
        let mut scanner = SCANNER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let forks = FORKS.load(Ordering::Relaxed);
        if let Some(current) = scanner.as_ref().filter(|s| s.forks == forks) {
            return Some(current.clone());
        }
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        let opened = Arc::new(PageScanner { pagemap, forks });
        // A scan of nothing tells whether the kernel knows the ioctl.
        opened.scan(Pages::Written, 0, 0, &mut [PageRegion::default(); 1]).ok()?;
        *scanner = Some(opened.clone());
        Some(opened)
    }

    /// Calls `found` with each range of `pages` in the `len` bytes at `base` (byte offsets,
    /// whole pages).
    fn for_each(
        &self,
        pages: Pages,
        base: usize,
        len: usize,
        mut found: impl FnMut(std::ops::Range<usize>),
    ) -> Result<(), NotResettable> {
        let mut regions = [PageRegion::default(); 32];
        let mut from = 0;
        while from < len {
            let (count, walked) =
                self.scan(pages, base + from, len - from, &mut regions).map_err(|_| NotResettable::NoPageScan)?;
            if walked <= base + from {
                return Err(NotResettable::NoPageScan);
            }
            for region in &regions[..count] {
                let start = (region.start as usize).saturating_sub(base);
                let end = (region.end as usize).saturating_sub(base).min(len);
                found(start..end);
            }
            // The kernel stops early when the regions fill the vector; go on from there.
            from = walked - base;
        }
        Ok(())
    }

    /// One `PAGEMAP_SCAN` for `pages` over the `len` bytes at `start`: how many regions it put
    /// in `regions`, and where its walk ended.
    fn scan(&self, pages: Pages, start: usize, len: usize, regions: &mut [PageRegion]) -> std::io::Result<(usize, usize)> {
        let (category_inverted, category_mask, category_anyof_mask) = match pages {
            // Not a file's page nor the zero page, and present or swapped out.
            Pages::Written => (PAGE_IS_FILE | PAGE_IS_PFNZERO, PAGE_IS_FILE | PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
            // Present, and a file's page or the zero page.
            Pages::Clean => (0, PAGE_IS_PRESENT, PAGE_IS_FILE | PAGE_IS_PFNZERO),
        };
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start: start as u64,
            end: (start + len) as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted,
            category_mask,
            category_anyof_mask,
            return_mask: 0,
        };
        // SAFETY: the ioctl reads `arg` and writes at most `vec_len` regions into `regions`,
        // both alive for the call; it only reads this process's page tables.
        let found = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if found < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((found as usize, arg.walk_end as usize))
    }
}

/// `struct pm_scan_arg` (linux/fs.h).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` (linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16) | (0x66 << 8) | 16;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
