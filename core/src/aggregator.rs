//! The in-memory aggregation engine: series identity to lock-free cells, limits, TTL
//! eviction and the flush that turns it all into a [`FlushBatch`].
//!
//! Owns: the series index, the admission limits and their drop counters, the
//! per-writer fingerprint caches and the flush/eviction protocol. Must never: make a
//! writer wait for the flusher or for another writer, merge two different keys, or
//! lose or double-count a point across flushes.
//!
//! # Structure
//! - **Index**: a lock-free map (papaya) from the canonical key bytes to an
//!   `Arc<Series>`. New series are inserted with a CAS (`try_insert`); a racing
//!   creator of the same key loses the CAS and uses the winner's series. Keys are
//!   compared in full, so a 64-bit fingerprint collision never merges two series.
//! - **Writer cache**: each [`Writer`] (one per receiving thread or task) keeps a plain
//!   map from the label set *as it arrives* (unsorted) to its series, so validation,
//!   sorting and hashing into the shared index run once per label set, not per point.
//!   The cache is private to its writer (no atomics on a hit) and bounded: when full it
//!   is cleared and refilled from the index.
//! - **Cells**: see [`crate::cell`] for how updates and collections meet.
//! - **Flusher list**: new series are pushed on a lock-free queue; the flusher drains
//!   it into its own dense `Vec`, which it walks on every flush without touching the
//!   index. One flush runs at a time (a mutex only flushes take).
//!
//! # Eviction (series TTL) and why no point is lost
//! A series idle for `series_ttl` is *retired* by the flusher: it sets the series'
//! `retired` flag, removes it from the index, and defers (crossbeam-epoch) a final
//! collection until every writer pinned at that moment has unpinned. Writers pin
//! around each update and check the flag after pinning: a writer that saw the flag
//! clear may still write, but the final collection waits for it; a writer that sees it
//! set drops the series from its cache and resolves the key again. A series with live
//! [`SeriesHandle`]s is never retired (handle creation and retirement use a SeqCst
//! flag/count pair, so at least one side sees the other).
//!
//! # Limits
//! A point that would create a series past `max_series_per_metric` (counted per name in
//! `cardinality_limit_exceeded`, with at most `max_tracked_metric_names` names before
//! the rest share the name `other`) or past `max_series` (counted, and
//! [`AggregatorStats::ceiling_reached`] is set) is rejected; existing series keep
//! aggregating.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_epoch as epoch;
use crossbeam_queue::SegQueue;
use foldhash::fast::RandomState;

use crate::cell::{CounterCell, GaugeCell, HistogramCell, SummaryCell};
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
    /// Most label sets one [`Writer`] remembers before it clears its cache. Default 65,536.
    pub writer_cache_capacity: usize,
    /// Most metric names with their own `cardinality_limit_exceeded` count; the rest
    /// share the name `other`. Default 1,000.
    pub max_tracked_metric_names: usize,
    /// Bucket bounds for series created by single observations ([`Sample::Observe`]).
    /// Default: the Prometheus client defaults ([`DEFAULT_BUCKETS`]).
    pub histogram_bounds: Arc<[f64]>,
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
}

/// Reasons in the order of the rejection counters.
const REASONS: [&str; 7] = [
    "invalid_metric_name",
    "invalid_label_name",
    "duplicate_label",
    "invalid_value",
    "type_conflict",
    "cardinality_limit_exceeded",
    "series_limit_reached",
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
    /// Times a writer cache was full and cleared.
    pub writer_cache_resets: u64,
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
    /// Set by the flusher when it retires the series (see the module doc).
    retired: AtomicBool,
    /// Live [`SeriesHandle`]s; a series with handles is never retired.
    handles: AtomicU32,
    cell: Cell,
}

fn kind_of(cell: &Cell) -> MetricKind {
    match cell {
        Cell::Counter(_) => MetricKind::Counter,
        Cell::Gauge(_) => MetricKind::Gauge,
        Cell::Histogram(_) => MetricKind::Histogram,
        Cell::Summary(_) => MetricKind::Summary,
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
    fn apply(&self, sample: &Sample<'_>, timestamp_ms: i64, now_ms: i64) -> Result<(), Rejected> {
        match (&self.cell, sample) {
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
            (cell, sample) => {
                return Err(Rejected::TypeConflict {
                    existing: kind_of(cell).as_str(),
                    got: sample.kind().as_str(),
                });
            }
        }
        if self.touched_ms.load(Ordering::Relaxed) != now_ms {
            // Relaxed: see the field doc. The load first keeps hot series from
            // rewriting a line that other cores may be reading.
            self.touched_ms.store(now_ms, Ordering::Relaxed);
        }
        Ok(())
    }
}

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

enum Totals {
    Counter(f64),
    Histogram(HistogramValue),
    None,
}

impl FlushEntry {
    fn new(series: Arc<Series>, now_ms: i64) -> FlushEntry {
        let totals = match &series.cell {
            Cell::Counter(_) => Totals::Counter(0.0),
            Cell::Histogram(h) => Totals::Histogram(HistogramValue::empty(h.bounds().clone())),
            _ => Totals::None,
        };
        FlushEntry {
            seen_touched_ms: series.touched_ms.load(Ordering::Relaxed),
            series,
            totals,
            active_at_ms: now_ms,
        }
    }

    /// Takes the interval's share out of the cell; `None` for a summary never set.
    fn collect(&mut self, evicted: bool) -> Option<FlushedSeries> {
        let value = match (&self.series.cell, &mut self.totals) {
            (Cell::Counter(c), Totals::Counter(total)) => {
                let take = c.collect();
                *total += take.delta + take.baseline;
                FlushedValue::Counter {
                    delta: take.delta,
                    total: *total,
                }
            }
            (Cell::Gauge(g), _) => {
                let (value, timestamp_ms) = g.read();
                FlushedValue::Gauge {
                    value,
                    timestamp_ms,
                }
            }
            (Cell::Histogram(h), Totals::Histogram(total)) => {
                let (delta, baseline) = h.collect();
                if let Some(b) = &baseline {
                    add_histogram(total, b);
                }
                add_histogram(total, &delta);
                FlushedValue::Histogram {
                    delta,
                    total: total.clone(),
                }
            }
            (Cell::Summary(s), _) => FlushedValue::Summary(s.read()?),
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
    index: papaya::HashMap<SeriesKey, Arc<Series>, RandomState>,
    families: papaya::HashMap<Box<str>, Arc<Family>, RandomState>,
    /// Per metric name: points refused by the per-metric limit (bounded, see config).
    limit_drops: papaya::HashMap<Box<str>, AtomicU64, RandomState>,
    /// Series created but not yet seen by the flusher.
    created: SegQueue<Arc<Series>>,
    /// Retired series whose grace period is over, awaiting their final collection.
    retired: Arc<SegQueue<FlushEntry>>,
    /// Retired series not yet finally collected.
    retiring: AtomicUsize,
    /// Series held (the global ceiling counts these). AcqRel RMWs; see `admit`.
    active: AtomicUsize,
    /// The aggregator clock: the latest flush time (or creation time), ms. Relaxed: a
    /// coarse timestamp only.
    clock_ms: AtomicI64,
    /// Refusals by reason, indexed like [`REASONS`]. Relaxed: independent counters.
    rejected: [AtomicU64; REASONS.len()],
    evicted: AtomicU64,
    created_total: AtomicU64,
    cache_resets: AtomicU64,
    flusher: Mutex<FlusherState>,
}

impl Shared {
    fn reject<T>(&self, r: Rejected) -> Result<T, Rejected> {
        self.rejected[r.index()].fetch_add(1, Ordering::Relaxed);
        Err(r)
    }

    /// Finds or creates the series for a canonical key. The caller is pinned.
    fn resolve(
        &self,
        canonical: &[u8],
        name: &str,
        sample_kind: MetricKind,
        bounds: Option<&Arc<[f64]>>,
    ) -> Result<Arc<Series>, Rejected> {
        let index = self.index.pin();
        if let Some(s) = index.get(canonical) {
            return Ok(s.clone());
        }
        let family = self.admit(name)?;
        let now = self.clock_ms.load(Ordering::Relaxed);
        let cell = match sample_kind {
            MetricKind::Counter => Cell::Counter(CounterCell::default()),
            MetricKind::Gauge => Cell::Gauge(GaugeCell::default()),
            MetricKind::Histogram => Cell::Histogram(Box::new(HistogramCell::new(
                bounds.unwrap_or(&self.config.histogram_bounds).clone(),
            ))),
            MetricKind::Summary => Cell::Summary(SummaryCell::default()),
        };
        let key = SeriesKey::from_canonical(canonical);
        let series = Arc::new(Series {
            fingerprint: key.fingerprint(),
            key: key.clone(),
            start_ms: now_ms(),
            family,
            touched_ms: AtomicI64::new(now),
            retired: AtomicBool::new(false),
            handles: AtomicU32::new(0),
            cell,
        });
        match index.try_insert(key, series.clone()) {
            Ok(_) => {
                self.created_total.fetch_add(1, Ordering::Relaxed);
                self.created.push(series.clone());
                Ok(series)
            }
            Err(occupied) => {
                // Lost the race to another creator: give back our admission.
                series.family.active.fetch_sub(1, Ordering::AcqRel);
                self.active.fetch_sub(1, Ordering::AcqRel);
                Ok(occupied.current.clone())
            }
        }
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

    /// Resolves a key from raw parts through the index (no writer cache).
    fn resolve_parts(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        bounds: Option<&Arc<[f64]>>,
        canon: &mut Vec<u8>,
    ) -> Result<Arc<Series>, Rejected> {
        if let Err(e) = SeriesKey::canonicalize(name, labels, canon) {
            return self.reject(e.into());
        }
        self.resolve(canon, name, kind, bounds)
    }
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
                retired: Arc::new(SegQueue::new()),
                retiring: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                clock_ms: AtomicI64::new(now),
                rejected: Default::default(),
                evicted: AtomicU64::new(0),
                created_total: AtomicU64::new(0),
                cache_resets: AtomicU64::new(0),
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
            raw: Vec::with_capacity(256),
            canon: Vec::with_capacity(256),
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
        if let Err(e) = validate(&sample) {
            return self.shared.reject(e);
        }
        let _guard = epoch::pin();
        let mut canon = Vec::new();
        let series = self.shared.resolve_parts(
            name,
            labels,
            sample.kind(),
            bounds_of(&sample),
            &mut canon,
        )?;
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        series
            .apply(&sample, timestamp_ms, now)
            .or_else(|e| self.shared.reject(e))
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
        let mut canon = Vec::new();
        // Bounded: each retry follows a retirement that removed the key from the index,
        // after which resolve creates a fresh series that cannot be retired before the
        // next flush; two retries cover any interleaving.
        for _ in 0..3 {
            let _guard = epoch::pin();
            let series = self
                .shared
                .resolve_parts(name, labels, kind, None, &mut canon)?;
            let existing = kind_of(&series.cell);
            if existing != kind {
                return self.shared.reject(Rejected::TypeConflict {
                    existing: existing.as_str(),
                    got: kind.as_str(),
                });
            }
            // SeqCst pair with `try_retire`: either we see `retired`, or it sees us.
            series.handles.fetch_add(1, Ordering::SeqCst);
            if !series.retired.load(Ordering::SeqCst) {
                return Ok(SeriesHandle {
                    series,
                    shared: self.shared.clone(),
                });
            }
            series.handles.fetch_sub(1, Ordering::SeqCst);
            canon.clear();
        }
        // Unreachable in practice (see above); refuse rather than spin.
        self.shared.reject(Rejected::GlobalLimit)
    }

    /// Flushes now (wall clock).
    pub fn flush(&self) -> FlushBatch {
        self.flush_at(now_ms())
    }

    /// Takes every series' share since the previous flush, retires series idle for
    /// `series_ttl`, and returns the batch. `now_ms` is the flush time (milliseconds
    /// since the Unix epoch); tests pass their own clock. Ingestion continues
    /// throughout; concurrent flushes run one after the other.
    pub fn flush_at(&self, now_ms: i64) -> FlushBatch {
        let sh = &*self.shared;
        let mut st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
        // Relaxed: a coarse stamp for writers; see `Shared::clock_ms`.
        sh.clock_ms.store(now_ms, Ordering::Relaxed);
        while let Some(s) = sh.created.pop() {
            st.entries.push(FlushEntry::new(s, now_ms));
        }
        let mut out = Vec::with_capacity(st.entries.len() + sh.retiring.load(Ordering::Relaxed));
        while let Some(mut e) = sh.retired.pop() {
            out.extend(e.collect(true));
            sh.retiring.fetch_sub(1, Ordering::Relaxed);
        }
        let ttl_ms = sh.config.series_ttl.as_millis() as i64;
        let guard = epoch::pin();
        let index = sh.index.pin();
        let mut i = 0;
        while i < st.entries.len() {
            let e = &mut st.entries[i];
            out.extend(e.collect(false));
            let touched = e.series.touched_ms.load(Ordering::Relaxed);
            if touched != e.seen_touched_ms {
                e.seen_touched_ms = touched;
                e.active_at_ms = now_ms;
            }
            if ttl_ms > 0 && now_ms - e.active_at_ms >= ttl_ms && try_retire(&e.series) {
                let e = st.entries.swap_remove(i);
                index.remove(&e.series.key);
                e.series.family.active.fetch_sub(1, Ordering::AcqRel);
                sh.active.fetch_sub(1, Ordering::AcqRel);
                sh.evicted.fetch_add(1, Ordering::Relaxed);
                sh.retiring.fetch_add(1, Ordering::Relaxed);
                let q = sh.retired.clone();
                guard.defer(move || q.push(e));
                continue;
            }
            i += 1;
        }
        // Families whose series are all gone are dropped so churning names do not
        // grow memory. A creator racing with this keeps its own `Arc<Family>`; the
        // per-name count may then undercount until that series is evicted.
        sh.families
            .pin()
            .retain(|_, f| f.active.load(Ordering::Acquire) > 0);
        drop(index);
        guard.flush();
        drop(guard);
        st.sequence += 1;
        let start_ms = std::mem::replace(&mut st.last_flush_ms, now_ms);
        FlushBatch {
            sequence: st.sequence,
            start_ms,
            end_ms: now_ms,
            series: out,
        }
    }

    /// Series retired but not yet finally collected (their last share comes in a later
    /// flush, once no writer can still be writing to them).
    pub fn pending_evictions(&self) -> usize {
        self.shared.retiring.load(Ordering::Relaxed)
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
            writer_cache_resets: sh.cache_resets.load(Ordering::Relaxed),
            flushes: sh.flusher.lock().map_or(0, |s| s.sequence),
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

/// Marks `s` retired unless a handle holds it (see the module doc).
fn try_retire(s: &Series) -> bool {
    // SeqCst pair with `Aggregator::handle`.
    s.retired.store(true, Ordering::SeqCst);
    if s.handles.load(Ordering::SeqCst) > 0 {
        s.retired.store(false, Ordering::SeqCst);
        return false;
    }
    true
}

/// Records points with a private fingerprint cache. One per receiving thread or task;
/// `Send` but used through `&mut self`.
pub struct Writer {
    shared: Arc<Shared>,
    /// Raw (arrival-order) encoding of a label set to its series. Keys share the
    /// series key's bytes when the labels arrived sorted.
    cache: HashMap<Arc<[u8]>, Arc<Series>, RandomState>,
    raw: Vec<u8>,
    canon: Vec<u8>,
}

impl Writer {
    /// Applies one sample to the series `name` + `labels` (labels in any order).
    /// `timestamp_ms` 0 means "now" (the aggregator clock).
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
        if let Err(e) = validate(&sample) {
            return self.shared.reject(e);
        }
        let guard = epoch::pin();
        let sorted = encode_raw(&mut self.raw, name, labels);
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        if let Some(series) = self.cache.get(&self.raw[..]) {
            // Relaxed is enough after `pin` (see the module doc): the flusher pins
            // after setting the flag, and the pins' SeqCst fences order the two.
            if !series.retired.load(Ordering::Relaxed) {
                return series
                    .apply(&sample, timestamp_ms, now)
                    .or_else(|e| self.shared.reject(e));
            }
            self.cache.remove(&self.raw[..]);
        }
        let series = self.shared.resolve_parts(
            name,
            labels,
            sample.kind(),
            bounds_of(&sample),
            &mut self.canon,
        )?;
        let result = series
            .apply(&sample, timestamp_ms, now)
            .or_else(|e| self.shared.reject(e));
        drop(guard);
        if !series.retired.load(Ordering::Relaxed) {
            if self.cache.len() >= self.shared.config.writer_cache_capacity {
                self.cache.clear();
                self.shared.cache_resets.fetch_add(1, Ordering::Relaxed);
            }
            let key = if sorted && self.raw == series.key.as_bytes() {
                series.key.shared_bytes().clone()
            } else {
                Arc::from(&self.raw[..])
            };
            self.cache.insert(key, series);
        }
        result
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
            Cell::Counter(c) if v.is_finite() && v >= 0.0 => {
                c.add(v);
                Ok(())
            }
            _ => self.record(Sample::Counter(v, Temporality::Delta), 0),
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
        if let Err(e) = validate(&sample) {
            return self.shared.reject(e);
        }
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        self.series
            .apply(&sample, timestamp_ms, now)
            .or_else(|e| self.shared.reject(e))
    }
}

impl Drop for SeriesHandle {
    fn drop(&mut self) {
        // The TTL counts from the handle's end, not from its last write.
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        self.series.touched_ms.store(now - 1, Ordering::Relaxed);
        self.series.handles.fetch_sub(1, Ordering::SeqCst);
    }
}
