//! The in-memory aggregation engine: series identity to lock-free cells, limits, TTL
//! eviction and the flush that turns it all into a [`FlushBatch`].
//!
//! Owns: the series index, the admission limits and their drop counters, the
//! per-writer fingerprint caches and the flush/eviction protocol. Must never: make a
//! writer wait for the flusher or for another writer, merge two different keys, or
//! lose or double-count a point across flushes.
//!
//! # Structure
//! - **Index**: a lock-free map (papaya) holding each `Arc<Series>`, hashed and
//!   compared by its canonical key bytes (one pointer per entry). New series are
//!   inserted with a CAS (`try_insert`); a racing creator of the same key loses the CAS
//!   and uses the winner's series. Keys are compared in full, so a 64-bit fingerprint
//!   collision never merges two series.
//! - **Writer cache**: each [`Writer`] (one per receiving thread or task) keeps a
//!   plain hash map from the label set *as it arrives* (unsorted) to its series, so
//!   validation, sorting and lookup in the shared index run once per label set, not per
//!   point. The cache is private to its writer (no atomics on a hit) and bounded: when
//!   full, new label sets go through the index uncached until the next flush, when a
//!   full cache is cleared and refills with the label sets in use. So a cache hit
//!   allocates nothing, and a working set larger than the cache costs one refill per
//!   flush interval, not one per point. (A set-associative cache of fixed slots was
//!   measured first: 3.6% conflict misses at 10k series in 64k slots, each a trip to
//!   the index, cost more than the whole hit path.)
//! - **Cells**: see [`crate::cell`] for how updates and collections meet.
//! - **Flusher list**: new series are pushed on a lock-free queue; the flusher drains
//!   it into its own dense `Vec`, which it walks on every flush without touching the
//!   index. One flush runs at a time (a mutex only flushes take).
//!
//! # Eviction (series TTL) and why no point is lost
//! A series idle for `series_ttl` is *retired* by the flusher: it is removed from the
//! index, then its cell is sealed ([`crate::cell`]), which takes the final share into
//! the same flush (marked `evicted`). A writer still holding the series in its cache,
//! or one that found it in the index just before the removal, gets `Sealed` back from
//! its update instead of a silent loss, and records the point again through the index,
//! which by then creates the successor series. Writers thus need no pin, lock or flag
//! check on the hot path. A series with live [`SeriesHandle`]s is never retired: the
//! handle count and the retired bit share one atomic word, so taking a handle and
//! retiring are ordered by that word alone.
//!
//! # Limits
//! A point that would create a series past `max_series_per_metric` (counted per name in
//! `cardinality_limit_exceeded`, with at most `max_tracked_metric_names` names before
//! the rest share the name `other`) or past `max_series` (counted, and
//! [`AggregatorStats::ceiling_reached`] is set) is rejected; existing series keep
//! aggregating.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::SegQueue;
use foldhash::fast::RandomState;

use crate::cell::{CounterCell, GaugeCell, HistogramCell, Sealed, SetCell, SummaryCell};
use crate::flush::{FlushBatch, FlushedSeries, FlushedValue};
use crate::key::{KeyError, SeriesKey, encode_raw};
use crate::point::{DEFAULT_BUCKETS, HistogramValue, MetricKind, MetricPoint, Sample, Temporality};

/// Settings of an [`Aggregator`], fixed once it is built.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    /// A series without updates for this long is evicted with its cumulative state.
    /// Effective idle time is between `series_ttl` and `series_ttl` plus one flush
    /// interval, since activity is noticed per flush. `Duration::ZERO` disables
    /// eviction. Default 5 minutes.
    pub series_ttl: Duration,
    /// Most series one metric name may have. Default 10,000.
    pub max_series_per_metric: usize,
    /// Most series in all. Default 1,000,000.
    pub max_series: usize,
    /// Most label sets each [`Writer`] caches. When full, new label sets go through the
    /// shared index until the next flush clears the cache. Default 65,536.
    pub writer_cache_capacity: usize,
    /// Most metric names with their own `cardinality_limit_exceeded` count; the rest
    /// share the name `other`. Default 1,000.
    pub max_tracked_metric_names: usize,
    /// Bucket bounds for series created by single observations ([`Sample::Observe`]).
    /// Default: the Prometheus client defaults ([`DEFAULT_BUCKETS`]).
    pub histogram_bounds: Arc<[f64]>,
}

/// Most histogram bucket bounds accepted by [`AggregatorConfig::validate`].
pub const MAX_HISTOGRAM_BOUNDS: usize = 1024;

/// Why an [`AggregatorConfig`] is unusable: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidConfig {
    /// The field's name in [`AggregatorConfig`].
    pub field: &'static str,
    /// What is wrong, in one line.
    pub reason: String,
}

impl AggregatorConfig {
    /// Checks every field: limits and cache size above zero; histogram bounds
    /// (1 to [`MAX_HISTOGRAM_BOUNDS`] of them) finite and strictly increasing.
    /// [`Aggregator::new`] never panics on an invalid config, but zero limits refuse
    /// every series and unordered bounds put observations in the wrong buckets.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let err = |field, reason: String| Err(InvalidConfig { field, reason });
        for (field, value) in [
            ("max_series_per_metric", self.max_series_per_metric),
            ("max_series", self.max_series),
            ("writer_cache_capacity", self.writer_cache_capacity),
            ("max_tracked_metric_names", self.max_tracked_metric_names),
        ] {
            if value == 0 {
                return err(field, "must be greater than 0".to_owned());
            }
        }
        let b = &self.histogram_bounds;
        if b.is_empty() || b.len() > MAX_HISTOGRAM_BOUNDS {
            let n = b.len();
            return err(
                "histogram_bounds",
                format!("must list 1 to {MAX_HISTOGRAM_BOUNDS} bounds, got {n}"),
            );
        }
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            let v = b[i];
            return err(
                "histogram_bounds",
                format!("bounds must be finite (+Inf is implied), got {v} at index {i}"),
            );
        }
        if let Some(i) = b.windows(2).position(|w| w[0] >= w[1]) {
            let (lo, hi) = (b[i], b[i + 1]);
            return err(
                "histogram_bounds",
                format!(
                    "bounds must be strictly increasing, got {lo} then {hi} at index {}",
                    i + 1
                ),
            );
        }
        Ok(())
    }
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            series_ttl: Duration::from_secs(300),
            max_series_per_metric: 10_000,
            max_series: 1_000_000,
            writer_cache_capacity: 65_536,
            max_tracked_metric_names: 1_000,
            histogram_bounds: Arc::from(&DEFAULT_BUCKETS[..]),
        }
    }
}

/// Why the aggregator refused a point. Each refusal is counted (see
/// [`AggregatorStats::rejected`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// The name or labels cannot form a series key.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The value cannot be applied: a NaN, infinite or negative counter increment, a
    /// NaN observation, or a malformed histogram.
    #[error("invalid value for a {0}")]
    InvalidValue(&'static str),
    /// The series exists with another kind.
    #[error("series exists as a {existing}, not a {got}")]
    TypeConflict {
        /// The series' kind.
        existing: &'static str,
        /// The point's kind.
        got: &'static str,
    },
    /// The metric name already has `max_series_per_metric` series.
    #[error("metric {0:?} reached its series limit")]
    MetricLimit(String),
    /// The aggregator already has `max_series` series.
    #[error("global series limit reached")]
    GlobalLimit,
    /// The series was evicted under the update again and again (many times in a
    /// row); only possible with a TTL far below the flush interval.
    #[error("series evicted during the update, retries exhausted")]
    EvictedDuringUpdate,
}

/// Reasons in the order of the rejection counters.
const REASONS: [&str; 8] = [
    "invalid_metric_name",
    "invalid_label_name",
    "duplicate_label",
    "invalid_value",
    "type_conflict",
    "cardinality_limit_exceeded",
    "series_limit_reached",
    "evicted_during_update",
];

impl Rejected {
    /// Short, stable reason for counters (`weir_rejected_total{reason=...}`).
    pub fn as_str(&self) -> &'static str {
        REASONS[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Rejected::InvalidKey(KeyError::InvalidMetricName(_)) => 0,
            Rejected::InvalidKey(KeyError::InvalidLabelName(_)) => 1,
            Rejected::InvalidKey(KeyError::DuplicateLabel(_)) => 2,
            Rejected::InvalidValue(_) => 3,
            Rejected::TypeConflict { .. } => 4,
            Rejected::MetricLimit(_) => 5,
            Rejected::GlobalLimit => 6,
            Rejected::EvictedDuringUpdate => 7,
        }
    }
}

/// A snapshot of the aggregator's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorStats {
    /// Series currently held.
    pub active_series: usize,
    /// The global ceiling (`max_series`).
    pub max_series: usize,
    /// True while `active_series` is at the ceiling: new series are refused.
    pub ceiling_reached: bool,
    /// Refused points by reason (every reason listed, zeros included).
    pub rejected: Vec<(&'static str, u64)>,
    /// Series evicted after `series_ttl` without updates, since start.
    pub evicted_series: u64,
    /// Series created since start.
    pub created_series: u64,
    /// Writer cache entries dropped because a full cache was cleared (reported by each
    /// writer when it clears and when it is dropped).
    pub writer_cache_evictions: u64,
    /// Flushes since start.
    pub flushes: u64,
}

impl AggregatorStats {
    /// The count for one rejection reason.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Per metric name: how many series it has.
struct Family {
    /// Series of this name that are held. Changed with AcqRel RMWs; a creator's
    /// increment and a retirer's decrement race only on the count itself.
    active: AtomicUsize,
}

/// The lock-free state of one series. Histograms are boxed so that every other series
/// pays only for the small cells (a histogram cell is ~150 bytes, a counter's 32).
#[cfg_attr(feature = "shuttle", allow(clippy::large_enum_variant))]
enum Cell {
    Counter(CounterCell),
    Gauge(GaugeCell),
    Histogram(Box<HistogramCell>),
    Summary(SummaryCell),
    /// Reported as a gauge (the distinct count); boxed like histograms.
    Set(Box<SetCell>),
}

/// One series: identity plus cell. Shared by the index, the flusher list, writer
/// caches and handles.
struct Series {
    key: SeriesKey,
    fingerprint: u64,
    start_ms: i64,
    family: Arc<Family>,
    /// The aggregator clock (last flush time) at the latest update. Relaxed: only
    /// compared for change by the flusher; no data is read through it.
    touched_ms: AtomicI64,
    /// Live [`SeriesHandle`]s in bits 0..31, and [`RETIRED`]: a series with handles is
    /// never retired, and a retired one takes no new handle. AcqRel RMWs: the word
    /// itself is the only thing they order.
    handles: AtomicU32,
    cell: Cell,
}

fn kind_of(cell: &Cell) -> MetricKind {
    match cell {
        Cell::Counter(_) => MetricKind::Counter,
        Cell::Gauge(_) => MetricKind::Gauge,
        Cell::Histogram(_) => MetricKind::Histogram,
        Cell::Summary(_) => MetricKind::Summary,
        Cell::Set(_) => MetricKind::Gauge,
    }
}

/// Checks that `sample` can be applied to any series of its kind.
fn validate(sample: &Sample<'_>) -> Result<(), Rejected> {
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
    /// Applies a validated sample. `now_ms` stamps gauges without a timestamp.
    #[inline]
    fn apply(&self, sample: &Sample<'_>, timestamp_ms: i64, now_ms: i64) -> Result<(), Refusal> {
        let applied = match (&self.cell, sample) {
            (Cell::Counter(c), Sample::Counter(v, Temporality::Delta)) => c.add(*v),
            (Cell::Counter(c), Sample::Counter(v, Temporality::Cumulative)) => c.add_cumulative(*v),
            (Cell::Gauge(g), Sample::Gauge(v)) => g.set(*v, pick_ts(timestamp_ms, now_ms)),
            (Cell::Gauge(g), Sample::GaugeDelta(d)) => g.adjust(*d, pick_ts(timestamp_ms, now_ms)),
            (Cell::Histogram(h), Sample::Observe { value, count }) => h.observe(*value, *count),
            (Cell::Histogram(h), Sample::Histogram(v, Temporality::Delta)) => h.merge(v),
            (Cell::Histogram(h), Sample::Histogram(v, Temporality::Cumulative)) => {
                h.merge_cumulative(v)
            }
            (Cell::Summary(s), Sample::Summary(v)) => s.set(v),
            (Cell::Set(s), Sample::SetMember(m)) => s.insert(SET_MEMBER_HASH.hash_one(m)),
            (cell, sample) => {
                return Err(Refusal::Rejected(Rejected::TypeConflict {
                    existing: kind_of(cell).as_str(),
                    got: sample.kind().as_str(),
                }));
            }
        };
        applied.map_err(|Sealed| Refusal::Sealed)?;
        if self.touched_ms.load(Ordering::Relaxed) != now_ms {
            // Relaxed: see the field doc. The load first keeps hot series from
            // rewriting a line that other cores may be reading.
            self.touched_ms.store(now_ms, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// An index entry: the series, hashed and compared by its canonical key bytes.
struct Indexed(Arc<Series>);

impl std::hash::Hash for Indexed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must equal `<[u8] as Hash>::hash` for lookups by borrowed bytes.
        self.0.key.as_bytes().hash(state);
    }
}

impl PartialEq for Indexed {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Indexed {}

impl std::borrow::Borrow<[u8]> for Indexed {
    fn borrow(&self) -> &[u8] {
        self.0.key.as_bytes()
    }
}

/// Which cell a new series gets: its kind, and for gauges whether it is a StatsD set.
#[derive(Clone, Copy)]
enum CellKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Set,
}

impl CellKind {
    fn of(sample: &Sample<'_>) -> CellKind {
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
const SET_MEMBER_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5e7_5e7);

/// Why [`Series::apply`] did not record a point.
enum Refusal {
    /// The point is invalid for this series.
    Rejected(Rejected),
    /// The series was evicted; record the point through the index again.
    Sealed,
}

/// How often a point whose series keeps being evicted under it is re-resolved.
const SEALED_RETRIES: usize = 16;

fn pick_ts(timestamp_ms: i64, now_ms: i64) -> i64 {
    if timestamp_ms == 0 {
        now_ms
    } else {
        timestamp_ms
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A series as the flusher holds it, with the running totals only it touches.
struct FlushEntry {
    series: Arc<Series>,
    totals: Totals,
    /// `touched_ms` as seen by the previous flush; a change means activity.
    seen_touched_ms: i64,
    /// Flush time at which activity was last noticed.
    active_at_ms: i64,
}

/// Boxed histogram so that counter and gauge entries stay small.
enum Totals {
    Counter(f64),
    Histogram(Box<HistogramValue>),
    None,
}

impl FlushEntry {
    fn new(series: Arc<Series>, now_ms: i64) -> FlushEntry {
        let totals = match &series.cell {
            Cell::Counter(_) => Totals::Counter(0.0),
            Cell::Histogram(h) => {
                Totals::Histogram(Box::new(HistogramValue::empty(h.bounds().clone())))
            }
            _ => Totals::None,
        };
        FlushEntry {
            seen_touched_ms: series.touched_ms.load(Ordering::Relaxed),
            series,
            totals,
            active_at_ms: now_ms,
        }
    }

    /// Takes the interval's share out of the cell, sealing it if `evicted` (its last
    /// share); `None` for a summary never set. `now_ms` stamps set counts.
    fn collect(&mut self, evicted: bool, now_ms: i64) -> Option<FlushedSeries> {
        let value = match (&self.series.cell, &mut self.totals) {
            (Cell::Counter(c), Totals::Counter(total)) => {
                let take = if evicted { c.seal() } else { c.collect() };
                *total += take.delta + take.baseline;
                FlushedValue::Counter {
                    delta: take.delta,
                    total: *total,
                }
            }
            (Cell::Gauge(g), _) => {
                let (value, timestamp_ms) = if evicted { g.seal() } else { g.read() };
                FlushedValue::Gauge {
                    value,
                    timestamp_ms,
                }
            }
            (Cell::Histogram(h), Totals::Histogram(total)) => {
                let (delta, baseline) = if evicted { h.seal() } else { h.collect() };
                if let Some(b) = &baseline {
                    add_histogram(total, b);
                }
                add_histogram(total, &delta);
                FlushedValue::Histogram {
                    delta: Box::new(delta),
                    total: total.clone(),
                }
            }
            (Cell::Set(s), _) => FlushedValue::Gauge {
                value: (if evicted { s.seal() } else { s.collect() }) as f64,
                timestamp_ms: now_ms,
            },
            (Cell::Summary(s), _) => {
                FlushedValue::Summary(if evicted { s.seal() } else { s.read() }?)
            }
            _ => return None,
        };
        Some(FlushedSeries {
            key: self.series.key.clone(),
            fingerprint: self.series.fingerprint,
            start_ms: self.series.start_ms,
            evicted,
            value,
        })
    }
}

/// Adds `d` into `total`; both have the cell's bounds.
fn add_histogram(total: &mut HistogramValue, d: &HistogramValue) {
    for (t, c) in total.counts.iter_mut().zip(&d.counts) {
        *t += c;
    }
    total.count += d.count;
    total.sum += d.sum;
    total.min = total.min.min(d.min);
    total.max = total.max.max(d.max);
}

/// What only the flusher touches.
struct FlusherState {
    entries: Vec<FlushEntry>,
    sequence: u64,
    last_flush_ms: i64,
}

/// State shared by the aggregator, its writers and handles.
struct Shared {
    config: AggregatorConfig,
    /// Keyed by the series itself (its canonical key bytes), so an entry is one pointer.
    index: papaya::HashMap<Indexed, (), RandomState>,
    /// Per metric name: its series count, for the per-metric limit.
    families: papaya::HashMap<Box<str>, Arc<Family>, RandomState>,
    /// Per metric name: points refused by the per-metric limit (bounded, see config).
    limit_drops: papaya::HashMap<Box<str>, AtomicU64, RandomState>,
    /// Series created but not yet seen by the flusher.
    created: SegQueue<Arc<Series>>,
    /// Series held (the global ceiling counts these). AcqRel RMWs; see `admit`.
    active: AtomicUsize,
    /// The aggregator clock: the latest flush time (or creation time), ms. Relaxed: a
    /// coarse timestamp only.
    clock_ms: AtomicI64,
    /// Refusals by reason, indexed like [`REASONS`]. Relaxed: independent counters.
    rejected: [AtomicU64; REASONS.len()],
    /// Flushes so far (the latest batch's sequence). Relaxed: writers only compare it
    /// with an earlier reading of their own.
    flushes: AtomicU64,
    /// Statistics counters (series evicted, series created, writer cache entries
    /// cleared). Relaxed: independent counters, read only for reporting.
    evicted: AtomicU64,
    created_total: AtomicU64,
    cache_evictions: AtomicU64,
    /// What only the flusher touches; also serialises concurrent flushes.
    flusher: Mutex<FlusherState>,
}

impl Shared {
    fn reject<T>(&self, r: Rejected) -> Result<T, Rejected> {
        self.rejected[r.index()].fetch_add(1, Ordering::Relaxed);
        Err(r)
    }

    /// [`validate`], counting a refusal.
    #[inline]
    fn check(&self, sample: &Sample<'_>) -> Result<(), Rejected> {
        validate(sample).or_else(|e| self.reject(e))
    }

    /// Finds or creates the series for a canonical key.
    fn resolve(
        &self,
        canonical: &[u8],
        name: &str,
        cell_kind: CellKind,
        bounds: Option<&Arc<[f64]>>,
    ) -> Result<Arc<Series>, Rejected> {
        let index = self.index.pin();
        // Bounded: a retry follows a lost creation race whose winner was evicted in
        // between, which needs a flush per round.
        for _ in 0..SEALED_RETRIES {
            if let Some((s, ())) = index.get_key_value(canonical) {
                return Ok(s.0.clone());
            }
            let family = self.admit(name)?;
            let now = self.clock_ms.load(Ordering::Relaxed);
            let cell = match cell_kind {
                CellKind::Counter => Cell::Counter(CounterCell::default()),
                CellKind::Gauge => Cell::Gauge(GaugeCell::default()),
                CellKind::Histogram => Cell::Histogram(Box::new(HistogramCell::new(
                    bounds.unwrap_or(&self.config.histogram_bounds).clone(),
                ))),
                CellKind::Summary => Cell::Summary(SummaryCell::default()),
                CellKind::Set => Cell::Set(Box::default()),
            };
            let key = SeriesKey::from_canonical(canonical);
            let series = Arc::new(Series {
                fingerprint: key.fingerprint(),
                key,
                start_ms: now_ms(),
                family,
                touched_ms: AtomicI64::new(now),
                handles: AtomicU32::new(0),
                cell,
            });
            if index.try_insert(Indexed(series.clone()), ()).is_ok() {
                self.created_total.fetch_add(1, Ordering::Relaxed);
                self.created.push(series.clone());
                return Ok(series);
            }
            // Lost the race to another creator: give back our admission and use theirs.
            series.family.active.fetch_sub(1, Ordering::AcqRel);
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        self.reject(Rejected::EvictedDuringUpdate)
    }

    /// Reserves room for one more series of `name` under both limits.
    fn admit(&self, name: &str) -> Result<Arc<Family>, Rejected> {
        // AcqRel on the counts: increments and decrements form one modification order
        // per counter, which is all a limit needs; no other data is published by them.
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.config.max_series {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return self.reject(Rejected::GlobalLimit);
        }
        let families = self.families.pin();
        let family = families
            .get_or_insert_with(name.into(), || {
                Arc::new(Family {
                    active: AtomicUsize::new(0),
                })
            })
            .clone();
        if family.active.fetch_add(1, Ordering::AcqRel) >= self.config.max_series_per_metric {
            family.active.fetch_sub(1, Ordering::AcqRel);
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.count_limit_drop(name);
            return self.reject(Rejected::MetricLimit(name.to_owned()));
        }
        Ok(family)
    }

    fn count_limit_drop(&self, name: &str) {
        let drops = self.limit_drops.pin();
        if let Some(n) = drops.get(name) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let slot: &str = if drops.len() < self.config.max_tracked_metric_names {
            name
        } else {
            "other"
        };
        drops
            .get_or_insert_with(slot.into(), || AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The slow path: resolves `name` + `labels` through the index (creating the series
    /// if admitted) and applies the sample, resolving again if the series turns out
    /// sealed (evicted under us). Returns the series that took the point, for a
    /// writer's cache. Rejections are counted here.
    fn record_slow(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        sample: &Sample<'_>,
        timestamp_ms: i64,
        scratch: &mut Scratch,
    ) -> Result<Arc<Series>, Rejected> {
        if let Err(e) =
            SeriesKey::canonicalize(name, labels, &mut scratch.canon, &mut scratch.order)
        {
            return self.reject(e.into());
        }
        self.record_canonical(name, sample, timestamp_ms, &scratch.canon)
    }

    /// [`Shared::record_slow`] for a key already in canonical form.
    fn record_canonical(
        &self,
        name: &str,
        sample: &Sample<'_>,
        timestamp_ms: i64,
        canonical: &[u8],
    ) -> Result<Arc<Series>, Rejected> {
        for _ in 0..SEALED_RETRIES {
            let series = self.resolve(canonical, name, CellKind::of(sample), bounds_of(sample))?;
            let now = self.clock_ms.load(Ordering::Relaxed);
            match series.apply(sample, timestamp_ms, now) {
                Ok(()) => return Ok(series),
                Err(Refusal::Rejected(e)) => return self.reject(e),
                // The flusher removed it from the index before sealing it, so the next
                // resolve finds or creates its successor.
                Err(Refusal::Sealed) => continue,
            }
        }
        self.reject(Rejected::EvictedDuringUpdate)
    }
}

/// Reusable buffers for building canonical keys without allocating per point.
#[derive(Default)]
struct Scratch {
    canon: Vec<u8>,
    order: Vec<usize>,
}

fn bounds_of<'a>(sample: &Sample<'a>) -> Option<&'a Arc<[f64]>> {
    match sample {
        Sample::Histogram(h, _) => Some(&h.bounds),
        _ => None,
    }
}

/// The aggregation engine. Cheap to clone; clones share state.
///
/// ```
/// use weir_core::aggregator::Aggregator;
/// use weir_core::point::{Sample, Temporality};
/// let agg = Aggregator::default();
/// let mut w = agg.writer();
/// w.record("jobs_total", &[("queue", "mail")], Sample::Counter(2.0, Temporality::Delta), 0).unwrap();
/// w.record("jobs_total", &[("queue", "mail")], Sample::Counter(3.0, Temporality::Delta), 0).unwrap();
/// let batch = agg.flush();
/// assert_eq!(batch.counter_delta_sum(), 5.0);
/// ```
#[derive(Clone)]
pub struct Aggregator {
    shared: Arc<Shared>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(AggregatorConfig::default())
    }
}

impl Aggregator {
    /// Builds an empty aggregator.
    pub fn new(config: AggregatorConfig) -> Aggregator {
        let now = now_ms();
        Aggregator {
            shared: Arc::new(Shared {
                config,
                index: papaya::HashMap::with_hasher(RandomState::default()),
                families: papaya::HashMap::with_hasher(RandomState::default()),
                limit_drops: papaya::HashMap::with_hasher(RandomState::default()),
                created: SegQueue::new(),
                active: AtomicUsize::new(0),
                clock_ms: AtomicI64::new(now),
                rejected: Default::default(),
                flushes: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                created_total: AtomicU64::new(0),
                cache_evictions: AtomicU64::new(0),
                flusher: Mutex::new(FlusherState {
                    entries: Vec::new(),
                    sequence: 0,
                    last_flush_ms: now,
                }),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AggregatorConfig {
        &self.shared.config
    }

    /// A writer with its own fingerprint cache: one per receiving thread or task.
    pub fn writer(&self) -> Writer {
        Writer {
            shared: self.shared.clone(),
            cache: HashMap::with_hasher(RandomState::default()),
            cleared_at_flush: self.shared.flushes.load(Ordering::Relaxed),
            misses: 0,
            raw: Vec::with_capacity(256),
            scratch: Scratch::default(),
        }
    }

    /// Applies one sample through the shared index, without a writer cache. For
    /// occasional callers; receivers use a [`Writer`].
    ///
    /// # Errors
    /// [`Rejected`], counted, when the point is refused.
    pub fn record(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<(), Rejected> {
        self.shared.check(&sample)?;
        let mut scratch = Scratch::default();
        self.shared
            .record_slow(name, labels, &sample, timestamp_ms, &mut scratch)
            .map(drop)
    }

    /// A handle to one series (created if needed) for updates without any lookup: the
    /// API the C and Python bindings expose. The series is not evicted while a handle
    /// to it exists.
    ///
    /// # Errors
    /// [`Rejected`], counted, for an invalid key, a kind conflict or a limit.
    ///
    /// ```
    /// use weir_core::{aggregator::Aggregator, point::MetricKind};
    /// let agg = Aggregator::default();
    /// let h = agg.handle("hits_total", &[("path", "/")], MetricKind::Counter).unwrap();
    /// h.add(1.0).unwrap();
    /// h.add(2.0).unwrap();
    /// assert_eq!(agg.flush().counter_delta_sum(), 3.0);
    /// ```
    pub fn handle(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
    ) -> Result<SeriesHandle, Rejected> {
        let mut scratch = Scratch::default();
        if let Err(e) =
            SeriesKey::canonicalize(name, labels, &mut scratch.canon, &mut scratch.order)
        {
            return self.shared.reject(e.into());
        }
        for _ in 0..SEALED_RETRIES {
            let series = self
                .shared
                .resolve(&scratch.canon, name, CellKind::from(kind), None)?;
            let existing = kind_of(&series.cell);
            if existing != kind {
                return self.shared.reject(Rejected::TypeConflict {
                    existing: existing.as_str(),
                    got: kind.as_str(),
                });
            }
            if series.handles.fetch_add(1, Ordering::AcqRel) & RETIRED == 0 {
                return Ok(SeriesHandle {
                    series,
                    shared: self.shared.clone(),
                });
            }
            // Being retired: it leaves the index before it is sealed; resolve again.
            series.handles.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.reject(Rejected::EvictedDuringUpdate)
    }

    /// Flushes now (wall clock).
    pub fn flush(&self) -> FlushBatch {
        self.flush_at(now_ms())
    }

    /// Takes every series' share since the previous flush, evicts series idle for
    /// `series_ttl` (their last share is in this batch, marked `evicted`), and returns
    /// the batch. `now_ms` is the flush time (milliseconds since the Unix epoch); tests
    /// pass their own clock. Ingestion continues throughout; concurrent flushes run one
    /// after the other.
    pub fn flush_at(&self, now_ms: i64) -> FlushBatch {
        let sh = &*self.shared;
        let mut st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
        // Relaxed: a coarse stamp for writers; see `Shared::clock_ms`.
        sh.clock_ms.store(now_ms, Ordering::Relaxed);
        while let Some(s) = sh.created.pop() {
            st.entries.push(FlushEntry::new(s, now_ms));
        }
        let mut out = Vec::with_capacity(st.entries.len());
        let ttl_ms = i64::try_from(sh.config.series_ttl.as_millis()).unwrap_or(i64::MAX);
        let index = sh.index.pin();
        let mut i = 0;
        while i < st.entries.len() {
            let e = &mut st.entries[i];
            let touched = e.series.touched_ms.load(Ordering::Relaxed);
            if touched != e.seen_touched_ms {
                e.seen_touched_ms = touched;
                e.active_at_ms = now_ms;
            }
            let expired = ttl_ms > 0 && now_ms - e.active_at_ms >= ttl_ms;
            if expired && try_retire(&e.series) {
                // Out of the index first, so writers that find the cell sealed resolve
                // to a successor rather than to this series again.
                index.remove(e.series.key.as_bytes());
                out.extend(e.collect(true, now_ms));
                let e = st.entries.swap_remove(i);
                e.series.family.active.fetch_sub(1, Ordering::AcqRel);
                sh.active.fetch_sub(1, Ordering::AcqRel);
                sh.evicted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            out.extend(e.collect(false, now_ms));
            i += 1;
        }
        drop(index);
        // Families whose series are all gone are dropped so churning names do not
        // grow memory. A creator racing with this keeps its own `Arc<Family>`; the
        // per-name count may then undercount until that series is evicted.
        sh.families
            .pin()
            .retain(|_, f| f.active.load(Ordering::Acquire) > 0);
        st.sequence += 1;
        sh.flushes.store(st.sequence, Ordering::Relaxed);
        let start_ms = std::mem::replace(&mut st.last_flush_ms, now_ms);
        FlushBatch {
            sequence: st.sequence,
            start_ms,
            end_ms: now_ms,
            series: out,
        }
    }

    /// Current counters.
    pub fn stats(&self) -> AggregatorStats {
        let sh = &*self.shared;
        let active = sh.active.load(Ordering::Relaxed);
        AggregatorStats {
            active_series: active,
            max_series: sh.config.max_series,
            ceiling_reached: active >= sh.config.max_series,
            rejected: REASONS
                .iter()
                .zip(&sh.rejected)
                .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                .collect(),
            evicted_series: sh.evicted.load(Ordering::Relaxed),
            created_series: sh.created_total.load(Ordering::Relaxed),
            writer_cache_evictions: sh.cache_evictions.load(Ordering::Relaxed),
            flushes: sh.flushes.load(Ordering::Relaxed),
        }
    }

    /// Points refused by the per-metric series limit, per metric name (at most
    /// `max_tracked_metric_names` names, then `other`), sorted by name.
    pub fn cardinality_limit_exceeded(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .shared
            .limit_drops
            .pin()
            .iter()
            .map(|(k, n)| (k.to_string(), n.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// The number of series per metric name, largest first, at most `n` names.
    pub fn top_metrics(&self, n: usize) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .shared
            .families
            .pin()
            .iter()
            .map(|(k, f)| (k.to_string(), f.active.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// Bit 31 of `Series::handles`: the series is retired.
const RETIRED: u32 = 1 << 31;

/// Marks `s` retired unless a handle holds it (see the module doc).
fn try_retire(s: &Series) -> bool {
    s.handles
        .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Records points with a private fingerprint cache. One per receiving thread or task;
/// `Send` but used through `&mut self`.
///
/// Aligned to 128 bytes (two cache lines, the unit the adjacent-line prefetcher moves)
/// so that writers of different threads placed side by side, say in one array, never
/// share a line: each update writes its writer's fields.
#[repr(align(128))]
pub struct Writer {
    shared: Arc<Shared>,
    /// Raw (arrival-order) identity bytes to series; at most `writer_cache_capacity`.
    cache: HashMap<Box<[u8]>, Arc<Series>, RandomState>,
    /// The flush count when the cache was last cleared: a full cache is cleared at
    /// most once per flush.
    cleared_at_flush: u64,
    /// Points that missed the cache (see [`Writer::cache_misses`]).
    misses: u64,
    /// Raw (arrival-order) encoding of the current point's label set.
    raw: Vec<u8>,
    scratch: Scratch,
}

impl Writer {
    /// Applies one sample to the series `name` + `labels` (labels in any order).
    /// `timestamp_ms` 0 means "now" (the aggregator clock).
    ///
    /// The label set is encoded as it arrives to look up the cache; receivers that
    /// already hold the series' identity as contiguous bytes skip that encoding with
    /// [`Writer::record_cached`] and [`Writer::record_with_raw`].
    ///
    /// # Errors
    /// [`Rejected`], counted, when the point is refused; the writer stays usable.
    #[inline]
    pub fn record(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<(), Rejected> {
        let mut raw = std::mem::take(&mut self.raw);
        encode_raw(&mut raw, name, labels);
        let result = match self.record_cached(&raw, sample, timestamp_ms) {
            Ok(true) => Ok(()),
            Ok(false) => self.record_with_raw(&raw, name, labels, sample, timestamp_ms),
            Err(e) => Err(e),
        };
        self.raw = raw;
        result
    }

    /// The cache-hit path on its own: applies `sample` to the series this writer
    /// cached under `raw`, the series' identity bytes as the receiver holds them (for
    /// StatsD, say, the name and tags of a line as received). Returns `Ok(false)` on a
    /// miss; the caller then parses the name and labels and calls
    /// [`Writer::record_with_raw`] with the same `raw`.
    ///
    /// Equal `raw` bytes must always mean the same name and labels for one writer: keep
    /// one writer per receiver (per encoding of `raw`).
    ///
    /// # Errors
    /// [`Rejected`], counted, for an invalid value or a kind conflict.
    ///
    /// ```
    /// use weir_core::{Aggregator, Sample, Temporality};
    /// let agg = Aggregator::default();
    /// let mut w = agg.writer();
    /// let one = Sample::Counter(1.0, Temporality::Delta);
    /// let raw = b"hits|#path:/,code:200";
    /// for _ in 0..3 {
    ///     if !w.record_cached(raw, one, 0).unwrap() {
    ///         w.record_with_raw(raw, "hits", &[("path", "/"), ("code", "200")], one, 0).unwrap();
    ///     }
    /// }
    /// assert_eq!(agg.flush().counter_delta_sum(), 3.0);
    /// ```
    #[inline]
    pub fn record_cached(
        &mut self,
        raw: &[u8],
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<bool, Rejected> {
        self.shared.check(&sample)?;
        let Some(series) = self.cache.get(raw) else {
            self.misses += 1;
            return Ok(false);
        };
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        match series.apply(&sample, timestamp_ms, now) {
            Ok(()) => Ok(true),
            Err(Refusal::Rejected(e)) => self.shared.reject(e),
            Err(Refusal::Sealed) => {
                // Evicted: forget it; the caller goes through the index to its successor.
                self.cache.remove(raw);
                self.misses += 1;
                Ok(false)
            }
        }
    }

    /// The cache-miss path: resolves `name` + `labels` through the shared index
    /// (creating the series if admitted), applies `sample`, and caches the series
    /// under `raw` (see [`Writer::record_cached`]).
    ///
    /// # Errors
    /// [`Rejected`], counted, when the point is refused.
    pub fn record_with_raw(
        &mut self,
        raw: &[u8],
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<(), Rejected> {
        self.shared.check(&sample)?;
        let series =
            self.shared
                .record_slow(name, labels, &sample, timestamp_ms, &mut self.scratch)?;
        if self.cache.len() >= self.shared.config.writer_cache_capacity {
            let flushes = self.shared.flushes.load(Ordering::Relaxed);
            if flushes == self.cleared_at_flush {
                return Ok(()); // full until the next flush: uncached
            }
            self.shared
                .cache_evictions
                .fetch_add(self.cache.len() as u64, Ordering::Relaxed);
            self.cache.clear();
            self.cleared_at_flush = flushes;
        }
        self.cache.insert(raw.into(), series);
        Ok(())
    }

    /// Applies an owned [`MetricPoint`].
    ///
    /// # Errors
    /// As [`Writer::record`].
    pub fn record_point(&mut self, p: &MetricPoint) -> Result<(), Rejected> {
        let labels: Vec<(&str, &str)> = p
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.record(&p.name, &labels, p.sample(), p.timestamp_ms)
    }

    /// Label sets currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Points this writer could not apply from its cache (new label sets, a full
    /// cache, evicted series), since it was created.
    pub fn cache_misses(&self) -> u64 {
        self.misses
    }
}

/// A pre-resolved series: updates go straight to its cell (no lookup, no pin). Keeps
/// the series from being evicted while it lives.
pub struct SeriesHandle {
    series: Arc<Series>,
    shared: Arc<Shared>,
}

impl SeriesHandle {
    /// The series' kind.
    pub fn kind(&self) -> MetricKind {
        kind_of(&self.series.cell)
    }

    /// The series' key.
    pub fn key(&self) -> &SeriesKey {
        &self.series.key
    }

    /// Adds a delta to a counter.
    ///
    /// # Errors
    /// [`Rejected::InvalidValue`] for a negative or non-finite value,
    /// [`Rejected::TypeConflict`] if the series is not a counter.
    #[inline]
    pub fn add(&self, v: f64) -> Result<(), Rejected> {
        match &self.series.cell {
            Cell::Counter(c) if v.is_finite() && v >= 0.0 && c.add(v).is_ok() => Ok(()),
            _ => self.record(Sample::Counter(v, Temporality::Delta), 0),
        }
    }

    /// Adds an integral delta to a counter: the cheapest update there is (one
    /// `fetch_add` on the cell, no float conversion).
    ///
    /// # Errors
    /// [`Rejected::TypeConflict`] if the series is not a counter.
    ///
    /// ```
    /// use weir_core::{Aggregator, MetricKind};
    /// let agg = Aggregator::default();
    /// let h = agg.handle("requests_total", &[], MetricKind::Counter).unwrap();
    /// h.increment(3).unwrap();
    /// assert_eq!(agg.flush().counter_delta_sum(), 3.0);
    /// ```
    #[inline]
    pub fn increment(&self, n: u64) -> Result<(), Rejected> {
        match &self.series.cell {
            Cell::Counter(c) if c.add_u64(n).is_ok() => Ok(()),
            _ => self.record(Sample::Counter(n as f64, Temporality::Delta), 0),
        }
    }

    /// Sets a gauge.
    ///
    /// # Errors
    /// [`Rejected::TypeConflict`] if the series is not a gauge.
    #[inline]
    pub fn set(&self, v: f64) -> Result<(), Rejected> {
        self.record(Sample::Gauge(v), 0)
    }

    /// Records one observation into a histogram.
    ///
    /// # Errors
    /// [`Rejected::InvalidValue`] for NaN, [`Rejected::TypeConflict`] if the series is
    /// not a histogram.
    #[inline]
    pub fn observe(&self, v: f64) -> Result<(), Rejected> {
        self.record(Sample::Observe { value: v, count: 1 }, 0)
    }

    /// Applies any sample.
    ///
    /// # Errors
    /// As [`Writer::record`], without the key and limit cases.
    pub fn record(&self, sample: Sample<'_>, timestamp_ms: i64) -> Result<(), Rejected> {
        self.shared.check(&sample)?;
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        match self.series.apply(&sample, timestamp_ms, now) {
            Ok(()) => Ok(()),
            Err(Refusal::Rejected(e)) => self.shared.reject(e),
            // Not reachable while the handle holds the series; stay correct anyway.
            Err(Refusal::Sealed) => {
                let key = &self.series.key;
                self.shared
                    .record_canonical(key.name(), &sample, timestamp_ms, key.as_bytes())
                    .map(drop)
            }
        }
    }
}

impl Drop for SeriesHandle {
    fn drop(&mut self) {
        // The TTL counts from the handle's end, not from its last write.
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        self.series.touched_ms.store(now - 1, Ordering::Relaxed);
        self.series.handles.fetch_sub(1, Ordering::AcqRel);
    }
}
