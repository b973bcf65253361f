//! OTLP metrics: a batch as `ExportMetricsServiceRequest` protobufs (uncompressed),
//! for OTLP/gRPC or OTLP/HTTP.
//!
//! Owns: the mapping of weir's series onto OTLP's data model (the reverse of
//! [`crate::parse::otlp`]) and its protobuf encoding. The message layout is that of
//! `weir_proto` (opentelemetry-proto); it is written straight into the body with the
//! primitives of `wire`, fields in field-number order and proto3 defaults left out,
//! which is byte for byte what prost writes for the same messages (a test encodes the
//! equivalent `weir_proto` structs and compares). Building those structs instead costs
//! ~10 allocations per point and prost recomputes nested lengths once per nesting
//! level, ~3–4 µs per series; see `benches/README.md`. Must never: mix two
//! temporalities in one request, or put a point of one kind into a metric of another.
//!
//! # Rules
//! - **Shape**: one `ResourceMetrics` whose resource attributes are the external
//!   labels (string values), holding one `ScopeMetrics` (scope `weir`, version = weir's
//!   version), holding one `Metric` per metric name (and kind) with all its data points,
//!   names in byte order, points in batch order. A data point's attributes are the
//!   series' labels (string values, empty values kept: OTLP allows them).
//! - **Counters**: `Sum`, monotonic, with the pipeline's temporality
//!   ([`EncodeOptions::temporality`]). Delta: value = the interval's increase,
//!   start = `batch.start_ms`; cumulative: value = running total, start = the series'
//!   `start_ms` (a re-created series thus shows a reset).
//! - **Gauges**: `Gauge`, time = when the value was set, no start time.
//! - **Histograms**: `Histogram` (explicit bounds, per-bucket counts as OTLP wants them,
//!   count, sum, and min/max when count > 0 and they are finite), delta or cumulative
//!   the same way as counters.
//! - **Summaries**: `Summary` with count, sum and the quantile values, start = the
//!   series' `start_ms`.
//! - **Time** of every counter, histogram and summary point: `batch.end_ms`
//!   (evicted entries `batch.end_ms - 1`); a start after that time is clamped to it.
//!   Times before the epoch are sent as 0.
//! - **Splitting**: by an upper bound of the encoded length, so each body is at or
//!   under the limit (unless one point alone is bigger); a metric whose points span
//!   two requests appears in both, with its points divided between them.
//! - **Points**: one per data point (per series).

use std::collections::HashMap;

use super::wire::{field_len, put_fixed64, put_len, put_str};
use super::{EncodeOptions, EncodedRequest, sample_ms};
use crate::flush::{FlushBatch, FlushedSeries, FlushedValue};
use crate::key::SeriesKey;
use crate::point::Temporality;

/// The instrumentation scope name of every request.
pub const SCOPE_NAME: &str = "weir";

/// The batch as OTLP export requests (see the module doc).
///
/// ```
/// use weir_core::{Aggregator, Sample, Temporality};
/// use weir_core::encode::{EncodeOptions, otlp};
/// use weir_proto::{Message, metrics::metric::Data, metrics_service::ExportMetricsServiceRequest};
///
/// let agg = Aggregator::default();
/// agg.record("jobs_total", &[("queue", "mail")], Sample::Counter(3.0, Temporality::Delta), 0).unwrap();
/// let reqs = otlp::encode(&agg.flush(), &EncodeOptions::default());
/// let req = ExportMetricsServiceRequest::decode(&reqs[0].body[..]).unwrap();
/// let metric = &req.resource_metrics[0].scope_metrics[0].metrics[0];
/// assert_eq!(metric.name, "jobs_total");
/// assert!(matches!(&metric.data, Some(Data::Sum(s)) if s.is_monotonic));
/// ```
pub fn encode(batch: &FlushBatch, opts: &EncodeOptions) -> Vec<EncodedRequest> {
    let metrics = group(batch, opts);
    if metrics.is_empty() {
        return Vec::new();
    }
    let mut requests = Requests::new(&opts.external(), opts.temporality, opts.limit());
    let mut point = Vec::new();
    for (name, kind, series) in metrics {
        for s in super::prefetched(series.iter().copied()) {
            write_point(&mut point, batch, s, opts.temporality);
            requests.push(name, kind, &point);
        }
    }
    requests.finish()
}

/// The series that pass the filter, grouped by metric name and kind (groups in that
/// order, series in batch order). A hash map rather than a sort: a batch holds few
/// names, and sorting 100k series by name compares the same name ~17 times each.
fn group<'a>(
    batch: &'a FlushBatch,
    opts: &EncodeOptions,
) -> Vec<(&'a str, Kind, Vec<&'a FlushedSeries>)> {
    let every_name = opts.filter.is_all();
    let mut groups: Vec<(&str, Kind, Vec<&FlushedSeries>)> = Vec::new();
    let mut index: HashMap<(&str, Kind), usize, foldhash::fast::RandomState> = HashMap::default();
    // The group of the previous series: runs of one metric skip the hash lookup.
    let mut last: Option<usize> = None;
    for s in super::prefetched(batch.series.iter()) {
        let name = s.key.name();
        if !every_name && !opts.filter.matches(name) {
            continue;
        }
        let kind = Kind::of(&s.value);
        let g = match last {
            Some(g) if groups[g].0 == name && groups[g].1 == kind => g,
            _ => *index.entry((name, kind)).or_insert_with(|| {
                groups.push((name, kind, Vec::new()));
                groups.len() - 1
            }),
        };
        groups[g].2.push(s);
        last = Some(g);
    }
    groups.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    groups
}

// Field keys, `(number << 3) | wire type` (0 varint, 1 64-bit, 2 length-delimited), of
// the opentelemetry-proto messages written here.
/// Field 1, length-delimited: `ExportMetricsServiceRequest.resource_metrics`,
/// `ResourceMetrics.resource`, `Resource.attributes`, `ScopeMetrics.scope`,
/// `InstrumentationScope.name`, `Metric.name`, `{Sum,Gauge,Histogram,Summary}.data_points`,
/// `KeyValue.key`, `AnyValue.string_value`.
const F1_LEN: u8 = 0x0a;
/// Field 2, length-delimited: `ResourceMetrics.scope_metrics`, `ScopeMetrics.metrics`,
/// `InstrumentationScope.version`, `KeyValue.value`.
const F2_LEN: u8 = 0x12;
/// `Sum` / `Histogram.aggregation_temporality` (field 2, varint).
const TEMPORALITY: u8 = 0x10;
/// `Sum.is_monotonic` (field 3, varint).
const MONOTONIC: u8 = 0x18;
/// `*DataPoint.start_time_unix_nano` (field 2, fixed64).
const START_TIME: u8 = 0x11;
/// `*DataPoint.time_unix_nano` (field 3, fixed64).
const TIME: u8 = 0x19;
/// `NumberDataPoint.as_double` (field 4, double).
const AS_DOUBLE: u8 = 0x21;
/// `HistogramDataPoint` / `SummaryDataPoint.count` (field 4, fixed64).
const COUNT: u8 = 0x21;
/// `HistogramDataPoint` / `SummaryDataPoint.sum` (field 5, double).
const SUM: u8 = 0x29;
/// `HistogramDataPoint.bucket_counts` (field 6, packed fixed64).
const BUCKET_COUNTS: u8 = 0x32;
/// `HistogramDataPoint.explicit_bounds` (field 7, packed double).
const EXPLICIT_BOUNDS: u8 = 0x3a;
/// `HistogramDataPoint.min` / `.max` (fields 11 and 12, double).
const MIN: u8 = 0x59;
const MAX: u8 = 0x61;
/// `SummaryDataPoint.quantile_values` (field 6, length-delimited).
const QUANTILE_VALUES: u8 = 0x32;
/// `ValueAtQuantile.quantile` / `.value` (fields 1 and 2, double).
const QUANTILE: u8 = 0x09;
const QUANTILE_VALUE: u8 = 0x11;
/// `NumberDataPoint` / `SummaryDataPoint.attributes` (field 7, length-delimited).
const ATTRIBUTES_7: u8 = 0x3a;
/// `HistogramDataPoint.attributes` (field 9, length-delimited).
const ATTRIBUTES_9: u8 = 0x4a;
/// `AggregationTemporality` values.
const DELTA: u64 = 1;
const CUMULATIVE: u64 = 2;

/// The kind of a metric, in the order metrics of one name are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Sum,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn of(v: &FlushedValue) -> Kind {
        match v {
            FlushedValue::Counter { .. } => Kind::Sum,
            FlushedValue::Gauge { .. } => Kind::Gauge,
            FlushedValue::Histogram { .. } => Kind::Histogram,
            FlushedValue::Summary(_) => Kind::Summary,
        }
    }

    /// The key of `Metric.data`'s member (gauge 5, sum 7, histogram 9, summary 11).
    fn data_key(self) -> u8 {
        match self {
            Kind::Gauge => 0x2a,
            Kind::Sum => 0x3a,
            Kind::Histogram => 0x4a,
            Kind::Summary => 0x5a,
        }
    }
}

/// Milliseconds since the epoch as OTLP's nanoseconds (0 before the epoch).
fn nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

/// Content length of a `KeyValue` with a string value.
fn key_value_len(key: &str, value: &str) -> usize {
    let key_field = if key.is_empty() {
        0
    } else {
        field_len(key.len())
    };
    // `AnyValue.string_value` is a oneof member: written even when empty.
    key_field + field_len(field_len(value.len()))
}

/// Appends a `KeyValue { key, value: AnyValue { string_value } }` field.
fn put_key_value(out: &mut Vec<u8>, field_key: u8, key: &str, value: &str) {
    put_len(out, field_key, key_value_len(key, value));
    if !key.is_empty() {
        put_str(out, F1_LEN, [key, ""]);
    }
    put_len(out, F2_LEN, field_len(value.len()));
    put_str(out, F1_LEN, [value, ""]);
}

fn put_attributes(out: &mut Vec<u8>, field_key: u8, key: &SeriesKey) {
    for (k, v) in key.labels() {
        put_key_value(out, field_key, k, v);
    }
}

/// A proto3 `fixed64`/`double` field, left out when it holds the default (0).
fn put_nonzero_fixed64(out: &mut Vec<u8>, key: u8, v: u64) {
    if v != 0 {
        put_fixed64(out, key, v);
    }
}

fn put_nonzero_double(out: &mut Vec<u8>, key: u8, v: f64) {
    // prost's rule: written unless `v == 0.0` (so -0.0 is left out, NaN written).
    if v != 0.0 {
        put_fixed64(out, key, v.to_bits());
    }
}

/// Writes the content (no key, no length) of the data point for `s` into `out`.
fn write_point(out: &mut Vec<u8>, batch: &FlushBatch, s: &FlushedSeries, t: Temporality) {
    out.clear();
    let time_ms = sample_ms(batch, s);
    let cumulative = t == Temporality::Cumulative;
    let start_ms = if cumulative {
        s.start_ms
    } else {
        batch.start_ms
    }
    .min(time_ms);
    let (start, time) = (nanos(start_ms), nanos(time_ms));
    match &s.value {
        FlushedValue::Counter { delta, total } => {
            // NumberDataPoint: 2 start, 3 time, 4 as_double, 7 attributes.
            put_nonzero_fixed64(out, START_TIME, start);
            put_nonzero_fixed64(out, TIME, time);
            let v = if cumulative { *total } else { *delta };
            put_fixed64(out, AS_DOUBLE, v.to_bits());
            put_attributes(out, ATTRIBUTES_7, &s.key);
        }
        FlushedValue::Gauge {
            value,
            timestamp_ms,
        } => {
            put_nonzero_fixed64(out, TIME, nanos(*timestamp_ms));
            put_fixed64(out, AS_DOUBLE, value.to_bits());
            put_attributes(out, ATTRIBUTES_7, &s.key);
        }
        FlushedValue::Histogram { delta, total } => {
            // HistogramDataPoint: 2 start, 3 time, 4 count, 5 sum, 6 bucket_counts,
            // 7 explicit_bounds, 9 attributes, 11 min, 12 max.
            let h = if cumulative { total } else { delta };
            put_nonzero_fixed64(out, START_TIME, start);
            put_nonzero_fixed64(out, TIME, time);
            put_nonzero_fixed64(out, COUNT, h.count);
            put_fixed64(out, SUM, h.sum.to_bits());
            if !h.counts.is_empty() {
                put_len(out, BUCKET_COUNTS, 8 * h.counts.len());
                for c in &h.counts {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            if !h.bounds.is_empty() {
                put_len(out, EXPLICIT_BOUNDS, 8 * h.bounds.len());
                for b in h.bounds.iter() {
                    out.extend_from_slice(&b.to_le_bytes());
                }
            }
            put_attributes(out, ATTRIBUTES_9, &s.key);
            if h.count > 0 {
                for (key, v) in [(MIN, h.min), (MAX, h.max)] {
                    if v.is_finite() {
                        put_fixed64(out, key, v.to_bits());
                    }
                }
            }
        }
        FlushedValue::Summary(sv) => {
            // SummaryDataPoint: 2 start, 3 time, 4 count, 5 sum, 6 quantile_values,
            // 7 attributes.
            put_nonzero_fixed64(out, START_TIME, nanos(s.start_ms.min(time_ms)));
            put_nonzero_fixed64(out, TIME, time);
            put_nonzero_fixed64(out, COUNT, sv.count);
            put_nonzero_double(out, SUM, sv.sum);
            for q in &sv.quantiles {
                let len = 9 * usize::from(q.quantile != 0.0) + 9 * usize::from(q.value != 0.0);
                put_len(out, QUANTILE_VALUES, len);
                put_nonzero_double(out, QUANTILE, q.quantile);
                put_nonzero_double(out, QUANTILE_VALUE, q.value);
            }
            put_attributes(out, ATTRIBUTES_7, &s.key);
        }
    }
}

/// Most bytes a length prefix of a body-sized message takes (lengths stay under 4 GiB).
const MAX_LEN_PREFIX: usize = 5;

/// Upper bound of what a metric adds besides its points' fields: the
/// `ScopeMetrics.metrics` key and length, the name field, the data member's key and
/// length, aggregation temporality (2) and `is_monotonic` (2).
fn metric_overhead(name: &str) -> usize {
    1 + MAX_LEN_PREFIX + field_len(name.len()) + 1 + MAX_LEN_PREFIX + 2 + 2
}

/// Requests being built, split by size.
struct Requests<'a> {
    /// `Resource` content (its attributes).
    resource: Vec<u8>,
    /// `InstrumentationScope` content.
    scope: Vec<u8>,
    /// `AggregationTemporality` of every sum and histogram.
    temporality: u64,
    /// The metric whose points are in `points`.
    open: Option<(&'a str, Kind)>,
    /// `data_points` fields of the open metric.
    points: Vec<u8>,
    /// `ScopeMetrics.metrics` fields of the open request's closed metrics.
    metrics: Vec<u8>,
    /// Data points in the open request (closed metrics and the open one).
    count: u64,
    /// Upper bound of a request without metrics.
    base: usize,
    limit: usize,
    done: Vec<EncodedRequest>,
}

impl<'a> Requests<'a> {
    fn new(external: &[(String, String)], t: Temporality, limit: usize) -> Requests<'a> {
        let mut resource = Vec::new();
        for (k, v) in external {
            put_key_value(&mut resource, F1_LEN, k, v);
        }
        let mut scope = Vec::new();
        put_str(&mut scope, F1_LEN, [SCOPE_NAME, ""]);
        put_str(&mut scope, F2_LEN, [env!("CARGO_PKG_VERSION"), ""]);
        // request → resource_metrics (key + len) → resource field, scope_metrics
        // (key + len) → scope field.
        let base = 2 * (1 + MAX_LEN_PREFIX) + field_len(resource.len()) + field_len(scope.len());
        Requests {
            resource,
            scope,
            temporality: match t {
                Temporality::Delta => DELTA,
                Temporality::Cumulative => CUMULATIVE,
            },
            open: None,
            points: Vec::new(),
            metrics: Vec::new(),
            count: 0,
            base,
            limit,
            done: Vec::new(),
        }
    }

    /// Upper bound of the open request's encoded length.
    fn bound(&self) -> usize {
        let open = match self.open {
            Some((name, _)) => metric_overhead(name) + self.points.len(),
            None => 0,
        };
        self.base + self.metrics.len() + open
    }

    /// Adds one data point (its encoded content) of metric `name` / `kind`.
    fn push(&mut self, name: &'a str, kind: Kind, point: &[u8]) {
        let entry = field_len(point.len());
        if self.open != Some((name, kind)) {
            self.close_metric();
        }
        let opening = if self.open.is_none() {
            metric_overhead(name)
        } else {
            0
        };
        if self.count > 0 && self.bound() + opening + entry > self.limit {
            self.seal();
        }
        self.open = Some((name, kind));
        put_len(&mut self.points, F1_LEN, point.len());
        self.points.extend_from_slice(point);
        self.count += 1;
    }

    /// Writes the open metric (if any) into `metrics`.
    fn close_metric(&mut self) {
        let Some((name, kind)) = self.open.take() else {
            return;
        };
        let extra: &[u8] = match kind {
            Kind::Sum => &[TEMPORALITY, self.temporality as u8, MONOTONIC, 1],
            Kind::Histogram => &[TEMPORALITY, self.temporality as u8],
            Kind::Gauge | Kind::Summary => &[],
        };
        let data_len = self.points.len() + extra.len();
        let metric_len = field_len(name.len()) + field_len(data_len);
        put_len(&mut self.metrics, F2_LEN, metric_len);
        put_str(&mut self.metrics, F1_LEN, [name, ""]);
        put_len(&mut self.metrics, kind.data_key(), data_len);
        self.metrics.extend_from_slice(&self.points);
        self.metrics.extend_from_slice(extra);
        self.points.clear();
    }

    /// Finishes the open request (if it holds points).
    fn seal(&mut self) {
        self.close_metric();
        if self.count == 0 {
            return;
        }
        let scope_metrics = field_len(self.scope.len()) + self.metrics.len();
        let resource_metrics = field_len(self.resource.len()) + field_len(scope_metrics);
        let mut body = Vec::with_capacity(field_len(resource_metrics));
        put_len(&mut body, F1_LEN, resource_metrics);
        put_len(&mut body, F1_LEN, self.resource.len());
        body.extend_from_slice(&self.resource);
        put_len(&mut body, F2_LEN, scope_metrics);
        put_len(&mut body, F1_LEN, self.scope.len());
        body.extend_from_slice(&self.scope);
        body.extend_from_slice(&self.metrics);
        debug_assert!(body.len() <= self.base + self.metrics.len(), "size bound");
        self.done.push(EncodedRequest {
            body,
            points: self.count,
        });
        self.metrics.clear();
        self.count = 0;
    }

    fn finish(mut self) -> Vec<EncodedRequest> {
        self.seal();
        self.done
    }
}
