//! Per-series atomic cells: where points are added without a lock, and where the
//! flusher takes each interval's share out exactly once.
//!
//! Owns: the update and collection protocols of counters, gauges, histograms and
//! summaries. Must never: block a writer, or let one update be collected twice or not
//! at all.
//!
//! # Protocols
//! - **Counter**: the delta since the last collection lives in two words, an integer
//!   word for integral values below 2^32 (one `fetch_add`, the common StatsD case) and
//!   an f64 word (a CAS loop) for the rest. [`CounterCell::collect`] `swap`s both to
//!   zero. Every add is one read-modify-write of one word, and the swap is too, so each
//!   add is ordered entirely before or after the swap: it lands in exactly one
//!   collection. Cumulative inputs `swap` the last seen value in and add the difference
//!   (or, after a reset, the new value) as a delta; the first one becomes the
//!   *baseline*, which moves the running total but is not a delta.
//! - **Gauge**: the value and its timestamp are plain stores; relative adjustments are
//!   a CAS loop on the value.
//! - **Histogram**: several words change per observation, so a swap per word would let
//!   one observation's bucket land in one flush and its count in the next. Instead the
//!   cell has two halves (hot and cold), as in the Prometheus Go client. A state word
//!   holds the hot half's index (bit 63) and the number of writes *started* on it.
//!   A writer `fetch_add`s the state (choosing the half and announcing itself in one
//!   step), writes into that half, then bumps the half's *done* count with Release.
//!   The collector swaps the state to the other half with a zero count, then waits
//!   until the old half's done count reaches the started count it swapped out; only
//!   writers already inside the old half are waited for, and they are a few
//!   instructions from done. Writers never wait.
//! - **Summary**: the latest value is an epoch-protected pointer, swapped on update.

use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Atomic, Owned};

use crate::point::{HistogramValue, SummaryValue};
use crate::sync::{AtomicI64, AtomicU64, Ordering, f64_add, f64_max, f64_min, yield_now};

/// Integral counter increments below this go through the integer word. 2^32 keeps
/// the i64 sum far from overflow: that would take 2^31 maximal adds in one interval.
const INT_FAST_PATH_LIMIT: f64 = 4_294_967_296.0;

/// Bit pattern meaning "no cumulative value seen yet" (a NaN; NaN inputs are rejected).
const NO_VALUE: u64 = u64::MAX;

/// What [`CounterCell::collect`] takes out of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CounterTake {
    /// Sum of deltas added since the previous collection.
    pub delta: f64,
    /// First cumulative value(s) seen: part of the running total, not of any delta.
    pub baseline: f64,
}

/// A counter's lock-free state.
pub struct CounterCell {
    /// Integral part of the pending delta. Relaxed: see the module doc.
    delta_int: AtomicI64,
    /// Non-integral part of the pending delta, f64 bits. Relaxed: see the module doc.
    delta_float: AtomicU64,
    /// Last cumulative input, f64 bits, or [`NO_VALUE`].
    last_cumulative: AtomicU64,
    /// Pending baseline from the first cumulative input, f64 bits.
    baseline: AtomicU64,
}

impl Default for CounterCell {
    fn default() -> Self {
        CounterCell {
            delta_int: AtomicI64::new(0),
            delta_float: AtomicU64::new(0f64.to_bits()),
            last_cumulative: AtomicU64::new(NO_VALUE),
            baseline: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl CounterCell {
    /// Adds a delta. The caller has checked that `v` is finite and not negative.
    #[inline]
    pub fn add(&self, v: f64) {
        if v < INT_FAST_PATH_LIMIT && v == v.trunc() {
            // Relaxed: a single RMW on the word the collector swaps (module doc).
            self.delta_int.fetch_add(v as i64, Ordering::Relaxed);
        } else {
            f64_add(&self.delta_float, v);
        }
    }

    /// Applies a cumulative value: the increase since the previous one becomes a delta;
    /// a decrease means the source restarted and the whole new value is the delta; the
    /// first value is the baseline. The caller has checked that `v` is finite and not
    /// negative.
    pub fn add_cumulative(&self, v: f64) {
        // Relaxed: each cumulative value is consumed by exactly one swap, whatever the
        // order, and the resulting delta goes through `add`.
        let prev = self.last_cumulative.swap(v.to_bits(), Ordering::Relaxed);
        if prev == NO_VALUE {
            f64_add(&self.baseline, v);
            return;
        }
        let prev = f64::from_bits(prev);
        self.add(if v >= prev { v - prev } else { v });
    }

    /// Takes the pending delta and baseline, leaving zero.
    pub fn collect(&self) -> CounterTake {
        // Relaxed: single-word swaps; see the module doc.
        let int = self.delta_int.swap(0, Ordering::Relaxed);
        let float = f64::from_bits(self.delta_float.swap(0f64.to_bits(), Ordering::Relaxed));
        let baseline = f64::from_bits(self.baseline.swap(0f64.to_bits(), Ordering::Relaxed));
        CounterTake {
            delta: int as f64 + float,
            baseline,
        }
    }
}

/// A gauge's lock-free state: the last value and when it was set.
pub struct GaugeCell {
    /// f64 bits. Relaxed: a gauge is last-writer-wins; no other memory depends on it.
    value: AtomicU64,
    /// Milliseconds since the Unix epoch of the last update. Relaxed, as `value`; value
    /// and timestamp of two racing writers may mix, which only matters for writers that
    /// raced to the same millisecond-scale instant.
    timestamp_ms: AtomicI64,
}

impl Default for GaugeCell {
    fn default() -> Self {
        GaugeCell {
            value: AtomicU64::new(0f64.to_bits()),
            timestamp_ms: AtomicI64::new(0),
        }
    }
}

impl GaugeCell {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64, timestamp_ms: i64) {
        self.value.store(v.to_bits(), Ordering::Relaxed);
        self.timestamp_ms.store(timestamp_ms, Ordering::Relaxed);
    }

    /// Adds a signed amount to the value (StatsD `+N`/`-N`).
    #[inline]
    pub fn adjust(&self, d: f64, timestamp_ms: i64) {
        f64_add(&self.value, d);
        self.timestamp_ms.store(timestamp_ms, Ordering::Relaxed);
    }

    /// The current value and its timestamp.
    pub fn read(&self) -> (f64, i64) {
        (
            f64::from_bits(self.value.load(Ordering::Relaxed)),
            self.timestamp_ms.load(Ordering::Relaxed),
        )
    }
}

/// Bit 63 of [`HistogramCell::state`]: the hot half.
const HOT_BIT: u64 = 1 << 63;

/// One half of a [`HistogramCell`]. All fields Relaxed; `done` publishes them.
struct HistogramHalf {
    counts: Box<[AtomicU64]>,
    /// f64 bits.
    sum: AtomicU64,
    count: AtomicU64,
    /// f64 bits, `+Inf` when empty.
    min: AtomicU64,
    /// f64 bits, `-Inf` when empty.
    max: AtomicU64,
    /// Writes finished on this half since it was last collected.
    done: AtomicU64,
}

impl HistogramHalf {
    fn new(buckets: usize) -> Self {
        HistogramHalf {
            counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
            done: AtomicU64::new(0),
        }
    }
}

/// A histogram's lock-free state (see the module doc for the hot/cold protocol).
pub struct HistogramCell {
    bounds: Arc<[f64]>,
    /// Bit 63: index of the hot half. Bits 0..63: writes started on it since the last
    /// swap.
    state: AtomicU64,
    halves: [HistogramHalf; 2],
    /// Last cumulative input (for reset detection), epoch-protected.
    last_cumulative: Atomic<HistogramValue>,
    /// Pending baseline from the first cumulative input, taken by the collector.
    baseline: Atomic<HistogramValue>,
}

impl HistogramCell {
    /// An empty histogram over `bounds` (strictly increasing, finite).
    pub fn new(bounds: Arc<[f64]>) -> Self {
        let n = bounds.len() + 1;
        HistogramCell {
            bounds,
            state: AtomicU64::new(0),
            halves: [HistogramHalf::new(n), HistogramHalf::new(n)],
            last_cumulative: Atomic::null(),
            baseline: Atomic::null(),
        }
    }

    /// The bucket upper bounds.
    pub fn bounds(&self) -> &Arc<[f64]> {
        &self.bounds
    }

    /// Runs `write` on the hot half, announcing it first and publishing it after.
    #[inline]
    fn write(&self, write: impl FnOnce(&HistogramHalf)) {
        // Acquire: pairs with the collector's Release swap, so this writer sees the
        // half it lands on already reset.
        let s = self.state.fetch_add(1, Ordering::Acquire);
        let half = &self.halves[(s >> 63) as usize];
        write(half);
        // Release: the collector's Acquire load of `done` then sees every field above.
        half.done.fetch_add(1, Ordering::Release);
    }

    /// Records `count` observations of `value`. NaN observations are the caller's to
    /// reject.
    #[inline]
    pub fn observe(&self, value: f64, count: u64) {
        let idx = self.bounds.partition_point(|b| *b < value);
        self.write(|h| {
            h.counts[idx].fetch_add(count, Ordering::Relaxed);
            h.count.fetch_add(count, Ordering::Relaxed);
            f64_add(&h.sum, value * count as f64);
            f64_min(&h.min, value);
            f64_max(&h.max, value);
        });
    }

    /// Adds a whole delta histogram. Buckets whose bounds differ from this cell's are
    /// moved to the smallest bucket of this cell whose bound is at least theirs (exact
    /// when the bounds match, which is the usual case).
    pub fn merge(&self, delta: &HistogramValue) {
        self.write(|h| {
            for (i, &c) in delta.counts.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let j = if Arc::ptr_eq(&delta.bounds, &self.bounds) || *delta.bounds == *self.bounds
                {
                    i
                } else {
                    match delta.bounds.get(i) {
                        Some(ub) => self.bounds.partition_point(|b| b < ub),
                        None => self.bounds.len(),
                    }
                };
                h.counts[j].fetch_add(c, Ordering::Relaxed);
            }
            h.count.fetch_add(delta.count, Ordering::Relaxed);
            f64_add(&h.sum, delta.sum);
            if delta.count > 0 {
                f64_min(&h.min, delta.min);
                f64_max(&h.max, delta.max);
            }
        });
    }

    /// Applies a cumulative histogram: the difference to the previous one is merged as
    /// a delta; a reset (count or any bucket lower than before, or other bounds) merges
    /// the whole value; the first one becomes the baseline.
    pub fn merge_cumulative(&self, value: &HistogramValue) {
        let guard = epoch::pin();
        // AcqRel: the Release half publishes the new value's contents; the Acquire half
        // lets us read the previous one, published the same way.
        let prev = self
            .last_cumulative
            .swap(Owned::new(value.clone()), Ordering::AcqRel, &guard);
        // SAFETY: `prev` was loaded under `guard` and is destroyed only through
        // `defer_destroy` below, after every thread pinned now has unpinned.
        match unsafe { prev.as_ref() } {
            None => {
                let old = self
                    .baseline
                    .swap(Owned::new(value.clone()), Ordering::AcqRel, &guard);
                if !old.is_null() {
                    // A baseline not yet collected (two first values raced): count it
                    // as a delta so nothing is lost.
                    // SAFETY: as above; `old` is unlinked and destroyed after the grace period.
                    unsafe {
                        self.merge(old.deref());
                        guard.defer_destroy(old);
                    }
                }
            }
            Some(p) => {
                let reset = p.bounds != value.bounds
                    || value.count < p.count
                    || p.counts.iter().zip(&value.counts).any(|(a, b)| b < a);
                if reset {
                    self.merge(value);
                } else {
                    let mut d = value.clone();
                    for (c, pc) in d.counts.iter_mut().zip(&p.counts) {
                        *c -= pc;
                    }
                    d.count -= p.count;
                    d.sum -= p.sum;
                    self.merge(&d);
                }
                // SAFETY: `prev` is unlinked (swapped out above) and not used after this.
                unsafe { guard.defer_destroy(prev) };
            }
        }
    }

    /// Takes the observations since the previous collection, plus any pending baseline.
    pub fn collect(&self) -> (HistogramValue, Option<HistogramValue>) {
        // Only the collector flips the hot bit, and only one collection runs at a time
        // (the aggregator's flush lock), so this load sees the current hot index.
        let hot = self.state.load(Ordering::Relaxed) & HOT_BIT;
        // Release: writers that land on the new hot half after this (Acquire) see the
        // reset done at the end of the previous collection. Acquire: nothing to read
        // through it, but keeps the swap ordered before the `done` loads below.
        let s = self.state.swap(hot ^ HOT_BIT, Ordering::AcqRel);
        let started = s & !HOT_BIT;
        let half = &self.halves[(hot >> 63) as usize];
        // Acquire: pairs with each writer's Release `done` increment.
        while half.done.load(Ordering::Acquire) != started {
            yield_now();
        }
        let counts = half
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let value = HistogramValue {
            bounds: self.bounds.clone(),
            counts,
            sum: f64::from_bits(half.sum.swap(0f64.to_bits(), Ordering::Relaxed)),
            count: half.count.swap(0, Ordering::Relaxed),
            min: f64::from_bits(half.min.swap(f64::INFINITY.to_bits(), Ordering::Relaxed)),
            max: f64::from_bits(
                half.max
                    .swap(f64::NEG_INFINITY.to_bits(), Ordering::Relaxed),
            ),
        };
        // Relaxed: published to later writers of this half by the next Release swap.
        half.done.store(0, Ordering::Relaxed);
        let guard = epoch::pin();
        let b = self
            .baseline
            .swap(epoch::Shared::null(), Ordering::AcqRel, &guard);
        // SAFETY: `b` was swapped out under `guard`; we clone it and hand it to the
        // collector only after the grace period.
        let baseline = unsafe { b.as_ref() }.cloned();
        if !b.is_null() {
            // SAFETY: `b` is unlinked and not used after this.
            unsafe { guard.defer_destroy(b) };
        }
        (value, baseline)
    }
}

impl Drop for HistogramCell {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread can reach these pointers any more.
        unsafe {
            let g = epoch::unprotected();
            for a in [&self.last_cumulative, &self.baseline] {
                let p = a.load(Ordering::Relaxed, g);
                if !p.is_null() {
                    drop(p.into_owned());
                }
            }
        }
    }
}

/// A summary's lock-free state: the latest value as reported.
#[derive(Default)]
pub struct SummaryCell {
    latest: Atomic<SummaryValue>,
}

impl SummaryCell {
    /// Replaces the latest value.
    pub fn set(&self, v: &SummaryValue) {
        let guard = epoch::pin();
        // AcqRel: Release publishes the new value; Acquire pairs with the previous
        // writer's Release before we free its value.
        let old = self
            .latest
            .swap(Owned::new(v.clone()), Ordering::AcqRel, &guard);
        if !old.is_null() {
            // SAFETY: `old` is unlinked; readers that loaded it are pinned and the
            // value is destroyed only after they unpin.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// A copy of the latest value, if any.
    pub fn read(&self) -> Option<SummaryValue> {
        let guard = epoch::pin();
        // Acquire: pairs with `set`'s Release.
        let p = self.latest.load(Ordering::Acquire, &guard);
        // SAFETY: loaded under `guard`; freed only after the grace period.
        unsafe { p.as_ref() }.cloned()
    }
}

impl Drop for SummaryCell {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread can reach the pointer any more.
        unsafe {
            let p = self.latest.load(Ordering::Relaxed, epoch::unprotected());
            if !p.is_null() {
                drop(p.into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_integer_and_float_deltas_add_up() {
        let c = CounterCell::default();
        c.add(1.0);
        c.add(2.5);
        c.add(1e12);
        assert_eq!(c.collect().delta, 1.0 + 2.5 + 1e12);
        assert_eq!(c.collect().delta, 0.0);
    }

    #[test]
    fn cumulative_counter_detects_resets() {
        let c = CounterCell::default();
        c.add_cumulative(100.0);
        assert_eq!(
            c.collect(),
            CounterTake {
                delta: 0.0,
                baseline: 100.0
            }
        );
        c.add_cumulative(130.0);
        c.add_cumulative(150.0);
        assert_eq!(c.collect().delta, 50.0);
        c.add_cumulative(7.0); // restarted
        c.add_cumulative(7.0);
        assert_eq!(c.collect().delta, 7.0);
    }

    #[test]
    fn gauge_sets_and_adjusts() {
        let g = GaugeCell::default();
        g.adjust(5.0, 1);
        g.adjust(-2.0, 2);
        assert_eq!(g.read(), (3.0, 2));
        g.set(-1.5, 3);
        assert_eq!(g.read(), (-1.5, 3));
    }

    fn bounds() -> Arc<[f64]> {
        Arc::from(vec![1.0, 5.0])
    }

    #[test]
    fn histogram_observations_land_in_their_buckets() {
        let h = HistogramCell::new(bounds());
        h.observe(0.5, 1);
        h.observe(1.0, 2); // le=1 is inclusive
        h.observe(3.0, 1);
        h.observe(9.0, 1);
        let (v, base) = h.collect();
        assert!(base.is_none());
        assert_eq!(v.counts, vec![3, 1, 1]);
        assert_eq!(v.count, 5);
        assert_eq!(v.sum, 0.5 + 2.0 + 3.0 + 9.0);
        assert_eq!((v.min, v.max), (0.5, 9.0));
        let (v, _) = h.collect();
        assert_eq!((v.count, v.counts.clone()), (0, vec![0, 0, 0]));
        h.observe(2.0, 1); // after two swaps the first half is hot again
        assert_eq!(h.collect().0.counts, vec![0, 1, 0]);
    }

    #[test]
    fn histogram_merge_rebuckets_foreign_bounds_upward() {
        let h = HistogramCell::new(bounds());
        let other = HistogramValue {
            bounds: Arc::from(vec![0.5, 2.0, 5.0, 100.0]),
            counts: vec![1, 2, 3, 4, 5],
            sum: 10.0,
            count: 15,
            min: 0.1,
            max: 200.0,
        };
        h.merge(&other);
        let (v, _) = h.collect();
        assert_eq!(v.counts, vec![1, 5, 9]);
        assert_eq!(v.count, 15);
    }

    #[test]
    fn cumulative_histogram_takes_differences_and_detects_resets() {
        let h = HistogramCell::new(bounds());
        let mk = |counts: Vec<u64>, sum: f64| HistogramValue {
            bounds: bounds(),
            count: counts.iter().sum(),
            counts,
            sum,
            min: 0.0,
            max: 9.0,
        };
        h.merge_cumulative(&mk(vec![1, 1, 1], 10.0));
        let (d, base) = h.collect();
        assert_eq!(d.count, 0);
        assert_eq!(base.unwrap().count, 3);
        h.merge_cumulative(&mk(vec![2, 1, 4], 20.0));
        let (d, base) = h.collect();
        assert!(base.is_none());
        assert_eq!((d.counts, d.count, d.sum), (vec![1, 0, 3], 4, 10.0));
        h.merge_cumulative(&mk(vec![0, 1, 0], 2.0)); // reset
        let (d, _) = h.collect();
        assert_eq!((d.counts, d.count), (vec![0, 1, 0], 1));
    }

    #[test]
    fn summary_keeps_the_latest_value() {
        let s = SummaryCell::default();
        assert!(s.read().is_none());
        for n in 1..=3 {
            s.set(&SummaryValue {
                quantiles: vec![],
                sum: n as f64,
                count: n,
            });
        }
        assert_eq!(s.read().unwrap().count, 3);
    }
}
