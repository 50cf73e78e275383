//! Which pages of a memory were written, from Linux's `PAGEMAP_SCAN` ioctl on
//! `/proc/self/pagemap` (Linux 6.7): it walks the page tables of a range and reports the runs
//! of pages in the categories asked for, with no page fault. See `snapshot.rs` for its use.

use std::fs::File;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

/// The pages a scan looks for.
#[derive(Clone, Copy)]
pub(crate) enum Pages {
    /// Written since mapped: private copies (or swapped out), where a request's changes are.
    Written,
    /// Mapped but never written: the module image's pages or the zero page.
    Clean,
}

/// The runs of written pages of one memory, kept between scans. A page of a memory becomes
/// written (a private copy) only through a page fault, which the faulting thread counts (or
/// by khugepaged's collapse into a huge page, which the memory is marked to refuse): while
/// the thread that scanned has taken no fault since, the runs found then are all there are,
/// and the scan (most of what a reset costs) is skipped. A request on a warm instance
/// usually takes none.
#[derive(Default)]
pub(crate) struct WrittenPages {
    runs: Vec<Range<usize>>,
    /// The thread that scanned, and its page faults before the scan.
    scanned_at: Option<(u64, u64)>,
}

impl WrittenPages {
    /// The runs of written pages (byte offsets) of the `len` bytes at `base`.
    pub fn current(&mut self, scanner: &PageScanner, base: usize, len: usize) -> std::io::Result<&[Range<usize>]> {
        let now = thread_faults();
        if now.is_none() || self.scanned_at != now {
            self.scanned_at = None;
            self.runs.clear();
            scanner.for_each(Pages::Written, base, len, |run| self.runs.push(run))?;
            self.scanned_at = now;
        }
        Ok(&self.runs)
    }
}

/// This thread (a number of its own, never reused) and the page faults it has taken.
fn thread_faults() -> Option<(u64, u64)> {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = THREADS.fetch_add(1, Ordering::Relaxed);
    }
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the structure it is given, nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed, then written by getrusage.
    let usage = unsafe { usage.assume_init() };
    Some((THREAD.with(|thread| *thread), (usage.ru_minflt as u64).wrapping_add(usage.ru_majflt as u64)))
}

/// `/proc/self/pagemap` of this process, for `PAGEMAP_SCAN`.
pub(crate) struct PageScanner {
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
    /// Whether the process forked since this scanner was opened (it then describes the parent).
    pub fn is_stale(&self) -> bool {
        self.forks != FORKS.load(Ordering::Relaxed)
    }

    /// This process's scanner, if the kernel has the scan.
    pub fn current() -> Option<Arc<PageScanner>> {
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
    pub fn for_each(
        &self,
        pages: Pages,
        base: usize,
        len: usize,
        mut found: impl FnMut(Range<usize>),
    ) -> std::io::Result<()> {
        let mut regions = [PageRegion::default(); 32];
        let mut from = 0;
        while from < len {
            let (count, walked) = self.scan(pages, base + from, len - from, &mut regions)?;
            if walked <= base + from {
                return Err(std::io::Error::other("the page scan did not advance"));
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
