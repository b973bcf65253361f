//! Per-series atomic cells: where points are added without a lock, and where the
//! flusher takes each interval's share out exactly once.
//!
//! Owns: the update, collection and sealing protocols of counters, gauges, histograms
//! and summaries. Must never: block a writer, or let one update be collected twice or
//! not at all.
//!
//! # Protocols
//! - **Counter**: the delta since the last collection lives in two words, an integer
//!   word for integral values below 2^32 (one `fetch_add`, the common StatsD case) and
//!   an f64 word (a CAS loop) for the rest. [`CounterCell::collect`] `swap`s both to
//!   zero (skipping the swap of a word it reads as zero already: the same step). Every add is one read-modify-write of one word, and the swap is too, so each
//!   add is ordered entirely before or after the swap: it lands in exactly one
//!   collection. Cumulative inputs `swap` the last seen value in and add the difference
//!   (or, after a reset, the new value) as a delta; the first one becomes the
//!   *baseline*, which moves the running total but is not a delta, unless the source
//!   says it started after the aggregator ([`CumulativeStart`]): then all of it
//!   happened in weir's watch and it is a delta too. A change of the source's start
//!   time is a reset, like a decrease.
//! - **Gauge**: the value is set with a CAS (so a seal is noticed and kept) and the
//!   timestamp stored; relative adjustments are a CAS loop on the value.
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
//!
//! # Sealing
//! When a series is evicted its cell is *sealed*: the collector swaps a sentinel into
//! every word writers modify (an integer far below any sum, a NaN with a private
//! payload, a state bit, a tagged pointer) and takes what it swapped out as the final
//! share. Every writer operation is a read-modify-write that returns the previous
//! contents, so a writer that comes after the seal sees the sentinel and gets
//! [`Sealed`] back instead of losing its point; the caller then records it in the
//! series' successor. Writers therefore need no epoch pin or lock to race safely with
//! eviction.

use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Atomic, Owned, Shared};

use crate::point::{HistogramValue, SummaryValue};
use crate::sync::{AtomicI64, AtomicU64, Ordering, f64_add, f64_max, f64_min, yield_now};

/// Integral counter increments below this go through the integer word. 2^32 keeps
/// the i64 sum far from overflow: that would take 2^31 maximal adds in one interval.
const INT_FAST_PATH_LIMIT: f64 = 4_294_967_296.0;

/// Bit pattern meaning "no cumulative value seen yet" (a NaN; NaN inputs are rejected).
const NO_VALUE: u64 = u64::MAX;

/// Sentinel of a sealed f64 word: a NaN with a payload no arithmetic produces (gauge
/// inputs are canonicalised, so a NaN gauge is stored as `f64::NAN`).
const SEALED_F64: u64 = 0x7ff4_dead_5ea1_0001;

/// Sentinel of a sealed integer delta word. Live values are never negative (only
/// non-negative increments are added), and a sealed word stays negative for 2^31
/// further maximal increments, far more than the few stale writers that can reach it.
const SEALED_INT: i64 = i64::MIN;

/// The cell was sealed (its series evicted): nothing was recorded, and the point
/// belongs to the series' successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed;

/// `word.swap(fill)`, skipped when the word already holds `fill`: a swap of a value
/// with itself changes nothing, so a load that reads `fill` is that swap, taking
/// effect at the load (an RMW racing it is ordered after it, as it would be after the
/// swap, and lands in a later collection). A collection of a counter that only had
/// integral adds so reads its f64 and baseline words instead of writing them: two
/// locked instructions fewer per series at 1M series. Relaxed: see the module doc.
#[inline]
fn swap_unless_equal(word: &AtomicU64, fill: u64) -> u64 {
    match word.load(Ordering::Relaxed) {
        cur if cur == fill => cur,
        _ => word.swap(fill, Ordering::Relaxed),
    }
}

/// Adds `v` to an f64 word unless it is sealed. Relaxed: a single-word RMW lands in
/// exactly one collection by itself (module doc).
#[inline]
fn f64_add_unsealed(cell: &AtomicU64, v: f64) -> Result<(), Sealed> {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        if cur == SEALED_F64 {
            return Err(Sealed);
        }
        let new = (f64::from_bits(cur) + v).to_bits();
        match cell.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => cur = actual,
        }
    }
}

/// Stores `new` in `slot` unless the slot holds the sealed marker (a null pointer
/// tagged 1); returns what it replaced. A CAS, not a swap, so the marker survives.
fn swap_unless_sealed<'g, T>(
    slot: &Atomic<T>,
    new: Owned<T>,
    guard: &'g epoch::Guard,
) -> Result<Shared<'g, T>, Sealed> {
    let mut new = new;
    // Acquire: pairs with the Release of whoever stored `cur`, before we read or free it.
    let mut cur = slot.load(Ordering::Acquire, guard);
    loop {
        if cur.tag() == 1 {
            return Err(Sealed);
        }
        // AcqRel on success: Release publishes `new`'s contents, Acquire as above.
        match slot.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire, guard) {
            Ok(_) => return Ok(cur),
            Err(e) => {
                cur = e.current;
                new = e.new;
            }
        }
    }
}

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
    /// Integral part of the pending delta, or [`SEALED_INT`]-based. Relaxed: module doc.
    delta_int: AtomicI64,
    /// Non-integral part of the pending delta, f64 bits. Relaxed: see the module doc.
    delta_float: AtomicU64,
    /// Last cumulative input, f64 bits, or [`NO_VALUE`].
    last_cumulative: AtomicU64,
    /// Pending baseline from the first cumulative input, f64 bits.
    baseline: AtomicU64,
    /// Start time of the last cumulative input, ms since the Unix epoch; 0 when unknown.
    /// Relaxed: compared with the next input's start only, like `last_cumulative`.
    last_start_ms: AtomicI64,
}

/// What a cumulative input says about where its running total began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CumulativeStart {
    /// The source's start time (OTLP `start_time_unix_nano`, an OpenMetrics `_created`
    /// line), milliseconds since the Unix epoch; 0 when unknown.
    pub start_ms: i64,
    /// The source started after the aggregator did, so everything its first value
    /// counts happened while weir was watching: the first value is an increase, not a
    /// baseline (the OpenTelemetry Collector's cumulative-to-delta "auto" rule).
    pub counts_from_zero: bool,
}

impl CumulativeStart {
    /// True if `self` names a start and `prev`, a known earlier one, differs: the
    /// source restarted.
    fn restarted_since(self, prev_start_ms: i64) -> bool {
        self.start_ms != 0 && prev_start_ms != 0 && self.start_ms != prev_start_ms
    }
}

impl Default for CounterCell {
    fn default() -> Self {
        CounterCell {
            delta_int: AtomicI64::new(0),
            delta_float: AtomicU64::new(0f64.to_bits()),
            last_cumulative: AtomicU64::new(NO_VALUE),
            baseline: AtomicU64::new(0f64.to_bits()),
            last_start_ms: AtomicI64::new(0),
        }
    }
}

impl CounterCell {
    /// A counter that goes on from a predecessor's last cumulative input (`None`: it
    /// had none) and that input's start time (0: unknown), so the next cumulative
    /// input is a difference to it rather than a new baseline.
    pub fn resumed(last_cumulative: Option<f64>, last_start_ms: i64) -> Self {
        let c = CounterCell::default();
        if let Some(v) = last_cumulative {
            c.last_cumulative.store(v.to_bits(), Ordering::Relaxed);
        }
        c.last_start_ms.store(last_start_ms, Ordering::Relaxed);
        c
    }

    /// The last cumulative input (`None`: none yet) and its start time (0: unknown),
    /// for a successor (see [`CounterCell::resumed`]). Read after [`CounterCell::seal`],
    /// it may already hold a value whose writer then found the cell sealed and took the
    /// point to the successor; that point's increase over the previous input is then
    /// not counted (the same loss as before totals were kept: a point has to race the
    /// eviction of a series idle for the whole TTL).
    pub fn last_input(&self) -> (Option<f64>, i64) {
        // Relaxed: the flusher reads this after sealing; see the doc above.
        let bits = self.last_cumulative.load(Ordering::Relaxed);
        let last = (bits != NO_VALUE).then(|| f64::from_bits(bits));
        (last, self.last_start_ms.load(Ordering::Relaxed))
    }

    /// Adds a delta. The caller has checked that `v` is finite and not negative.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    #[inline]
    pub fn add(&self, v: f64) -> Result<(), Sealed> {
        // A cast round trip, not `v.trunc()` (a libm call on baseline x86-64); i64 casts
        // are single instructions where u64 ones are not. Exact for `v` below the limit.
        let i = v as i64;
        if v < INT_FAST_PATH_LIMIT && i as f64 == v {
            // Relaxed: a single RMW on the word the collector swaps (module doc).
            let prev = self.delta_int.fetch_add(i, Ordering::Relaxed);
            if prev < 0 { Err(Sealed) } else { Ok(()) }
        } else {
            f64_add_unsealed(&self.delta_float, v)
        }
    }

    /// Adds an integral delta: one `fetch_add`, no float conversion.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    #[inline]
    pub fn add_u64(&self, n: u64) -> Result<(), Sealed> {
        if n < 1 << 32 {
            // Relaxed: a single RMW on the word the collector swaps (module doc).
            let prev = self.delta_int.fetch_add(n as i64, Ordering::Relaxed);
            if prev < 0 { Err(Sealed) } else { Ok(()) }
        } else {
            f64_add_unsealed(&self.delta_float, n as f64)
        }
    }

    /// Applies a cumulative value of unknown start (see
    /// [`CounterCell::add_cumulative_since`]).
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn add_cumulative(&self, v: f64) -> Result<(), Sealed> {
        self.add_cumulative_since(v, CumulativeStart::default())
    }

    /// Applies a cumulative value: the increase since the previous one becomes a delta;
    /// a decrease, or a start time other than the previous input's, means the source
    /// restarted and the whole new value is the delta. The first value is the
    /// baseline, unless `start.counts_from_zero`, when it is a delta too. The caller
    /// has checked that `v` is finite and not negative.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn add_cumulative_since(&self, v: f64, start: CumulativeStart) -> Result<(), Sealed> {
        // Relaxed: each cumulative value is consumed by exactly one swap, whatever the
        // order; the resulting delta goes through a word that detects a seal. Two
        // sources racing on one series are ambiguous whatever the ordering.
        let prev_start = if start.start_ms == 0 {
            0
        } else {
            self.last_start_ms.swap(start.start_ms, Ordering::Relaxed)
        };
        let prev = self.last_cumulative.swap(v.to_bits(), Ordering::Relaxed);
        if prev == NO_VALUE {
            if start.counts_from_zero {
                return self.add(v);
            }
            return f64_add_unsealed(&self.baseline, v);
        }
        let prev = f64::from_bits(prev);
        let reset = v < prev || start.restarted_since(prev_start);
        self.add(if reset { v } else { v - prev })
    }

    /// Takes the pending delta and baseline, leaving zero.
    pub fn collect(&self) -> CounterTake {
        self.take(0, 0f64.to_bits())
    }

    /// What [`CounterCell::collect`] would take now, without taking it: a read-only
    /// look for exposition between flushes. Each word is read on its own (Relaxed
    /// loads), so an add racing the read may or may not be included; the next
    /// collection still takes every add exactly once.
    pub fn pending(&self) -> CounterTake {
        // Relaxed: a read-only look; no other memory depends on it (see above).
        let int = self.delta_int.load(Ordering::Relaxed);
        let clean = |bits: u64| {
            if bits == SEALED_F64 {
                0.0
            } else {
                f64::from_bits(bits)
            }
        };
        CounterTake {
            delta: int.max(0) as f64 + clean(self.delta_float.load(Ordering::Relaxed)),
            baseline: clean(self.baseline.load(Ordering::Relaxed)),
        }
    }

    /// Takes the final delta and baseline and seals the cell (see the module doc).
    pub fn seal(&self) -> CounterTake {
        self.take(SEALED_INT, SEALED_F64)
    }

    fn take(&self, int_fill: i64, float_fill: u64) -> CounterTake {
        // Relaxed: single-word swaps; see the module doc.
        // An idle series' integer word is skipped like the f64 words below (see
        // `swap_unless_equal`).
        let int = match self.delta_int.load(Ordering::Relaxed) {
            cur if cur == int_fill => cur,
            _ => self.delta_int.swap(int_fill, Ordering::Relaxed),
        };
        let float = swap_unless_equal(&self.delta_float, float_fill);
        let baseline = swap_unless_equal(&self.baseline, float_fill);
        // Taking from a sealed cell is a caller bug; report zeros, not sentinels.
        let clean = |bits: u64| {
            if bits == SEALED_F64 {
                0.0
            } else {
                f64::from_bits(bits)
            }
        };
        CounterTake {
            delta: int.max(0) as f64 + clean(float),
            baseline: clean(baseline),
        }
    }
}

/// A gauge's lock-free state: the last value and when it was set.
pub struct GaugeCell {
    /// f64 bits. Relaxed: a gauge is last-writer-wins; no other memory depends on it.
    value: AtomicU64,
    /// Milliseconds since the Unix epoch of the last update. Relaxed, as `value`; value
    /// and timestamp of two racing writers may mix, which only matters for writers that
    /// raced to the same instant.
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
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; the value is not part of any flush.
    #[inline]
    pub fn set(&self, v: f64, timestamp_ms: i64) -> Result<(), Sealed> {
        // One NaN bit pattern, so no input can look like the seal sentinel.
        let bits = if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        };
        // A CAS, not a swap: a swap would overwrite the sentinel and hide the seal
        // from later writers.
        let mut cur = self.value.load(Ordering::Relaxed);
        loop {
            if cur == SEALED_F64 {
                return Err(Sealed);
            }
            match self
                .value
                .compare_exchange_weak(cur, bits, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.timestamp_ms.store(timestamp_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Adds a signed amount to the value (StatsD `+N`/`-N`).
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    #[inline]
    pub fn adjust(&self, d: f64, timestamp_ms: i64) -> Result<(), Sealed> {
        f64_add_unsealed(&self.value, d)?;
        self.timestamp_ms.store(timestamp_ms, Ordering::Relaxed);
        Ok(())
    }

    /// The current value and its timestamp.
    pub fn read(&self) -> (f64, i64) {
        (
            f64::from_bits(self.value.load(Ordering::Relaxed)),
            self.timestamp_ms.load(Ordering::Relaxed),
        )
    }

    /// The final value and timestamp; seals the cell.
    pub fn seal(&self) -> (f64, i64) {
        let v = self.value.swap(SEALED_F64, Ordering::Relaxed);
        let v = if v == SEALED_F64 {
            f64::NAN
        } else {
            f64::from_bits(v)
        };
        (v, self.timestamp_ms.load(Ordering::Relaxed))
    }
}

/// Bit 63 of [`HotCold::state`]: the hot half.
const HOT_BIT: u64 = 1 << 63;
/// Bit 62 of [`HotCold::state`]: sealed; writers back off without writing.
const SEALED_BIT: u64 = 1 << 62;
/// Bits 0..62 of [`HotCold::state`]: writes started on the hot half.
const STARTED_MASK: u64 = SEALED_BIT - 1;

/// The hot/cold protocol of the module doc, for cells whose update touches several
/// words (histograms, sets). The cell keeps two halves of its data; this type says
/// which half a writer may write and when the collector may read the other.
struct HotCold {
    /// Bit 63: index of the hot half. Bit 62: sealed. Bits 0..62: writes started on the
    /// hot half since the last flip.
    state: AtomicU64,
    /// Writes finished on each half since it was last collected.
    done: [AtomicU64; 2],
}

impl HotCold {
    fn new() -> Self {
        HotCold {
            state: AtomicU64::new(0),
            done: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Announces a write: the index of the half to write, or `Sealed`. The caller
    /// writes that half, then calls [`HotCold::exit`] with it.
    #[inline]
    fn enter(&self) -> Result<usize, Sealed> {
        // Acquire: pairs with the collector's Release swap in `flip`, so this writer
        // sees the half it lands on already reset.
        let s = self.state.fetch_add(1, Ordering::Acquire);
        if s & SEALED_BIT != 0 {
            return Err(Sealed);
        }
        Ok((s >> 63) as usize)
    }

    /// Publishes a write on `half`.
    #[inline]
    fn exit(&self, half: usize) {
        // Release: the collector's Acquire load in `flip` then sees every write to the
        // half before this.
        self.done[half].fetch_add(1, Ordering::Release);
    }

    /// True once sealed (a hint: a writer still finds out for sure in `enter`).
    fn is_sealed(&self) -> bool {
        self.state.load(Ordering::Relaxed) & SEALED_BIT != 0
    }

    /// Makes the other half hot (or seals the cell), waits until every writer already
    /// on the old hot half is done, and returns its index. The caller reads and resets
    /// that half, then calls [`HotCold::reset`]. One collector at a time.
    fn flip(&self, seal: bool) -> usize {
        // Only the collector flips the hot bit, and only one collection runs at a time
        // (the aggregator's flush lock), so this load sees the current hot index.
        let hot = self.state.load(Ordering::Relaxed) & HOT_BIT;
        let next = if seal {
            hot | SEALED_BIT
        } else {
            hot ^ HOT_BIT
        };
        // Release: writers that land on the new hot half after this (Acquire) see the
        // reset done at the end of the previous collection. Acquire: nothing to read
        // through it, but keeps the swap ordered before the `done` loads below.
        let s = self.state.swap(next, Ordering::AcqRel);
        // Writers that found the cell sealed wrote nothing, so there is none to wait for.
        let started = if s & SEALED_BIT != 0 {
            0
        } else {
            s & STARTED_MASK
        };
        let half = (hot >> 63) as usize;
        // Acquire: pairs with each writer's Release in `exit`.
        while self.done[half].load(Ordering::Acquire) != started {
            yield_now();
        }
        half
    }

    /// Marks `half` collected.
    fn reset(&self, half: usize) {
        // Relaxed: published to later writers of this half by the next Release swap.
        self.done[half].store(0, Ordering::Relaxed);
    }
}

/// One half of a [`HistogramCell`]. All fields Relaxed; [`HotCold`] publishes them.
struct HistogramHalf {
    counts: Box<[AtomicU64]>,
    /// f64 bits.
    sum: AtomicU64,
    count: AtomicU64,
    /// f64 bits, `+Inf` when empty.
    min: AtomicU64,
    /// f64 bits, `-Inf` when empty.
    max: AtomicU64,
}

impl HistogramHalf {
    fn new(buckets: usize) -> Self {
        HistogramHalf {
            counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
        }
    }
}

/// A histogram's lock-free state (see the module doc for the hot/cold protocol).
pub struct HistogramCell {
    bounds: Arc<[f64]>,
    hot_cold: HotCold,
    halves: [HistogramHalf; 2],
    /// Last cumulative input (for reset detection), epoch-protected.
    last_cumulative: Atomic<HistogramValue>,
    /// Pending baseline from the first cumulative input, taken by the collector. A null
    /// pointer tagged 1 means sealed.
    baseline: Atomic<HistogramValue>,
    /// Start time of the last cumulative input, as in [`CounterCell`]. Relaxed: see
    /// there.
    last_start_ms: AtomicI64,
}

impl HistogramCell {
    /// An empty histogram over `bounds` (strictly increasing, finite).
    pub fn new(bounds: Arc<[f64]>) -> Self {
        let n = bounds.len() + 1;
        HistogramCell {
            bounds,
            hot_cold: HotCold::new(),
            halves: [HistogramHalf::new(n), HistogramHalf::new(n)],
            last_cumulative: Atomic::null(),
            baseline: Atomic::null(),
            last_start_ms: AtomicI64::new(0),
        }
    }

    /// A histogram that goes on from a predecessor's last cumulative input and its start
    /// time, as [`CounterCell::resumed`].
    pub fn resumed(
        bounds: Arc<[f64]>,
        last_cumulative: Option<HistogramValue>,
        last_start_ms: i64,
    ) -> Self {
        let h = HistogramCell::new(bounds);
        if let Some(v) = last_cumulative {
            // Relaxed: the cell is not shared yet; publishing it publishes this.
            h.last_cumulative.store(Owned::new(v), Ordering::Relaxed);
        }
        h.last_start_ms.store(last_start_ms, Ordering::Relaxed);
        h
    }

    /// The last cumulative input and its start time, as [`CounterCell::last_input`].
    pub fn last_input(&self) -> (Option<HistogramValue>, i64) {
        let guard = epoch::pin();
        // Acquire: pairs with the Release swap in `merge_cumulative_since`.
        let p = self.last_cumulative.load(Ordering::Acquire, &guard);
        // SAFETY: loaded under `guard`; freed only after the grace period.
        let last = unsafe { p.as_ref() }.cloned();
        (last, self.last_start_ms.load(Ordering::Relaxed))
    }

    /// The bucket upper bounds.
    pub fn bounds(&self) -> &Arc<[f64]> {
        &self.bounds
    }

    /// Runs `write` on the hot half, announcing it first and publishing it after.
    #[inline]
    fn write(&self, write: impl FnOnce(&HistogramHalf)) -> Result<(), Sealed> {
        let half = self.hot_cold.enter()?;
        write(&self.halves[half]);
        self.hot_cold.exit(half);
        Ok(())
    }

    /// Records `count` observations of `value`. NaN observations are the caller's to
    /// reject.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    #[inline]
    pub fn observe(&self, value: f64, count: u64) -> Result<(), Sealed> {
        let idx = self.bounds.partition_point(|b| *b < value);
        self.write(|h| {
            h.counts[idx].fetch_add(count, Ordering::Relaxed);
            h.count.fetch_add(count, Ordering::Relaxed);
            f64_add(&h.sum, value * count as f64);
            f64_min(&h.min, value);
            f64_max(&h.max, value);
        })
    }

    /// Adds a whole delta histogram. Buckets whose bounds differ from this cell's are
    /// moved to the smallest bucket of this cell whose bound is at least theirs (exact
    /// when the bounds match, which is the usual case).
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn merge(&self, delta: &HistogramValue) -> Result<(), Sealed> {
        let same = Arc::ptr_eq(&delta.bounds, &self.bounds) || *delta.bounds == *self.bounds;
        self.write(|h| {
            for (i, &c) in delta.counts.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let j = match delta.bounds.get(i) {
                    _ if same => i,
                    Some(ub) => self.bounds.partition_point(|b| b < ub),
                    None => self.bounds.len(),
                };
                h.counts[j].fetch_add(c, Ordering::Relaxed);
            }
            h.count.fetch_add(delta.count, Ordering::Relaxed);
            f64_add(&h.sum, delta.sum);
            if delta.count > 0 {
                f64_min(&h.min, delta.min);
                f64_max(&h.max, delta.max);
            }
        })
    }

    /// Applies a cumulative histogram of unknown start (see
    /// [`HistogramCell::merge_cumulative_since`]).
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn merge_cumulative(&self, value: &HistogramValue) -> Result<(), Sealed> {
        self.merge_cumulative_since(value, CumulativeStart::default())
    }

    /// Applies a cumulative histogram: the difference to the previous one is merged as
    /// a delta; a reset (count or any bucket lower than before, other bounds, or a
    /// start time other than the previous input's) merges the whole value; the first
    /// one becomes the baseline, unless `start.counts_from_zero`, when it is merged
    /// as a delta.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn merge_cumulative_since(
        &self,
        value: &HistogramValue,
        start: CumulativeStart,
    ) -> Result<(), Sealed> {
        if self.hot_cold.is_sealed() {
            return Err(Sealed);
        }
        // Relaxed: as in `CounterCell::add_cumulative_since`.
        let prev_start = if start.start_ms == 0 {
            0
        } else {
            self.last_start_ms.swap(start.start_ms, Ordering::Relaxed)
        };
        let guard = epoch::pin();
        // AcqRel: the Release half publishes the new value's contents; the Acquire half
        // lets us read the previous one, published the same way.
        let prev = self
            .last_cumulative
            .swap(Owned::new(value.clone()), Ordering::AcqRel, &guard);
        // SAFETY: `prev` was loaded under `guard` and is destroyed only through
        // `defer_destroy` below, after every thread pinned now has unpinned.
        let Some(p) = (unsafe { prev.as_ref() }) else {
            if start.counts_from_zero {
                return self.merge(value);
            }
            // Sealed after our check: the final share is taken and this value belongs
            // to the successor.
            let old = swap_unless_sealed(&self.baseline, Owned::new(value.clone()), &guard)?;
            if old.is_null() {
                return Ok(());
            }
            // A baseline not yet collected (two first values raced): merge it as a
            // delta so nothing is lost.
            // SAFETY: `old` was swapped out under `guard`; it is freed only below,
            // after the grace period.
            let merged = self.merge(unsafe { old.deref() });
            // SAFETY: `old` is unlinked and not used after this.
            unsafe { guard.defer_destroy(old) };
            return merged;
        };
        let reset = start.restarted_since(prev_start)
            || p.bounds != value.bounds
            || value.count < p.count
            || p.counts.iter().zip(&value.counts).any(|(a, b)| b < a);
        let merged = if reset {
            self.merge(value)
        } else {
            let mut d = value.clone();
            for (c, pc) in d.counts.iter_mut().zip(&p.counts) {
                *c -= pc;
            }
            d.count -= p.count;
            d.sum -= p.sum;
            self.merge(&d)
        };
        // SAFETY: `prev` is unlinked (swapped out above) and not used after this.
        unsafe { guard.defer_destroy(prev) };
        merged
    }

    /// Takes the observations since the previous collection, plus any pending baseline.
    pub fn collect(&self) -> (HistogramValue, Option<HistogramValue>) {
        self.take(false)
    }

    /// What [`HistogramCell::collect`] would take now, without taking it: a read-only
    /// look for exposition between flushes. Both halves are read (the cold one is empty
    /// between collections) with Relaxed loads and no flip, so writers are never waited
    /// for; an observation racing the read may show in some of its words (a bucket)
    /// and not yet in others (the count). The next collection is unaffected.
    pub fn pending(&self) -> (HistogramValue, Option<HistogramValue>) {
        let mut value = HistogramValue::empty(self.bounds.clone());
        // Relaxed: a read-only look that may be torn by racing writers (see above).
        for half in &self.halves {
            for (t, c) in value.counts.iter_mut().zip(half.counts.iter()) {
                *t += c.load(Ordering::Relaxed);
            }
            value.count += half.count.load(Ordering::Relaxed);
            value.sum += f64::from_bits(half.sum.load(Ordering::Relaxed));
            value.min = value
                .min
                .min(f64::from_bits(half.min.load(Ordering::Relaxed)));
            value.max = value
                .max
                .max(f64::from_bits(half.max.load(Ordering::Relaxed)));
        }
        let guard = epoch::pin();
        // Acquire: pairs with the Release of the swap that stored the baseline.
        let b = self.baseline.load(Ordering::Acquire, &guard);
        // SAFETY: loaded under `guard`; freed only after the grace period.
        let baseline = unsafe { b.as_ref() }.cloned();
        (value, baseline)
    }

    /// Takes the final share and seals the cell (see the module doc).
    pub fn seal(&self) -> (HistogramValue, Option<HistogramValue>) {
        self.take(true)
    }

    fn take(&self, seal: bool) -> (HistogramValue, Option<HistogramValue>) {
        let index = self.hot_cold.flip(seal);
        let half = &self.halves[index];
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
        self.hot_cold.reset(index);
        let guard = epoch::pin();
        // A null pointer tagged 1 marks the baseline slot sealed (see `merge_cumulative`).
        let b = self.baseline.swap(
            Shared::null().with_tag(usize::from(seal)),
            Ordering::AcqRel,
            &guard,
        );
        // SAFETY: `b` was swapped out under `guard`, so it is not freed while we clone it.
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

/// A summary's lock-free state: the latest value as reported. A null pointer tagged 1
/// means sealed.
#[derive(Default)]
pub struct SummaryCell {
    latest: Atomic<SummaryValue>,
}

impl SummaryCell {
    /// Replaces the latest value.
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; the value is not part of any flush.
    pub fn set(&self, v: &SummaryValue) -> Result<(), Sealed> {
        let guard = epoch::pin();
        let old = swap_unless_sealed(&self.latest, Owned::new(v.clone()), &guard)?;
        if !old.is_null() {
            // SAFETY: `old` is unlinked; readers that loaded it are pinned and the
            // value is destroyed only after they unpin.
            unsafe { guard.defer_destroy(old) };
        }
        Ok(())
    }

    /// A copy of the latest value, if any.
    pub fn read(&self) -> Option<SummaryValue> {
        let guard = epoch::pin();
        // Acquire: pairs with `set`'s Release.
        let p = self.latest.load(Ordering::Acquire, &guard);
        // SAFETY: loaded under `guard`; freed only after the grace period.
        unsafe { p.as_ref() }.cloned()
    }

    /// The final value, if any; seals the cell.
    pub fn seal(&self) -> Option<SummaryValue> {
        let guard = epoch::pin();
        let old = self
            .latest
            .swap(Shared::null().with_tag(1), Ordering::AcqRel, &guard);
        // SAFETY: swapped out under `guard`; freed only after the grace period.
        let v = unsafe { old.as_ref() }.cloned();
        if !old.is_null() {
            // SAFETY: `old` is unlinked and not used after this.
            unsafe { guard.defer_destroy(old) };
        }
        v
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

/// A StatsD set's lock-free state: the distinct members seen since the last
/// collection, as 64-bit hashes in a lock-free hash set per half (the hot/cold
/// protocol of `HotCold`). Two members whose hashes collide count once; with 64-bit
/// hashes that needs billions of members.
pub struct SetCell {
    hot_cold: HotCold,
    halves: [papaya::HashSet<u64, foldhash::fast::RandomState>; 2],
}

impl Default for SetCell {
    fn default() -> Self {
        SetCell {
            hot_cold: HotCold::new(),
            halves: Default::default(),
        }
    }
}

impl SetCell {
    /// Adds a member (by its hash).
    ///
    /// # Errors
    /// [`Sealed`] if the cell was sealed; nothing was recorded.
    pub fn insert(&self, member_hash: u64) -> Result<(), Sealed> {
        let half = self.hot_cold.enter()?;
        self.halves[half].pin().insert(member_hash);
        self.hot_cold.exit(half);
        Ok(())
    }

    /// The number of distinct members since the previous collection; starts over.
    pub fn collect(&self) -> u64 {
        self.take(false)
    }

    /// What [`SetCell::collect`] would count now, without taking it (a read-only look;
    /// a member racing the read may or may not be counted).
    pub fn pending(&self) -> u64 {
        self.halves.iter().map(|h| h.pin().len() as u64).sum()
    }

    /// As [`SetCell::collect`], and seals the cell.
    pub fn seal(&self) -> u64 {
        self.take(true)
    }

    fn take(&self, seal: bool) -> u64 {
        let index = self.hot_cold.flip(seal);
        let set = self.halves[index].pin();
        let n = set.len() as u64;
        set.clear();
        self.hot_cold.reset(index);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_integer_and_float_deltas_add_up() {
        let c = CounterCell::default();
        c.add(1.0).unwrap();
        c.add(2.5).unwrap();
        c.add(1e12).unwrap();
        assert_eq!(c.collect().delta, 1.0 + 2.5 + 1e12);
        assert_eq!(c.collect().delta, 0.0);
    }

    #[test]
    fn cumulative_counter_detects_resets() {
        let c = CounterCell::default();
        c.add_cumulative(100.0).unwrap();
        assert_eq!(
            c.collect(),
            CounterTake {
                delta: 0.0,
                baseline: 100.0
            }
        );
        c.add_cumulative(130.0).unwrap();
        c.add_cumulative(150.0).unwrap();
        assert_eq!(c.collect().delta, 50.0);
        c.add_cumulative(7.0).unwrap(); // restarted
        c.add_cumulative(7.0).unwrap();
        assert_eq!(c.collect().delta, 7.0);
    }

    #[test]
    fn gauge_sets_and_adjusts() {
        let g = GaugeCell::default();
        g.adjust(5.0, 1).unwrap();
        g.adjust(-2.0, 2).unwrap();
        assert_eq!(g.read(), (3.0, 2));
        g.set(-1.5, 3).unwrap();
        assert_eq!(g.read(), (-1.5, 3));
    }

    fn bounds() -> Arc<[f64]> {
        Arc::from(vec![1.0, 5.0])
    }

    #[test]
    fn histogram_observations_land_in_their_buckets() {
        let h = HistogramCell::new(bounds());
        h.observe(0.5, 1).unwrap();
        h.observe(1.0, 2).unwrap(); // le=1 is inclusive
        h.observe(3.0, 1).unwrap();
        h.observe(9.0, 1).unwrap();
        let (v, base) = h.collect();
        assert!(base.is_none());
        assert_eq!(v.counts, vec![3, 1, 1]);
        assert_eq!(v.count, 5);
        assert_eq!(v.sum, 0.5 + 2.0 + 3.0 + 9.0);
        assert_eq!((v.min, v.max), (0.5, 9.0));
        let (v, _) = h.collect();
        assert_eq!((v.count, v.counts.clone()), (0, vec![0, 0, 0]));
        h.observe(2.0, 1).unwrap(); // after two swaps the first half is hot again
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
        h.merge(&other).unwrap();
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
        h.merge_cumulative(&mk(vec![1, 1, 1], 10.0)).unwrap();
        let (d, base) = h.collect();
        assert_eq!(d.count, 0);
        assert_eq!(base.unwrap().count, 3);
        h.merge_cumulative(&mk(vec![2, 1, 4], 20.0)).unwrap();
        let (d, base) = h.collect();
        assert!(base.is_none());
        assert_eq!((d.counts, d.count, d.sum), (vec![1, 0, 3], 4, 10.0));
        h.merge_cumulative(&mk(vec![0, 1, 0], 2.0)).unwrap(); // reset
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
            })
            .unwrap();
        }
        assert_eq!(s.read().unwrap().count, 3);
    }

    #[test]
    fn sealed_cells_hand_back_later_writes() {
        let c = CounterCell::default();
        c.add(2.0).unwrap();
        c.add(0.5).unwrap();
        c.add_cumulative(10.0).unwrap();
        assert_eq!(
            c.seal(),
            CounterTake {
                delta: 2.5,
                baseline: 10.0
            }
        );
        assert_eq!(c.add(1.0), Err(Sealed));
        assert_eq!(c.add(1.5), Err(Sealed));
        assert_eq!(c.add_cumulative(12.0), Err(Sealed));

        let g = GaugeCell::default();
        g.set(f64::NAN, 1).unwrap();
        g.set(3.0, 2).unwrap();
        assert_eq!(g.seal(), (3.0, 2));
        assert_eq!(g.set(f64::NAN, 3), Err(Sealed));
        assert_eq!(
            g.adjust(1.0, 3),
            Err(Sealed),
            "the seal survives refused writes"
        );
        assert_eq!(g.set(1.0, 3), Err(Sealed));

        let h = HistogramCell::new(bounds());
        h.observe(0.5, 1).unwrap();
        let (v, _) = h.seal();
        assert_eq!(v.count, 1);
        assert_eq!(h.observe(0.5, 1), Err(Sealed));
        let whole = HistogramValue::empty(bounds());
        assert_eq!(h.merge(&whole), Err(Sealed));
        assert_eq!(h.merge_cumulative(&whole), Err(Sealed));
        assert_eq!(h.observe(0.5, 1), Err(Sealed));

        let s = SummaryCell::default();
        let v = SummaryValue {
            quantiles: vec![],
            sum: 1.0,
            count: 1,
        };
        s.set(&v).unwrap();
        assert_eq!(s.seal(), Some(v.clone()));
        assert_eq!(s.set(&v), Err(Sealed));
        assert_eq!(s.set(&v), Err(Sealed), "the seal survives refused writes");
    }

    #[test]
    fn a_nan_gauge_is_not_mistaken_for_a_seal() {
        let g = GaugeCell::default();
        g.set(f64::from_bits(SEALED_F64), 1).unwrap();
        g.set(1.0, 2).unwrap();
        assert_eq!(g.read(), (1.0, 2));
    }

    #[test]
    fn sets_count_distinct_members_per_collection() {
        let s = SetCell::default();
        for m in [1, 2, 2, 3, 1] {
            s.insert(m).unwrap();
        }
        assert_eq!(s.collect(), 3);
        assert_eq!(s.collect(), 0);
        s.insert(7).unwrap();
        s.insert(7).unwrap();
        assert_eq!(s.seal(), 1);
        assert_eq!(s.insert(8), Err(Sealed));
    }
}
