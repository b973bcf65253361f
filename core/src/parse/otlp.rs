//! OTLP metrics: an `ExportMetricsServiceRequest` in, aggregator updates out.
//!
//! Owns: the mapping of OTLP's data model onto weir's, including how resource and
//! scope attributes become labels. Must never: panic on any request (every field is
//! untrusted), or drop a point without counting it.
//!
//! # Mapping
//! | OTLP | weir |
//! |---|---|
//! | Sum, monotonic, delta / cumulative | counter, delta / cumulative (resets detected, start time below) |
//! | Sum, not monotonic, delta / cumulative | gauge adjustment / gauge |
//! | Gauge | gauge |
//! | Histogram (explicit bounds), delta / cumulative | histogram, delta / cumulative |
//! | Summary | summary |
//! | ExponentialHistogram, delta / cumulative | histogram with explicit bounds (rule below) |
//!
//! Names and attribute keys are sanitised to Prometheus rules (`http.server.duration`
//! becomes `http_server_duration`); attribute values become strings (arrays and maps
//! as their JSON-like text). Resource attributes follow Prometheus' OTLP rule:
//! `service.name` (prefixed by `service.namespace/` when set) becomes `job`,
//! `service.instance.id` becomes `instance`; other resource and scope attributes are
//! not labels. A data point's own attributes win over these. Points flagged "no
//! recorded value" are skipped (not counted as refused).
//!
//! # Start times of cumulative points
//! A cumulative Sum or histogram point's `start_time_unix_nano` goes to the aggregator
//! with the point ([`Writer::record_since`]): a stream that started after weir did
//! counts from zero (its first value is an increase, as the OpenTelemetry Collector's
//! cumulative-to-delta processor does with `initial_value: auto`), one that started
//! earlier or has no start time gives a baseline first, and a start time that changes
//! is a reset.
//!
//! # Exponential histograms
//! A point of scale `s` has base `b = 2^(2^-s)`; positive bucket `i` holds
//! `(b^i, b^(i+1)]`. weir keeps the positive buckets with their exact upper bounds
//! `b^(offset+k+1)`, and puts the zero bucket and every negative observation into one
//! first bucket with upper bound `zero_threshold` (weir's histograms have no negative
//! side). Count, sum, min and max are kept. Bounds follow the point's scale and
//! offset; a series keeps the bounds of its first point, and later points with other
//! bounds are re-bucketed upward (see `HistogramCell::merge`). More than
//! [`MAX_EXPONENTIAL_BUCKETS`] positive buckets, or a scale outside -10..=20, is
//! refused as malformed.

use weir_proto::common::{AnyValue, KeyValue, any_value};
use weir_proto::metrics::{self, metric::Data, number_data_point};
use weir_proto::metrics_service::ExportMetricsServiceRequest;

use crate::aggregator::Writer;
use crate::parse::statsd::{sanitize_label_name, sanitize_metric_name};
use crate::point::{HistogramValue, Quantile, Sample, SummaryValue, Temporality};

/// Most positive buckets an exponential histogram point may have (the SDK default
/// is 160).
pub const MAX_EXPONENTIAL_BUCKETS: usize = 1024;

/// An exponential histogram point as an explicit-bounds histogram (see the module
/// doc), or `None` when it cannot be one.
pub fn exponential_to_explicit(
    p: &metrics::ExponentialHistogramDataPoint,
) -> Option<HistogramValue> {
    let positive = p.positive.as_ref();
    let pos_counts: &[u64] = positive.map_or(&[], |b| &b.bucket_counts);
    if pos_counts.len() > MAX_EXPONENTIAL_BUCKETS || !(-10..=20).contains(&p.scale) {
        return None;
    }
    let negative: u64 = p.negative.as_ref().map_or(Some(0), |b| {
        b.bucket_counts
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(*c))
    })?;
    let base = 2f64.powf(2f64.powi(-p.scale));
    let offset = positive.map_or(0, |b| b.offset);
    let mut bounds = Vec::with_capacity(pos_counts.len() + 1);
    let mut counts = Vec::with_capacity(pos_counts.len() + 2);
    bounds.push(p.zero_threshold.max(0.0));
    counts.push(p.zero_count.checked_add(negative)?);
    for (k, &c) in pos_counts.iter().enumerate() {
        let upper = base.powf(f64::from(offset) + k as f64 + 1.0);
        if !upper.is_finite() {
            return None;
        }
        if upper > *bounds.last()? {
            bounds.push(upper);
            counts.push(c);
        } else {
            // At or below the zero threshold: merged into the first bucket.
            counts[0] = counts[0].checked_add(c)?;
        }
    }
    counts.push(0); // +Inf
    Some(histogram(bounds, counts, p.sum, p.count, p.min, p.max))
}

/// A histogram value from OTLP's fields (absent sum 0, absent min/max empty).
fn histogram(
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: Option<f64>,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
) -> HistogramValue {
    HistogramValue {
        bounds: bounds.into(),
        counts,
        sum: sum.unwrap_or(0.0),
        count,
        min: min.unwrap_or(f64::INFINITY),
        max: max.unwrap_or(f64::NEG_INFINITY),
    }
}

/// What one request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Data points the aggregator took.
    pub accepted: u64,
    /// Data points refused: by the aggregator (its counters say why), malformed, or of
    /// an unsupported kind. OTLP's `partial_success.rejected_data_points`.
    pub rejected: u64,
    /// Of `rejected`, points of a kind weir does not take (none at present; kept so
    /// the answer's wording is stable).
    pub unsupported: u64,
    /// Of `rejected`, points whose payload is inconsistent (bucket counts that do not
    /// match the bounds, a missing value).
    pub malformed: u64,
}

/// Text of an attribute value.
fn value_text(v: &AnyValue, out: &mut String) {
    use std::fmt::Write as _;
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(any_value::Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(any_value::Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(any_value::Value::BytesValue(b)) => {
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value_text(v, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, kv) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&kv.key);
                out.push(':');
                if let Some(v) = &kv.value {
                    value_text(v, out);
                }
            }
            out.push('}');
        }
        // An index into a profiles string table: meaningless for metrics.
        Some(any_value::Value::StringValueStrindex(_)) | None => {}
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    let mut s = String::new();
    value_text(v, &mut s);
    Some(s)
}

/// `job` and `instance` from resource attributes, as Prometheus derives them.
fn resource_labels(attrs: &[KeyValue]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(name) = attr(attrs, "service.name") {
        let job = match attr(attrs, "service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        };
        out.push(("job".to_owned(), job));
    }
    if let Some(id) = attr(attrs, "service.instance.id") {
        out.push(("instance".to_owned(), id));
    }
    out
}

/// Applies every data point of `req` through `writer`.
pub fn apply_export(req: &ExportMetricsServiceRequest, writer: &mut Writer) -> ExportReport {
    let mut report = ExportReport::default();
    let mut name = String::new();
    for rm in &req.resource_metrics {
        let base = resource_labels(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                sanitize_metric_name(&m.name, &mut name);
                apply_metric(m, &name, &base, writer, &mut report);
            }
        }
    }
    report
}

/// A data point's labels: its attributes (sanitised keys) over the resource labels.
fn point_labels(attrs: &[KeyValue], base: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(attrs.len() + base.len());
    let mut key = String::new();
    for kv in attrs {
        sanitize_label_name(&kv.key, &mut key);
        let mut v = String::new();
        if let Some(val) = &kv.value {
            value_text(val, &mut v);
        }
        // Two keys that sanitise alike: the first one wins.
        if !out.iter().any(|(k, _)| *k == key) {
            out.push((key.clone(), v));
        }
    }
    for (k, v) in base {
        if !out.iter().any(|(ok, _)| ok == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

fn temporality(t: i32) -> Option<Temporality> {
    match metrics::AggregationTemporality::try_from(t).ok()? {
        metrics::AggregationTemporality::Delta => Some(Temporality::Delta),
        metrics::AggregationTemporality::Cumulative => Some(Temporality::Cumulative),
        metrics::AggregationTemporality::Unspecified => None,
    }
}

fn ms(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano / 1_000_000).unwrap_or(0)
}

/// The "no recorded value" flag (bit 0 of a point's flags).
fn no_value(flags: u32) -> bool {
    flags & 1 == 1
}

/// What every data point of one metric is recorded with.
struct Target<'a> {
    writer: &'a mut Writer,
    name: &'a str,
    base: &'a [(String, String)],
    report: &'a mut ExportReport,
}

impl Target<'_> {
    /// Records one data point: skipped when flagged "no recorded value", counted as
    /// malformed when it yields no sample.
    fn point(
        &mut self,
        attrs: &[KeyValue],
        flags: u32,
        (start_unix_nano, time_unix_nano): (u64, u64),
        sample: Option<Sample<'_>>,
    ) {
        if no_value(flags) {
            return;
        }
        let Some(sample) = sample else {
            self.malformed(1);
            return;
        };
        let labels = point_labels(attrs, self.base);
        let view: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (start, time) = (ms(start_unix_nano), ms(time_unix_nano));
        match self
            .writer
            .record_since(self.name, &view, sample, time, start)
        {
            Ok(()) => self.report.accepted += 1,
            Err(_) => self.report.rejected += 1,
        }
    }

    fn malformed(&mut self, n: usize) {
        self.report.rejected += n as u64;
        self.report.malformed += n as u64;
    }
}

fn number(p: &metrics::NumberDataPoint) -> Option<f64> {
    match p.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

/// An explicit-bounds histogram point as weir's histogram, if consistent.
fn explicit(p: &metrics::HistogramDataPoint) -> Option<HistogramValue> {
    // No buckets at all is allowed: count and sum only, one +Inf bucket.
    let (bounds, counts) = if p.bucket_counts.is_empty() {
        (Vec::new(), vec![p.count])
    } else {
        (p.explicit_bounds.clone(), p.bucket_counts.clone())
    };
    let value = histogram(bounds, counts, p.sum, p.count, p.min, p.max);
    value.is_well_formed().then_some(value)
}

fn summary(p: &metrics::SummaryDataPoint) -> SummaryValue {
    SummaryValue {
        quantiles: p
            .quantile_values
            .iter()
            .map(|q| Quantile {
                quantile: q.quantile,
                value: q.value,
            })
            .collect(),
        sum: p.sum,
        count: p.count,
    }
}

fn apply_metric(
    m: &metrics::Metric,
    name: &str,
    base: &[(String, String)],
    writer: &mut Writer,
    report: &mut ExportReport,
) {
    let mut to = Target {
        writer,
        name,
        base,
        report,
    };
    match &m.data {
        Some(Data::Sum(sum)) => {
            let Some(t) = temporality(sum.aggregation_temporality) else {
                return to.malformed(sum.data_points.len());
            };
            for p in &sum.data_points {
                let sample = number(p).map(|v| match (sum.is_monotonic, t) {
                    (true, t) => Sample::Counter(v, t),
                    (false, Temporality::Delta) => Sample::GaugeDelta(v),
                    (false, Temporality::Cumulative) => Sample::Gauge(v),
                });
                to.point(
                    &p.attributes,
                    p.flags,
                    (p.start_time_unix_nano, p.time_unix_nano),
                    sample,
                );
            }
        }
        Some(Data::Gauge(g)) => {
            for p in &g.data_points {
                let sample = number(p).map(Sample::Gauge);
                to.point(
                    &p.attributes,
                    p.flags,
                    (p.start_time_unix_nano, p.time_unix_nano),
                    sample,
                );
            }
        }
        Some(Data::Histogram(h)) => {
            let Some(t) = temporality(h.aggregation_temporality) else {
                return to.malformed(h.data_points.len());
            };
            for p in &h.data_points {
                let value = explicit(p);
                let sample = value.as_ref().map(|v| Sample::Histogram(v, t));
                to.point(
                    &p.attributes,
                    p.flags,
                    (p.start_time_unix_nano, p.time_unix_nano),
                    sample,
                );
            }
        }
        Some(Data::ExponentialHistogram(e)) => {
            let Some(t) = temporality(e.aggregation_temporality) else {
                return to.malformed(e.data_points.len());
            };
            for p in &e.data_points {
                let value = exponential_to_explicit(p).filter(HistogramValue::is_well_formed);
                let sample = value.as_ref().map(|v| Sample::Histogram(v, t));
                to.point(
                    &p.attributes,
                    p.flags,
                    (p.start_time_unix_nano, p.time_unix_nano),
                    sample,
                );
            }
        }
        Some(Data::Summary(s)) => {
            for p in &s.data_points {
                let value = summary(p);
                to.point(
                    &p.attributes,
                    p.flags,
                    (p.start_time_unix_nano, p.time_unix_nano),
                    Some(Sample::Summary(&value)),
                );
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use weir_proto::common::{AnyValue, KeyValue, any_value};
    use weir_proto::metrics::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    };
    use weir_proto::resource::Resource;

    use super::*;
    use crate::aggregator::Aggregator;
    use crate::flush::FlushedValue;
    use crate::key::SeriesKey;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn num(v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "api"),
                        kv("service.namespace", "shop"),
                        kv("service.instance.id", "pod-1"),
                        kv("host.name", "h1"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_maps_onto_weir_with_resource_labels() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let delta = AggregationTemporality::Delta as i32;
        let req = request(vec![
            metric(
                "http.requests",
                Data::Sum(Sum {
                    data_points: vec![num(3.0, vec![kv("http.route", "/a")]), num(2.0, vec![])],
                    aggregation_temporality: delta,
                    is_monotonic: true,
                }),
            ),
            metric(
                "queue.size",
                Data::Sum(Sum {
                    data_points: vec![num(-2.0, vec![])],
                    aggregation_temporality: delta,
                    is_monotonic: false,
                }),
            ),
            metric(
                "temp",
                Data::Gauge(Gauge {
                    data_points: vec![num(21.5, vec![])],
                }),
            ),
            metric(
                "lat",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        sum: Some(1.5),
                        bucket_counts: vec![1, 2],
                        explicit_bounds: vec![0.5],
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "exp",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        count: 1,
                        zero_count: 1,
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "bad_hist",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        bucket_counts: vec![1],
                        explicit_bounds: vec![0.5, 1.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "no_temporality",
                Data::Sum(Sum {
                    data_points: vec![num(1.0, vec![])],
                    aggregation_temporality: 0,
                    is_monotonic: true,
                }),
            ),
        ]);
        let r = apply_export(&req, &mut w);
        assert_eq!(
            r,
            ExportReport {
                accepted: 6,
                rejected: 2,
                unsupported: 0,
                malformed: 2
            }
        );
        let b = agg.flush();
        let base = [("instance", "pod-1"), ("job", "shop/api")];
        let k = |name: &str, extra: &[(&'static str, &'static str)]| {
            let mut l: Vec<(&str, &str)> = base.to_vec();
            l.extend_from_slice(extra);
            SeriesKey::new(name, &l).unwrap()
        };
        let value = |key: SeriesKey| {
            b.find(&key)
                .next()
                .unwrap_or_else(|| panic!("{key}"))
                .value
                .clone()
        };
        assert_eq!(
            value(k("http_requests", &[("http_route", "/a")])),
            FlushedValue::Counter {
                delta: 3.0,
                total: 3.0
            }
        );
        assert_eq!(
            value(k("http_requests", &[])),
            FlushedValue::Counter {
                delta: 2.0,
                total: 2.0
            }
        );
        assert!(matches!(
            value(k("queue_size", &[])),
            FlushedValue::Gauge { value: -2.0, .. }
        ));
        assert!(matches!(
            value(k("temp", &[])),
            FlushedValue::Gauge { value: 21.5, .. }
        ));
        let FlushedValue::Histogram { delta, .. } = value(k("lat", &[])) else {
            panic!()
        };
        assert_eq!((delta.counts.clone(), delta.count), (vec![1, 2], 3));
    }

    fn cumulative_sum(v: f64, start_ms: u64) -> Metric {
        metric(
            "jobs",
            Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    start_time_unix_nano: start_ms * 1_000_000,
                    ..num(v, vec![])
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        )
    }

    /// Delta and total of the one counter in a flush.
    fn counter(agg: &Aggregator) -> (f64, f64) {
        match agg.flush().series.first().map(|s| s.value.clone()) {
            Some(FlushedValue::Counter { delta, total }) => (delta, total),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cumulative_stream_that_started_after_weir_counts_its_first_value() {
        let agg = Aggregator::starting_at(Default::default(), 1_000_000);
        let mut w = agg.writer();
        apply_export(&request(vec![cumulative_sum(7.0, 1_000_500)]), &mut w);
        assert_eq!(counter(&agg), (7.0, 7.0));
        apply_export(&request(vec![cumulative_sum(10.0, 1_000_500)]), &mut w);
        assert_eq!(counter(&agg), (3.0, 10.0));
    }

    #[test]
    fn a_cumulative_stream_older_than_weir_or_without_start_gives_a_baseline() {
        for start_ms in [999_000, 0] {
            let agg = Aggregator::starting_at(Default::default(), 1_000_000);
            let mut w = agg.writer();
            apply_export(&request(vec![cumulative_sum(7.0, start_ms)]), &mut w);
            assert_eq!(counter(&agg), (0.0, 7.0), "start {start_ms}");
            apply_export(&request(vec![cumulative_sum(10.0, start_ms)]), &mut w);
            assert_eq!(counter(&agg), (3.0, 10.0), "start {start_ms}");
        }
    }

    #[test]
    fn a_new_start_time_is_a_reset_even_when_the_value_grew() {
        let agg = Aggregator::starting_at(Default::default(), 1_000_000);
        let mut w = agg.writer();
        apply_export(&request(vec![cumulative_sum(7.0, 999_000)]), &mut w);
        assert_eq!(counter(&agg), (0.0, 7.0));
        // The source restarted at 1_002_000 and has counted 9 since.
        apply_export(&request(vec![cumulative_sum(9.0, 1_002_000)]), &mut w);
        assert_eq!(counter(&agg), (9.0, 16.0));
    }

    #[test]
    fn a_cumulative_histogram_that_started_after_weir_counts_its_first_value() {
        let hist = |start_ms: u64| {
            metric(
                "lat",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: start_ms * 1_000_000,
                        count: 3,
                        sum: Some(1.5),
                        bucket_counts: vec![1, 2],
                        explicit_bounds: vec![0.5],
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )
        };
        for (start_ms, want) in [(1_000_001, 3), (999_999, 0), (0, 0)] {
            let agg = Aggregator::starting_at(Default::default(), 1_000_000);
            let mut w = agg.writer();
            apply_export(&request(vec![hist(start_ms)]), &mut w);
            let b = agg.flush();
            let Some(FlushedValue::Histogram { delta, total }) =
                b.series.first().map(|s| s.value.clone())
            else {
                panic!()
            };
            assert_eq!((delta.count, total.count), (want, 3), "start {start_ms}");
        }
    }

    #[test]
    fn point_attributes_win_over_resource_labels_and_values_become_text() {
        let attrs = vec![
            kv("job", "override"),
            KeyValue {
                key: "ok".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "n".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(-4)),
                }),
                ..Default::default()
            },
        ];
        let labels = point_labels(
            &attrs,
            &[
                ("job".into(), "api".into()),
                ("instance".into(), "i".into()),
            ],
        );
        assert_eq!(
            labels,
            vec![
                ("job".into(), "override".into()),
                ("ok".into(), "true".into()),
                ("n".into(), "-4".into()),
                ("instance".into(), "i".into()),
            ]
        );
    }

    #[test]
    fn exponential_buckets_keep_exact_upper_bounds() {
        use weir_proto::metrics::exponential_histogram_data_point::Buckets;
        // Scale 0: base 2, bucket i holds (2^i, 2^(i+1)].
        let p = ExponentialHistogramDataPoint {
            scale: 0,
            count: 10,
            sum: Some(40.0),
            zero_count: 1,
            zero_threshold: 0.0,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![3, 4],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2],
            }),
            ..Default::default()
        };
        let h = exponential_to_explicit(&p).unwrap();
        assert_eq!(&h.bounds[..], &[0.0, 4.0, 8.0]);
        assert_eq!(h.counts, vec![3, 3, 4, 0]);
        assert!(h.is_well_formed());
        // Scale 1: base sqrt(2).
        let p = ExponentialHistogramDataPoint {
            scale: 1,
            count: 2,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1, 1],
            }),
            ..Default::default()
        };
        let h = exponential_to_explicit(&p).unwrap();
        assert_eq!(h.bounds.len(), 3);
        assert!((h.bounds[1] - 2f64.sqrt()).abs() < 1e-12 && (h.bounds[2] - 2.0).abs() < 1e-12);
        // Too many buckets, or an absurd scale, is refused.
        let huge = ExponentialHistogramDataPoint {
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![0; MAX_EXPONENTIAL_BUCKETS + 1],
            }),
            ..Default::default()
        };
        assert!(exponential_to_explicit(&huge).is_none());
        let scale = ExponentialHistogramDataPoint {
            scale: 90,
            ..Default::default()
        };
        assert!(exponential_to_explicit(&scale).is_none());
    }
}
