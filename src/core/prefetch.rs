//! A cache hint for loops that visit scattered prospects in a known order (a checkpoint's
//! changed prospects): asking for a prospect's memory a few iterations before it is read lets
//! the cache misses of several prospects overlap instead of waiting for each in turn.

/// Asks the CPU to bring the cache line holding `value` into cache. Only a hint: it reads
/// nothing, changes nothing and cannot fault; a no-op where no such instruction is available.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is an SSE instruction, part of every x86_64 target; it is a hint
    // that never dereferences (no fault, no read visible to the program), and the pointer comes
    // from a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
