//! One series: its cell and bookkeeping, stored with its key ([`SharedSeries`]), the
//! sample check, and how a sample lands in its cell ([`Series::apply`]), with the
//! retire bit that handles and eviction share.
//!
//! Owns: the per-series state every other part points at. Must never: block, or
//! apply a sample to a sealed cell without reporting `Sealed`.

use std::hash::BuildHasher as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::cell::{
    CounterCell, CumulativeStart, GaugeCell, HistogramCell, Sealed, SetCell, SummaryCell,
};
use crate::hint::prefetch;
use crate::key::{Keyed, KeyedValue};
use crate::point::{HistogramValue, MetricKind, Sample, Temporality};

use super::Rejected;

/// Per metric name: how many series it has.
pub(super) struct Family {
    /// Series of this name that are held. Changed with AcqRel RMWs; a creator's
    /// increment and a retirer's decrement race only on the count itself.
    pub(super) active: AtomicUsize,
}

impl Family {
    /// Gives back one series' share of the count, never below zero: an evicted series
    /// finds its family by name, and that may be a newer family than the one that
    /// counted it (see `Aggregator::flush_at`).
    pub(super) fn release(&self) {
        // AcqRel: as for every change of the count (see the field).
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// The lock-free state of one series. Histograms are boxed so that every other series
/// pays only for the small cells (a histogram cell is ~150 bytes, a counter's 40).
///
/// Every variant begins with the series' [`Handles`] word: `repr(u8)` lays each variant
/// out as a C struct after the one-byte tag, so the 4-byte word sits in what would
/// otherwise be the tag's padding, and a series is 64 bytes instead of 72 (a test
/// asserts it). [`Series::handles`] reads it whatever the variant.
#[cfg_attr(feature = "shuttle", allow(clippy::large_enum_variant))]
#[repr(u8)]
pub(super) enum Cell {
    Counter(Handles, Counter),
    Gauge(Handles, GaugeCell),
    Histogram(Handles, Box<Histogram>),
    Summary(Handles, SummaryCell),
    /// Reported as a gauge (the distinct count); boxed like histograms.
    Set(Handles, Box<SetCell>),
}

/// A new series' cell, with no handles yet.
impl Cell {
    pub(super) fn counter(c: Counter) -> Cell {
        Cell::Counter(Handles::default(), c)
    }
    pub(super) fn gauge(g: GaugeCell) -> Cell {
        Cell::Gauge(Handles::default(), g)
    }
    pub(super) fn histogram(h: Histogram) -> Cell {
        Cell::Histogram(Handles::default(), Box::new(h))
    }
    pub(super) fn summary(s: SummaryCell) -> Cell {
        Cell::Summary(Handles::default(), s)
    }
    pub(super) fn set(s: SetCell) -> Cell {
        Cell::Set(Handles::default(), Box::new(s))
    }
}

/// Live [`SeriesHandle`](super::SeriesHandle)s of a series in bits 0..31, and
/// [`RETIRED`]: a series with handles is never retired, and a retired one takes no new
/// handle. AcqRel RMWs: the word itself is the only thing they order.
#[derive(Default)]
pub(super) struct Handles(AtomicU32);

impl Handles {
    /// Counts one more handle, unless the series is retired (then it counts nothing
    /// and says false: resolve the series again).
    pub(super) fn acquire(&self) -> bool {
        if self.0.fetch_add(1, Ordering::AcqRel) & RETIRED == 0 {
            return true;
        }
        // Being retired: it leaves the index before it is sealed.
        self.0.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Counts one handle less.
    pub(super) fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the series was retired (evicted, or being evicted under the flush lock).
    pub(super) fn retired(&self) -> bool {
        self.0.load(Ordering::Acquire) & RETIRED != 0
    }

    /// Marks the series retired unless a handle holds it.
    fn try_retire(&self) -> bool {
        self.0
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A counter's cell and the running total that only the flusher reads and writes
/// (the sum of every share it has taken, for cumulative output).
pub(super) struct Counter {
    cell: CounterCell,
    /// The total's `f64` bits. Relaxed: only the flusher touches it, under the flush
    /// lock, whose release and acquire order one flush's store before the next one's
    /// load; the creator stores it before the series is shared.
    total: AtomicU64,
}

impl Counter {
    pub(super) fn new(cell: CounterCell, total: f64) -> Counter {
        Counter {
            cell,
            total: AtomicU64::new(total.to_bits()),
        }
    }

    /// The running total (flusher only, see the field).
    pub(super) fn total(&self) -> f64 {
        f64::from_bits(self.total.load(Ordering::Relaxed))
    }

    /// Sets the running total (flusher only, see the field).
    pub(super) fn set_total(&self, total: f64) {
        self.total.store(total.to_bits(), Ordering::Relaxed);
    }
}

impl Deref for Counter {
    type Target = CounterCell;

    fn deref(&self) -> &CounterCell {
        &self.cell
    }
}

/// A histogram's cell and the running total that only the flusher touches (behind a
/// mutex no one else takes, so it is never contended).
pub(super) struct Histogram {
    cell: HistogramCell,
    total: Mutex<HistogramValue>,
}

impl Histogram {
    /// `total` must have the cell's bounds.
    pub(super) fn new(cell: HistogramCell, total: HistogramValue) -> Histogram {
        Histogram {
            cell,
            total: Mutex::new(total),
        }
    }

    /// The running total (flusher only).
    pub(super) fn total(&self) -> MutexGuard<'_, HistogramValue> {
        self.total.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Deref for Histogram {
    type Target = HistogramCell;

    fn deref(&self) -> &HistogramCell {
        &self.cell
    }
}

/// One series: its cell and bookkeeping. Shared, with its key in the same allocation,
/// as a [`SharedSeries`] by the index, the flusher's list, writer caches and handles.
/// The flusher walks these themselves: its list holds only their addresses, and what
/// it alone keeps per series (running totals, when activity was last seen) is stored
/// here, in words it alone writes.
pub(super) struct Series {
    /// When the series began (the start of its running totals), whole seconds since
    /// the epoch ([`Series::start_ms`]): a start is reported to the second, and 32 bits
    /// with [`touched`](Series::touched) keep a series at 64 bytes.
    start_secs: u32,
    /// Activity, written by both sides: a writer stores [`UPDATED`] at an update (if
    /// the word holds anything else), and the flusher, when it finds that, replaces it
    /// with its own flush time in whole seconds since the epoch, rounded down. So
    /// `UPDATED` means "updated since the flusher last looked", and anything else holds
    /// when the flusher last saw activity (the TTL counts from there, to the second).
    /// Relaxed: a hint for the TTL only (an update racing the flusher's store was made
    /// during this flush, which counts as activity anyway); no data is read through
    /// it, and no point depends on it (an evicted series' updates fail as `Sealed`).
    pub(super) touched: AtomicU32,
    /// The cell, and with it the live handles ([`Series::handles`]).
    pub(super) cell: Cell,
}

/// A series and its canonical key in one allocation with one reference count (see
/// [`crate::key`]'s "Representation"): the series first, then the key's 8-byte header,
/// then the key bytes. `.key()` is the series' identity; a clone of it (a flush batch
/// entry, a handle's key) keeps the whole series alive.
pub(super) type SharedSeries = Keyed<Series>;

impl KeyedValue for Series {
    const KIND: u32 = 1;
}

pub(super) fn kind_of(cell: &Cell) -> MetricKind {
    match cell {
        Cell::Counter(_, _) => MetricKind::Counter,
        Cell::Gauge(_, _) => MetricKind::Gauge,
        Cell::Histogram(_, _) => MetricKind::Histogram,
        Cell::Summary(_, _) => MetricKind::Summary,
        Cell::Set(_, _) => MetricKind::Gauge,
    }
}

/// Checks that `sample` can be applied to any series of its kind. Inlined: where the
/// caller built the sample, only its own variant's check is left.
#[inline]
pub(super) fn validate(sample: &Sample<'_>) -> Result<(), Rejected> {
    let ok = match sample {
        Sample::Counter(v, _) => v.is_finite() && *v >= 0.0,
        Sample::Gauge(_) => true,
        Sample::GaugeDelta(d) => d.is_finite(),
        Sample::Observe { value, count } => !value.is_nan() && *count > 0,
        Sample::Histogram(h, _) => h.is_well_formed() && !h.sum.is_nan(),
        Sample::Summary(s) => s
            .quantiles
            .iter()
            .all(|q| (0.0..=1.0).contains(&q.quantile)),
        Sample::SetMember(_) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Rejected::InvalidValue(sample.kind().as_str()))
    }
}

impl Series {
    /// The series' handle count and retire bit (stored in its cell, see [`Cell`]).
    #[inline]
    pub(super) fn handles(&self) -> &Handles {
        match &self.cell {
            Cell::Counter(h, _)
            | Cell::Gauge(h, _)
            | Cell::Histogram(h, _)
            | Cell::Summary(h, _)
            | Cell::Set(h, _) => h,
        }
    }

    /// Applies a validated sample. `now_ms` stamps gauges without a timestamp; `start`
    /// is where a cumulative sample's running total began (ignored by other samples).
    #[inline]
    pub(super) fn apply(
        &self,
        sample: &Sample<'_>,
        timestamp_ms: i64,
        now_ms: i64,
        start: CumulativeStart,
    ) -> Result<(), Refusal> {
        let applied = match (&self.cell, sample) {
            (Cell::Counter(_, c), Sample::Counter(v, Temporality::Delta)) => c.add(*v),
            (Cell::Counter(_, c), Sample::Counter(v, Temporality::Cumulative)) => {
                c.add_cumulative_since(*v, start)
            }
            (Cell::Gauge(_, g), Sample::Gauge(v)) => g.set(*v, pick_ts(timestamp_ms, now_ms)),
            (Cell::Gauge(_, g), Sample::GaugeDelta(d)) => {
                g.adjust(*d, pick_ts(timestamp_ms, now_ms))
            }
            (Cell::Histogram(_, h), Sample::Observe { value, count }) => h.observe(*value, *count),
            (Cell::Histogram(_, h), Sample::Histogram(v, Temporality::Delta)) => h.merge(v),
            (Cell::Histogram(_, h), Sample::Histogram(v, Temporality::Cumulative)) => {
                h.merge_cumulative_since(v, start)
            }
            (Cell::Summary(_, s), Sample::Summary(v)) => s.set(v),
            (Cell::Set(_, s), Sample::SetMember(m)) => s.insert(SET_MEMBER_HASH.hash_one(m)),
            (cell, sample) => {
                return Err(Refusal::Rejected(Rejected::TypeConflict {
                    existing: kind_of(cell).as_str(),
                    got: sample.kind().as_str(),
                }));
            }
        };
        applied.map_err(|Sealed| Refusal::Sealed)?;
        self.touch();
        Ok(())
    }

    /// A series that begins at `start_ms` (kept to the second) with `cell`, updated
    /// since the flusher last looked (it is new).
    pub(super) fn new(start_ms: i64, cell: Cell) -> Series {
        Series {
            start_secs: secs(start_ms),
            touched: AtomicU32::new(UPDATED),
            cell,
        }
    }

    /// When the series began, ms since the epoch (a whole second).
    pub(super) fn start_ms(&self) -> i64 {
        i64::from(self.start_secs) * 1000
    }

    /// Asks the CPU for the series' cache lines (its first and its last byte: 64 bytes
    /// at a 16-byte aligned address span one or two), without reading them, whatever
    /// order the compiler gave the fields.
    #[inline]
    pub(super) fn prefetch(&self) {
        let p = std::ptr::from_ref(self).cast::<u8>();
        prefetch(p);
        prefetch(p.wrapping_add(size_of::<Series>() - 1));
    }

    /// Marks the series updated since the flusher last looked (see `touched`).
    #[inline]
    pub(super) fn touch(&self) {
        if self.touched.load(Ordering::Relaxed) != UPDATED {
            // Relaxed: see the field doc. The load first keeps hot series from
            // rewriting a line that other cores may be reading.
            self.touched.store(UPDATED, Ordering::Relaxed);
        }
    }

    /// The flusher's look at `touched` at flush time `now_ms`: when activity was last
    /// seen (`now_ms` if the series was updated since the previous look; before that,
    /// the second of the look that saw it).
    pub(super) fn notice_activity(&self, now_ms: i64) -> i64 {
        // Relaxed: see the field doc.
        let word = self.touched.load(Ordering::Relaxed);
        if word != UPDATED {
            return i64::from(word) * 1000;
        }
        self.touched.store(secs(now_ms), Ordering::Relaxed);
        now_ms
    }
}

/// Which cell a new series gets: its kind, and for gauges whether it is a StatsD set.
#[derive(Clone, Copy)]
pub(super) enum CellKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Set,
}

impl CellKind {
    pub(super) fn of(sample: &Sample<'_>) -> CellKind {
        match sample {
            Sample::SetMember(_) => CellKind::Set,
            s => CellKind::from(s.kind()),
        }
    }
}

impl From<MetricKind> for CellKind {
    fn from(k: MetricKind) -> CellKind {
        match k {
            MetricKind::Counter => CellKind::Counter,
            MetricKind::Gauge => CellKind::Gauge,
            MetricKind::Histogram => CellKind::Histogram,
            MetricKind::Summary => CellKind::Summary,
        }
    }
}

/// Hashes set members: fixed, so every writer hashes a member alike.
pub(super) const SET_MEMBER_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5e7_5e7);

/// Why [`Series::apply`] did not record a point.
pub(super) enum Refusal {
    /// The point is invalid for this series.
    Rejected(Rejected),
    /// The series was evicted; record the point through the index again.
    Sealed,
}

/// How often a point whose series keeps being evicted under it is re-resolved.
pub(super) const SEALED_RETRIES: usize = 16;

pub(super) fn pick_ts(timestamp_ms: i64, now_ms: i64) -> i64 {
    if timestamp_ms == 0 {
        now_ms
    } else {
        timestamp_ms
    }
}

/// `Series::touched` of a series updated since the flusher last looked: above every
/// second [`secs`] gives.
const UPDATED: u32 = u32::MAX;

/// Whole seconds since the epoch at `ms`, rounded down, within `0..UPDATED` (a test's
/// clock before 1970 counts as 1970, one past 2106 as 2106).
fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000).clamp(0, i64::from(UPDATED - 1))).unwrap_or(0)
}

/// Bit 31 of `Series::handles`: the series is retired.
pub(super) const RETIRED: u32 = 1 << 31;

/// Marks `s` retired unless a handle holds it (see the module doc).
pub(super) fn try_retire(s: &Series) -> bool {
    s.handles().try_retire()
}

#[cfg(test)]
impl Series {
    /// The `i` of a [`test_series`].
    pub(super) fn test_id(&self) -> i64 {
        self.start_ms() / 1000
    }
}

/// A counter series keyed `s<i>` that starts `i` seconds after the epoch, for the tests of the
/// structures that hold series (`cache`, `sequence`).
#[cfg(test)]
pub(super) fn test_series(i: usize) -> SharedSeries {
    Keyed::new(
        format!("s{i}").as_bytes(),
        Series::new(
            i as i64 * 1000,
            Cell::counter(Counter::new(crate::cell::CounterCell::default(), 0.0)),
        ),
    )
}
