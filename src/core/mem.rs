//! Memory hints for the engine's large per-prospect arrays.
//!
//! Applying an event reads a few scattered cache lines of arrays that, on a shard of a million
//! prospects, span hundreds of megabytes. With 4 KiB pages nearly every one of those reads also
//! misses the TLB and walks the page table; asking for transparent huge pages (2 MiB) on these
//! arrays removes most of those walks (`cargo bench --bench engine`, BENCHMARKS.md).
//! This is a hint only: where the kernel has THP off (`never`) or the platform is not Linux,
//! nothing changes but speed. It changes no state, so the core stays deterministic.

/// Below this many bytes an array is left alone (it is not worth a system call, and a small
/// allocation shares its pages with others).
const MIN_BYTES: usize = 4 << 20;

/// Asks the kernel to back `v`'s allocation (its whole capacity) with huge pages. Only pages
/// not touched yet can be had as huge pages at once, so call it on a fresh allocation, before
/// filling it (see [`reserve`]).
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes >= MIN_BYTES {
        advise(v.as_ptr() as usize, bytes);
    }
}

/// `Vec::reserve` (at least doubling), except that a new allocation is advised before the
/// elements are moved into it.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() >= additional {
        return;
    }
    let want = (v.len() + additional).max(v.capacity() * 2).max(4);
    if want * std::mem::size_of::<T>() < MIN_BYTES {
        v.reserve(want - v.len());
        return;
    }
    let mut grown = Vec::with_capacity(want);
    advise_huge_pages(&grown);
    grown.append(v);
    *v = grown;
}

#[cfg(target_os = "linux")]
fn advise(start: usize, bytes: usize) {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let (from, to) = (start.div_ceil(page) * page, (start + bytes) / page * page);
    if to > from {
        // SAFETY: madvise(MADV_HUGEPAGE) only sets a hint on the pages of the given range,
        // which lies inside an allocation this process owns; it neither reads nor changes
        // their contents, and a failure (e.g. THP not built into the kernel) is harmless.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _bytes: usize) {}
