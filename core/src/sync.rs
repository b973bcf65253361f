//! The atomics (and the mutex) used by [`crate::cell`] and the aggregator's series
//! index: std's, or shuttle's under the `shuttle` feature so that the model tests
//! (`tests/cell_model.rs`, `series_index::model`) explore interleavings of the real
//! code. Also the f64-in-`AtomicU64` operations the cells need.

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{
    Mutex,
    atomic::{AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{
    Mutex,
    atomic::{AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
};

/// Lets another thread run while the flusher waits for an in-flight histogram write.
pub(crate) fn yield_now() {
    #[cfg(feature = "shuttle")]
    shuttle::thread::yield_now();
    #[cfg(not(feature = "shuttle"))]
    std::thread::yield_now();
}

/// Adds `v` to the f64 stored as bits in `cell`. Relaxed: callers order the cell with
/// other memory through their own Acquire/Release words (or need no ordering at all:
/// a single-word RMW lands in exactly one collection by itself).
#[inline]
pub(crate) fn f64_add(cell: &AtomicU64, v: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let new = (f64::from_bits(cur) + v).to_bits();
        match cell.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Lowers the f64 in `cell` to `v` if `v` is smaller. Relaxed as in [`f64_add`].
#[inline]
pub(crate) fn f64_min(cell: &AtomicU64, v: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    while v < f64::from_bits(cur) {
        match cell.compare_exchange_weak(cur, v.to_bits(), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Raises the f64 in `cell` to `v` if `v` is larger. Relaxed as in [`f64_add`].
#[inline]
pub(crate) fn f64_max(cell: &AtomicU64, v: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    while v > f64::from_bits(cur) {
        match cell.compare_exchange_weak(cur, v.to_bits(), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}
