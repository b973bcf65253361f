//! The in-memory aggregation engine: series identity to lock-free cells, limits, TTL
//! eviction and the flush that turns it all into a [`FlushBatch`](crate::flush::FlushBatch).
//!
//! Owns: the series index, the admission limits and their drop counters, the
//! per-writer identity caches and the flush/eviction protocol. Must never: make a
//! writer wait for the flusher or for another writer, merge two different keys, or
//! lose or double-count a point across flushes.
//!
//! # Structure
//! The engine is split by concern: `series` (one series: identity, cell, how a sample
//! lands), `series_index` (the map from key bytes to series), `index` (finding or
//! creating a series through it, and the limits), `writer` ([`Writer`] and its
//! cache), `sequence` (a writer's memory of a source's last body, in order),
//! `handle` ([`SeriesHandle`]) and `flush` (the flush walk and TTL eviction).
//! This module holds the [`Aggregator`] itself, its config and its statistics.
//!
//! - **Index**: a lock-free open-addressing table of 8-byte words (module
//!   `series_index`), each the address of a series (`SharedSeries`: the series and its
//!   canonical key bytes in one allocation with one reference count, see
//!   [`crate::key`]) tagged with 16 bits of the key's hash, hashed and compared by
//!   those bytes. New series are inserted with a CAS; a racing creator of the same key
//!   loses the CAS and uses the winner's series. Keys are compared in full, so a 64-bit
//!   fingerprint collision never merges two series. The table resizes without
//!   blocking lookups or inserts; removals (the flusher's evictions) and freeing go
//!   through a lock and the epoch (see that module).
//! - **Writer cache**: each [`Writer`] (one per receiving thread or task) keeps a
//!   private table from the label set *as it arrives* (unsorted; for StatsD the line's
//!   `name|tags` as sent) to its series, so validation, sorting and lookup in the
//!   shared index run once per label set, not per point. The table (module `cache`) is
//!   open addressing over 8-byte slots with each entry (the series' address and the
//!   key bytes) in one arena, and its slot address depends on the hash alone, so a
//!   receiver can prefetch the slots, entries and series of a batch of lines before
//!   applying them (the StatsD decoder does). The cache is private to its writer (no
//!   atomics on a hit) and bounded: when full, new label sets go through the index
//!   uncached until the next flush, when a full cache is cleared and refills with the
//!   label sets in use. The default bound equals the default `max_series` (1M): a
//!   working set above the bound pays the index's validate-sort-encode-lookup
//!   (~0.5 µs) on every point of the uncached label sets, which at 100k series with
//!   the former 65,536 bound lost a third of a 4M lines/s load. Memory grows with the
//!   label sets in use, not with the bound. So a cache hit allocates nothing, and a
//!   working set larger than the cache costs one refill per flush interval, not one
//!   per point. (A set-associative cache of fixed slots was measured first: 3.6%
//!   conflict misses at 10k series in 64k slots, each a trip to the index, cost more
//!   than the whole hit path.)
//! - **Writer sequence**: a source that sends the same series in the same order every
//!   time (a scrape target) is better served by remembering its last body in order
//!   ([`Writer::begin_sequence`], module `sequence`): each sample is compared with the
//!   identity expected next, stored as a delta on the one before it, so an entry costs
//!   its series' address and a few bytes rather than a slot and a full identity.
//! - **Cells**: see [`crate::cell`] for how updates and collections meet.
//! - **Flusher list**: new series are pushed on a lock-free queue; the flusher drains
//!   it into its own dense `Vec` of series addresses, which it walks on every flush
//!   without touching the index. What only the flusher keeps per series (running
//!   totals, when activity was last seen) is stored in the series. One flush runs at
//!   a time (a mutex only flushes take); a chunked flush of 256k series or more walks
//!   the list with one thread per core (at most 4), the flushing thread among them,
//!   which alone hands chunks to the consumer and evicts (module `flush`).
//!
//! # Eviction (series TTL) and why no point is lost
//! A series idle for `series_ttl` is *retired* by the flusher: it is removed from the
//! index, then its cell is sealed ([`crate::cell`]), which takes the final share into
//! the same flush (marked `evicted`). A writer still holding the series in its cache,
//! or one that found it in the index just before the removal, gets `Sealed` back from
//! its update instead of a silent loss, and records the point again through the index,
//! which by then creates the successor series. Writers thus need no pin, lock or flag
//! check on the hot path. Creating a counter or histogram series (not updating one)
//! takes the kept-totals table's mutex (module `kept`), which the flusher holds only
//! while it evicts one series or expires old totals, so that a successor always
//! resumes its predecessor's running total. A series with live [`SeriesHandle`]s is never retired: the
//! handle count and the retired bit share one atomic word, so taking a handle and
//! retiring are ordered by that word alone.
//!
//! # Limits
//! A point that would create a series past `max_series_per_metric` (counted per name in
//! `cardinality_limit_exceeded`, with at most `max_tracked_metric_names` names before
//! the rest share the name `other`) or past `max_series` (counted, and
//! [`AggregatorStats::ceiling_reached`] is set) is rejected; existing series keep
//! aggregating.

mod cache;
mod flush;
mod handle;
mod index;
mod kept;
mod sequence;
mod series;
mod series_index;
mod writer;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::SegQueue;
use foldhash::fast::RandomState;

use crate::cell::CumulativeStart;
use crate::key::{KeyError, SeriesKey};
use crate::point::{DEFAULT_BUCKETS, MetricKind, Sample};

use flush::FlusherState;
use index::{Scratch, Shared};
use kept::KeptTable;
use series::{CellKind, SEALED_RETRIES, kind_of};
use series_index::SeriesIndex;

pub use handle::SeriesHandle;
pub(crate) use writer::RawHash;
pub use writer::Writer;

/// Settings of an [`Aggregator`], fixed once it is built.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    /// A series without updates for this long is evicted with its cumulative state.
    /// Effective idle time is between `series_ttl` less a second and `series_ttl` plus
    /// one flush interval, since activity is noticed per flush and its time kept to
    /// the second. `Duration::ZERO` disables eviction. Default 5 minutes.
    pub series_ttl: Duration,
    /// Most series one metric name may have. Default 10,000.
    pub max_series_per_metric: usize,
    /// Most series in all. Default 1,000,000.
    pub max_series: usize,
    /// Most label sets each [`Writer`] caches. When full, new label sets go through the
    /// shared index until the next flush clears the cache. The cache grows with the
    /// label sets in use (about 16 bytes of table at 3/8 to 3/4 load plus the label
    /// set's bytes as received, per entry), so the bound costs nothing until reached.
    /// Entries holding evicted series are let go by [`Writer::tidy`].
    /// Default 1,000,000: the default `max_series`, so that every series fits; raise
    /// it with `max_series`.
    pub writer_cache_capacity: usize,
    /// Most metric names with their own `cardinality_limit_exceeded` count; the rest
    /// share the name `other`. Default 1,000.
    pub max_tracked_metric_names: usize,
    /// Bucket bounds for series created by single observations ([`Sample::Observe`]).
    /// Default: the Prometheus client defaults ([`DEFAULT_BUCKETS`]).
    pub histogram_bounds: Arc<[f64]>,
    /// Most evicted counter and histogram series whose running totals are kept, so that
    /// a series that comes back after `series_ttl` resumes its total and start time
    /// instead of restarting at 0 (which a cumulative backend cannot tell from a value
    /// it has already seen). When full, the oldest entry is dropped and counted
    /// ([`AggregatorStats::kept_totals_dropped`]); such a series restarts at 0 with a new
    /// start time. About 120 bytes plus the key per counter (see the `kept` module);
    /// 0 keeps nothing. Default 100,000 (~20 MB with 80-byte keys).
    pub kept_totals_capacity: usize,
    /// How long a kept total waits for its series to come back before it is forgotten.
    /// Default 24 hours: longer than the look-back of nearly every dashboard and
    /// recording rule (`increase(x[1d])` at most), so a daily job's counter keeps
    /// counting, while series gone for good (a replaced pod) free their slot within a
    /// day rather than only when the table is full.
    pub kept_totals_ttl: Duration,
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
            writer_cache_capacity: 1_000_000,
            max_tracked_metric_names: 1_000,
            histogram_bounds: Arc::from(&DEFAULT_BUCKETS[..]),
            kept_totals_capacity: 100_000,
            kept_totals_ttl: Duration::from_secs(24 * 3600),
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
    /// Evicted series whose running totals are kept for their return (see
    /// [`AggregatorConfig::kept_totals_capacity`]).
    pub kept_totals: usize,
    /// Kept totals dropped because the table was full, since start: each such series,
    /// if it comes back, restarts at 0 with a new start time.
    pub kept_totals_dropped: u64,
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    /// Builds an empty aggregator that starts now (wall clock).
    pub fn new(config: AggregatorConfig) -> Aggregator {
        Aggregator::starting_at(config, now_ms())
    }

    /// Builds an empty aggregator whose start time is `started_ms` (milliseconds since
    /// the Unix epoch): a cumulative source that reports a later start time counts
    /// from zero, one that started earlier or says nothing gives a baseline first (see
    /// [`Writer::record_since`]). The aggregator clock (see [`Aggregator::flush_at`])
    /// starts there too. Tests pass their own time.
    pub fn starting_at(config: AggregatorConfig, started_ms: i64) -> Aggregator {
        let now = started_ms;
        let kept = KeptTable::new(
            config.kept_totals_capacity,
            i64::try_from(config.kept_totals_ttl.as_millis()).unwrap_or(i64::MAX),
        );
        Aggregator {
            shared: Arc::new(Shared {
                config,
                started_ms,
                index: SeriesIndex::default(),
                families: papaya::HashMap::with_hasher(RandomState::default()),
                limit_drops: papaya::HashMap::with_hasher(RandomState::default()),
                created: SegQueue::new(),
                kept: Mutex::new(kept),
                kept_dropped: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                clock_ms: AtomicI64::new(now),
                rejected: Default::default(),
                flushes: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                created_total: AtomicU64::new(0),
                cache_evictions: AtomicU64::new(0),
                flusher: Mutex::new(FlusherState {
                    series: Vec::new(),
                    sequence: 0,
                    last_flush_ms: now,
                    spare: Vec::new(),
                    cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                }),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AggregatorConfig {
        &self.shared.config
    }

    /// A writer with its own identity cache (raw label set to series): one per
    /// receiving thread or task.
    pub fn writer(&self) -> Writer {
        Writer {
            shared: self.shared.clone(),
            cache: cache::RawCache::new(),
            sequence: sequence::SeriesSequence::default(),
            cleared_at_flush: self.shared.flushes.load(Ordering::Relaxed),
            tidied_at_flush: self.shared.flushes.load(Ordering::Relaxed),
            evicted_at_clear: self.shared.evicted.load(Ordering::Relaxed),
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
            .record_slow(
                name,
                labels,
                &sample,
                timestamp_ms,
                CumulativeStart::default(),
                &mut scratch,
            )
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
        self.handle_with(name, labels, kind, None)
    }

    /// A handle to one histogram series with its own bucket upper `bounds` (strictly
    /// increasing and finite; empty: one `+Inf` bucket, a count and a sum) instead of
    /// [`AggregatorConfig::histogram_bounds`]. The bounds apply when this call creates
    /// the series; an existing series (or one resuming kept totals) keeps its own.
    ///
    /// # Errors
    /// [`Rejected::InvalidValue`], counted, for unusable bounds; otherwise as
    /// [`Aggregator::handle`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use weir_core::Aggregator;
    /// let agg = Aggregator::default();
    /// let h = agg.histogram_handle("latency_seconds", &[], Arc::from(&[0.1, 1.0][..])).unwrap();
    /// h.observe(0.5).unwrap();
    /// assert_eq!(agg.peek().series.len(), 1);
    /// ```
    pub fn histogram_handle(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: Arc<[f64]>,
    ) -> Result<SeriesHandle, Rejected> {
        let usable = bounds.len() <= MAX_HISTOGRAM_BOUNDS
            && bounds.iter().all(|b| b.is_finite())
            && bounds.windows(2).all(|w| w[0] < w[1]);
        if !usable {
            return self.shared.reject(Rejected::InvalidValue("histogram"));
        }
        self.handle_with(name, labels, MetricKind::Histogram, Some(&bounds))
    }

    fn handle_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        bounds: Option<&Arc<[f64]>>,
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
                .resolve(&scratch.canon, name, CellKind::from(kind), bounds)?;
            let existing = kind_of(&series.cell);
            if existing != kind {
                return self.shared.reject(Rejected::TypeConflict {
                    existing: existing.as_str(),
                    got: kind.as_str(),
                });
            }
            if series.handles().acquire() {
                return Ok(SeriesHandle {
                    series,
                    shared: self.shared.clone(),
                });
            }
            // Being retired: it leaves the index before it is sealed; resolve again.
        }
        self.shared.reject(Rejected::EvictedDuringUpdate)
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
            kept_totals: sh.kept.lock().map_or(0, |t| t.len()),
            kept_totals_dropped: sh.kept_dropped.load(Ordering::Relaxed),
        }
    }

    /// Flushes since start: the `sequence` of the latest batch. A reader that caches
    /// something per flush compares it with this (see also [`Aggregator::peek`]).
    pub fn flushes(&self) -> u64 {
        // Relaxed: a counter read on its own; `flush_at` stores it under the flush lock.
        self.shared.flushes.load(Ordering::Relaxed)
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
