//! The protobuf exposition format: a body of `io.prometheus.client.MetricFamily`
//! messages ([`weir_proto::client_model`]), each preceded by its length as a varint.
//!
//! Owns: the length-delimited framing and the mapping of each family onto the same
//! samples the text parsers emit (see the table in the parent module). Must never:
//! panic on any bytes, or allocate by a length the body claims: a length prefix is
//! checked against the bytes that remain before anything is decoded (a truncated or
//! oversized prefix counts `malformed_protobuf` and ends the body, since nothing after
//! it can be framed), and prost checks every inner length the same way. A message that
//! does not decode (wrong wire type, truncated field, invalid UTF-8 in a string)
//! counts `malformed_protobuf` and is skipped; the next one is read.
//!
//! # Two ways to read a message
//! Counter, gauge and untyped families (what most targets serve, one series each per
//! `Metric`) are read by a borrowed walk over the message ([`walk`]): no `String` per
//! label, no `Vec` per metric, and each sample identified by its bytes for a scraper's
//! cache ([`EmitIdentified`]). Everything else, and any message the walk declines
//! (see its module doc), is decoded by prost into [`MetricFamily`] and mapped by
//! [`family`]. Both emit the same samples with the same report; the property test
//! `the_borrowed_walk_emits_what_prost_decoding_does` and the `exposition_proto` fuzz
//! target compare them.
//!
//! # Histograms
//! Classic buckets are used when a histogram has any (the `+Inf` bucket is added from
//! `sample_count` when absent, as the format allows). A histogram without classic
//! buckets but with native (sparse) bucket spans is converted to explicit bounds by
//! the rule weir uses for OTLP exponential histograms
//! ([`crate::parse::otlp::exponential_to_explicit`]): native bucket `i` of schema `s` holds
//! `(b^(i-1), b^i]` with `b = 2^(2^-s)`, so it keeps its exact upper bound `b^i`; the
//! zero bucket and every negative observation go into one first bucket with upper
//! bound `zero_threshold`. A native histogram spanning more than
//! [`MAX_HISTOGRAM_BUCKETS`] bucket indices, or a classic (or gauge) histogram with
//! more than [`MAX_HISTOGRAM_BUCKETS`] finite buckets, is counted `too_many_buckets`;
//! one with a schema outside -10..=20, or whose spans and counts disagree, is counted
//! `malformed_group`.
//! Float histograms (`*_count_float`) are read when their counts are whole numbers.
//!
//! # Created timestamps
//! The `created_timestamp` of a counter, histogram or summary is passed to [`Emit`] as
//! the sample's `start_ms` (seconds and nanoseconds to whole milliseconds, rounded
//! down); an absent one, or one at or before the epoch, as 0 (unknown). Gauge
//! histograms are gauges and have none. Exemplars are decoded and ignored.

use weir_proto::Message;
use weir_proto::client_model::{self as pb, MetricFamily, MetricType};
use weir_proto::metrics::ExponentialHistogramDataPoint;
use weir_proto::metrics::exponential_histogram_data_point::Buckets;

use super::{
    Emit, EmitIdentified, ExpositionError, ParseReport, cumulative_histogram, summary_value,
    whole_count,
};
use crate::parse::MAX_HISTOGRAM_BUCKETS;
use crate::parse::otlp::exponential_to_explicit;
use crate::point::{HistogramValue, Sample, SummaryValue, Temporality};

mod walk;

/// Parses a protobuf exposition body (delimited `MetricFamily` messages), calling
/// `emit` for every sample.
///
/// ```
/// use weir_core::parse::exposition::parse_protobuf;
/// use weir_core::point::{Sample, Temporality};
/// use weir_proto::Message;
/// use weir_proto::client_model::{Counter, LabelPair, Metric, MetricFamily, MetricType};
/// let family = MetricFamily {
///     name: Some("jobs_total".into()),
///     r#type: Some(MetricType::Counter as i32),
///     metric: vec![Metric {
///         label: vec![LabelPair { name: Some("queue".into()), value: Some("mail".into()) }],
///         counter: Some(Counter { value: Some(7.0), ..Default::default() }),
///         ..Default::default()
///     }],
///     ..Default::default()
/// };
/// let body = family.encode_length_delimited_to_vec();
/// let mut got = Vec::new();
/// let report = parse_protobuf(&body, &mut |name, labels, sample, _, _| {
///     got.push((name.to_owned(), labels.to_vec() == [("queue", "mail")], sample == Sample::Counter(7.0, Temporality::Cumulative)));
/// });
/// assert_eq!((report.samples, report.total_errors()), (1, 0));
/// assert_eq!(got, vec![("jobs_total".to_owned(), true, true)]);
/// ```
pub fn parse_protobuf(body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
    parse_protobuf_identified(body, &mut |_, n, l, s, t, st| emit(n, l, s, t, st))
}

/// [`parse_protobuf`] with each sample's identity ([`EmitIdentified`]): counter, gauge
/// and untyped families are read by the borrowed walk ([`walk`]), every other message
/// is decoded by prost.
pub(super) fn parse_protobuf_identified(body: &[u8], emit: &mut EmitIdentified<'_>) -> ParseReport {
    let mut report = ParseReport::default();
    let mut walk = walk::Walk::default();
    for_each_message(body, &mut report, |message, report| {
        if !walk.family(message, emit, report) {
            decoded_family(
                message,
                &mut |n, l, s, t, st| emit(None, n, l, s, t, st),
                report,
            );
        }
    });
    report
}

/// [`parse_protobuf`] with every message decoded by prost: the reference the borrowed
/// walk is checked against (the property test below, the `exposition_proto` fuzz
/// target).
pub(crate) fn parse_protobuf_decoded(body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
    let mut report = ParseReport::default();
    for_each_message(body, &mut report, |message, report| {
        decoded_family(message, emit, report)
    });
    report
}

/// Calls `each` with every length-delimited message of `body`; a truncated or
/// oversized length prefix counts `malformed_protobuf` and ends the body.
fn for_each_message<'b>(
    body: &'b [u8],
    report: &mut ParseReport,
    mut each: impl FnMut(&'b [u8], &mut ParseReport),
) {
    let mut rest = body;
    while !rest.is_empty() {
        let Some((len, after)) = read_varint(rest) else {
            report.count(ExpositionError::MalformedProtobuf);
            break;
        };
        let Some(len) = usize::try_from(len).ok().filter(|l| *l <= after.len()) else {
            report.count(ExpositionError::MalformedProtobuf);
            break;
        };
        let (message, next) = after.split_at(len);
        rest = next;
        each(message, report);
    }
}

/// One message decoded by prost and its series emitted; `malformed_protobuf` when it
/// does not decode.
fn decoded_family(message: &[u8], emit: &mut Emit<'_>, report: &mut ParseReport) {
    match MetricFamily::decode(message) {
        Ok(f) => family(&f, emit, report),
        Err(_) => report.count(ExpositionError::MalformedProtobuf),
    }
}

/// A base-128 varint at the start of `buf` (at most 10 bytes, no bits past 64) and
/// what follows it; `None` when truncated or too long.
fn read_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().take(10).enumerate() {
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &buf[i + 1..]));
        }
    }
    None
}

/// Emits every series of one family.
fn family(f: &MetricFamily, emit: &mut Emit<'_>, report: &mut ParseReport) {
    let per_series = |report: &mut ParseReport, e: ExpositionError| {
        for _ in 0..f.metric.len().max(1) {
            report.count(e);
        }
    };
    let name = f.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return per_series(report, ExpositionError::MalformedLine);
    }
    let Ok(kind) = MetricType::try_from(f.r#type.unwrap_or(0)) else {
        return per_series(report, ExpositionError::UnsupportedType);
    };
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for m in &f.metric {
        labels.clear();
        let mut bad_label = false;
        for l in &m.label {
            match (l.name.as_deref(), l.value.as_deref()) {
                (Some(k), v) if !k.is_empty() => labels.push((k, v.unwrap_or(""))),
                _ => bad_label = true,
            }
        }
        if bad_label {
            report.count(ExpositionError::MalformedLabels);
            continue;
        }
        let ts = m.timestamp_ms.unwrap_or(0);
        if kind == MetricType::GaugeHistogram {
            match &m.histogram {
                Some(h) if too_many_classic(h) => report.count(ExpositionError::TooManyBuckets),
                Some(h) => gauge_histogram(name, &labels, h, ts, emit, report),
                None => report.count(ExpositionError::MalformedValue),
            }
            continue;
        }
        let start = created_ms(kind, m);
        match value(kind, m) {
            Ok(Value::Counter(v)) => emit(
                name,
                &labels,
                Sample::Counter(v, Temporality::Cumulative),
                ts,
                start,
            ),
            Ok(Value::Gauge(v)) => emit(name, &labels, Sample::Gauge(v), ts, 0),
            Ok(Value::Histogram(h)) => emit(
                name,
                &labels,
                Sample::Histogram(&h, Temporality::Cumulative),
                ts,
                start,
            ),
            Ok(Value::Summary(s)) => emit(name, &labels, Sample::Summary(&s), ts, start),
            Err(e) => {
                report.count(e);
                continue;
            }
        }
        report.samples += 1;
    }
}

/// The `created_timestamp` of a counter's, histogram's or summary's series in
/// milliseconds since the epoch; 0 when absent, at or before the epoch, or for any
/// other type (see the module doc).
fn created_ms(kind: MetricType, m: &pb::Metric) -> i64 {
    let created = match kind {
        MetricType::Counter => m
            .counter
            .as_ref()
            .and_then(|c| c.created_timestamp.as_ref()),
        MetricType::Histogram => m
            .histogram
            .as_ref()
            .and_then(|h| h.created_timestamp.as_ref()),
        MetricType::Summary => m
            .summary
            .as_ref()
            .and_then(|s| s.created_timestamp.as_ref()),
        _ => None,
    };
    start_ms(created.map(|t| (t.seconds, t.nanos)))
}

/// A created timestamp `(seconds, nanos)` in milliseconds since the epoch, 0 when
/// absent or at or before the epoch.
fn start_ms(created: Option<(i64, i32)>) -> i64 {
    created.map_or(0, |(seconds, nanos)| {
        // nanos is in 0..1e9 by the Timestamp spec; clamped so that a body breaking it
        // cannot move the time by more than a second.
        let millis = i64::from(nanos.clamp(0, 999_999_999)) / 1_000_000;
        seconds.saturating_mul(1000).saturating_add(millis).max(0)
    })
}

/// The value of one series of a counter, gauge, untyped, histogram or summary family.
enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(HistogramValue),
    Summary(SummaryValue),
}

/// Reads the field `kind` calls for (`malformed_value` when it is absent; an absent
/// number inside it reads as 0, as the Go client library reads it).
fn value(kind: MetricType, m: &pb::Metric) -> Result<Value, ExpositionError> {
    let missing = ExpositionError::MalformedValue;
    let malformed = ExpositionError::MalformedGroup;
    Ok(match kind {
        MetricType::Counter => {
            Value::Counter(m.counter.as_ref().ok_or(missing)?.value.unwrap_or(0.0))
        }
        MetricType::Gauge => Value::Gauge(m.gauge.as_ref().ok_or(missing)?.value.unwrap_or(0.0)),
        MetricType::Untyped => {
            Value::Gauge(m.untyped.as_ref().ok_or(missing)?.value.unwrap_or(0.0))
        }
        // Read by `gauge_histogram` as several gauges; never asked for here.
        MetricType::GaugeHistogram => return Err(ExpositionError::UnsupportedType),
        MetricType::Summary => {
            let s = m.summary.as_ref().ok_or(missing)?;
            let points: Vec<(f64, f64)> = s
                .quantile
                .iter()
                .map(|q| (q.quantile.unwrap_or(0.0), q.value.unwrap_or(0.0)))
                .collect();
            let count = s.sample_count.unwrap_or(0) as f64;
            Value::Summary(
                summary_value(&points, s.sample_sum.unwrap_or(0.0), count).ok_or(malformed)?,
            )
        }
        MetricType::Histogram => Value::Histogram(histogram(m.histogram.as_ref().ok_or(missing)?)?),
    })
}

/// `float` when it is set and positive (the format's rule for `*_count_float`), else
/// `int`.
fn count_of(int: Option<u64>, float: Option<f64>) -> f64 {
    match float {
        Some(f) if f > 0.0 => f,
        _ => int.unwrap_or(0) as f64,
    }
}

/// True when a histogram message has more than [`MAX_HISTOGRAM_BUCKETS`] finite
/// classic buckets.
fn too_many_classic(h: &pb::Histogram) -> bool {
    let finite = h
        .bucket
        .iter()
        .filter(|b| b.upper_bound != Some(f64::INFINITY))
        .count();
    finite > MAX_HISTOGRAM_BUCKETS
}

/// A histogram message as weir's histogram (see the module doc): `too_many_buckets`
/// past [`MAX_HISTOGRAM_BUCKETS`], `malformed_group` when inconsistent.
fn histogram(h: &pb::Histogram) -> Result<HistogramValue, ExpositionError> {
    let native = h.bucket.is_empty() && !(h.positive_span.is_empty() && h.negative_span.is_empty());
    if native {
        return native_histogram(h);
    }
    if too_many_classic(h) {
        return Err(ExpositionError::TooManyBuckets);
    }
    let mut points = classic_buckets(h);
    cumulative_histogram(&mut points, h.sample_sum.unwrap_or(0.0))
        .ok_or(ExpositionError::MalformedGroup)
}

/// The classic buckets as cumulative `(le, count)`, with `+Inf` added from
/// `sample_count` when absent.
fn classic_buckets(h: &pb::Histogram) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(h.bucket.len() + 1);
    points.extend(h.bucket.iter().map(|b| {
        (
            b.upper_bound.unwrap_or(0.0),
            count_of(b.cumulative_count, b.cumulative_count_float),
        )
    }));
    if !points.iter().any(|p| p.0 == f64::INFINITY) {
        points.push((
            f64::INFINITY,
            count_of(h.sample_count, h.sample_count_float),
        ));
    }
    points
}

/// A gauge histogram as Prometheus stores one: `<name>_bucket{le}` (cumulative),
/// `<name>_gcount` and `<name>_gsum` gauges.
fn gauge_histogram(
    name: &str,
    labels: &[(&str, &str)],
    h: &pb::Histogram,
    ts: i64,
    emit: &mut Emit<'_>,
    report: &mut ParseReport,
) {
    let bucket_name = format!("{name}_bucket");
    for (le, count) in classic_buckets(h) {
        let le = if le == f64::INFINITY {
            "+Inf".to_owned()
        } else {
            le.to_string()
        };
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", &le));
        emit(&bucket_name, &with_le, Sample::Gauge(count), ts, 0);
        report.samples += 1;
    }
    let count = count_of(h.sample_count, h.sample_count_float);
    emit(
        &format!("{name}_gcount"),
        labels,
        Sample::Gauge(count),
        ts,
        0,
    );
    emit(
        &format!("{name}_gsum"),
        labels,
        Sample::Gauge(h.sample_sum.unwrap_or(0.0)),
        ts,
        0,
    );
    report.samples += 2;
}

/// A native histogram converted to explicit bounds (see the module doc).
fn native_histogram(h: &pb::Histogram) -> Result<HistogramValue, ExpositionError> {
    let (first, positive) = dense_buckets(&h.positive_span, &h.positive_delta, &h.positive_count)?;
    let (_, negative) = dense_buckets(&h.negative_span, &h.negative_delta, &h.negative_count)?;
    native_point(h, first, positive, &negative).ok_or(ExpositionError::MalformedGroup)
}

/// The OTLP exponential point a native histogram's dense buckets make, converted to
/// explicit bounds; `None` when inconsistent.
fn native_point(
    h: &pb::Histogram,
    first: i64,
    positive: Vec<u64>,
    negative: &[u64],
) -> Option<HistogramValue> {
    let negative_total = negative.iter().try_fold(0u64, |a, c| a.checked_add(*c))?;
    let point = ExponentialHistogramDataPoint {
        count: whole_count(count_of(h.sample_count, h.sample_count_float))?,
        sum: h.sample_sum,
        scale: h.schema.unwrap_or(0),
        zero_count: whole_count(count_of(h.zero_count, h.zero_count_float))?,
        zero_threshold: h.zero_threshold.unwrap_or(0.0),
        // Native bucket i is OTLP bucket i - 1: both hold (b^(i-1), b^i].
        positive: Some(Buckets {
            offset: i32::try_from(first - 1).ok()?,
            bucket_counts: positive,
        }),
        negative: Some(Buckets {
            offset: 0,
            bucket_counts: vec![negative_total],
        }),
        ..Default::default()
    };
    exponential_to_explicit(&point).filter(HistogramValue::is_well_formed)
}

/// The buckets of one side of a native histogram as a dense run of absolute counts
/// and the index of its first bucket; `too_many_buckets` when the run is longer than
/// [`MAX_HISTOGRAM_BUCKETS`] (checked before anything is allocated for it),
/// `malformed_group` when the spans and counts disagree or a count is negative or
/// fractional.
fn dense_buckets(
    spans: &[pb::BucketSpan],
    deltas: &[i64],
    floats: &[f64],
) -> Result<(i64, Vec<u64>), ExpositionError> {
    let malformed = ExpositionError::MalformedGroup;
    let values = if deltas.is_empty() {
        floats.len()
    } else {
        deltas.len()
    };
    let total: u64 = spans.iter().map(|s| u64::from(s.length.unwrap_or(0))).sum();
    if total != values as u64 {
        return Err(malformed);
    }
    // Indices of every bucket, in order: a span starts `offset` after the previous
    // span's end (the first span at `offset`).
    let positions = || {
        let mut next = 0i64;
        spans.iter().flat_map(move |s| {
            let start = next.saturating_add(i64::from(s.offset.unwrap_or(0)));
            let len = i64::from(s.length.unwrap_or(0));
            next = start.saturating_add(len);
            (0..len).map(move |k| start.saturating_add(k))
        })
    };
    let (Some(first), Some(last)) = (positions().next(), positions().last()) else {
        return Ok((1, Vec::new()));
    };
    let width = last
        .checked_sub(first)
        .and_then(|w| w.checked_add(1))
        .ok_or(malformed)?;
    if width <= 0 {
        return Err(malformed);
    }
    if width > MAX_HISTOGRAM_BUCKETS as i64 {
        return Err(ExpositionError::TooManyBuckets);
    }
    let mut dense = vec![0u64; width as usize];
    let mut running = 0i64;
    for (k, at) in positions().enumerate() {
        let count = if deltas.is_empty() {
            floats.get(k).and_then(|f| whole_count(*f))
        } else {
            deltas
                .get(k)
                .and_then(|d| running.checked_add(*d))
                .inspect(|r| running = *r)
                .and_then(|r| u64::try_from(r).ok())
        }
        .ok_or(malformed)?;
        let slot = at
            .checked_sub(first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| dense.get_mut(i))
            .ok_or(malformed)?;
        *slot = slot.checked_add(count).ok_or(malformed)?;
    }
    Ok((first, dense))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, WEIR_START_MS, scrape_each};
    use super::*;
    use pb::{Bucket, BucketSpan, Counter, Gauge, LabelPair, Metric, Quantile, Summary, Untyped};
    use proptest::prelude::*;

    /// Everything a body emits, owned: `(name, labels, sample as Debug text, ts)`.
    type Got = Vec<(String, Vec<(String, String)>, String, i64)>;

    fn parse(body: &[u8]) -> (Got, ParseReport) {
        let (got, r) = emitted_by(parse_protobuf, body);
        let got = got
            .into_iter()
            .map(|(n, l, s, ts, _)| (n, l, s, ts))
            .collect();
        (got, r)
    }

    /// Everything a parse emits, owned, with the start time: `(name, labels, sample
    /// as Debug text, ts, start)`.
    type Emitted = Vec<(String, Vec<(String, String)>, String, i64, i64)>;

    fn emitted_by(
        parse: fn(&[u8], &mut Emit<'_>) -> ParseReport,
        body: &[u8],
    ) -> (Emitted, ParseReport) {
        let mut got = Vec::new();
        let r = parse(body, &mut |name, labels, sample, ts, start| {
            got.push((
                name.to_owned(),
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                format!("{sample:?}"),
                ts,
                start,
            ))
        });
        (got, r)
    }

    fn body(families: &[MetricFamily]) -> Vec<u8> {
        families
            .iter()
            .flat_map(|f| f.encode_length_delimited_to_vec())
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
        pairs
            .iter()
            .map(|(k, v)| LabelPair {
                name: Some((*k).into()),
                value: Some((*v).into()),
            })
            .collect()
    }

    fn fam(name: &str, t: MetricType, metric: Vec<Metric>) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            help: Some("help text".into()),
            r#type: Some(t as i32),
            metric,
        }
    }

    fn gauge(v: f64) -> Metric {
        Metric {
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }
    }

    fn classic(count: u64, sum: f64, buckets: &[(f64, u64)]) -> pb::Histogram {
        pb::Histogram {
            sample_count: Some(count),
            sample_sum: Some(sum),
            bucket: buckets
                .iter()
                .map(|&(le, c)| Bucket {
                    cumulative_count: Some(c),
                    upper_bound: Some(le),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The reference example of the text format, as a protobuf body.
    fn reference() -> Vec<MetricFamily> {
        vec![
            fam(
                "http_requests_total",
                MetricType::Counter,
                vec![
                    Metric {
                        label: labels(&[("method", "post"), ("code", "200")]),
                        counter: Some(Counter {
                            value: Some(1027.0),
                            exemplar: Some(pb::Exemplar {
                                label: labels(&[("trace_id", "abc")]),
                                value: Some(0.5),
                                timestamp: Some(pb::Timestamp {
                                    seconds: 1,
                                    nanos: 2,
                                }),
                            }),
                            created_timestamp: Some(pb::Timestamp {
                                seconds: 1_395_000_000,
                                nanos: 0,
                            }),
                        }),
                        timestamp_ms: Some(1_395_066_363_000),
                        ..Default::default()
                    },
                    Metric {
                        label: labels(&[("method", "post"), ("code", "400")]),
                        counter: Some(Counter {
                            value: Some(3.0),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
            ),
            fam(
                "msdos_file_access_time_seconds",
                MetricType::Untyped,
                vec![Metric {
                    label: labels(&[
                        ("path", r"C:\DIR\FILE.TXT"),
                        ("error", "Cannot find file:\n\"FILE.TXT\""),
                    ]),
                    untyped: Some(Untyped {
                        value: Some(1.458255915e9),
                    }),
                    ..Default::default()
                }],
            ),
            fam("queue_depth", MetricType::Gauge, vec![gauge(12.47)]),
            fam(
                "http_request_duration_seconds",
                MetricType::Histogram,
                vec![Metric {
                    histogram: Some(classic(
                        144_320,
                        53_423.0,
                        &[
                            (0.05, 24_054),
                            (0.1, 33_444),
                            (0.2, 100_392),
                            (0.5, 129_389),
                            (1.0, 133_988),
                        ],
                    )),
                    ..Default::default()
                }],
            ),
            fam(
                "rpc_duration_seconds",
                MetricType::Summary,
                vec![Metric {
                    summary: Some(Summary {
                        sample_count: Some(2693),
                        sample_sum: Some(1.7560473e7),
                        quantile: [(0.01, 3102.0), (0.5, 4773.0), (0.99, 76656.0)]
                            .iter()
                            .map(|&(q, v)| Quantile {
                                quantile: Some(q),
                                value: Some(v),
                            })
                            .collect(),
                        created_timestamp: None,
                    }),
                    ..Default::default()
                }],
            ),
        ]
    }

    /// A created timestamp `offset_ms` from weir's start (`None`: no timestamp).
    fn created(offset_ms: Option<i64>) -> Option<pb::Timestamp> {
        offset_ms.map(|o| {
            let ms = WEIR_START_MS + o;
            pb::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }
        })
    }

    /// A counter family body: one series at `value`, created at `offset_ms` from
    /// weir's start.
    fn counter_body(value: f64, offset_ms: Option<i64>) -> Vec<u8> {
        let counter = Counter {
            value: Some(value),
            created_timestamp: created(offset_ms),
            ..Default::default()
        };
        let metric = Metric {
            counter: Some(counter),
            ..Default::default()
        };
        body(&[fam("jobs_total", MetricType::Counter, vec![metric])])
    }

    /// A histogram family body: one series of `count` observations, created at
    /// `offset_ms` from weir's start.
    fn histogram_body(count: u64, offset_ms: Option<i64>) -> Vec<u8> {
        let histogram = pb::Histogram {
            created_timestamp: created(offset_ms),
            ..classic(count, 9.0, &[(1.0, 1)])
        };
        let metric = Metric {
            histogram: Some(histogram),
            ..Default::default()
        };
        body(&[fam("lat", MetricType::Histogram, vec![metric])])
    }

    const AFTER: Option<i64> = Some(10_500);
    const BEFORE: Option<i64> = Some(-10_000_000);

    #[test]
    fn a_protobuf_counter_created_after_weir_started_counts_its_first_value() {
        let bodies = [counter_body(7.0, AFTER), counter_body(10.0, AFTER)];
        assert_eq!(
            scrape_each(Format::Protobuf, &bodies),
            vec![(7.0, 7.0), (3.0, 10.0)]
        );
        for offset in [BEFORE, None] {
            let bodies = [counter_body(7.0, offset), counter_body(10.0, offset)];
            assert_eq!(
                scrape_each(Format::Protobuf, &bodies),
                vec![(0.0, 7.0), (3.0, 10.0)],
                "a baseline when created {offset:?}"
            );
        }
        let bodies = [counter_body(7.0, BEFORE), counter_body(9.0, AFTER)];
        assert_eq!(
            scrape_each(Format::Protobuf, &bodies),
            vec![(0.0, 7.0), (9.0, 16.0)],
            "a new created timestamp is a reset even when the value grew"
        );
    }

    #[test]
    fn a_protobuf_histogram_created_after_weir_started_counts_its_first_observations() {
        let bodies = [histogram_body(3, AFTER), histogram_body(5, AFTER)];
        assert_eq!(
            scrape_each(Format::Protobuf, &bodies),
            vec![(3.0, 3.0), (2.0, 5.0)]
        );
        for offset in [BEFORE, None] {
            let bodies = [histogram_body(3, offset), histogram_body(5, offset)];
            assert_eq!(
                scrape_each(Format::Protobuf, &bodies),
                vec![(0.0, 3.0), (2.0, 5.0)],
                "a baseline when created {offset:?}"
            );
        }
        let bodies = [histogram_body(3, BEFORE), histogram_body(4, AFTER)];
        assert_eq!(
            scrape_each(Format::Protobuf, &bodies),
            vec![(0.0, 3.0), (4.0, 7.0)],
            "a new created timestamp is a reset"
        );
    }

    #[test]
    fn created_timestamps_become_start_times_in_milliseconds() {
        let mut starts = Vec::new();
        let summary = |t: Option<pb::Timestamp>| Metric {
            summary: Some(Summary {
                sample_count: Some(1),
                created_timestamp: t,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = |seconds, nanos| Some(pb::Timestamp { seconds, nanos });
        let families = [
            fam(
                "s",
                MetricType::Summary,
                vec![
                    summary(t(1_700_000_000, 999_999_999)),
                    summary(t(0, 0)),
                    summary(t(-5, 0)),
                    summary(t(i64::MAX, 2_000_000_000)),
                    summary(t(1, -1)),
                ],
            ),
            fam("g", MetricType::Gauge, vec![gauge(1.0)]),
        ];
        let r = parse_protobuf(&body(&families), &mut |_, _, _, _, start| {
            starts.push(start)
        });
        assert_eq!(r.total_errors(), 0);
        // Rounded down to the millisecond; at or before the epoch is unknown (0); out
        // of range saturates; a gauge has none.
        assert_eq!(starts, vec![1_700_000_000_999, 0, 0, i64::MAX, 1000, 0]);
    }

    #[test]
    fn every_metric_type_parses_like_the_text_format() {
        let (got, r) = parse(&body(&reference()));
        assert_eq!(r.total_errors(), 0, "{r:?}");
        assert_eq!(r.samples, 6);
        let text = "# TYPE http_requests_total counter\n\
            http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
            http_requests_total{method=\"post\",code=\"400\"} 3\n\
            msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
            # TYPE queue_depth gauge\nqueue_depth 12.47\n\
            # TYPE http_request_duration_seconds histogram\n\
            http_request_duration_seconds_bucket{le=\"0.05\"} 24054\n\
            http_request_duration_seconds_bucket{le=\"0.1\"} 33444\n\
            http_request_duration_seconds_bucket{le=\"0.2\"} 100392\n\
            http_request_duration_seconds_bucket{le=\"0.5\"} 129389\n\
            http_request_duration_seconds_bucket{le=\"1\"} 133988\n\
            http_request_duration_seconds_bucket{le=\"+Inf\"} 144320\n\
            http_request_duration_seconds_sum 53423\n\
            http_request_duration_seconds_count 144320\n\
            # TYPE rpc_duration_seconds summary\n\
            rpc_duration_seconds{quantile=\"0.01\"} 3102\n\
            rpc_duration_seconds{quantile=\"0.5\"} 4773\n\
            rpc_duration_seconds{quantile=\"0.99\"} 76656\n\
            rpc_duration_seconds_sum 1.7560473e+07\n\
            rpc_duration_seconds_count 2693\n";
        let mut from_text = Vec::new();
        let tr = super::super::parse_text(text.as_bytes(), &mut |name, labels, sample, ts, _| {
            from_text.push((
                name.to_owned(),
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
                format!("{sample:?}"),
                ts,
            ))
        });
        assert_eq!(tr.total_errors(), 0, "{tr:?}");
        assert_eq!(got, from_text);
        assert_eq!(got[0].2, "Counter(1027.0, Cumulative)");
        assert_eq!(got[0].3, 1_395_066_363_000);
        assert_eq!(got[2].1[1].1, "Cannot find file:\n\"FILE.TXT\"");
        assert!(
            got[4]
                .2
                .contains("counts: [24054, 9390, 66948, 28997, 4599, 10332]"),
            "{}",
            got[4].2
        );
    }

    #[test]
    fn histograms_take_inf_from_the_count_or_their_own_bucket() {
        let with_inf = classic(5, 1.0, &[(1.0, 2), (f64::INFINITY, 5)]);
        let without = classic(5, 1.0, &[(1.0, 2)]);
        let none = classic(4, 2.0, &[]);
        for (h, want) in [
            (&with_inf, "counts: [2, 3], sum: 1.0, count: 5"),
            (&without, "counts: [2, 3], sum: 1.0, count: 5"),
            (&none, "bounds: [], counts: [4], sum: 2.0, count: 4"),
        ] {
            let v = histogram(h).unwrap();
            assert!(format!("{v:?}").contains(want), "{v:?}");
        }
        let float = pb::Histogram {
            sample_count_float: Some(3.0),
            bucket: vec![Bucket {
                cumulative_count_float: Some(1.0),
                upper_bound: Some(0.5),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(histogram(&float).unwrap().counts, vec![1, 2]);
    }

    #[test]
    fn native_histograms_convert_to_exact_upper_bounds() {
        // Schema 0 (base 2): buckets 1 and 2 hold (1, 2] and (2, 4]; bucket 4, after a
        // gap of one, holds (8, 16]. Deltas 3, -1, +2 give counts 3, 2, 4.
        let h = pb::Histogram {
            sample_count: Some(12),
            sample_sum: Some(60.0),
            schema: Some(0),
            zero_threshold: Some(0.001),
            zero_count: Some(1),
            positive_span: vec![
                BucketSpan {
                    offset: Some(1),
                    length: Some(2),
                },
                BucketSpan {
                    offset: Some(1),
                    length: Some(1),
                },
            ],
            positive_delta: vec![3, -1, 2],
            negative_span: vec![BucketSpan {
                offset: Some(0),
                length: Some(1),
            }],
            negative_delta: vec![2],
            ..Default::default()
        };
        let v = histogram(&h).unwrap();
        assert_eq!(&*v.bounds, &[0.001, 2.0, 4.0, 8.0, 16.0]);
        assert_eq!(
            v.counts,
            vec![3, 3, 2, 0, 4, 0],
            "zero 1 + negative 2 first"
        );
        assert_eq!((v.count, v.sum), (12, 60.0));

        let mut float = h.clone();
        float.positive_delta.clear();
        float.negative_delta.clear();
        float.positive_count = vec![3.0, 2.0, 4.0];
        float.negative_count = vec![2.0];
        assert_eq!(histogram(&float), Ok(v));

        // A no-op span only: an empty native histogram.
        let empty = pb::Histogram {
            schema: Some(3),
            positive_span: vec![BucketSpan {
                offset: Some(0),
                length: Some(0),
            }],
            ..Default::default()
        };
        assert_eq!(histogram(&empty).unwrap().count, 0);

        let bad = |f: &dyn Fn(&mut pb::Histogram)| {
            let mut b = h.clone();
            f(&mut b);
            histogram(&b)
        };
        let malformed = Err(ExpositionError::MalformedGroup);
        assert_eq!(
            bad(&|b| b.positive_delta.push(1)),
            malformed,
            "more counts than spans"
        );
        assert_eq!(
            bad(&|b| b.positive_delta[1] = -5),
            malformed,
            "negative count"
        );
        assert_eq!(bad(&|b| b.schema = Some(-53)), malformed, "custom buckets");
        assert_eq!(
            bad(&|b| b.sample_count = Some(11)),
            malformed,
            "counts disagree"
        );
        assert_eq!(
            bad(&|b| b.positive_span[1].offset = Some(i32::MAX)),
            Err(ExpositionError::TooManyBuckets),
            "too wide: refused before allocating"
        );
    }

    #[test]
    fn histograms_past_the_bucket_cap_are_refused_as_too_many_buckets() {
        let buckets =
            |n: usize| -> Vec<(f64, u64)> { (0..n).map(|i| (i as f64, i as u64)).collect() };
        let series = |n: usize| Metric {
            histogram: Some(classic(n as u64, 1.0, &buckets(n))),
            ..Default::default()
        };
        for kind in [MetricType::Histogram, MetricType::GaugeHistogram] {
            let (got, r) = parse(&body(&[fam("h", kind, vec![series(100_000)])]));
            assert_eq!((r.samples, got.len()), (0, 0), "{kind:?}");
            assert_eq!(r.errors(ExpositionError::TooManyBuckets), 1, "{kind:?}");
            assert_eq!(r.total_errors(), 1, "{kind:?}");
            let (_, r) = parse(&body(&[fam(
                "h",
                kind,
                vec![series(MAX_HISTOGRAM_BUCKETS + 1)],
            )]));
            assert_eq!(r.errors(ExpositionError::TooManyBuckets), 1, "{kind:?}");
            let (_, r) = parse(&body(&[fam(
                "h",
                kind,
                vec![series(MAX_HISTOGRAM_BUCKETS)],
            )]));
            assert_eq!(r.total_errors(), 0, "{kind:?}: {r:?}");
        }
        // Native: spanning more bucket indices than the cap, however few are set.
        let native = pb::Histogram {
            sample_count: Some(2),
            schema: Some(0),
            positive_span: vec![
                BucketSpan {
                    offset: Some(0),
                    length: Some(1),
                },
                BucketSpan {
                    offset: Some(MAX_HISTOGRAM_BUCKETS as i32),
                    length: Some(1),
                },
            ],
            positive_delta: vec![1, 0],
            ..Default::default()
        };
        let m = Metric {
            histogram: Some(native),
            ..Default::default()
        };
        let (_, r) = parse(&body(&[fam("n", MetricType::Histogram, vec![m])]));
        assert_eq!(r.errors(ExpositionError::TooManyBuckets), 1, "{r:?}");
    }

    #[test]
    fn gauge_histograms_become_gauges_as_prometheus_stores_them() {
        let f = fam(
            "queue_wait",
            MetricType::GaugeHistogram,
            vec![Metric {
                label: labels(&[("q", "a")]),
                histogram: Some(classic(4, 2.5, &[(0.5, 1)])),
                ..Default::default()
            }],
        );
        let (got, r) = parse(&body(&[f]));
        assert_eq!((r.samples, r.total_errors()), (4, 0));
        let names: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|g| {
                (
                    g.0.as_str(),
                    g.1.last().map_or("", |l| l.1.as_str()),
                    g.2.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("queue_wait_bucket", "0.5", "Gauge(1.0)"),
                ("queue_wait_bucket", "+Inf", "Gauge(4.0)"),
                ("queue_wait_gcount", "a", "Gauge(4.0)"),
                ("queue_wait_gsum", "a", "Gauge(2.5)"),
            ]
        );
    }

    #[test]
    fn bad_series_are_skipped_and_counted() {
        let ok = || fam("good", MetricType::Gauge, vec![gauge(1.0)]);
        let cases: Vec<(MetricFamily, ExpositionError)> = vec![
            (
                MetricFamily {
                    name: None,
                    ..fam("x", MetricType::Gauge, vec![gauge(1.0)])
                },
                ExpositionError::MalformedLine,
            ),
            (
                MetricFamily {
                    r#type: Some(42),
                    ..fam("x", MetricType::Gauge, vec![gauge(1.0)])
                },
                ExpositionError::UnsupportedType,
            ),
            (
                fam("x", MetricType::Counter, vec![gauge(1.0)]),
                ExpositionError::MalformedValue,
            ),
            (
                fam(
                    "x",
                    MetricType::Gauge,
                    vec![Metric {
                        label: vec![LabelPair {
                            name: None,
                            value: Some("v".into()),
                        }],
                        ..gauge(1.0)
                    }],
                ),
                ExpositionError::MalformedLabels,
            ),
            (
                fam(
                    "x",
                    MetricType::Histogram,
                    vec![Metric {
                        histogram: Some(classic(1, 0.0, &[(1.0, 5)])),
                        ..Default::default()
                    }],
                ),
                ExpositionError::MalformedGroup,
            ),
            (
                fam(
                    "x",
                    MetricType::Summary,
                    vec![Metric {
                        summary: Some(Summary {
                            quantile: vec![Quantile {
                                quantile: Some(1.5),
                                value: Some(1.0),
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                ),
                ExpositionError::MalformedGroup,
            ),
        ];
        for (bad, reason) in cases {
            let (got, r) = parse(&body(&[ok(), bad.clone(), ok()]));
            assert_eq!(r.errors(reason), 1, "{bad:?}: {r:?}");
            assert_eq!(r.total_errors(), 1, "{bad:?}: {r:?}");
            assert_eq!(got.len(), 2, "{bad:?}");
        }
    }

    #[test]
    fn malformed_framing_is_counted_never_trusted() {
        let good =
            fam("good", MetricType::Gauge, vec![gauge(1.0)]).encode_length_delimited_to_vec();
        // (body, samples, malformed_protobuf)
        let mut cases: Vec<(&str, Vec<u8>, u64, u64)> = vec![
            ("empty body", vec![], 0, 0),
            ("truncated varint", [&good[..], &[0x80]].concat(), 1, 1),
            (
                "eleven-byte varint",
                [&good[..], &[0xff; 11]].concat(),
                1,
                1,
            ),
            (
                "ten-byte varint past 64 bits",
                [
                    &good[..],
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                ]
                .concat(),
                1,
                1,
            ),
            (
                "length beyond the body (2^63)",
                [
                    &good[..],
                    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
                ]
                .concat(),
                1,
                1,
            ),
            (
                "length one past the body",
                [&good[..], &[5, 0x0a, 1, b'a', 0x18]].concat(),
                1,
                1,
            ),
            // Field 1 (name) with wire type 0 (varint) instead of 2: skipped, and the
            // next message is still read.
            ("wrong wire type", [&[2, 0x08, 1][..], &good].concat(), 1, 1),
            // A gauge whose value (field 1, double) arrives as a varint.
            (
                "wrong wire type inside",
                [&[8, 0x22, 6, 0x12, 4, 0x08, 1, 0x08, 1][..], &good].concat(),
                1,
                1,
            ),
            (
                "invalid utf-8 name",
                [&[3, 0x0a, 1, 0xff][..], &good].concat(),
                1,
                1,
            ),
            ("field number 0", [&[2, 0x02, 0][..], &good].concat(), 1, 1),
            ("text instead", b"# TYPE x gauge\nx 1\n".to_vec(), 0, 1),
            (
                "zero-length message: a family without a name",
                [&[0][..], &good].concat(),
                1,
                0,
            ),
        ];
        // An inner length past its message: prost refuses it.
        let mut inner = good.clone();
        inner[2] = 0x7f; // the name's length
        cases.push(("inner length past the message", inner, 0, 1));
        for (what, body, samples, errors) in cases {
            let (_, r) = parse(&body);
            assert_eq!(r.samples, samples, "{what}: {r:?}");
            assert_eq!(
                r.errors(ExpositionError::MalformedProtobuf),
                errors,
                "{what}: {r:?}"
            );
            let nameless = u64::from(what.starts_with("zero-length"));
            assert_eq!(
                r.errors(ExpositionError::MalformedLine),
                nameless,
                "{what}: {r:?}"
            );
            assert_eq!(r.total_errors(), errors + nameless, "{what}: {r:?}");
        }
    }

    #[test]
    fn a_real_node_exporter_body_parses_without_errors() {
        // `prometheus-node-exporter` 1.5.0 (Debian) with the textfile collector,
        // answering the protobuf Accept header: its Go runtime and process
        // metrics plus a textfile with a gauge and a counter.
        let body = include_bytes!("testdata/node_exporter_1.5.0.pb");
        let (got, r) = parse(body);
        assert_eq!(r.total_errors(), 0, "{r:?}");
        assert!(r.samples > 30, "{r:?}");
        let find = |name: &str| got.iter().find(|g| g.0 == name).map(|g| g.2.clone());
        assert_eq!(find("weir_test_value").as_deref(), Some("Gauge(42.0)"));
        assert_eq!(
            find("weir_test_events_total").as_deref(),
            Some("Counter(7.0, Cumulative)")
        );
        assert!(
            find("go_gc_duration_seconds")
                .unwrap()
                .starts_with("Summary(")
        );
        assert!(
            find("node_textfile_scrape_error")
                .as_deref()
                .is_some_and(|s| s == "Gauge(0.0)")
        );
    }

    /// One generated series: labels, value, histogram increments (or summary
    /// quantile values), timestamp.
    type GenSeries = (Vec<(String, String)>, u32, Vec<u16>, Option<i64>);

    /// A family as the round trip generates it: name, type, and per series its labels,
    /// value (or histogram increments) and timestamp.
    #[derive(Debug, Clone)]
    struct GenFamily {
        kind: u8,
        series: Vec<GenSeries>,
    }

    fn gen_family() -> impl Strategy<Value = GenFamily> {
        (
            0u8..5,
            proptest::collection::vec(
                (
                    proptest::collection::btree_map("[a-z]{1,3}", "[ -~]{0,6}", 0..3)
                        .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
                    any::<u32>(),
                    proptest::collection::vec(any::<u16>(), 0..4),
                    proptest::option::of(-(1i64 << 50)..(1i64 << 50)),
                ),
                1..4,
            ),
        )
            .prop_map(|(kind, series)| GenFamily { kind, series })
    }

    #[test]
    fn counters_gauges_and_untyped_samples_carry_their_identity_and_histograms_do_not() {
        let g = |labels_: &[(&str, &str)], v: f64| Metric {
            label: labels(labels_),
            ..gauge(v)
        };
        let families = [
            fam(
                "g",
                MetricType::Gauge,
                vec![g(&[("a", "1")], 1.0), g(&[("a", "2")], 2.0)],
            ),
            fam("g", MetricType::Gauge, vec![g(&[("a", "1")], 3.0)]),
            // The same name and label bytes in another family name: another identity.
            fam("h", MetricType::Gauge, vec![g(&[("a", "1")], 4.0)]),
            fam(
                "hist",
                MetricType::Histogram,
                vec![Metric {
                    histogram: Some(classic(1, 1.0, &[(1.0, 1)])),
                    ..Default::default()
                }],
            ),
        ];
        let b = body(&families);
        let mut ids = Vec::new();
        let r = Format::Protobuf.parse_identified(&b, &mut |id, name, _, _, _, _| {
            ids.push((id.map(<[u8]>::to_vec), name.to_owned()));
        });
        assert_eq!((r.samples, r.total_errors()), (5, 0));
        let id = |i: usize| ids[i].0.clone().unwrap();
        assert_eq!(id(0)[0], 0xFF);
        assert_eq!(id(0), id(2), "the same series in two scrapes");
        assert_ne!(id(0), id(1));
        assert_ne!(id(0), id(3));
        assert_eq!(ids[4], (None, "hist".to_owned()));
    }

    /// An unknown field's bytes, by `kind`: varint, fixed64, fixed32, bytes, group.
    fn unknown_field(kind: u8, payload: &[u8]) -> Vec<u8> {
        match kind % 5 {
            0 => vec![0x48, 0x96, 0x01],             // 9, VARINT 150
            1 => vec![0x51, 1, 2, 3, 4, 5, 6, 7, 8], // 10, I64
            2 => vec![0x5d, 1, 2, 3, 4],             // 11, I32
            3 => {
                let mut b = vec![0x62, payload.len() as u8]; // 12, LEN
                b.extend_from_slice(payload);
                b
            }
            _ => vec![0x6b, 0x08, 1, 0x6c], // 13, SGROUP {1: 1} EGROUP
        }
    }

    /// A series as the comparison generates it.
    #[derive(Debug, Clone)]
    struct AnySeries {
        labels: Vec<(Option<String>, Option<String>)>,
        /// Which value fields are set: bit 0 gauge, 1 counter, 2 untyped, 3 histogram,
        /// 4 summary; bit 5 leaves the value out of each.
        fields: u8,
        value: f64,
        created: Option<(i64, i32)>,
        exemplar: bool,
        timestamp_ms: Option<i64>,
        unknown: Option<u8>,
    }

    /// A family as the comparison generates it.
    #[derive(Debug, Clone)]
    struct AnyFamily {
        name: Option<String>,
        kind: Option<i32>,
        series: Vec<AnySeries>,
        unknown: Option<u8>,
        /// A second `type` field after the series (the last one wins).
        late_kind: Option<i32>,
    }

    fn any_series() -> impl Strategy<Value = AnySeries> {
        (
            proptest::collection::vec(
                (
                    proptest::option::weighted(0.9, "[a-c1_-]{0,2}"),
                    proptest::option::weighted(0.9, "[ -~]{0,3}|\\PC{0,2}"),
                ),
                0..4,
            ),
            any::<u8>(),
            prop_oneof![any::<f64>(), -1e6..1e6f64],
            proptest::option::of((any::<i64>(), any::<i32>())),
            any::<bool>(),
            proptest::option::of(any::<i64>()),
            proptest::option::weighted(0.2, any::<u8>()),
        )
            .prop_map(
                |(labels, fields, value, created, exemplar, timestamp_ms, unknown)| AnySeries {
                    labels,
                    fields,
                    value,
                    created,
                    exemplar,
                    timestamp_ms,
                    unknown,
                },
            )
    }

    fn any_family() -> impl Strategy<Value = AnyFamily> {
        let kind = prop_oneof![
            8 => 0i32..6,
            1 => any::<i32>(),
        ];
        (
            proptest::option::weighted(0.95, "[a-z_]{0,4}"),
            proptest::option::weighted(0.9, kind.clone()),
            proptest::collection::vec(any_series(), 0..5),
            proptest::option::weighted(0.2, any::<u8>()),
            proptest::option::weighted(0.1, kind),
        )
            .prop_map(|(name, kind, series, unknown, late_kind)| AnyFamily {
                name,
                kind,
                series,
                unknown,
                late_kind,
            })
    }

    /// A `Metric`'s bytes for `s`, with its unknown field at the end.
    fn any_metric(s: &AnySeries) -> Vec<u8> {
        let v = (s.fields & 32 == 0).then_some(s.value);
        let ts = s
            .created
            .map(|(seconds, nanos)| pb::Timestamp { seconds, nanos });
        let m = Metric {
            label: s
                .labels
                .iter()
                .map(|(name, value)| LabelPair {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            gauge: (s.fields & 1 != 0).then_some(Gauge { value: v }),
            counter: (s.fields & 2 != 0).then_some(Counter {
                value: v,
                exemplar: s.exemplar.then(|| pb::Exemplar {
                    label: labels(&[("trace_id", "abc")]),
                    value: v,
                    timestamp: ts,
                }),
                created_timestamp: ts,
            }),
            untyped: (s.fields & 4 != 0).then_some(Untyped { value: v }),
            histogram: (s.fields & 8 != 0).then(|| classic(3, 1.5, &[(1.0, 2)])),
            summary: (s.fields & 16 != 0).then(|| Summary {
                sample_count: Some(2),
                sample_sum: v,
                quantile: vec![Quantile {
                    quantile: Some(0.5),
                    value: v,
                }],
                created_timestamp: ts,
            }),
            timestamp_ms: s.timestamp_ms,
        };
        let mut b = m.encode_to_vec();
        if let Some(u) = s.unknown {
            b.extend(unknown_field(u, b"xy"));
        }
        b
    }

    /// A body of `families`, each a delimited `MetricFamily` with its series and
    /// unknown fields as generated.
    fn any_body(families: &[AnyFamily]) -> Vec<u8> {
        let mut body = Vec::new();
        for f in families {
            let mut msg = MetricFamily {
                name: f.name.clone(),
                help: Some("h".into()),
                r#type: f.kind,
                metric: Vec::new(),
            }
            .encode_to_vec();
            for s in &f.series {
                let m = any_metric(s);
                msg.push(0x22); // metric = 4, LEN
                weir_proto::encoding::encode_varint(m.len() as u64, &mut msg);
                msg.extend(m);
            }
            if let Some(u) = f.unknown {
                msg.extend(unknown_field(u, b"unit"));
            }
            if let Some(k) = f.late_kind {
                msg.push(0x18); // type = 3, VARINT
                weir_proto::encoding::encode_varint(i64::from(k) as u64, &mut msg);
            }
            weir_proto::encoding::encode_varint(msg.len() as u64, &mut body);
            body.extend(msg);
        }
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The borrowed walk against prost: random families (labels duplicated, empty,
        /// without a name or value, non-ASCII; every value field alone or mixed, with
        /// and without its value; created timestamps, exemplars, timestamps, unknown
        /// fields of every wire type, a type given again after the series, unknown
        /// types), intact or with one byte changed, emit the same samples with the same
        /// report either way.
        #[test]
        fn the_borrowed_walk_emits_what_prost_decoding_does(
            families in proptest::collection::vec(any_family(), 1..4),
            flip in proptest::option::weighted(0.3, (any::<prop::sample::Index>(), 1u8..)),
        ) {
            let mut b = any_body(&families);
            if let Some((at, x)) = flip.filter(|_| !b.is_empty()) {
                let i = at.index(b.len());
                b[i] ^= x;
            }
            let walked = emitted_by(parse_protobuf, &b);
            let decoded = emitted_by(parse_protobuf_decoded, &b);
            prop_assert_eq!(walked, decoded);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut n = 0u64;
            let r = parse_protobuf(&data, &mut |_, _, _, _, _| n += 1);
            prop_assert_eq!(r.samples, n);
            prop_assert!(r.samples <= data.len() as u64);
        }

        #[test]
        fn damaged_valid_bodies_never_panic(
            seed in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = body(&reference());
            let i = at.index(b.len());
            b[i] ^= seed.first().copied().unwrap_or(0xff) | 1;
            b.truncate(cut.index(b.len() + 1));
            b.extend_from_slice(&seed);
            let agg = crate::Aggregator::default();
            let mut w = agg.writer();
            let r = parse_protobuf(&b, &mut |n, l, s, ts, start| { let _ = w.record_since(n, l, s, ts, start); });
            prop_assert!(r.samples <= b.len() as u64);
        }

        #[test]
        fn encoded_families_round_trip(
            families in proptest::collection::btree_map("[a-z][a-z_]{0,8}", gen_family(), 1..5)
        ) {
            let mut encoded = Vec::new();
            let mut want = Vec::new();
            for (name, f) in &families {
                let kind = [MetricType::Counter, MetricType::Gauge, MetricType::Untyped, MetricType::Histogram, MetricType::Summary][f.kind as usize];
                let mut metrics = Vec::new();
                for (ls, value, incs, ts) in &f.series {
                    let v = f64::from(*value);
                    let mut m = Metric {
                        label: ls.iter().map(|(k, v)| LabelPair { name: Some(k.clone()), value: Some(v.clone()) }).collect(),
                        timestamp_ms: *ts,
                        ..Default::default()
                    };
                    let sample = match kind {
                        MetricType::Counter => {
                            m.counter = Some(Counter { value: Some(v), ..Default::default() });
                            format!("{:?}", Sample::Counter(v, Temporality::Cumulative))
                        }
                        MetricType::Gauge => {
                            m.gauge = Some(Gauge { value: Some(v) });
                            format!("{:?}", Sample::Gauge(v))
                        }
                        MetricType::Untyped => {
                            m.untyped = Some(Untyped { value: Some(v) });
                            format!("{:?}", Sample::Gauge(v))
                        }
                        MetricType::Histogram => {
                            // Bucket k has bound (k+1)/4 and `incs[k]` observations;
                            // `value % 7` more are above every bound.
                            let mut cum = 0u64;
                            let buckets: Vec<(f64, u64)> = incs.iter().enumerate().map(|(k, i)| {
                                cum += u64::from(*i);
                                ((k as f64 + 1.0) / 4.0, cum)
                            }).collect();
                            let count = cum + u64::from(value % 7);
                            m.histogram = Some(classic(count, v, &buckets));
                            let mut counts: Vec<u64> = incs.iter().map(|i| u64::from(*i)).collect();
                            counts.push(u64::from(value % 7));
                            let h = HistogramValue {
                                bounds: buckets.iter().map(|b| b.0).collect::<Vec<_>>().into(),
                                counts,
                                sum: v,
                                count,
                                min: f64::INFINITY,
                                max: f64::NEG_INFINITY,
                            };
                            format!("{:?}", Sample::Histogram(&h, Temporality::Cumulative))
                        }
                        _ => {
                            let quantiles: Vec<(f64, f64)> = incs.iter().enumerate().map(|(k, i)| (k as f64 / 4.0, f64::from(*i))).collect();
                            m.summary = Some(Summary {
                                sample_count: Some(u64::from(*value)),
                                sample_sum: Some(v / 2.0),
                                quantile: quantiles.iter().map(|&(q, v)| Quantile { quantile: Some(q), value: Some(v) }).collect(),
                                created_timestamp: None,
                            });
                            let s = summary_value(&quantiles, v / 2.0, v).unwrap();
                            format!("{:?}", Sample::Summary(&s))
                        }
                    };
                    metrics.push(m);
                    want.push((name.clone(), ls.clone(), sample, ts.unwrap_or(0)));
                }
                encoded.extend(fam(name, kind, metrics).encode_length_delimited_to_vec());
            }
            let (got, r) = parse(&encoded);
            prop_assert_eq!(r.total_errors(), 0);
            prop_assert_eq!(r.samples, want.len() as u64);
            prop_assert_eq!(got, want);
        }
    }
}
