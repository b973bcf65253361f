//! The data model that receivers produce: [`MetricPoint`] and its payloads.
//!
//! Owns: the owned, self-contained form of one sample (the seed's `MetricPoint`), the
//! histogram and summary payloads, and counter [`Temporality`]. Receivers on hot paths
//! skip the owned form and hand borrowed parts straight to
//! [`Writer::record`](crate::aggregator::Writer::record) as a [`Sample`].
//!
//! Must never: carry identity logic; series identity lives in [`crate::key`].

use std::sync::Arc;

/// The kind of a metric. A series has exactly one kind for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic sum.
    Counter,
    /// Last value wins.
    Gauge,
    /// Bucketed distribution with sum, count, min and max.
    Histogram,
    /// Precomputed quantiles with sum and count.
    Summary,
}

impl MetricKind {
    /// Lower-case name, as in Prometheus `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
        }
    }
}

/// How a counter or histogram value relates to earlier ones from the same source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Temporality {
    /// The value is the increase since the source's previous report (StatsD, OTLP delta).
    Delta,
    /// The value is a running total since the source started (scrapes, OTLP
    /// cumulative). A value lower than the previous one means the source restarted.
    Cumulative,
}

/// A histogram with explicit bucket upper bounds.
///
/// `counts[i]` counts observations `<= bounds[i]` and `> bounds[i-1]`; the last entry of
/// `counts` is the `+Inf` bucket, so `counts.len() == bounds.len() + 1`. Counts are
/// per bucket, not cumulative as in Prometheus `_bucket{le}` series.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    /// Strictly increasing, finite upper bounds.
    pub bounds: Arc<[f64]>,
    /// Per-bucket counts, `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations (the sum of `counts`).
    pub count: u64,
    /// Smallest observation, `+Inf` when there is none.
    pub min: f64,
    /// Largest observation, `-Inf` when there is none.
    pub max: f64,
}

impl HistogramValue {
    /// An empty histogram over `bounds`.
    pub fn empty(bounds: Arc<[f64]>) -> HistogramValue {
        let n = bounds.len() + 1;
        HistogramValue {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// True if the payload is self-consistent: bounds strictly increasing and finite,
    /// `counts.len() == bounds.len() + 1`, counts adding up to `count`.
    pub fn is_well_formed(&self) -> bool {
        self.counts.len() == self.bounds.len() + 1
            && self.bounds.iter().all(|b| b.is_finite())
            && self.bounds.windows(2).all(|w| w[0] < w[1])
            && self
                .counts
                .iter()
                .try_fold(0u64, |a, &c| a.checked_add(c))
                .is_some_and(|total| total == self.count)
    }
}

/// The Prometheus client default buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One quantile of a summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    /// In `[0, 1]`.
    pub quantile: f64,
    /// The observed value at that quantile.
    pub value: f64,
}

/// A summary as its source computed it: quantiles, sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    /// Quantiles, as reported.
    pub quantiles: Vec<Quantile>,
    /// Sum of observations (as reported; usually cumulative).
    pub sum: f64,
    /// Number of observations (as reported; usually cumulative).
    pub count: u64,
}

/// What one point says about its series, in the form the aggregator applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample<'a> {
    /// A counter value of the given temporality.
    Counter(f64, Temporality),
    /// Set a gauge.
    Gauge(f64),
    /// Adjust a gauge by a signed amount (StatsD `g` with `+N`/`-N`).
    GaugeDelta(f64),
    /// `count` observations of `value` into a histogram with the aggregator's default
    /// buckets (StatsD timers, histograms and distributions; `count` > 1 for sampled data).
    Observe {
        /// The observed value.
        value: f64,
        /// How many times it was observed.
        count: u64,
    },
    /// A whole histogram of the given temporality.
    Histogram(&'a HistogramValue, Temporality),
    /// The latest state of a summary.
    Summary(&'a SummaryValue),
    /// One member of a StatsD set: the series reports, per flush, how many distinct
    /// members it saw (as a gauge).
    SetMember(&'a str),
}

impl Sample<'_> {
    /// The kind of series this sample belongs to.
    pub fn kind(&self) -> MetricKind {
        match self {
            Sample::Counter(..) => MetricKind::Counter,
            Sample::Gauge(_) | Sample::GaugeDelta(_) => MetricKind::Gauge,
            Sample::Observe { .. } | Sample::Histogram(..) => MetricKind::Histogram,
            Sample::Summary(_) => MetricKind::Summary,
            Sample::SetMember(_) => MetricKind::Gauge,
        }
    }
}

/// The value carried by a [`MetricPoint`].
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// A counter value.
    Counter(f64, Temporality),
    /// A gauge value.
    Gauge(f64),
    /// A histogram.
    Histogram(HistogramValue, Temporality),
    /// A summary.
    Summary(SummaryValue),
}

/// One sample with its identity, owned: the seed's `MetricPoint`.
///
/// ```
/// use weir_core::point::{MetricPoint, PointValue, Temporality, MetricKind};
/// let p = MetricPoint::new("jobs_total", &[("queue", "mail")], PointValue::Counter(3.0, Temporality::Delta), 0);
/// assert_eq!(p.kind(), MetricKind::Counter);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// Metric name.
    pub name: String,
    /// Labels in any order.
    pub labels: Vec<(String, String)>,
    /// The value and its payload.
    pub value: PointValue,
    /// Milliseconds since the Unix epoch; 0 means "when received".
    pub timestamp_ms: i64,
}

impl MetricPoint {
    /// Builds a point from borrowed parts.
    pub fn new(
        name: &str,
        labels: &[(&str, &str)],
        value: PointValue,
        timestamp_ms: i64,
    ) -> MetricPoint {
        MetricPoint {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            timestamp_ms,
        }
    }

    /// The point's metric kind.
    pub fn kind(&self) -> MetricKind {
        self.sample().kind()
    }

    /// The point's value as a [`Sample`].
    pub fn sample(&self) -> Sample<'_> {
        match &self.value {
            PointValue::Counter(v, t) => Sample::Counter(*v, *t),
            PointValue::Gauge(v) => Sample::Gauge(*v),
            PointValue::Histogram(h, t) => Sample::Histogram(h, *t),
            PointValue::Summary(s) => Sample::Summary(s),
        }
    }
}
