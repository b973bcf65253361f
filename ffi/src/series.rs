//! Series through the C ABI: handles (`weir_counter`, `weir_gauge`, `weir_histogram`)
//! resolved once and updated without lookup, and one-shot updates by name and labels.
//!
//! Owns: the mapping of each C update onto a [`weir_core::Sample`]. Must never:
//! allocate or lock on a handle update, or accept a label array it has not checked.

use std::cell::RefCell;
use std::ffi::c_char;
use std::sync::{Arc, Weak};

use weir_core::{MetricKind, Sample, SeriesHandle, Temporality, Writer};

use crate::input::{str_arg, weir_label, with_labels};
use crate::instance::weir_instance;
use crate::status::{Failure, guard, weir_status};

/// Resolves a series of `kind` to a handle.
///
/// # Safety
/// As for the exported `weir_*_new` functions.
unsafe fn resolve(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    kind: MetricKind,
) -> Result<SeriesHandle, Failure> {
    // SAFETY: NULL or live (the caller's contract).
    let inst = unsafe { instance.as_ref() }.ok_or_else(|| Failure::null("instance"))?;
    // SAFETY: NULL or NUL-terminated, read only during this call (the caller's contract).
    let name = unsafe { str_arg(name, "name") }.map_err(|b| inst.refuse(b))?;
    let aggregator = inst.runtime.aggregator();
    // SAFETY: `labels_len` readable labels or NULL (the caller's contract).
    let handle = unsafe { with_labels(labels, labels_len, |l| aggregator.handle(name, l, kind)) }
        .map_err(|b| inst.refuse(b))?;
    Ok(handle?)
}

/// A [`Writer`] of one instance, private to the thread that made it.
struct ThreadWriter {
    /// The instance's liveness token: identifies the instance (a `Weak` keeps the
    /// token's allocation, so its address is not reused while this entry lives) and
    /// tells when the instance is gone.
    owner: Weak<()>,
    writer: Writer,
}

thread_local! {
    /// This thread's writers, one per instance it recorded into by name (usually one).
    /// Entries of freed instances are dropped when the thread meets a new instance, or
    /// at thread exit.
    static WRITERS: RefCell<Vec<ThreadWriter>> = const { RefCell::new(Vec::new()) };
}

/// Records through this thread's writer for `inst`: its cache maps the label set as
/// given to the series, so a repeated one-shot call allocates nothing and skips the
/// validation, sorting and shared-index lookup. Falls back to the uncached path while
/// the thread is being torn down.
fn record_cached(
    inst: &weir_instance,
    name: &str,
    labels: &[(&str, &str)],
    sample: Sample<'_>,
) -> Result<(), weir_core::Rejected> {
    let token = Arc::as_ptr(&inst.alive);
    let cached = WRITERS.try_with(|writers| {
        let Ok(mut writers) = writers.try_borrow_mut() else {
            return None;
        };
        let i = match writers.iter().position(|w| w.owner.as_ptr() == token) {
            Some(i) => i,
            None => {
                writers.retain(|w| w.owner.strong_count() > 0);
                writers.push(ThreadWriter {
                    owner: Arc::downgrade(&inst.alive),
                    writer: inst.runtime.aggregator().writer(),
                });
                writers.len() - 1
            }
        };
        Some(writers[i].writer.record(name, labels, sample, 0))
    });
    match cached {
        Ok(Some(result)) => result,
        _ => inst.runtime.aggregator().record(name, labels, sample, 0),
    }
}

/// Applies one sample by name and labels.
///
/// # Safety
/// As for the exported one-shot functions.
unsafe fn record(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    sample: Sample<'_>,
) -> Result<(), Failure> {
    // SAFETY: NULL or live (the caller's contract).
    let inst = unsafe { instance.as_ref() }.ok_or_else(|| Failure::null("instance"))?;
    // SAFETY: NULL or NUL-terminated, read only during this call (the caller's contract).
    let name = unsafe { str_arg(name, "name") }.map_err(|b| inst.refuse(b))?;
    // SAFETY: `labels_len` readable labels or NULL (the caller's contract).
    let done = unsafe { with_labels(labels, labels_len, |l| record_cached(inst, name, l, sample)) }
        .map_err(|b| inst.refuse(b))?;
    Ok(done?)
}

/// Stores a new handle in `*out`.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn give<T>(out: *mut *mut T, make: impl FnOnce() -> Result<T, Failure>) -> weir_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let handle = Box::new(make()?);
        // SAFETY: non-NULL and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Frees a handle made by [`give`].
///
/// # Safety
/// `p` is NULL or made by `give` and not freed yet.
unsafe fn free<T>(p: *mut T) {
    let _ = guard(|| {
        if !p.is_null() {
            // SAFETY: made by `Box::into_raw` in `give`, not freed yet (caller).
            drop(unsafe { Box::from_raw(p) });
        }
        Ok(())
    });
}

/// Runs an update on a handle.
///
/// # Safety
/// `p` is NULL or a live handle.
unsafe fn update<T>(
    p: *const T,
    what: &str,
    f: impl FnOnce(&T) -> Result<(), weir_core::Rejected>,
) -> weir_status {
    guard(|| {
        // SAFETY: NULL or live (the caller's contract).
        let h = unsafe { p.as_ref() }.ok_or_else(|| Failure::null(what))?;
        Ok(f(h)?)
    })
}

/// A counter series, resolved once by `weir_counter_new`.
///
/// Underneath: a `Box` holding a reference to the series. Valid until
/// `weir_counter_free`; may be updated from any number of threads at once (each update
/// is one atomic operation: no lock, no allocation). While the handle lives its series
/// is never evicted by the series TTL; the TTL counts from the handle's free. The handle
/// keeps the aggregator's memory alive, so it is safe to use or free even after its
/// instance was freed (such updates reach no flush).
pub struct weir_counter {
    handle: SeriesHandle,
}

/// A gauge series, resolved once by `weir_gauge_new`. Same rules as `weir_counter`.
pub struct weir_gauge {
    handle: SeriesHandle,
}

/// A histogram series (the instance's bucket bounds, by default the Prometheus client
/// defaults), resolved once by `weir_histogram_new`. Same rules as `weir_counter`.
pub struct weir_histogram {
    handle: SeriesHandle,
}

/// Resolves (creating if needed) the counter `name` with `labels_len` labels (in any
/// order) and stores a handle to it in `*out`, set only on success.
///
/// Returns `WEIR_STATUS_OK`, `WEIR_STATUS_NULL_ARGUMENT`, `WEIR_STATUS_INVALID_UTF8`,
/// `WEIR_STATUS_INVALID_METRIC_NAME`, `WEIR_STATUS_INVALID_LABEL_NAME`,
/// `WEIR_STATUS_TOO_MANY_LABELS`, `WEIR_STATUS_TYPE_CONFLICT` or
/// `WEIR_STATUS_SERIES_LIMIT`.
///
/// # Safety
/// `instance` is NULL or live; `name` is NULL or NUL-terminated; `labels` is NULL or
/// points to `labels_len` labels (NULL is allowed when `labels_len` is 0); `out` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_counter_new(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    out: *mut *mut weir_counter,
) -> weir_status {
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    unsafe {
        give(out, || {
            resolve(instance, name, labels, labels_len, MetricKind::Counter)
                .map(|handle| weir_counter { handle })
        })
    }
}

/// Adds `n` to the counter (one atomic add).
///
/// # Safety
/// `counter` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_counter_add(counter: *const weir_counter, n: u64) -> weir_status {
    // SAFETY: NULL or live (the caller's contract).
    unsafe { update(counter, "counter", |c| c.handle.increment(n)) }
}

/// Adds `v` to the counter. `WEIR_STATUS_INVALID_VALUE` (counted) for a negative, NaN
/// or infinite `v`.
///
/// # Safety
/// `counter` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_counter_add_double(
    counter: *const weir_counter,
    v: f64,
) -> weir_status {
    // SAFETY: NULL or live (the caller's contract).
    unsafe { update(counter, "counter", |c| c.handle.add(v)) }
}

/// Frees a counter handle. NULL is ignored; freeing twice is undefined behaviour.
///
/// # Safety
/// `counter` is NULL or a live handle no other thread uses during or after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_counter_free(counter: *mut weir_counter) {
    // SAFETY: NULL or live and unshared (the caller's contract).
    unsafe { free(counter) }
}

/// Resolves (creating if needed) the gauge `name`; as `weir_counter_new`.
///
/// # Safety
/// As `weir_counter_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_gauge_new(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    out: *mut *mut weir_gauge,
) -> weir_status {
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    unsafe {
        give(out, || {
            resolve(instance, name, labels, labels_len, MetricKind::Gauge)
                .map(|handle| weir_gauge { handle })
        })
    }
}

/// Sets the gauge to `v`; the last value set before a flush is what it reports.
///
/// # Safety
/// `gauge` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_gauge_set(gauge: *const weir_gauge, v: f64) -> weir_status {
    // SAFETY: NULL or live (the caller's contract).
    unsafe { update(gauge, "gauge", |g| g.handle.set(v)) }
}

/// Adds `delta` (which may be negative) to the gauge.
///
/// # Safety
/// `gauge` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_gauge_add(gauge: *const weir_gauge, delta: f64) -> weir_status {
    // SAFETY: NULL or live (the caller's contract).
    unsafe {
        update(gauge, "gauge", |g| {
            g.handle.record(Sample::GaugeDelta(delta), 0)
        })
    }
}

/// Frees a gauge handle. NULL is ignored; freeing twice is undefined behaviour.
///
/// # Safety
/// `gauge` is NULL or a live handle no other thread uses during or after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_gauge_free(gauge: *mut weir_gauge) {
    // SAFETY: NULL or live and unshared (the caller's contract).
    unsafe { free(gauge) }
}

/// Resolves (creating if needed) the histogram `name`; as `weir_counter_new`.
///
/// # Safety
/// As `weir_counter_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_histogram_new(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    out: *mut *mut weir_histogram,
) -> weir_status {
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    unsafe {
        give(out, || {
            resolve(instance, name, labels, labels_len, MetricKind::Histogram)
                .map(|handle| weir_histogram { handle })
        })
    }
}

/// Records one observation of `v`. `WEIR_STATUS_INVALID_VALUE` (counted) for NaN.
///
/// # Safety
/// `histogram` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_histogram_observe(
    histogram: *const weir_histogram,
    v: f64,
) -> weir_status {
    // SAFETY: NULL or live (the caller's contract).
    unsafe { update(histogram, "histogram", |h| h.handle.observe(v)) }
}

/// Frees a histogram handle. NULL is ignored; freeing twice is undefined behaviour.
///
/// # Safety
/// `histogram` is NULL or a live handle no other thread uses during or after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_histogram_free(histogram: *mut weir_histogram) {
    // SAFETY: NULL or live and unshared (the caller's contract).
    unsafe { free(histogram) }
}

/// One-shot: adds `v` to the counter `name` with `labels` (any order), creating the
/// series if needed. Each thread keeps a cache from the label set as given to its
/// series, so a repeated call costs one hash of the name and labels (no allocation);
/// a handle (`weir_counter_new`) is still cheaper on hot paths.
/// Statuses as `weir_counter_new`, plus `WEIR_STATUS_INVALID_VALUE`.
///
/// # Safety
/// As `weir_counter_new` (without `out`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_record_counter(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    v: f64,
) -> weir_status {
    let sample = Sample::Counter(v, Temporality::Delta);
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    guard(|| unsafe { record(instance, name, labels, labels_len, sample) })
}

/// One-shot: sets the gauge `name` with `labels` to `v`. As `weir_record_counter`.
///
/// # Safety
/// As `weir_counter_new` (without `out`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_record_gauge(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    v: f64,
) -> weir_status {
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    guard(|| unsafe { record(instance, name, labels, labels_len, Sample::Gauge(v)) })
}

/// One-shot: records one observation of `v` into the histogram `name` with `labels`.
/// As `weir_record_counter`.
///
/// # Safety
/// As `weir_counter_new` (without `out`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_record_observe(
    instance: *const weir_instance,
    name: *const c_char,
    labels: *const weir_label,
    labels_len: usize,
    v: f64,
) -> weir_status {
    let sample = Sample::Observe { value: v, count: 1 };
    // SAFETY: the arguments satisfy this function's contract, which is theirs.
    guard(|| unsafe { record(instance, name, labels, labels_len, sample) })
}
