//! [`SeriesHandle`]: a pre-resolved series for updates without any lookup.
//!
//! Owns: the handle count of a series while the handle lives. Must never: let a series
//! be retired while a handle to it exists.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cell::CumulativeStart;
use crate::key::SeriesKey;
use crate::point::{MetricKind, Sample, Temporality};

use super::index::Shared;
use super::series::{Cell, Refusal, SharedSeries, kind_of};

use super::Rejected;

/// A pre-resolved series: updates go straight to its cell (no lookup, no pin). Keeps
/// the series from being evicted while it lives.
pub struct SeriesHandle {
    pub(super) series: SharedSeries,
    pub(super) shared: Arc<Shared>,
}

impl SeriesHandle {
    /// The series' kind.
    pub fn kind(&self) -> MetricKind {
        kind_of(&self.series.cell)
    }

    /// The series' key.
    pub fn key(&self) -> &SeriesKey {
        self.series.key()
    }

    /// Adds a delta to a counter.
    ///
    /// # Errors
    /// [`Rejected::InvalidValue`] for a negative or non-finite value,
    /// [`Rejected::TypeConflict`] if the series is not a counter.
    #[inline]
    pub fn add(&self, v: f64) -> Result<(), Rejected> {
        match &self.series.cell {
            Cell::Counter(_, c) if v.is_finite() && v >= 0.0 && c.add(v).is_ok() => Ok(()),
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
            Cell::Counter(_, c) if c.add_u64(n).is_ok() => Ok(()),
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
        // The hot path, as `increment`'s: straight into the cell (a bucket search and
        // the cell's atomics), no sample check or dispatch. NaN, another kind or a
        // sealed cell take the general path, which refuses and counts.
        match &self.series.cell {
            Cell::Histogram(_, h) if !v.is_nan() && h.observe(v, 1).is_ok() => Ok(()),
            _ => self.record(Sample::Observe { value: v, count: 1 }, 0),
        }
    }

    /// Applies any sample.
    ///
    /// # Errors
    /// As [`Writer::record`](super::Writer::record), without the key and limit cases.
    pub fn record(&self, sample: Sample<'_>, timestamp_ms: i64) -> Result<(), Rejected> {
        self.shared.check(&sample)?;
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        match self
            .series
            .apply(&sample, timestamp_ms, now, CumulativeStart::default())
        {
            Ok(()) => Ok(()),
            Err(Refusal::Rejected(e)) => self.shared.reject(e),
            // Not reachable while the handle holds the series; stay correct anyway.
            Err(Refusal::Sealed) => {
                let key = self.series.key();
                self.shared
                    .record_canonical(
                        key.name(),
                        &sample,
                        timestamp_ms,
                        CumulativeStart::default(),
                        key.as_bytes(),
                    )
                    .map(drop)
            }
        }
    }
}

impl Drop for SeriesHandle {
    fn drop(&mut self) {
        // The TTL counts from the handle's end, not from its last write: touched like
        // a write, so the next flush notices activity (see `Series::touched`).
        self.series.touch();
        self.series.handles().release();
    }
}
