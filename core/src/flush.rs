//! [`FlushBatch`]: one interval's aggregated state, immutable once built, shared by
//! every pipeline through an `Arc`.
//!
//! Owns: the shape of what a flush yields. Built only by
//! [`Aggregator::flush`](crate::aggregator::Aggregator::flush); must never be mutated
//! after that (pipelines read it concurrently). Once every reader is done, its owner
//! may hand it back with [`Aggregator::recycle`](crate::aggregator::Aggregator::recycle)
//! so the next flush fills the same allocation.

use crate::key::SeriesKey;
use crate::point::{HistogramValue, SummaryValue};

/// Everything one flush took out of the aggregator.
#[derive(Debug, Clone, PartialEq)]
pub struct FlushBatch {
    /// 1 for the first flush of this aggregator, then counting up by one.
    pub sequence: u64,
    /// When the interval began (the previous flush, or the aggregator's creation),
    /// milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// When this flush ran, milliseconds since the Unix epoch.
    pub end_ms: i64,
    /// One entry per live series, then the final shares of the series this flush
    /// evicted: the last [`FlushBatch::evicted`] entries (see
    /// [`FlushBatch::evicted_series`]).
    pub series: Vec<FlushedSeries>,
    /// How many entries at the end of `series` are final shares of evicted series:
    /// series idle for `series_ttl`, whose cumulative state is gone with them. A
    /// count here rather than a flag per entry keeps an entry at 40 bytes, not 48
    /// (8 MB per flush at 1M series).
    pub evicted: usize,
}

impl FlushBatch {
    /// Sum of counter deltas in this batch (handy for tests and self-checks).
    pub fn counter_delta_sum(&self) -> f64 {
        self.series
            .iter()
            .map(|s| match s.value {
                FlushedValue::Counter { delta, .. } => delta,
                _ => 0.0,
            })
            // Not `sum()`: an empty f64 sum is -0.0.
            .fold(0.0, |a, d| a + d)
    }

    /// The entries of series that live on.
    pub fn live(&self) -> &[FlushedSeries] {
        &self.series[..self.series.len().saturating_sub(self.evicted)]
    }

    /// The final shares of the series this flush evicted (the last
    /// [`FlushBatch::evicted`] entries).
    pub fn evicted_series(&self) -> &[FlushedSeries] {
        &self.series[self.series.len().saturating_sub(self.evicted)..]
    }

    /// True if `s`, an entry of this batch, is an evicted series' final share.
    ///
    /// ```
    /// use std::time::Duration;
    /// use weir_core::{Aggregator, AggregatorConfig, MetricKind};
    /// let agg = Aggregator::new(AggregatorConfig {
    ///     series_ttl: Duration::from_secs(60),
    ///     ..AggregatorConfig::default()
    /// });
    /// agg.handle("idle_total", &[], MetricKind::Counter).unwrap().increment(1).unwrap();
    /// agg.flush_at(1_000);
    /// let later = agg.flush_at(120_000);
    /// assert!(later.is_evicted(&later.series[0]));
    /// assert_eq!(later.evicted_series().len(), 1);
    /// ```
    pub fn is_evicted(&self, s: &FlushedSeries) -> bool {
        self.evicted_series()
            .as_ptr_range()
            .contains(&std::ptr::from_ref(s))
    }

    /// The entries for `key` (normally one; two when a series was evicted and created
    /// again within one interval).
    pub fn find<'a>(&'a self, key: &'a SeriesKey) -> impl Iterator<Item = &'a FlushedSeries> {
        self.series.iter().filter(move |s| &s.key == key)
    }
}

/// One series in a [`FlushBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlushedSeries {
    /// The series identity (its FNV-1a fingerprint, where one is wanted, is
    /// [`SeriesKey::fingerprint`]).
    pub key: SeriesKey,
    /// When the series was created (the start of its cumulative totals), milliseconds
    /// since the Unix epoch, rounded down to a whole second.
    pub start_ms: i64,
    /// The aggregated value.
    pub value: FlushedValue,
}

/// The aggregated value of one series for one interval.
#[derive(Debug, Clone, PartialEq)]
pub enum FlushedValue {
    /// A counter: the increase during the interval and the running total since
    /// `start_ms` (baseline of cumulative sources included).
    Counter {
        /// Increase during this interval.
        delta: f64,
        /// Running total since the series started.
        total: f64,
    },
    /// A gauge's last value and when it was set.
    Gauge {
        /// Last value.
        value: f64,
        /// When it was set, milliseconds since the Unix epoch.
        timestamp_ms: i64,
    },
    /// A histogram: observations during the interval and running totals. Boxed so
    /// that the far more common counters and gauges keep entries small (a flush of 1M
    /// series allocates the whole batch at once).
    Histogram {
        /// Observations during this interval.
        delta: Box<HistogramValue>,
        /// All observations since the series started.
        total: Box<HistogramValue>,
    },
    /// A summary's latest state as its source reported it. Boxed, as histograms are,
    /// so that an entry of the batch stays at 40 bytes.
    Summary(Box<SummaryValue>),
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// A flush of 1M series holds one entry per series: every byte here is 1 MB there.
    /// (64 bytes while a key was a 16-byte `Arc<[u8]>`; one pointer since; 56 until the
    /// fingerprint, which no consumer read, left the entry; 48 until the evicted flag
    /// became the batch's count.)
    #[test]
    fn a_batch_entry_is_40_bytes() {
        assert_eq!(std::mem::size_of::<crate::key::SeriesKey>(), 8);
        assert_eq!(std::mem::size_of::<FlushedValue>(), 24);
        assert_eq!(std::mem::size_of::<FlushedSeries>(), 40);
    }
}
