//! CPU hints: [`prefetch`].
//!
//! Owns: asking the CPU to load memory ahead of use, so that the walks over many
//! scattered allocations (the flush, the writer cache's batches, the encoders) overlap
//! their cache misses instead of waiting on each in turn. Must never: be needed for
//! correctness; every hint may be dropped without changing a result.

/// Asks the CPU to load the cache line at `p`; a hint with no effect on memory.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only loads a line into the cache; it never faults, even on
    // an invalid address, and has no effect on memory that Rust can observe. The
    // `sse` feature it requires is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
