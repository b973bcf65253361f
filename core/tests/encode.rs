//! The forwarding encoders through their public API: exact output for every kind,
//! external labels, filtering, escaping, eviction and splitting. Remote write and OTLP
//! bodies are decoded with the `weir_proto` types; OTLP also round-trips through
//! `weir_core::parse::otlp::apply_export`.

mod encode_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use weir_core::encode::{EncodeOptions, EncodedRequest, NameFilter, influx, otlp, remote_write};
use weir_core::point::{HistogramValue, Quantile, SummaryValue};
use weir_core::{
    Aggregator, AggregatorConfig, FlushBatch, FlushedSeries, FlushedValue, Sample, SeriesKey,
    Temporality,
};
use weir_proto::Message;
use weir_proto::common::any_value;
use weir_proto::metrics::{AggregationTemporality, metric::Data, number_data_point};
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::prometheus::WriteRequest;

const START: i64 = 10_000;
const END: i64 = 20_000;

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(name, labels).unwrap()
}

/// An entry, and whether it is an evicted series' final share.
fn entry(key: SeriesKey, value: FlushedValue, evicted: bool) -> (FlushedSeries, bool) {
    let s = FlushedSeries {
        key,
        start_ms: 1_000,
        value,
    };
    (s, evicted)
}

fn counter(delta: f64, total: f64) -> FlushedValue {
    FlushedValue::Counter { delta, total }
}

fn gauge(value: f64) -> FlushedValue {
    FlushedValue::Gauge {
        value,
        timestamp_ms: 15_000,
    }
}

fn hist(bounds: &[f64], counts: &[u64], sum: f64, min: f64, max: f64) -> Box<HistogramValue> {
    Box::new(HistogramValue {
        bounds: Arc::from(bounds),
        counts: counts.to_vec(),
        sum,
        count: counts.iter().sum(),
        min,
        max,
    })
}

fn summary(quantiles: &[(f64, f64)], sum: f64, count: u64) -> FlushedValue {
    FlushedValue::Summary(Box::new(SummaryValue {
        quantiles: quantiles
            .iter()
            .map(|&(quantile, value)| Quantile { quantile, value })
            .collect(),
        sum,
        count,
    }))
}

/// A batch of `entries`, the evicted ones moved to the end as a flush places them.
fn batch(entries: Vec<(FlushedSeries, bool)>) -> FlushBatch {
    let (evicted, live): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.1);
    let count = evicted.len();
    FlushBatch {
        sequence: 7,
        start_ms: START,
        end_ms: END,
        series: live.into_iter().chain(evicted).map(|e| e.0).collect(),
        evicted: count,
    }
}

fn external(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Every kind once, plus a counter evicted and created again within the interval.
fn every_kind() -> FlushBatch {
    let req = key("req_total", &[("path", "/a"), ("code", "200")]);
    batch(vec![
        entry(req.clone(), counter(2.0, 10.0), false),
        entry(key("temp", &[]), gauge(21.5), false),
        entry(
            key("lat", &[("svc", "api")]),
            FlushedValue::Histogram {
                delta: hist(&[0.1, 1.0], &[1, 0, 1], 2.05, 0.05, 2.0),
                total: hist(&[0.1, 1.0], &[1, 2, 3], 7.5, 0.05, 4.0),
            },
            false,
        ),
        entry(
            key("rpc", &[("m", "get")]),
            summary(&[(0.5, 1.0), (0.99, 3.0)], 10.0, 4),
            false,
        ),
        entry(req, counter(1.0, 5.0), true),
    ])
}

// ---------------------------------------------------------------- remote write

type RwSample = (Vec<(String, String)>, f64, i64);

fn rw_decode(reqs: &[EncodedRequest]) -> Vec<Vec<RwSample>> {
    reqs.iter()
        .map(|r| {
            let raw = snap::raw::Decoder::new()
                .decompress_vec(&r.body)
                .expect("snappy block");
            let wr = WriteRequest::decode(&raw[..]).expect("WriteRequest");
            assert_eq!(
                r.points,
                wr.timeseries.len() as u64,
                "points of one request"
            );
            wr.timeseries
                .into_iter()
                .map(|ts| {
                    assert_eq!(ts.samples.len(), 1);
                    let labels = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
                    (labels, ts.samples[0].value, ts.samples[0].timestamp)
                })
                .collect()
        })
        .collect()
}

fn rw(pairs: &[(&str, &str)], v: f64, ts: i64) -> RwSample {
    (external(pairs), v, ts)
}

#[test]
fn remote_write_encodes_every_kind_with_external_labels() {
    let opts = EncodeOptions {
        external_labels: external(&[("dc", "eu"), ("path", "ext")]),
        ..EncodeOptions::default()
    };
    let reqs = remote_write::encode(&every_kind(), &opts);
    assert_eq!(reqs.len(), 1);
    let got = rw_decode(&reqs).remove(0);
    let want = vec![
        rw(
            &[
                ("__name__", "req_total"),
                ("code", "200"),
                ("dc", "eu"),
                ("path", "/a"),
            ],
            10.0,
            END,
        ),
        rw(
            &[("__name__", "temp"), ("dc", "eu"), ("path", "ext")],
            21.5,
            END,
        ),
        rw(
            &[
                ("__name__", "lat_bucket"),
                ("dc", "eu"),
                ("le", "0.1"),
                ("path", "ext"),
                ("svc", "api"),
            ],
            1.0,
            END,
        ),
        rw(
            &[
                ("__name__", "lat_bucket"),
                ("dc", "eu"),
                ("le", "1"),
                ("path", "ext"),
                ("svc", "api"),
            ],
            3.0,
            END,
        ),
        rw(
            &[
                ("__name__", "lat_bucket"),
                ("dc", "eu"),
                ("le", "+Inf"),
                ("path", "ext"),
                ("svc", "api"),
            ],
            6.0,
            END,
        ),
        rw(
            &[
                ("__name__", "lat_sum"),
                ("dc", "eu"),
                ("path", "ext"),
                ("svc", "api"),
            ],
            7.5,
            END,
        ),
        rw(
            &[
                ("__name__", "lat_count"),
                ("dc", "eu"),
                ("path", "ext"),
                ("svc", "api"),
            ],
            6.0,
            END,
        ),
        rw(
            &[
                ("__name__", "rpc"),
                ("dc", "eu"),
                ("m", "get"),
                ("path", "ext"),
                ("quantile", "0.5"),
            ],
            1.0,
            END,
        ),
        rw(
            &[
                ("__name__", "rpc"),
                ("dc", "eu"),
                ("m", "get"),
                ("path", "ext"),
                ("quantile", "0.99"),
            ],
            3.0,
            END,
        ),
        rw(
            &[
                ("__name__", "rpc_sum"),
                ("dc", "eu"),
                ("m", "get"),
                ("path", "ext"),
            ],
            10.0,
            END,
        ),
        rw(
            &[
                ("__name__", "rpc_count"),
                ("dc", "eu"),
                ("m", "get"),
                ("path", "ext"),
            ],
            4.0,
            END,
        ),
        // The evicted entry: its own, earlier timestamp.
        rw(
            &[
                ("__name__", "req_total"),
                ("code", "200"),
                ("dc", "eu"),
                ("path", "/a"),
            ],
            5.0,
            END - 1,
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(reqs[0].points, 12);
}

#[test]
fn remote_write_labels_are_in_byte_order_without_empty_values() {
    let b = batch(vec![
        entry(
            key("m", &[("Zone", "z"), ("a", ""), ("b", "1"), ("__x", "2")]),
            gauge(1.0),
            false,
        ),
        // A series label named `le` gives way to the bucket's.
        entry(
            key("h", &[("le", "mine")]),
            FlushedValue::Histogram {
                delta: hist(&[], &[1], 1.0, 1.0, 1.0),
                total: hist(&[], &[1], 1.0, 1.0, 1.0),
            },
            false,
        ),
    ]);
    // Unsorted external labels with a duplicate are sorted (first of a name kept).
    let opts = EncodeOptions {
        external_labels: external(&[("c", "3"), ("a", "ext"), ("c", "dup"), ("e", "")]),
        ..EncodeOptions::default()
    };
    let got = rw_decode(&remote_write::encode(&b, &opts)).remove(0);
    let names = |i: usize| -> Vec<&str> { got[i].0.iter().map(|(k, _)| k.as_str()).collect() };
    assert_eq!(names(0), ["Zone", "__name__", "__x", "a", "b", "c"]);
    assert_eq!(got[0].0[3], ("a".to_owned(), "ext".to_owned()));
    assert_eq!(got[0].0[5], ("c".to_owned(), "3".to_owned()));
    assert_eq!(
        got[1].0,
        external(&[
            ("__name__", "h_bucket"),
            ("a", "ext"),
            ("c", "3"),
            ("le", "+Inf")
        ])
    );
    for (labels, _, _) in &got {
        assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "{labels:?}");
    }
}

#[test]
fn remote_write_nan_is_never_a_staleness_marker() {
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let b = batch(vec![
        entry(key("a", &[]), gauge(stale), false),
        entry(key("b", &[]), gauge(f64::NAN), false),
        entry(key("c", &[]), gauge(f64::INFINITY), false),
    ]);
    let got = rw_decode(&remote_write::encode(&b, &EncodeOptions::default())).remove(0);
    assert_eq!(got[0].1.to_bits(), remote_write::NORMAL_NAN_BITS);
    assert_eq!(got[1].1.to_bits(), remote_write::NORMAL_NAN_BITS);
    assert_eq!(got[2].1, f64::INFINITY);
}

#[test]
fn remote_write_filters_on_the_base_name() {
    let opts = EncodeOptions {
        filter: NameFilter::new(&strings(&["lat", "re?_*"]), &strings(&["*_total"])).unwrap(),
        ..EncodeOptions::default()
    };
    let got = rw_decode(&remote_write::encode(&every_kind(), &opts)).remove(0);
    let names: Vec<&str> = got.iter().map(|s| s.0[0].1.as_str()).collect();
    assert_eq!(
        names,
        [
            "lat_bucket",
            "lat_bucket",
            "lat_bucket",
            "lat_sum",
            "lat_count"
        ]
    );
    let none = EncodeOptions {
        filter: NameFilter::new(&strings(&["nothing*"]), &[]).unwrap(),
        ..EncodeOptions::default()
    };
    assert!(remote_write::encode(&every_kind(), &none).is_empty());
    assert!(influx::encode(&every_kind(), &none).is_empty());
    assert!(otlp::encode(&every_kind(), &none).is_empty());
    assert!(remote_write::encode(&batch(vec![]), &EncodeOptions::default()).is_empty());
}

/// Many series of varied sizes, one of them far bigger than the limit.
fn big_batch(huge: bool) -> FlushBatch {
    let mut series = Vec::new();
    for i in 0..600u32 {
        let id = format!("host-{i:04}-{}", "x".repeat((i % 37) as usize));
        let value = match i % 10 {
            0 => FlushedValue::Histogram {
                delta: hist(&[0.5, 1.0, 5.0], &[1, 1, 0, 0], 1.2, 0.1, 0.9),
                total: hist(&[0.5, 1.0, 5.0], &[i as u64, 2, 3, 4], 99.0, 0.1, 9.0),
            },
            1 => summary(&[(0.5, 1.0), (0.9, 2.0)], 3.0, 4),
            2 => gauge(f64::from(i)),
            _ => counter(1.0, f64::from(i)),
        };
        series.push(entry(
            key(&format!("m{}", i % 7), &[("id", &id)]),
            value,
            i % 50 == 49,
        ));
    }
    if huge {
        let v = "y".repeat(5_000);
        series.insert(
            300,
            entry(key("huge", &[("v", &v)]), counter(1.0, 1.0), false),
        );
    }
    batch(series)
}

/// Samples per `id` label value.
fn per_id(samples: &[RwSample]) -> BTreeMap<&str, usize> {
    let mut n = BTreeMap::new();
    for (labels, _, _) in samples {
        if let Some((_, id)) = labels.iter().find(|(k, _)| k == "id") {
            *n.entry(id.as_str()).or_default() += 1;
        }
    }
    n
}

fn sorted<T: PartialOrd + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

#[test]
fn remote_write_splits_under_the_limit_keeping_histograms_together() {
    let b = big_batch(true);
    let whole = rw_decode(&remote_write::encode(&b, &EncodeOptions::default()));
    assert_eq!(whole.len(), 1);
    let limit = 2_000;
    let opts = EncodeOptions {
        max_request_bytes: limit,
        ..EncodeOptions::default()
    };
    let reqs = remote_write::encode(&b, &opts);
    assert!(reqs.len() > 10, "{} requests", reqs.len());
    let parts = rw_decode(&reqs);
    for (r, part) in reqs.iter().zip(&parts) {
        let raw_len = snap::raw::Decoder::new()
            .decompress_vec(&r.body)
            .unwrap()
            .len();
        let is_huge = part.iter().any(|s| s.0[0].1 == "huge");
        if is_huge {
            assert_eq!(part.len(), 1, "the huge series goes alone");
            assert!(raw_len > limit);
        } else {
            assert!(raw_len <= limit, "{raw_len} > {limit}");
        }
        // A series' samples (a histogram's 4 buckets + sum + count, a summary's
        // quantiles + sum + count) all sit in one request.
        for (id, n) in per_id(part) {
            assert_eq!(n, per_id(&whole[0])[id], "{id}");
        }
    }
    let union: Vec<RwSample> = parts.concat();
    assert_eq!(sorted(&union), sorted(&whole[0]));
    let points: u64 = reqs.iter().map(|r| r.points).sum();
    assert_eq!(points, whole[0].len() as u64);
    // 60 histograms × 6 + 60 summaries × 4 + 60 gauges + 420 counters + the huge one.
    assert_eq!(points, 360 + 240 + 60 + 420 + 1);
}

// ---------------------------------------------------------------- influx

fn influx_text(reqs: &[EncodedRequest]) -> Vec<String> {
    reqs.iter()
        .map(|r| String::from_utf8(r.body.clone()).expect("utf-8"))
        .collect()
}

#[test]
fn influx_writes_every_kind_cumulative() {
    let opts = EncodeOptions {
        external_labels: external(&[("dc", "eu"), ("path", "ext")]),
        ..EncodeOptions::default()
    };
    let reqs = influx::encode(&every_kind(), &opts);
    assert_eq!(reqs.len(), 1);
    let text = influx_text(&reqs).remove(0);
    let want = "\
req_total,code=200,dc=eu,path=/a value=10 20000
temp,dc=eu,path=ext value=21.5 20000
lat,dc=eu,path=ext,svc=api count=6,sum=7.5,min=0.05,max=4,0.1=1,1=3,+Inf=6 20000
rpc,dc=eu,m=get,path=ext count=4,sum=10,0.5=1,0.99=3 20000
req_total,code=200,dc=eu,path=/a value=5 19999
";
    assert_eq!(text, want);
    assert_eq!(reqs[0].points, 1 + 1 + 7 + 4 + 1);
}

#[test]
fn influx_writes_deltas_when_asked() {
    let opts = EncodeOptions {
        temporality: Temporality::Delta,
        ..EncodeOptions::default()
    };
    let text = influx_text(&influx::encode(&every_kind(), &opts)).remove(0);
    let want = "\
req_total,code=200,path=/a value=2 20000
temp value=21.5 20000
lat,svc=api count=2,sum=2.05,min=0.05,max=2,0.1=1,1=1,+Inf=2 20000
rpc,m=get count=4,sum=10,0.5=1,0.99=3 20000
req_total,code=200,path=/a value=1 19999
";
    assert_eq!(text, want);
}

#[test]
fn influx_escapes_tag_values_and_omits_empty_ones() {
    let cases: &[(&str, &str)] = &[
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        (r"C:\dir\", r"C:\dir"),
        (r"a\ b", r"a\\\ b"),
        (r#"say "hi""#, r#"say\ "hi""#),
        ("it's", "it's"),
        ("two\nlines", r"two\nlines"),
        ("ü ö", r"ü\ ö"),
    ];
    for &(value, escaped) in cases {
        let b = batch(vec![entry(
            key("m", &[("empty", ""), ("t", value)]),
            counter(1.0, 1.0),
            false,
        )]);
        let opts = EncodeOptions {
            external_labels: external(&[("e", "")]),
            ..EncodeOptions::default()
        };
        let text = influx_text(&influx::encode(&b, &opts)).remove(0);
        assert_eq!(text, format!("m,t={escaped} value=1 20000\n"), "{value:?}");
        assert_eq!(text.lines().count(), 1);
    }
    // A value of only backslashes is empty once they go: the tag is left out.
    let b = batch(vec![entry(
        key("m", &[("t", r"\\")]),
        counter(1.0, 1.0),
        false,
    )]);
    let text = influx_text(&influx::encode(&b, &EncodeOptions::default())).remove(0);
    assert_eq!(text, "m value=1 20000\n");
}

#[test]
fn influx_drops_non_finite_fields_and_empty_lines() {
    let b = batch(vec![
        entry(key("nan", &[]), gauge(f64::NAN), false),
        entry(
            key("inf", &[]),
            counter(f64::INFINITY, f64::NEG_INFINITY),
            false,
        ),
        entry(
            key("h", &[]),
            FlushedValue::Histogram {
                delta: hist(&[1.0], &[0, 0], 0.0, f64::INFINITY, f64::NEG_INFINITY),
                total: hist(&[1.0], &[1, 1], f64::NAN, f64::INFINITY, 3.0),
            },
            false,
        ),
        entry(
            key("s", &[]),
            summary(&[(0.5, f64::NAN), (0.9, 2.0)], 1.0, 1),
            false,
        ),
        entry(key("ok", &[]), gauge(-0.5), false),
    ]);
    let reqs = influx::encode(&b, &EncodeOptions::default());
    let text = influx_text(&reqs).remove(0);
    let want = "\
h count=2,max=3,1=1,+Inf=2 20000
s count=1,sum=1,0.9=2 20000
ok value=-0.5 20000
";
    assert_eq!(text, want);
    assert_eq!(reqs[0].points, 4 + 3 + 1);
    // No observations: no min/max fields at all.
    let delta = EncodeOptions {
        temporality: Temporality::Delta,
        ..EncodeOptions::default()
    };
    let text = influx_text(&influx::encode(&b, &delta)).remove(0);
    assert!(
        text.starts_with("h count=0,sum=0,1=0,+Inf=0 20000\n"),
        "{text}"
    );
}

#[test]
fn influx_splits_on_line_boundaries() {
    let b = big_batch(true);
    let whole = influx_text(&influx::encode(&b, &EncodeOptions::default())).remove(0);
    let limit = 1_500;
    let reqs = influx::encode(
        &b,
        &EncodeOptions {
            max_request_bytes: limit,
            ..EncodeOptions::default()
        },
    );
    assert!(reqs.len() > 10);
    let texts = influx_text(&reqs);
    for (r, t) in reqs.iter().zip(&texts) {
        assert!(t.ends_with('\n'));
        if t.starts_with("huge,") {
            assert_eq!(t.lines().count(), 1);
        } else {
            assert!(t.len() <= limit, "{} > {limit}", t.len());
        }
        let fields: usize = t
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().split(',').count())
            .sum();
        assert_eq!(r.points, fields as u64);
    }
    assert_eq!(texts.concat(), whole);
}

// ---------------------------------------------------------------- OTLP

fn otlp_decode(reqs: &[EncodedRequest]) -> Vec<ExportMetricsServiceRequest> {
    reqs.iter()
        .map(|r| ExportMetricsServiceRequest::decode(&r.body[..]).expect("OTLP request"))
        .collect()
}

fn attr_str(v: &Option<weir_proto::common::AnyValue>) -> &str {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[test]
fn otlp_bytes_equal_prost_encoding_of_the_same_messages() {
    for temporality in [Temporality::Delta, Temporality::Cumulative] {
        for b in [every_kind(), aggregated(), big_batch(true)] {
            let opts = EncodeOptions {
                external_labels: external(&[("dc", "eu"), ("empty", "")]),
                temporality,
                max_request_bytes: usize::MAX,
                ..EncodeOptions::default()
            };
            let reqs = otlp::encode(&b, &opts);
            assert_eq!(reqs.len(), 1);
            let want = encode_support::otlp_reference(&b, &opts)
                .unwrap()
                .encode_to_vec();
            assert_eq!(reqs[0].body, want);
        }
    }
}

#[test]
fn otlp_fields_are_exact() {
    let opts = EncodeOptions {
        external_labels: external(&[("dc", "eu"), ("env", "prod")]),
        temporality: Temporality::Delta,
        ..EncodeOptions::default()
    };
    let reqs = otlp::encode(&every_kind(), &opts);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].points, 5);
    let req = otlp_decode(&reqs).remove(0);
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let res: Vec<(&str, &str)> = rm
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), attr_str(&kv.value)))
        .collect();
    assert_eq!(res, [("dc", "eu"), ("env", "prod")]);
    assert_eq!(rm.scope_metrics.len(), 1);
    let scope = rm.scope_metrics[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "weir");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    let metrics = &rm.scope_metrics[0].metrics;
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["lat", "req_total", "rpc", "temp"]);
    let ms = 1_000_000u64;
    let delta = AggregationTemporality::Delta as i32;

    let Some(Data::Histogram(h)) = &metrics[0].data else {
        panic!("{:?}", metrics[0].data)
    };
    assert_eq!(h.aggregation_temporality, delta);
    let p = &h.data_points[0];
    assert_eq!(
        (p.start_time_unix_nano, p.time_unix_nano),
        (START as u64 * ms, END as u64 * ms)
    );
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (2, Some(2.05), Some(0.05), Some(2.0))
    );
    assert_eq!(
        (p.bucket_counts.clone(), p.explicit_bounds.clone()),
        (vec![1, 0, 1], vec![0.1, 1.0])
    );
    assert_eq!(p.attributes[0].key, "svc");
    assert_eq!(attr_str(&p.attributes[0].value), "api");

    let Some(Data::Sum(s)) = &metrics[1].data else {
        panic!()
    };
    assert!(s.is_monotonic);
    assert_eq!(s.aggregation_temporality, delta);
    assert_eq!(
        s.data_points.len(),
        2,
        "live and evicted entries in one metric"
    );
    let value = |p: &weir_proto::metrics::NumberDataPoint| match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(value(&s.data_points[0]), 2.0);
    assert_eq!(s.data_points[0].time_unix_nano, END as u64 * ms);
    assert_eq!(value(&s.data_points[1]), 1.0);
    assert_eq!(s.data_points[1].time_unix_nano, (END - 1) as u64 * ms);
    let keys: Vec<&str> = s.data_points[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(keys, ["code", "path"]);

    let Some(Data::Summary(sm)) = &metrics[2].data else {
        panic!()
    };
    let p = &sm.data_points[0];
    assert_eq!(
        (p.count, p.sum, p.start_time_unix_nano),
        (4, 10.0, 1_000 * ms)
    );
    let q: Vec<(f64, f64)> = p
        .quantile_values
        .iter()
        .map(|q| (q.quantile, q.value))
        .collect();
    assert_eq!(q, [(0.5, 1.0), (0.99, 3.0)]);

    let Some(Data::Gauge(g)) = &metrics[3].data else {
        panic!()
    };
    assert_eq!(value(&g.data_points[0]), 21.5);
    assert_eq!(g.data_points[0].time_unix_nano, 15_000 * ms);

    // Cumulative: totals, started when the series started.
    let reqs = otlp::encode(&every_kind(), &EncodeOptions::default());
    let req = otlp_decode(&reqs).remove(0);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    let Some(Data::Sum(s)) = &metrics[1].data else {
        panic!()
    };
    assert_eq!(
        s.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    assert_eq!(value(&s.data_points[0]), 10.0);
    assert_eq!(s.data_points[0].start_time_unix_nano, 1_000 * ms);
    let Some(Data::Histogram(h)) = &metrics[0].data else {
        panic!()
    };
    assert_eq!(
        (h.data_points[0].count, h.data_points[0].max),
        (6, Some(4.0))
    );
    assert!(
        req.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .is_empty()
    );
}

/// A batch from a real aggregator with every kind, two flushes in (so deltas and
/// totals differ).
fn aggregated() -> FlushBatch {
    let agg = Aggregator::new(AggregatorConfig {
        histogram_bounds: vec![0.1, 1.0, 10.0].into(),
        ..AggregatorConfig::default()
    });
    let mut w = agg.writer();
    let delta = Temporality::Delta;
    let sv = SummaryValue {
        quantiles: vec![Quantile {
            quantile: 0.5,
            value: 2.0,
        }],
        sum: 9.0,
        count: 3,
    };
    for round in 0..2 {
        for i in 0..20 {
            let id = format!("{i}");
            let labels = [("id", id.as_str()), ("region", "eu")];
            w.record(
                "jobs_total",
                &labels,
                Sample::Counter(f64::from(i + round), delta),
                0,
            )
            .unwrap();
            w.record("queue", &labels, Sample::Gauge(f64::from(i) * 0.5), 0)
                .unwrap();
            w.record(
                "lat",
                &labels,
                Sample::Observe {
                    value: f64::from(i) * 0.3,
                    count: 2,
                },
                0,
            )
            .unwrap();
            w.record("rpc", &labels, Sample::Summary(&sv), 0).unwrap();
        }
        if round == 0 {
            agg.flush_at(START);
        }
    }
    agg.flush_at(END)
}

/// Encodes `batch`, applies every request to a fresh aggregator and flushes it.
fn otlp_round_trip(batch: &FlushBatch, temporality: Temporality) -> FlushBatch {
    let opts = EncodeOptions {
        temporality,
        max_request_bytes: 3_000,
        ..EncodeOptions::default()
    };
    let reqs = otlp::encode(batch, &opts);
    assert!(reqs.len() > 1, "split into several requests");
    let agg = Aggregator::new(AggregatorConfig {
        histogram_bounds: vec![0.1, 1.0, 10.0].into(),
        ..AggregatorConfig::default()
    });
    let mut w = agg.writer();
    for req in otlp_decode(&reqs) {
        let r = weir_core::parse::otlp::apply_export(&req, &mut w);
        assert_eq!(r.rejected, 0, "{:?}", r.message());
    }
    agg.flush_at(END + 10_000)
}

fn by_key(b: &FlushBatch) -> BTreeMap<SeriesKey, FlushedValue> {
    b.series
        .iter()
        .map(|s| (s.key.clone(), s.value.clone()))
        .collect()
}

#[test]
fn otlp_round_trips_through_apply_export() {
    let original = aggregated();
    let want = by_key(&original);
    assert_eq!(want.len(), 80);

    // Delta: the receiving aggregator sees the same increases.
    let got = by_key(&otlp_round_trip(&original, Temporality::Delta));
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        match (w, &got[k]) {
            (FlushedValue::Counter { delta: a, .. }, FlushedValue::Counter { delta: b, .. }) => {
                assert_eq!(a, b, "{k}");
            }
            (
                FlushedValue::Histogram { delta: a, .. },
                FlushedValue::Histogram { delta: b, .. },
            ) => {
                assert_eq!(a, b, "{k}");
            }
            (a, b) => assert_same_state(k, a, b),
        }
    }

    // Cumulative: a fresh receiver takes the first point as its baseline, so its
    // running totals are the original's.
    let got = by_key(&otlp_round_trip(&original, Temporality::Cumulative));
    for (k, w) in &want {
        match (w, &got[k]) {
            (FlushedValue::Counter { total: a, .. }, FlushedValue::Counter { total: b, .. }) => {
                assert_eq!(a, b, "{k}");
            }
            (
                FlushedValue::Histogram { total: a, .. },
                FlushedValue::Histogram { total: b, .. },
            ) => {
                assert_eq!(
                    (&a.counts, a.count, a.sum),
                    (&b.counts, b.count, b.sum),
                    "{k}"
                );
                assert_eq!(&a.bounds, &b.bounds);
            }
            (a, b) => assert_same_state(k, a, b),
        }
    }
}

/// Gauges and summaries carry no temporality: value and payload must match.
fn assert_same_state(k: &SeriesKey, a: &FlushedValue, b: &FlushedValue) {
    match (a, b) {
        (FlushedValue::Gauge { value: x, .. }, FlushedValue::Gauge { value: y, .. }) => {
            assert_eq!(x, y, "{k}");
        }
        (FlushedValue::Summary(x), FlushedValue::Summary(y)) => assert_eq!(x, y, "{k}"),
        (a, b) => panic!("{k}: kind changed: {a:?} vs {b:?}"),
    }
}

#[test]
fn otlp_splits_under_the_limit() {
    let b = big_batch(false);
    let whole = otlp::encode(&b, &EncodeOptions::default());
    assert_eq!(whole.len(), 1);
    let count = |reqs: &[ExportMetricsServiceRequest]| -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for req in reqs {
            for m in &req.resource_metrics[0].scope_metrics[0].metrics {
                let points = match &m.data {
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    other => panic!("{other:?}"),
                };
                assert!(points > 0, "no empty metric");
                *n.entry(format!("{}/{}", m.name, kind_of(&m.data)))
                    .or_default() += points;
            }
        }
        n
    };
    for limit in [1_000, 4_000] {
        let reqs = otlp::encode(
            &b,
            &EncodeOptions {
                max_request_bytes: limit,
                external_labels: external(&[("dc", "eu")]),
                ..EncodeOptions::default()
            },
        );
        assert!(reqs.len() > 5);
        for r in &reqs {
            assert!(r.body.len() <= limit, "{} > {limit}", r.body.len());
        }
        assert_eq!(reqs.iter().map(|r| r.points).sum::<u64>(), 600);
        assert_eq!(count(&otlp_decode(&reqs)), count(&otlp_decode(&whole)));
    }
}

fn kind_of(d: &Option<Data>) -> &'static str {
    match d {
        Some(Data::Sum(_)) => "sum",
        Some(Data::Gauge(_)) => "gauge",
        Some(Data::Histogram(_)) => "histogram",
        Some(Data::Summary(_)) => "summary",
        _ => "other",
    }
}
