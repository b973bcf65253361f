//! The forwarding encoders on arbitrary small batches (any floats, odd timestamps,
//! malformed histograms, tiny size limits): no panic, every body decodes, and every
//! encoder's points add up to what the batch holds by the encoder's own rule.

mod encode_support;

use std::sync::Arc;

use proptest::prelude::*;
use weir_core::encode::{EncodeOptions, NameFilter, influx, otlp, remote_write};
use weir_core::point::{HistogramValue, Quantile, SummaryValue};
use weir_core::{FlushBatch, FlushedSeries, FlushedValue, SeriesKey, Temporality};
use weir_proto::Message;
use weir_proto::metrics::metric::Data;
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::prometheus::WriteRequest;

const NAMES: [&str; 4] = ["a", "b_total", "c:sub", "Upper"];
const LABELS: [&[(&str, &str)]; 6] = [
    &[],
    &[("x", "1")],
    &[("x", ""), ("y", "two words")],
    &[("Z", "a,b=c"), ("le", "mine"), ("quantile", "q")],
    &[("p", "back\\slash\\"), ("q", "quote\"d\nline")],
    &[("dc", "series-wins")],
];
const BOUNDS: [&[f64]; 3] = [&[], &[1.0], &[0.5, 1.0, 1e6]];

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-1000i32..1000).prop_map(f64::from),
        2 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

fn histogram() -> impl Strategy<Value = Box<HistogramValue>> {
    (
        0..BOUNDS.len(),
        proptest::collection::vec(0u64..50, 0..6),
        float(),
        float(),
        float(),
        any::<bool>(),
    )
        .prop_map(|(b, mut counts, sum, min, max, well_formed)| {
            let bounds = BOUNDS[b];
            if well_formed {
                counts.resize(bounds.len() + 1, 1);
            }
            Box::new(HistogramValue {
                bounds: Arc::from(bounds),
                count: counts.iter().sum(),
                counts,
                sum,
                min,
                max,
            })
        })
}

fn value() -> impl Strategy<Value = FlushedValue> {
    prop_oneof![
        (float(), float()).prop_map(|(delta, total)| FlushedValue::Counter { delta, total }),
        (float(), any::<i64>()).prop_map(|(value, timestamp_ms)| FlushedValue::Gauge {
            value,
            timestamp_ms
        }),
        (histogram(), histogram())
            .prop_map(|(delta, total)| FlushedValue::Histogram { delta, total }),
        (
            proptest::collection::vec((float(), float()), 0..4),
            float(),
            any::<u64>()
        )
            .prop_map(
                |(q, sum, count)| FlushedValue::Summary(Box::new(SummaryValue {
                    quantiles: q
                        .into_iter()
                        .map(|(quantile, value)| Quantile { quantile, value })
                        .collect(),
                    sum,
                    count,
                }))
            ),
    ]
}

fn series() -> impl Strategy<Value = FlushedSeries> {
    (0..NAMES.len(), 0..LABELS.len(), value(), any::<i64>()).prop_map(|(n, l, value, start_ms)| {
        let key = SeriesKey::new(NAMES[n], LABELS[l]).expect("valid key");
        FlushedSeries {
            key,
            start_ms,
            value,
        }
    })
}

fn batch() -> impl Strategy<Value = FlushBatch> {
    (
        proptest::collection::vec(series(), 0..16),
        prop_oneof![
            Just(i64::MIN),
            Just(0),
            Just(1_700_000_000_000),
            any::<i64>()
        ],
        any::<i64>(),
        0usize..=16,
    )
        .prop_map(|(series, end_ms, start_ms, evicted)| FlushBatch {
            sequence: 1,
            start_ms,
            end_ms,
            evicted: evicted.min(series.len()),
            series,
        })
}

fn options() -> impl Strategy<Value = EncodeOptions> {
    (0usize..3000, any::<bool>(), 0usize..4, 0usize..3).prop_map(|(limit, delta, ext, filter)| {
        let external_labels = [
            vec![],
            vec![("dc".to_owned(), "eu".to_owned())],
            vec![
                ("a".to_owned(), String::new()),
                ("x".to_owned(), "ext".to_owned()),
            ],
            // Unsorted, with a duplicate: the encoders must sort it themselves.
            vec![
                ("z".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned()),
                ("z".to_owned(), "3".to_owned()),
            ],
        ][ext]
            .clone();
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let filter = match filter {
            0 => NameFilter::all(),
            1 => NameFilter::new(&s(&["a", "b_*"]), &[]).unwrap(),
            _ => NameFilter::new(&[], &s(&["*:*", "?"])).unwrap(),
        };
        EncodeOptions {
            external_labels,
            filter,
            max_request_bytes: limit,
            temporality: if delta {
                Temporality::Delta
            } else {
                Temporality::Cumulative
            },
        }
    })
}

fn finite(v: f64) -> u64 {
    u64::from(v.is_finite())
}

/// Remote write samples of one series: buckets (bounds + 1) + sum + count, or
/// quantiles + sum + count, else one.
fn rw_points(v: &FlushedValue) -> u64 {
    match v {
        FlushedValue::Counter { .. } | FlushedValue::Gauge { .. } => 1,
        FlushedValue::Histogram { total, .. } => total.bounds.len() as u64 + 3,
        FlushedValue::Summary(s) => s.quantiles.len() as u64 + 2,
    }
}

/// Line protocol field values of one series: only finite ones are written.
fn influx_points(v: &FlushedValue, t: Temporality) -> u64 {
    let cumulative = t == Temporality::Cumulative;
    match v {
        FlushedValue::Counter { delta, total } => finite(if cumulative { *total } else { *delta }),
        FlushedValue::Gauge { value, .. } => finite(*value),
        FlushedValue::Histogram { delta, total } => {
            let h = if cumulative { total } else { delta };
            let min_max = if h.count > 0 {
                finite(h.min) + finite(h.max)
            } else {
                0
            };
            1 + finite(h.sum) + min_max + h.bounds.len() as u64 + 1
        }
        FlushedValue::Summary(s) => {
            1 + finite(s.sum) + s.quantiles.iter().map(|q| finite(q.value)).sum::<u64>()
        }
    }
}

/// Splits a line protocol line at unescaped `sep`s (a backslash escapes the next
/// character).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let last = parts.last_mut().unwrap();
            last.push(c);
            if let Some(n) = chars.next() {
                last.push(n);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn points_add_up_and_bodies_decode(b in batch(), opts in options()) {
        let kept: Vec<&FlushedSeries> =
            b.series.iter().filter(|s| opts.filter.matches(s.key.name())).collect();

        // Remote write.
        let reqs = remote_write::encode(&b, &opts);
        let want: u64 = kept.iter().map(|s| rw_points(&s.value)).sum();
        prop_assert_eq!(reqs.iter().map(|r| r.points).sum::<u64>(), want);
        for r in &reqs {
            prop_assert!(r.points > 0);
            let raw = snap::raw::Decoder::new().decompress_vec(&r.body).unwrap();
            let wr = WriteRequest::decode(&raw[..]).unwrap();
            prop_assert_eq!(wr.timeseries.len() as u64, r.points);
            for ts in &wr.timeseries {
                prop_assert_eq!(ts.samples.len(), 1);
                prop_assert!(ts.labels.iter().any(|l| l.name == "__name__"));
                prop_assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
                prop_assert!(ts.labels.windows(2).all(|w| w[0].name < w[1].name));
            }
        }

        // Line protocol.
        let reqs = influx::encode(&b, &opts);
        let want: u64 = kept.iter().map(|s| influx_points(&s.value, opts.temporality)).sum();
        prop_assert_eq!(reqs.iter().map(|r| r.points).sum::<u64>(), want);
        for r in &reqs {
            let text = std::str::from_utf8(&r.body).unwrap();
            prop_assert!(text.ends_with('\n'));
            let mut fields = 0;
            for line in text.lines() {
                let parts = split_unescaped(line, ' ');
                prop_assert_eq!(parts.len(), 3, "{}", line);
                prop_assert!(parts[2].parse::<i64>().is_ok());
                for tag in split_unescaped(&parts[0], ',').iter().skip(1) {
                    let kv = split_unescaped(tag, '=');
                    prop_assert!(kv.len() == 2 && !kv[1].is_empty(), "{}", line);
                }
                for field in split_unescaped(&parts[1], ',') {
                    let kv = split_unescaped(&field, '=');
                    prop_assert_eq!(kv.len(), 2, "{}", line);
                    prop_assert!(kv[1].parse::<f64>().is_ok_and(f64::is_finite), "{}", line);
                    fields += 1;
                }
            }
            prop_assert_eq!(fields, r.points);
        }

        // OTLP.
        let reqs = otlp::encode(&b, &opts);
        prop_assert_eq!(reqs.iter().map(|r| r.points).sum::<u64>(), kept.len() as u64);
        for r in &reqs {
            prop_assert!(r.body.len() <= opts.max_request_bytes || r.points == 1);
            let req = ExportMetricsServiceRequest::decode(&r.body[..]).unwrap();
            let mut n = 0;
            for m in &req.resource_metrics[0].scope_metrics[0].metrics {
                n += match &m.data {
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    _ => 0,
                };
            }
            prop_assert_eq!(n as u64, r.points);
        }
        // Unsplit, the hand-written encoding is byte for byte prost's.
        let whole = EncodeOptions { max_request_bytes: usize::MAX, ..opts.clone() };
        let reqs = otlp::encode(&b, &whole);
        let reference = encode_support::otlp_reference(&b, &whole).map(|r| r.encode_to_vec());
        prop_assert_eq!(reqs.len(), usize::from(reference.is_some()));
        if let Some(want) = reference {
            prop_assert_eq!(&reqs[0].body, &want);
        }
    }
}
