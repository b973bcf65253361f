//! The property every cargo-fuzz target asserts, one function per target, shared by
//! the targets in `fuzz/fuzz_targets/` (long runs, nightly), the replay of every
//! committed corpus file in `core/tests/fuzz_corpus.rs` (on stable, in
//! `cargo test`), and the proptests that stand in for the targets in CI.
//!
//! Owns: each target's input decoding and its check. Must never: panic on any input
//! (a broken property is an `Err` with what differed; the fuzz target turns it into
//! the panic libFuzzer reports), or be used by production code.

use std::fs;
use std::path::Path;

use weir_proto::Message;
use weir_proto::client_model::{MetricFamily, MetricType};
use weir_proto::common::{AnyValue, KeyValue, any_value};
use weir_proto::metrics::exponential_histogram_data_point::Buckets;
use weir_proto::metrics::summary_data_point::ValueAtQuantile;
use weir_proto::metrics::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    metric::Data, number_data_point,
};
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::resource::Resource;

use crate::aggregator::{Aggregator, AggregatorConfig};
use crate::key::SeriesKey;
use crate::parse::MAX_HISTOGRAM_BUCKETS;
use crate::parse::exposition::{Format, ParseReport};
use crate::parse::otlp::{
    ExportReport, OtlpRejection, apply_export, apply_export_protobuf, data_points, decode_json,
    walks,
};
use crate::parse::statsd::{Decoder, StatsdType, lines, parse_line};
use crate::testing::TempDir;
use crate::wal::{HEADER_BYTES, Wal, WalConfig, WalPosition, WalRecord};

/// Every fuzz target, by its name under `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [&str; 8] = [
    "aggregator_model",
    "series_key",
    "statsd",
    "exposition",
    "openmetrics",
    "exposition_proto",
    "otlp",
    "wal",
];

/// Runs `target`'s check on one input.
///
/// # Errors
/// What the property found wrong, or an unknown target name.
pub fn check_target(target: &str, data: &[u8]) -> Result<(), String> {
    match target {
        "aggregator_model" => super::check_against_model(&super::ops_from_bytes(data))
            .map_err(|e| format!("aggregator differs from the model: {e}")),
        "series_key" => check_series_key(data),
        "statsd" => check_statsd(data),
        "exposition" => check_exposition(Format::Text, data),
        "openmetrics" => check_exposition(Format::OpenMetrics, data),
        "exposition_proto" => check_exposition(Format::Protobuf, data),
        "otlp" => check_otlp(data),
        "wal" => check_wal(data),
        other => Err(format!("no fuzz target named {other:?}")),
    }
}

fn small_aggregator() -> Aggregator {
    Aggregator::new(AggregatorConfig {
        max_series: 256,
        ..Default::default()
    })
}

/// All points the aggregator refused, over its reasons.
fn aggregator_refusals(agg: &Aggregator) -> u64 {
    agg.stats().rejected.iter().map(|(_, n)| n).sum()
}

// ---------------------------------------------------------------------------------
// OTLP

/// The `otlp` target: `data` read three ways (as a protobuf request, as an OTLP/JSON
/// body, and as the recipe of a structured request, see [`otlp_request_from_bytes`]),
/// and every request that results checked by [`check_otlp_request`]. The structured
/// request must also survive a protobuf round trip with the same report. `data` and
/// the structured request's encoding are also checked by [`check_otlp_walk`].
///
/// # Errors
/// The first property that failed.
pub fn check_otlp(data: &[u8]) -> Result<(), String> {
    check_otlp_walk(data).map_err(|e| format!("as protobuf: {e}"))?;
    if let Ok(req) = ExportMetricsServiceRequest::decode(data) {
        check_otlp_request(&req).map_err(|e| format!("as protobuf: {e}"))?;
    }
    if let Ok(req) = decode_json(data) {
        check_otlp_request(&req).map_err(|e| format!("as JSON: {e}"))?;
    }
    let req = otlp_request_from_bytes(data);
    let report = check_otlp_request(&req).map_err(|e| format!("structured: {e}"))?;
    let again = ExportMetricsServiceRequest::decode(&req.encode_to_vec()[..])
        .map_err(|e| format!("structured request does not decode: {e}"))?;
    let second = check_otlp_request(&again).map_err(|e| format!("round trip: {e}"))?;
    check_otlp_walk(&req.encode_to_vec()).map_err(|e| format!("structured: {e}"))?;
    if second != report {
        return Err(format!(
            "the round-tripped request reports {second:?}, not {report:?}"
        ));
    }
    Ok(())
}

/// A protobuf body applied by [`apply_export_protobuf`] (the borrowed walk where it
/// takes the body on) gives what decoding it with prost and calling [`apply_export`]
/// gives: the same error, or the same report, twice in a row (the second time from
/// the writer's cache), and the same flush.
///
/// # Errors
/// What differed.
pub fn check_otlp_walk(body: &[u8]) -> Result<(), String> {
    let config = || AggregatorConfig {
        max_series: 256,
        ..Default::default()
    };
    let (walked, decoded) = (
        Aggregator::starting_at(config(), 1_000_000),
        Aggregator::starting_at(config(), 1_000_000),
    );
    let (mut ww, mut dw) = (walked.writer(), decoded.writer());
    for pass in 0..2 {
        let got = apply_export_protobuf(body, &mut ww).map_err(|e| e.to_string());
        let want = ExportMetricsServiceRequest::decode(body)
            .map(|req| apply_export(&req, &mut dw))
            .map_err(|e| e.to_string());
        if got != want {
            return Err(format!(
                "pass {pass}: the walk gives {got:?}, prost decoding {want:?} (walked: {})",
                walks(body)
            ));
        }
    }
    drop((ww, dw));
    let rows = |agg: &Aggregator| {
        let mut rows: Vec<(String, String)> = agg
            .flush()
            .series
            .into_iter()
            .map(|s| (s.key.to_string(), format!("{:?}", s.value)))
            .collect();
        rows.sort();
        rows
    };
    let (got, want) = (rows(&walked), rows(&decoded));
    if got != want {
        return Err(format!("the walk flushes {got:?}, prost decoding {want:?}"));
    }
    let (got, want) = (walked.stats().rejected, decoded.stats().rejected);
    if format!("{got:?}") != format!("{want:?}") {
        return Err(format!(
            "the aggregator refused {got:?} after the walk, {want:?} after prost"
        ));
    }
    Ok(())
}

/// Applies `req` to a fresh aggregator and checks the accounting: every data point is
/// accepted or rejected (`accepted + rejected == data_points(req)`), every rejection
/// has a reason, a message exists exactly when something was refused, the
/// aggregator's own counters agree with the `aggregator` reason, and no more series
/// exist than points were recorded.
///
/// # Errors
/// What did not add up.
pub fn check_otlp_request(req: &ExportMetricsServiceRequest) -> Result<ExportReport, String> {
    let agg = small_aggregator();
    let mut w = agg.writer();
    let r = apply_export(req, &mut w);
    drop(w);
    let points = data_points(req);
    if r.accepted + r.rejected != points {
        return Err(format!(
            "{} accepted + {} rejected != {points} data points: {r:?}",
            r.accepted, r.rejected
        ));
    }
    if r.reasons.iter().sum::<u64>() != r.rejected {
        return Err(format!("reasons do not add up to rejected: {r:?}"));
    }
    if r.no_value > r.accepted {
        return Err(format!("more no-value points than accepted: {r:?}"));
    }
    if r.message().is_some() != (r.rejected > 0) {
        return Err(format!("message {:?} for {r:?}", r.message()));
    }
    let refused = aggregator_refusals(&agg);
    if refused != r.rejected_for(OtlpRejection::Aggregator) {
        return Err(format!(
            "the aggregator counted {refused} refusals, the report {r:?}"
        ));
    }
    let series = agg.flush().series.len() as u64;
    if series > r.accepted - r.no_value {
        return Err(format!("{series} series from {r:?}"));
    }
    Ok(r)
}

/// A reader of recipe bytes: each call takes the next byte, 0 once they run out (so
/// every recipe ends).
struct Recipe<'a> {
    data: &'a [u8],
    at: usize,
}

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

const OTLP_NAMES: [&str; 5] = ["requests", "http.server.duration", "temp", "9bad", ""];
const OTLP_KEYS: [&str; 5] = ["route", "service.name", "le", "a.b", ""];

fn recipe_attributes(r: &mut Recipe<'_>) -> Vec<KeyValue> {
    (0..r.below(3))
        .map(|_| {
            let key = OTLP_KEYS[usize::from(r.below(OTLP_KEYS.len() as u8))].to_owned();
            let value = match r.below(5) {
                0 => None,
                1 => Some(any_value::Value::StringValue(format!("v{}", r.below(4)))),
                2 => Some(any_value::Value::IntValue(i64::from(r.byte() as i8))),
                3 => Some(any_value::Value::BoolValue(r.byte() & 1 == 1)),
                _ => Some(any_value::Value::DoubleValue(f64::from(r.byte()) / 4.0)),
            };
            KeyValue {
                key,
                value: Some(AnyValue { value }),
                ..Default::default()
            }
        })
        .collect()
}

/// Flags: mostly none, sometimes "no recorded value", sometimes unknown bits.
fn recipe_flags(r: &mut Recipe<'_>) -> u32 {
    match r.below(8) {
        0 => 1,
        1 => 2,
        _ => 0,
    }
}

fn recipe_double(r: &mut Recipe<'_>) -> f64 {
    match r.below(8) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -1.0,
        _ => f64::from(r.byte()),
    }
}

/// A bucket count: small, near the cap, or far past it.
fn recipe_bucket_count(r: &mut Recipe<'_>) -> usize {
    match r.below(16) {
        0 => MAX_HISTOGRAM_BUCKETS,
        1 => MAX_HISTOGRAM_BUCKETS + 1,
        2 => 4 * MAX_HISTOGRAM_BUCKETS,
        n => usize::from(n % 5),
    }
}

fn recipe_number_points(r: &mut Recipe<'_>) -> Vec<NumberDataPoint> {
    (0..r.below(4))
        .map(|_| NumberDataPoint {
            attributes: recipe_attributes(r),
            time_unix_nano: u64::from(r.byte()) * 1_000_000_000,
            flags: recipe_flags(r),
            value: match r.below(4) {
                0 => None,
                1 => Some(number_data_point::Value::AsInt(i64::from(r.byte() as i8))),
                _ => Some(number_data_point::Value::AsDouble(recipe_double(r))),
            },
            ..Default::default()
        })
        .collect()
}

fn recipe_histogram_point(r: &mut Recipe<'_>) -> HistogramDataPoint {
    let n = recipe_bucket_count(r);
    let counts: Vec<u64> = (0..=n)
        .map(|i| u64::from(r.byte() % 3) + (i as u64 % 2))
        .collect();
    let total: u64 = counts.iter().sum();
    let decreasing = r.below(8) == 0;
    HistogramDataPoint {
        attributes: recipe_attributes(r),
        flags: recipe_flags(r),
        count: total + u64::from(r.below(8) == 0),
        sum: (r.byte() & 1 == 1).then(|| f64::from(r.byte())),
        bucket_counts: if r.below(8) == 0 { Vec::new() } else { counts },
        explicit_bounds: (0..n)
            .map(|i| if decreasing { -(i as f64) } else { i as f64 })
            .collect(),
        ..Default::default()
    }
}

fn recipe_exponential_point(r: &mut Recipe<'_>) -> ExponentialHistogramDataPoint {
    let n = recipe_bucket_count(r);
    let positive: Vec<u64> = (0..n).map(|_| u64::from(r.byte() % 3)).collect();
    let zero_count = u64::from(r.below(3));
    ExponentialHistogramDataPoint {
        attributes: recipe_attributes(r),
        flags: recipe_flags(r),
        count: positive.iter().sum::<u64>() + zero_count,
        scale: i32::from(r.byte() as i8) % 24,
        zero_count,
        positive: Some(Buckets {
            offset: i32::from(r.byte() as i8),
            bucket_counts: positive,
        }),
        ..Default::default()
    }
}

fn recipe_metric(r: &mut Recipe<'_>) -> Metric {
    let name = OTLP_NAMES[usize::from(r.below(OTLP_NAMES.len() as u8))].to_owned();
    // 0, 1 and 2 are OTLP's temporalities (0 unspecified); 7 is unknown.
    let temporality = [1, 2, 1, 2, 0, 7][usize::from(r.below(6))];
    let data = match r.below(7) {
        0 => None,
        1 => Some(Data::Gauge(Gauge {
            data_points: recipe_number_points(r),
        })),
        2 | 3 => Some(Data::Sum(Sum {
            data_points: recipe_number_points(r),
            aggregation_temporality: temporality,
            is_monotonic: r.byte() & 1 == 1,
        })),
        4 => Some(Data::Histogram(Histogram {
            data_points: (0..r.below(3)).map(|_| recipe_histogram_point(r)).collect(),
            aggregation_temporality: temporality,
        })),
        5 => Some(Data::ExponentialHistogram(ExponentialHistogram {
            data_points: (0..r.below(3))
                .map(|_| recipe_exponential_point(r))
                .collect(),
            aggregation_temporality: temporality,
        })),
        _ => Some(Data::Summary(Summary {
            data_points: (0..r.below(3))
                .map(|_| SummaryDataPoint {
                    attributes: recipe_attributes(r),
                    flags: recipe_flags(r),
                    count: u64::from(r.byte()),
                    sum: recipe_double(r),
                    quantile_values: (0..r.below(3))
                        .map(|_| ValueAtQuantile {
                            quantile: f64::from(r.below(6)) / 4.0,
                            value: recipe_double(r),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    Metric {
        name,
        data,
        ..Default::default()
    }
}

/// A structured OTLP request built from `data` as a recipe: every kind of metric, and
/// the edge cases of each (no data, empty point lists, unspecified and unknown
/// temporalities, missing values, the "no recorded value" flag, inconsistent and
/// oversized histograms, NaN and infinite values, invalid names). Deterministic; at
/// most a few dozen metrics.
pub fn otlp_request_from_bytes(data: &[u8]) -> ExportMetricsServiceRequest {
    let mut r = Recipe { data, at: 0 };
    let mut resource_metrics = Vec::new();
    while !r.done() && resource_metrics.len() < 4 {
        let resource = Resource {
            attributes: recipe_attributes(&mut r),
            ..Default::default()
        };
        let scope_metrics = (0..r.below(3))
            .map(|_| ScopeMetrics {
                metrics: (0..r.below(6)).map(|_| recipe_metric(&mut r)).collect(),
                ..Default::default()
            })
            .collect();
        resource_metrics.push(ResourceMetrics {
            resource: (r.below(4) != 0).then_some(resource),
            scope_metrics,
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest { resource_metrics }
}

// ---------------------------------------------------------------------------------
// Exposition

/// The `exposition`, `openmetrics` and `exposition_proto` targets: the parser for
/// `format` never panics; it counts every sample it emits; everything it emits is
/// taken or refused with a reason by the aggregator (whose own counters agree); and
/// its report adds up: for the text formats, samples and skipped lines together are
/// at most the body's non-blank lines (plus one for a missing `# EOF`), since each
/// line yields at most one of them (a histogram or summary group, of at least one
/// line, yields one); for protobuf, a body without errors yields exactly what prost's
/// own delimited decoding says it holds, and the borrowed walk of counter, gauge and
/// untyped families emits exactly what decoding them with prost does. Parsing twice
/// gives the same report, and equal sample identities carry equal names and labels.
///
/// # Errors
/// The first property that failed.
pub fn check_exposition(format: Format, data: &[u8]) -> Result<(), String> {
    let agg = small_aggregator();
    let mut w = agg.writer();
    let (mut emitted, mut taken, mut refused) = (0u64, 0u64, 0u64);
    let r = format.parse(data, &mut |n, l, s, ts, start| {
        emitted += 1;
        match w.record_since(n, l, s, ts, start) {
            Ok(()) => taken += 1,
            Err(_) => refused += 1,
        }
    });
    drop(w);
    if r.samples != emitted {
        return Err(format!("{emitted} emitted, report says {r:?}"));
    }
    let counted = aggregator_refusals(&agg);
    if counted != refused {
        return Err(format!(
            "{refused} refused, the aggregator counted {counted}"
        ));
    }
    let series = agg.flush().series.len() as u64;
    if series > taken {
        return Err(format!("{series} series from {taken} samples taken"));
    }
    let again = format.parse(data, &mut |_, _, _, _, _| {});
    if again != r {
        return Err(format!("a second parse reports {again:?}, the first {r:?}"));
    }
    check_identities(format, data)?;
    match format {
        Format::Text | Format::OpenMetrics => text_report_adds_up(data, &r),
        Format::Protobuf => {
            walk_matches_prost(data)?;
            protobuf_report_matches_prost(data, &r)
        }
    }
}

/// Equal identities from [`Format::parse_identified`] come with equal names and
/// label sets (what a scraper's cache lookup by identity relies on).
fn check_identities(format: Format, data: &[u8]) -> Result<(), String> {
    type Owned = (String, Vec<(String, String)>);
    let mut seen: std::collections::HashMap<Vec<u8>, Owned> = Default::default();
    let mut err = None;
    format.parse_identified(data, &mut |id, name, labels, _, _, _| {
        let Some(id) = id else { return };
        let owned: Owned = (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let first = seen.entry(id.to_vec()).or_insert_with(|| owned.clone());
        if *first != owned && err.is_none() {
            err = Some(format!("identity {id:x?} is both {first:?} and {owned:?}"));
        }
    });
    err.map_or(Ok(()), Err)
}

/// The protobuf parser (whose counter, gauge and untyped families take the borrowed
/// walk) emits exactly what decoding every message with prost emits, with the same
/// report.
fn walk_matches_prost(data: &[u8]) -> Result<(), String> {
    type Owned = Vec<(String, Vec<(String, String)>, String, i64, i64)>;
    let run = |parse: fn(&[u8], &mut crate::parse::exposition::Emit<'_>) -> ParseReport| {
        let mut got: Owned = Vec::new();
        let r = parse(data, &mut |n, l, s, ts, start| {
            got.push((
                n.to_owned(),
                l.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                format!("{s:?}"),
                ts,
                start,
            ))
        });
        (got, r)
    };
    let walked = run(crate::parse::exposition::parse_protobuf);
    let decoded = run(crate::parse::exposition::parse_protobuf_decoded);
    if walked != decoded {
        return Err(format!(
            "the borrowed walk gives {walked:?}, prost decoding {decoded:?}"
        ));
    }
    Ok(())
}

fn text_report_adds_up(data: &[u8], r: &ParseReport) -> Result<(), String> {
    // ASCII whitespace is whitespace to the parser too, so a line blank here is blank
    // there (the parser may skip more, which only loosens the bound).
    let lines = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .count() as u64;
    if r.samples + r.total_errors() > lines + 1 {
        return Err(format!(
            "{} samples + {} errors from {lines} lines: {r:?}",
            r.samples,
            r.total_errors()
        ));
    }
    Ok(())
}

fn protobuf_report_matches_prost(data: &[u8], r: &ParseReport) -> Result<(), String> {
    if r.total_errors() != 0 {
        return Ok(());
    }
    let mut rest = data;
    let mut want = 0u64;
    while !rest.is_empty() {
        let f = MetricFamily::decode_length_delimited(&mut rest)
            .map_err(|e| format!("no error reported, yet prost fails: {e}"))?;
        for m in &f.metric {
            want += match f.r#type.unwrap_or(0) {
                t if t == MetricType::GaugeHistogram as i32 => {
                    let h = m
                        .histogram
                        .as_ref()
                        .ok_or("no error reported for a gauge histogram without one")?;
                    let inf = h
                        .bucket
                        .iter()
                        .any(|b| b.upper_bound == Some(f64::INFINITY));
                    h.bucket.len() as u64 + u64::from(!inf) + 2
                }
                _ => 1,
            };
        }
    }
    if r.samples != want {
        return Err(format!("{} samples, prost says {want}", r.samples));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// StatsD

/// The `statsd` target: every non-empty line is applied or counted as exactly one
/// parse error, and every value of every applied line (a set line counts once) is
/// taken or refused by the aggregator: `samples + rejected` is exactly that count.
///
/// # Errors
/// What did not add up.
pub fn check_statsd(data: &[u8]) -> Result<(), String> {
    let agg = small_aggregator();
    let mut w = agg.writer();
    let r = Decoder::default().ingest(data, &mut w);
    drop(w);
    let errors: u64 = r.parse_errors.iter().sum();
    let all = lines(data).count() as u64;
    if r.lines + errors != all {
        return Err(format!("{} lines + {errors} errors != {all}", r.lines));
    }
    let values: u64 = lines(data)
        .filter_map(|l| parse_line(l).ok())
        .map(|l| {
            if l.kind == StatsdType::Set {
                1
            } else {
                l.values().count() as u64
            }
        })
        .sum();
    if r.samples + r.rejected != values {
        return Err(format!(
            "{} samples + {} rejected != {values} values: {r:?}",
            r.samples, r.rejected
        ));
    }
    let counted = aggregator_refusals(&agg);
    if counted != r.rejected {
        return Err(format!(
            "{} rejected, the aggregator counted {counted}",
            r.rejected
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Series keys

/// The `series_key` target: `data` as UTF-8 text, fields separated by `\n` (the name,
/// then alternating label names and values). `SeriesKey::new` gives a clear error or
/// a key whose name and sorted labels read back exactly, and which the sorted labels
/// build again.
///
/// # Errors
/// What did not read back.
pub fn check_series_key(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let mut parts = text.split('\n');
    let name = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let labels: Vec<(&str, &str)> = rest.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    match SeriesKey::new(name, &labels) {
        Ok(key) => {
            if key.name() != name {
                return Err(format!("name {:?} read back as {:?}", name, key.name()));
            }
            let mut want = labels.clone();
            want.sort();
            let got: Vec<(&str, &str)> = key.labels().collect();
            if got != want {
                return Err(format!("labels {want:?} read back as {got:?}"));
            }
            if SeriesKey::new(name, &want).as_ref() != Ok(&key) {
                return Err("the sorted labels make another key".to_owned());
            }
            Ok(())
        }
        Err(e) if e.to_string().is_empty() => Err("an error without a message".to_owned()),
        Err(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// WAL

fn read_all(wal: &Wal, from: WalPosition) -> Result<Vec<WalRecord>, String> {
    let mut out = Vec::new();
    let mut at = from;
    // Every record takes at least 8 bytes of a small input: this bound is never hit.
    for _ in 0..100_000 {
        match wal.read(at).map_err(|e| format!("read at {at:?}: {e}"))? {
            Some(r) => {
                if !(r.position >= at && r.next > r.position) {
                    return Err(format!("read at {at:?} went backwards: {r:?}"));
                }
                at = r.next;
                out.push(r);
            }
            None => return Ok(out),
        }
    }
    Err("read did not reach the head".to_owned())
}

/// The `wal` target: arbitrary bytes as one or two WAL segment files (optionally
/// behind a valid header) and an optional ack file in a fresh directory. Opening and
/// reading never panic; what is read matches the stats; kept + cut bytes add up; and
/// the recovered WAL takes an append that survives a reopen.
///
/// Input layout: flags (bit 0: a second segment, bit 1: an ack file, bit 2: prepend
/// valid segment headers), then the first and second segment bodies' lengths (u16 LE
/// each), the bodies, and the rest as the ack file.
///
/// # Errors
/// What did not add up (or the temporary directory could not be written).
pub fn check_wal(data: &[u8]) -> Result<(), String> {
    let Some((&flags, rest)) = data.split_first() else {
        return Ok(());
    };
    let take_len = |rest: &[u8]| -> usize {
        rest.get(..2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let len1 = take_len(rest);
    let rest = rest.get(2..).unwrap_or_default();
    let len2 = take_len(rest);
    let rest = rest.get(2..).unwrap_or_default();
    let (body1, rest) = rest.split_at(len1.min(rest.len()));
    let (body2, ack) = rest.split_at(len2.min(rest.len()));

    // In /dev/shm when there is one: recovery fsyncs.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let dir = TempDir::new_in(&base, "wal-check").map_err(|e| format!("temp dir: {e}"))?;
    let segments: &[(u64, &[u8])] = if flags & 1 != 0 {
        &[(1, body1), (2, body2)]
    } else {
        &[(1, body1)]
    };
    let mut original = 0u64;
    for &(id, body) in segments {
        let mut bytes = Vec::new();
        if flags & 4 != 0 {
            bytes.extend_from_slice(b"WEIRWAL\0");
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&0i64.to_le_bytes());
        }
        bytes.extend_from_slice(body);
        original += bytes.len() as u64;
        fs::write(dir.join(format!("{id:020}.wal")), &bytes)
            .map_err(|e| format!("write segment: {e}"))?;
    }
    if flags & 2 != 0 {
        fs::write(dir.join("ack"), ack).map_err(|e| format!("write ack: {e}"))?;
    }

    // An error (another format version) is a valid answer; a panic is not.
    let Ok(mut wal) = Wal::open(dir.path(), WalConfig::default()) else {
        return Ok(());
    };
    let s = wal.stats();
    // Kept + cut off adds up to what was there, plus a fresh header when nothing was
    // left. Without an ack file, the only other deletion is of an empty first segment
    // (trivially fully acknowledged); with one, acknowledged segments go too.
    if s.bytes + s.truncated_bytes > original + HEADER_BYTES {
        return Err(format!(
            "more kept and cut than was there: {s:?}, {original}"
        ));
    }
    if flags & 2 == 0 && s.bytes + s.truncated_bytes + HEADER_BYTES < original {
        return Err(format!("bytes lost without an ack: {s:?}, {original}"));
    }
    let records = read_all(&wal, wal.acked())?;
    if records.len() as u64 != s.unacked_records {
        return Err(format!("{} records read, stats {s:?}", records.len()));
    }
    let payload: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
    if payload != s.unacked_bytes {
        return Err(format!("{payload} payload bytes read, stats {s:?}"));
    }
    if wal.read(wal.head()).map_err(|e| e.to_string())?.is_some() {
        return Err("a record past the head".to_owned());
    }
    let at = wal.append(b"probe").map_err(|e| format!("append: {e}"))?;
    drop(wal);
    let wal = Wal::open(dir.path(), WalConfig::default()).map_err(|e| format!("reopen: {e}"))?;
    if wal.stats().corrupt_tails != 0 {
        return Err(format!("corrupt tail after reopen: {:?}", wal.stats()));
    }
    let again = read_all(&wal, wal.acked())?;
    if again.len() != records.len() + 1 {
        return Err(format!(
            "{} records after the append, {} before",
            again.len(),
            records.len()
        ));
    }
    match again.last() {
        Some(last) if last.position == at && last.payload == b"probe" => Ok(()),
        other => Err(format!("the appended record reads back as {other:?}")),
    }
}
