//! [`Writer`]: records points through a private identity cache (see the module doc
//! of [`crate::aggregator`]).
//!
//! Owns: the per-writer cache and its bound. Must never: share the cache with another
//! thread, or grow it past `writer_cache_capacity`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cell::CumulativeStart;
use crate::key::encode_raw;
use crate::point::{MetricPoint, Sample};

use super::cache::RawCache;
use super::index::{Scratch, Shared};
use super::sequence::{Found, SeriesSequence};
use super::series::{Refusal, SharedSeries};

use super::Rejected;

/// The hash a [`Writer`] files a raw identity under (see [`Writer::prefetch_slot`]);
/// only meaningful to the writer that gave it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHash(u64);

/// Records points with a private identity cache (raw label set to series). One per
/// receiving thread or task; `Send` but used through `&mut self`.
///
/// Aligned to 128 bytes (two cache lines, the unit the adjacent-line prefetcher moves)
/// so that writers of different threads placed side by side, say in one array, never
/// share a line: each update writes its writer's fields.
#[repr(align(128))]
pub struct Writer {
    pub(super) shared: Arc<Shared>,
    /// Raw (arrival-order) identity bytes to series; at most `writer_cache_capacity`.
    pub(super) cache: RawCache,
    /// The series of the last body read with [`Writer::begin_sequence`], in order; at
    /// most `writer_cache_capacity`.
    pub(super) sequence: SeriesSequence,
    /// The flush count when the cache was last cleared: a full cache is cleared at
    /// most once per flush.
    pub(super) cleared_at_flush: u64,
    /// The flush count when [`Writer::tidy`] last looked.
    pub(super) tidied_at_flush: u64,
    /// The aggregator's count of evicted series when the cache was last emptied (or
    /// the writer made): at most that many of its entries can hold evicted series.
    pub(super) evicted_at_clear: u64,
    /// Points that missed the cache (see [`Writer::cache_misses`]).
    pub(super) misses: u64,
    /// Raw (arrival-order) encoding of the current point's label set.
    pub(super) raw: Vec<u8>,
    pub(super) scratch: Scratch,
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
        self.record_since(name, labels, sample, timestamp_ms, 0)
    }

    /// [`Writer::record`] for a cumulative sample whose source says when its running
    /// total began: `start_ms`, milliseconds since the Unix epoch (OTLP
    /// `start_time_unix_nano`, an OpenMetrics `_created` line), 0 when unknown. A
    /// source that started after the aggregator (see [`Aggregator::starting_at`])
    /// counts from zero, so its first value is an increase; otherwise the first value
    /// is a baseline. A start time other than the previous point's is a reset. Delta
    /// samples and gauges ignore `start_ms`.
    ///
    /// # Errors
    /// As [`Writer::record`].
    ///
    /// ```
    /// use weir_core::{Aggregator, AggregatorConfig, Sample, Temporality};
    /// let agg = Aggregator::starting_at(AggregatorConfig::default(), 1_000);
    /// let mut w = agg.writer();
    /// let total = Sample::Counter(5.0, Temporality::Cumulative);
    /// w.record_since("jobs_total", &[], total, 0, 2_000).unwrap(); // started after weir
    /// w.record_since("old_total", &[], total, 0, 500).unwrap(); // started before: a baseline
    /// assert_eq!(agg.flush().counter_delta_sum(), 5.0);
    /// ```
    ///
    /// [`Aggregator::starting_at`]: super::Aggregator::starting_at
    #[inline]
    pub fn record_since(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start_ms: i64,
    ) -> Result<(), Rejected> {
        let start = self.shared.since(start_ms);
        let mut raw = std::mem::take(&mut self.raw);
        encode_raw(&mut raw, name, labels);
        let hash = self.cache.hash(&raw);
        let result = match self.apply_cached(&raw, hash, sample, timestamp_ms, start) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.resolve_and_cache(&raw, hash, name, labels, sample, timestamp_ms, start)
            }
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
        self.record_cached_since(raw, sample, timestamp_ms, 0)
    }

    /// [`Writer::record_cached`] for a cumulative sample whose running total began at
    /// `start_ms` (0: unknown), as [`Writer::record_since`] takes it. On a miss the
    /// caller calls [`Writer::record_with_raw_since`] with the same `raw`.
    ///
    /// # Errors
    /// As [`Writer::record_cached`].
    #[inline]
    pub fn record_cached_since(
        &mut self,
        raw: &[u8],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start_ms: i64,
    ) -> Result<bool, Rejected> {
        let start = self.shared.since(start_ms);
        let hash = self.cache.hash(raw);
        self.apply_cached(raw, hash, sample, timestamp_ms, start)
    }

    /// The hash under which this writer caches `raw`, for the batch path of a
    /// receiver (see [`Writer::prefetch_entry`]); also asks the CPU to load the cache
    /// slot `raw` would be in. Only a hint: nothing changes.
    #[inline]
    pub(crate) fn prefetch_slot(&self, raw: &[u8]) -> RawHash {
        let hash = self.cache.hash(raw);
        self.cache.prefetch_slot(hash);
        RawHash(hash)
    }

    /// The hash under which this writer caches `raw`, without a prefetch.
    #[inline]
    pub(crate) fn raw_hash(&self, raw: &[u8]) -> RawHash {
        RawHash(self.cache.hash(raw))
    }

    /// Asks the CPU to load the cache entry (the series' address and the key bytes)
    /// in the slot `hash` points at, best some lines after [`Writer::prefetch_slot`]
    /// gave `hash`. Only a hint.
    #[inline]
    pub(crate) fn prefetch_entry(&self, hash: RawHash) {
        self.cache.prefetch_entry(hash.0);
    }

    /// Asks the CPU to load the series of the cache entry `hash` points at, best some
    /// lines after [`Writer::prefetch_entry`]. Only a hint.
    #[inline]
    pub(crate) fn prefetch_series(&self, hash: RawHash) {
        self.cache.prefetch_series(hash.0);
    }

    /// [`Writer::record_cached`] with the hash [`Writer::prefetch_slot`] gave for `raw`.
    #[inline]
    pub(crate) fn record_cached_hashed(
        &mut self,
        raw: &[u8],
        hash: RawHash,
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<bool, Rejected> {
        self.apply_cached(
            raw,
            hash.0,
            sample,
            timestamp_ms,
            CumulativeStart::default(),
        )
    }

    /// [`Writer::record_with_raw`] with the hash [`Writer::prefetch_slot`] gave.
    pub(crate) fn record_with_raw_hashed(
        &mut self,
        raw: &[u8],
        hash: RawHash,
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
    ) -> Result<(), Rejected> {
        let start = CumulativeStart::default();
        self.resolve_and_cache(raw, hash.0, name, labels, sample, timestamp_ms, start)
    }

    /// [`Writer::record_cached`] with the cache hash and a cumulative start.
    #[inline]
    fn apply_cached(
        &mut self,
        raw: &[u8],
        hash: u64,
        sample: Sample<'_>,
        timestamp_ms: i64,
        start: CumulativeStart,
    ) -> Result<bool, Rejected> {
        self.shared.check(&sample)?;
        let Some(series) = self.cache.get(raw, hash) else {
            self.misses += 1;
            return Ok(false);
        };
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        match series.apply(&sample, timestamp_ms, now, start) {
            Ok(()) => Ok(true),
            Err(Refusal::Rejected(e)) => self.shared.reject(e),
            Err(Refusal::Sealed) => {
                // Evicted: forget it; the caller goes through the index to its successor.
                self.cache.remove(raw, hash);
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
        self.record_with_raw_since(raw, name, labels, sample, timestamp_ms, 0)
    }

    /// [`Writer::record_with_raw`] for a cumulative sample whose running total began
    /// at `start_ms` (0: unknown), the miss path of [`Writer::record_cached_since`].
    ///
    /// # Errors
    /// As [`Writer::record_with_raw`].
    pub fn record_with_raw_since(
        &mut self,
        raw: &[u8],
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start_ms: i64,
    ) -> Result<(), Rejected> {
        let start = self.shared.since(start_ms);
        let hash = self.cache.hash(raw);
        self.resolve_and_cache(raw, hash, name, labels, sample, timestamp_ms, start)
    }

    /// [`Writer::record_with_raw`] with the cache hash and a cumulative start.
    #[allow(clippy::too_many_arguments)]
    fn resolve_and_cache(
        &mut self,
        raw: &[u8],
        hash: u64,
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start: CumulativeStart,
    ) -> Result<(), Rejected> {
        let series = self.resolve(name, labels, &sample, timestamp_ms, start)?;
        self.tidy();
        if self.cache.len() >= self.shared.config.writer_cache_capacity {
            let flushes = self.shared.flushes.load(Ordering::Relaxed);
            if flushes == self.cleared_at_flush {
                return Ok(()); // full until the next flush: uncached
            }
            self.clear_cache();
            self.cleared_at_flush = flushes;
        }
        self.cache.insert(raw, hash, series);
        Ok(())
    }

    /// Lets go of series evicted since the cache was last emptied, once per flush at
    /// most (one relaxed load otherwise): an entry keeps its series' memory alive until
    /// its label set comes again, which an evicted one may never do. When the series
    /// evicted (by anyone) since then number at least half the cache's entries, the
    /// cache is emptied and its live label sets miss once each; so at most about as
    /// many entries hold evicted series as hold live ones. Called on every cache miss
    /// (series that come and go miss); a receiver whose writer can go idle also calls
    /// it while it waits.
    #[inline]
    pub fn tidy(&mut self) {
        // Relaxed: compared only with this writer's own earlier readings.
        let flushes = self.shared.flushes.load(Ordering::Relaxed);
        if flushes != self.tidied_at_flush {
            self.tidied_at_flush = flushes;
            self.tidy_after_flush();
        }
    }

    #[cold]
    fn tidy_after_flush(&mut self) {
        // Relaxed: a count only compared with this writer's own earlier reading.
        let evicted = self.shared.evicted.load(Ordering::Relaxed);
        let evicted = evicted.saturating_sub(self.evicted_at_clear);
        if evicted > 0 && evicted.saturating_mul(2) >= self.cache.len() as u64 {
            self.clear_cache();
        }
    }

    /// Empties the cache (counted in the cache evictions), keeping its memory.
    fn clear_cache(&mut self) {
        self.shared
            .cache_evictions
            .fetch_add(self.cache.len() as u64, Ordering::Relaxed);
        self.cache.clear();
        self.evicted_at_clear = self.shared.evicted.load(Ordering::Relaxed);
    }

    /// Starts a body from a source that sends the same series in the same order every
    /// time, as a scrape target does: its samples are recorded with
    /// [`Writer::record_sequenced_since`], and [`Writer::end_sequence`] ends it. The
    /// writer remembers the last body's series in order (a few bytes per series
    /// beside its address, where [`Writer::record_cached`]'s table keeps a slot and a
    /// copy of the identity), and finds each sample's series by comparing its identity
    /// with the one expected next. One writer per source: two sources' bodies would
    /// undo each other's order.
    ///
    /// ```
    /// use weir_core::{Aggregator, Sample};
    /// let agg = Aggregator::default();
    /// let mut w = agg.writer();
    /// for value in [1.0, 2.0] {
    ///     w.begin_sequence();
    ///     for (ident, name, labels) in [
    ///         (&b"temp{room=\"a\"}"[..], "temp", [("room", "a")]),
    ///         (&b"temp{room=\"b\"}"[..], "temp", [("room", "b")]),
    ///     ] {
    ///         if !w.record_sequenced_since(ident, Sample::Gauge(value), 0, 0).unwrap() {
    ///             w.record_sequenced_new_since(ident, name, &labels, Sample::Gauge(value), 0, 0)
    ///                 .unwrap();
    ///         }
    ///     }
    ///     w.end_sequence();
    /// }
    /// assert_eq!((w.cached(), w.cache_misses()), (2, 2)); // the second body: two hits
    /// ```
    pub fn begin_sequence(&mut self) {
        self.sequence.begin();
    }

    /// Applies `sample` to the series the current body's sample with identity `ident`
    /// had in the last body, if `ident` is the one expected next (or the one after it:
    /// the expected series left the body). `ident` is the sample's name and labels as
    /// the source spells them; equal bytes must mean equal name and labels. Returns
    /// `Ok(false)` when `ident` is not found (a new series, another order, an evicted
    /// series); the caller then calls [`Writer::record_sequenced_new_since`] with the
    /// same `ident`. `start_ms` as for [`Writer::record_since`].
    ///
    /// # Errors
    /// [`Rejected`], counted, for an invalid value or a kind conflict.
    #[inline]
    pub fn record_sequenced_since(
        &mut self,
        ident: &[u8],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start_ms: i64,
    ) -> Result<bool, Rejected> {
        let Some(found) = self.sequence.find(ident) else {
            self.misses += 1;
            return Ok(false);
        };
        if found == Found::AfterExpected {
            self.sequence.skip_expected();
        }
        let start = self.shared.since(start_ms);
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        if let Err(e) = self.shared.check(&sample) {
            self.sequence.take_expected();
            return Err(e);
        }
        let Some(series) = self.sequence.expected_series() else {
            self.misses += 1;
            return Ok(false);
        };
        match series.apply(&sample, timestamp_ms, now, start) {
            Ok(()) => {
                self.sequence.take_expected();
                Ok(true)
            }
            Err(Refusal::Rejected(e)) => {
                self.sequence.take_expected();
                self.shared.reject(e)
            }
            Err(Refusal::Sealed) => {
                // Evicted: forget it; the caller goes through the index to its successor.
                self.sequence.skip_expected();
                self.misses += 1;
                Ok(false)
            }
        }
    }

    /// The miss path of [`Writer::record_sequenced_since`]: resolves `name` + `labels`
    /// through the shared index (creating the series if admitted), applies `sample`,
    /// and remembers the series at this place in the body under `ident`.
    ///
    /// # Errors
    /// [`Rejected`], counted, when the point is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn record_sequenced_new_since(
        &mut self,
        ident: &[u8],
        name: &str,
        labels: &[(&str, &str)],
        sample: Sample<'_>,
        timestamp_ms: i64,
        start_ms: i64,
    ) -> Result<(), Rejected> {
        let start = self.shared.since(start_ms);
        let series = self.resolve(name, labels, &sample, timestamp_ms, start)?;
        let capacity = self.shared.config.writer_cache_capacity;
        self.sequence.push(ident, series, capacity);
        Ok(())
    }

    /// Ends the body begun by [`Writer::begin_sequence`]: the series of the last body
    /// that this one did not have are forgotten, and the next body is expected in this
    /// one's order.
    pub fn end_sequence(&mut self) {
        self.sequence.end();
    }

    /// The miss paths' common part: checks `sample`, then finds or creates the series
    /// of `name` + `labels` in the shared index and applies it there.
    fn resolve(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        sample: &Sample<'_>,
        timestamp_ms: i64,
        start: CumulativeStart,
    ) -> Result<SharedSeries, Rejected> {
        self.shared.check(sample)?;
        self.shared
            .record_slow(name, labels, sample, timestamp_ms, start, &mut self.scratch)
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

    /// Label sets currently cached, in the table and in the sequence of the last body
    /// (see [`Writer::begin_sequence`]).
    pub fn cached(&self) -> usize {
        self.cache.len() + self.sequence.len()
    }

    /// Empties the cache and frees its memory, giving back its references to series:
    /// for a writer that goes idle, whose cache would otherwise keep series evicted
    /// meanwhile in memory. Its next points miss once per label set.
    pub fn release_cache(&mut self) {
        self.cache = RawCache::new();
        self.sequence = SeriesSequence::default();
        self.evicted_at_clear = self.shared.evicted.load(Ordering::Relaxed);
    }

    /// Points this writer could not apply from its cache (new label sets, a full
    /// cache, evicted series), since it was created.
    pub fn cache_misses(&self) -> u64 {
        self.misses
    }
}
