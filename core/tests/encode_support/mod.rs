//! A reference OTLP encoder for the tests: the mapping of `weir_core::encode::otlp`
//! written with the `weir_proto` (opentelemetry-proto) structs and encoded by prost.
//! The real encoder writes the wire format by hand; for one unsplit request both must
//! give the same bytes.

use weir_core::encode::EncodeOptions;
use weir_core::{FlushBatch, FlushedSeries, FlushedValue, Temporality};
use weir_proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use weir_proto::metrics::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::resource::Resource;

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

fn rank(v: &FlushedValue) -> u8 {
    match v {
        FlushedValue::Counter { .. } => 0,
        FlushedValue::Gauge { .. } => 1,
        FlushedValue::Histogram { .. } => 2,
        FlushedValue::Summary(_) => 3,
    }
}

fn data(batch: &FlushBatch, s: &FlushedSeries, t: Temporality) -> Data {
    let attributes: Vec<KeyValue> = s.key.labels().map(|(k, v)| attribute(k, v)).collect();
    let time_ms = if batch.is_evicted(s) {
        batch.end_ms.saturating_sub(1)
    } else {
        batch.end_ms
    };
    let cumulative = t == Temporality::Cumulative;
    let start_ms = if cumulative {
        s.start_ms
    } else {
        batch.start_ms
    }
    .min(time_ms);
    let code = if cumulative {
        AggregationTemporality::Cumulative
    } else {
        AggregationTemporality::Delta
    } as i32;
    match &s.value {
        FlushedValue::Counter { delta, total } => Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes,
                start_time_unix_nano: nanos(start_ms),
                time_unix_nano: nanos(time_ms),
                value: Some(number_data_point::Value::AsDouble(if cumulative {
                    *total
                } else {
                    *delta
                })),
                ..Default::default()
            }],
            aggregation_temporality: code,
            is_monotonic: true,
        }),
        FlushedValue::Gauge {
            value,
            timestamp_ms,
        } => Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes,
                time_unix_nano: nanos(*timestamp_ms),
                value: Some(number_data_point::Value::AsDouble(*value)),
                ..Default::default()
            }],
        }),
        FlushedValue::Histogram { delta, total } => {
            let h = if cumulative { total } else { delta };
            let seen = |v: f64| (h.count > 0 && v.is_finite()).then_some(v);
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: nanos(start_ms),
                    time_unix_nano: nanos(time_ms),
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.counts.clone(),
                    explicit_bounds: h.bounds.to_vec(),
                    min: seen(h.min),
                    max: seen(h.max),
                    ..Default::default()
                }],
                aggregation_temporality: code,
            })
        }
        FlushedValue::Summary(sv) => Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                attributes,
                start_time_unix_nano: nanos(s.start_ms.min(time_ms)),
                time_unix_nano: nanos(time_ms),
                count: sv.count,
                sum: sv.sum,
                quantile_values: sv
                    .quantiles
                    .iter()
                    .map(|q| ValueAtQuantile {
                        quantile: q.quantile,
                        value: q.value,
                    })
                    .collect(),
                ..Default::default()
            }],
        }),
    }
}

/// Appends the points of `d` to `into` (same kind).
fn merge(into: &mut Data, d: Data) {
    match (into, d) {
        (Data::Sum(a), Data::Sum(b)) => a.data_points.extend(b.data_points),
        (Data::Gauge(a), Data::Gauge(b)) => a.data_points.extend(b.data_points),
        (Data::Histogram(a), Data::Histogram(b)) => a.data_points.extend(b.data_points),
        (Data::Summary(a), Data::Summary(b)) => a.data_points.extend(b.data_points),
        _ => panic!("kinds differ"),
    }
}

/// The whole batch as one request (no splitting), or `None` when nothing passes the
/// filter.
pub fn otlp_reference(
    batch: &FlushBatch,
    opts: &EncodeOptions,
) -> Option<ExportMetricsServiceRequest> {
    let mut order: Vec<&FlushedSeries> = batch
        .series
        .iter()
        .filter(|s| opts.filter.matches(s.key.name()))
        .collect();
    if order.is_empty() {
        return None;
    }
    order.sort_by(|a, b| (a.key.name(), rank(&a.value)).cmp(&(b.key.name(), rank(&b.value))));
    let mut metrics: Vec<(u8, Metric)> = Vec::new();
    for s in order {
        let d = data(batch, s, opts.temporality);
        match metrics.last_mut() {
            Some((r, m)) if m.name == s.key.name() && *r == rank(&s.value) => {
                merge(m.data.as_mut().unwrap(), d);
            }
            _ => metrics.push((
                rank(&s.value),
                Metric {
                    name: s.key.name().to_owned(),
                    data: Some(d),
                    ..Default::default()
                },
            )),
        }
    }
    let mut external = opts.external_labels.clone();
    external.sort_by(|a, b| a.0.cmp(&b.0));
    external.dedup_by(|later, first| later.0 == first.0);
    Some(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: external.iter().map(|(k, v)| attribute(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "weir".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics: metrics.into_iter().map(|(_, m)| m).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}
