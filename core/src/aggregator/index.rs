//! The shared index (canonical key bytes to series) and the admission limits.
//!
//! Owns: finding or creating a series by key ([`Shared::resolve`]), the global and
//! per-metric limits and their drop counters, and the slow (cache-miss) recording
//! path. Must never: merge two different keys, admit a series past a limit, or make a
//! creator wait for the flusher.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;
use foldhash::fast::RandomState;

use crate::cell::{CounterCell, CumulativeStart, GaugeCell, HistogramCell, SetCell, SummaryCell};
use crate::key::{Keyed, SeriesKey};
use crate::point::{HistogramValue, Sample};

use super::flush::FlusherState;
use super::kept::{Kept, KeptState, KeptTable};
use super::series::{
    Cell, CellKind, Counter, Family, Histogram, Refusal, SEALED_RETRIES, Series, SharedSeries,
    validate,
};
use super::series_index::SeriesIndex;
use super::{AggregatorConfig, REASONS, Rejected, now_ms};

/// State shared by the aggregator, its writers and handles.
pub(super) struct Shared {
    pub(super) config: AggregatorConfig,
    /// When the aggregator started, ms since the Unix epoch: a cumulative source that
    /// started later counts from zero (see [`Shared::since`]).
    pub(super) started_ms: i64,
    /// Canonical key bytes to series, one word per slot (see [`SeriesIndex`]).
    pub(super) index: SeriesIndex<Series>,
    /// Per metric name: its series count, for the per-metric limit.
    pub(super) families: papaya::HashMap<Box<str>, Arc<Family>, RandomState>,
    /// Per metric name: points refused by the per-metric limit (bounded, see config).
    pub(super) limit_drops: papaya::HashMap<Box<str>, AtomicU64, RandomState>,
    /// Series created but not yet seen by the flusher (which then lists them).
    pub(super) created: SegQueue<SharedSeries>,
    /// Totals of evicted counters and histograms (see `kept`). Locked only by the
    /// creation of a counter or histogram, by eviction and by the flush's expiry.
    pub(super) kept: Mutex<KeptTable>,
    /// Kept totals dropped because the table was full. Relaxed: a statistic.
    pub(super) kept_dropped: AtomicU64,
    /// Series held (the global ceiling counts these). AcqRel RMWs; see `admit`.
    pub(super) active: AtomicUsize,
    /// The aggregator clock: the latest flush time (or creation time), ms. Relaxed: a
    /// coarse timestamp only.
    pub(super) clock_ms: AtomicI64,
    /// Refusals by reason, indexed like [`REASONS`]. Relaxed: independent counters.
    pub(super) rejected: [AtomicU64; REASONS.len()],
    /// Flushes so far (the latest batch's sequence). Relaxed: writers only compare it
    /// with an earlier reading of their own.
    pub(super) flushes: AtomicU64,
    /// Statistics counters (series evicted, series created, writer cache entries
    /// cleared). Relaxed: independent counters, read only for reporting.
    pub(super) evicted: AtomicU64,
    pub(super) created_total: AtomicU64,
    pub(super) cache_evictions: AtomicU64,
    /// What only the flusher touches; also serialises concurrent flushes.
    pub(super) flusher: Mutex<FlusherState>,
}

impl Shared {
    /// What a cumulative sample whose source started at `start_ms` (0: unknown) counts
    /// from: zero if the source started after the aggregator, else its first value is
    /// a baseline (the OpenTelemetry Collector's cumulative-to-delta "auto" rule).
    pub(super) fn since(&self, start_ms: i64) -> CumulativeStart {
        CumulativeStart {
            start_ms,
            counts_from_zero: start_ms != 0 && start_ms > self.started_ms,
        }
    }

    pub(super) fn reject<T>(&self, r: Rejected) -> Result<T, Rejected> {
        self.rejected[r.index()].fetch_add(1, Ordering::Relaxed);
        Err(r)
    }

    /// [`validate`], counting a refusal.
    #[inline]
    pub(super) fn check(&self, sample: &Sample<'_>) -> Result<(), Rejected> {
        validate(sample).or_else(|e| self.reject(e))
    }

    /// Finds or creates the series for a canonical key.
    pub(super) fn resolve(
        &self,
        canonical: &[u8],
        name: &str,
        cell_kind: CellKind,
        bounds: Option<&Arc<[f64]>>,
    ) -> Result<SharedSeries, Rejected> {
        // Bounded: a retry follows a lost creation race whose winner was evicted in
        // between, which needs a flush per round.
        for _ in 0..SEALED_RETRIES {
            if let Some(s) = self.index.get(canonical) {
                return Ok(s);
            }
            // Counters and histograms may resume an evicted predecessor's totals (see
            // `kept`). Their creator holds the table's lock from its second lookup until
            // its series is in the index, and the flusher holds it from removing a series
            // until its totals are in the table: so a successor either finds the totals
            // or is found by the lookup. A creator that skipped the lock while the table
            // was empty (an earlier design) could be overtaken in that window by a
            // predecessor's creation *and* eviction, then insert a fresh series beside
            // the predecessor's orphaned totals (caught by the eviction stress test).
            let resumable = matches!(cell_kind, CellKind::Counter | CellKind::Histogram);
            let mut table = resumable.then(|| self.kept.lock().unwrap_or_else(|p| p.into_inner()));
            if table.is_some()
                && let Some(s) = self.index.get(canonical)
            {
                return Ok(s);
            }
            let family = self.admit(name)?;
            let kept = table.as_mut().and_then(|t| t.take(canonical));
            let now = self.clock_ms.load(Ordering::Relaxed);
            // A resumed series starts from its predecessor's totals and last input.
            let cell = match (cell_kind, &kept) {
                (
                    CellKind::Counter,
                    Some(Kept {
                        state:
                            KeptState::Counter {
                                total,
                                last_cumulative,
                                last_start_ms,
                            },
                        ..
                    }),
                ) => Cell::counter(Counter::new(
                    CounterCell::resumed(*last_cumulative, *last_start_ms),
                    *total,
                )),
                (CellKind::Counter, _) => Cell::counter(Counter::new(CounterCell::default(), 0.0)),
                (
                    CellKind::Histogram,
                    Some(Kept {
                        state:
                            KeptState::Histogram {
                                total,
                                last_cumulative,
                                last_start_ms,
                            },
                        ..
                    }),
                ) => Cell::histogram(Histogram::new(
                    HistogramCell::resumed(
                        total.bounds.clone(),
                        last_cumulative.as_deref().cloned(),
                        *last_start_ms,
                    ),
                    HistogramValue::clone(total),
                )),
                (CellKind::Histogram, _) => {
                    let bounds = bounds.unwrap_or(&self.config.histogram_bounds);
                    Cell::histogram(Histogram::new(
                        HistogramCell::new(bounds.clone()),
                        HistogramValue::empty(bounds.clone()),
                    ))
                }
                (CellKind::Gauge, _) => Cell::gauge(GaugeCell::default()),
                (CellKind::Summary, _) => Cell::summary(SummaryCell::default()),
                (CellKind::Set, _) => Cell::set(SetCell::default()),
            };
            let series = Keyed::new(
                canonical,
                Series::new(
                    // The later of the wall clock and the aggregator clock: tests that
                    // drive the clock ahead of the wall still see starts move forward.
                    kept.as_ref()
                        .map_or_else(|| now_ms().max(now), |k| k.start_ms),
                    cell,
                ),
            );
            if self.index.insert(&series).is_ok() {
                self.created_total.fetch_add(1, Ordering::Relaxed);
                self.created.push(series.clone());
                return Ok(series);
            }
            // Lost the race to another creator (a gauge, set or summary of the same key,
            // which does not take the table's lock): give back our admission and the
            // totals (under a key of their own: ours goes with our series), and use theirs.
            family.active.fetch_sub(1, Ordering::AcqRel);
            self.active.fetch_sub(1, Ordering::AcqRel);
            if let (Some(t), Some(k)) = (table.as_mut(), kept) {
                self.kept_dropped.fetch_add(
                    t.insert(SeriesKey::from_canonical(canonical), k, now),
                    Ordering::Relaxed,
                );
            }
        }
        self.reject(Rejected::EvictedDuringUpdate)
    }

    /// Reserves room for one more series of `name` under both limits.
    pub(super) fn admit(&self, name: &str) -> Result<Arc<Family>, Rejected> {
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

    pub(super) fn count_limit_drop(&self, name: &str) {
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
    pub(super) fn record_slow(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        sample: &Sample<'_>,
        timestamp_ms: i64,
        start: CumulativeStart,
        scratch: &mut Scratch,
    ) -> Result<SharedSeries, Rejected> {
        if let Err(e) =
            SeriesKey::canonicalize(name, labels, &mut scratch.canon, &mut scratch.order)
        {
            return self.reject(e.into());
        }
        self.record_canonical(name, sample, timestamp_ms, start, &scratch.canon)
    }

    /// [`Shared::record_slow`] for a key already in canonical form.
    pub(super) fn record_canonical(
        &self,
        name: &str,
        sample: &Sample<'_>,
        timestamp_ms: i64,
        start: CumulativeStart,
        canonical: &[u8],
    ) -> Result<SharedSeries, Rejected> {
        for _ in 0..SEALED_RETRIES {
            let series = self.resolve(canonical, name, CellKind::of(sample), bounds_of(sample))?;
            let now = self.clock_ms.load(Ordering::Relaxed);
            match series.apply(sample, timestamp_ms, now, start) {
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
pub(super) struct Scratch {
    pub(super) canon: Vec<u8>,
    pub(super) order: Vec<usize>,
}

pub(super) fn bounds_of<'a>(sample: &Sample<'a>) -> Option<&'a Arc<[f64]>> {
    match sample {
        Sample::Histogram(h, _) => Some(&h.bounds),
        _ => None,
    }
}
