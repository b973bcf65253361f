//! Criterion benchmarks of weir-core's forwarding encoders.
//!
//! One batch of 100k series from a real aggregator (two flushes in, so deltas and
//! totals differ): 95k counters `http_requests_total` with the four benchmark labels
//! (canonical key ~80 bytes) and 5k histograms `http_request_duration_seconds` with the
//! same label sets and the 11 Prometheus default buckets. Every encoder runs with
//! default options (1 MiB requests, cumulative) plus one external label
//! (`cluster="eu-1"`); OTLP also runs with delta temporality. `prometheus_text` is the
//! exposition page (sorted, no options); `page_of_peek` and `page` render the same
//! series from the aggregator, from a whole peek and by `prometheus_page`. Throughput
//! is set to the series count, so criterion reports series/s; the output size per
//! encoder is printed once at start. `walk_labels` is the floor every encoder pays: reading each
//! series' name and labels out of its key (a cache miss per key at this size, plus
//! UTF-8 checks).
//!
//! Run: `cargo bench -p weir-benches --bench encode`; see `benches/README.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use weir_benches::{METRIC, label_sets};
use weir_core::encode::{EncodeOptions, EncodedRequest, influx, otlp, remote_write};
use weir_core::point::{DEFAULT_BUCKETS, Sample, Temporality};
use weir_core::{Aggregator, AggregatorConfig, FlushBatch};

const SERIES: usize = 100_000;
const HISTOGRAMS: usize = 5_000;
const HISTOGRAM_METRIC: &str = "http_request_duration_seconds";

/// The benchmark batch (see the module doc), and the aggregator it came from.
fn batch() -> (Aggregator, FlushBatch) {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        max_series: 2 * SERIES,
        max_series_per_metric: 2 * SERIES,
        ..AggregatorConfig::default()
    });
    let sets = label_sets(SERIES - HISTOGRAMS);
    let mut w = agg.writer();
    for round in 0..2u32 {
        for (i, l) in sets.iter().enumerate() {
            let v = f64::from(round + 1) * (i % 100) as f64;
            w.record(METRIC, l, Sample::Counter(v, Temporality::Delta), 0)
                .expect("series admitted");
        }
        for (i, l) in sets[..HISTOGRAMS].iter().enumerate() {
            for k in 0..3 {
                let value = (i % 97 + k) as f64 * 0.01;
                w.record(HISTOGRAM_METRIC, l, Sample::Observe { value, count: 1 }, 0)
                    .expect("series admitted");
            }
        }
        if round == 0 {
            agg.flush();
        }
    }
    let b = agg.flush();
    assert_eq!(b.series.len(), SERIES);
    assert_eq!(DEFAULT_BUCKETS.len(), 11);
    drop(w);
    (agg, b)
}

fn options(temporality: Temporality) -> EncodeOptions {
    EncodeOptions {
        external_labels: vec![("cluster".to_owned(), "eu-1".to_owned())],
        temporality,
        ..EncodeOptions::default()
    }
}

type Encoder = fn(&FlushBatch, &EncodeOptions) -> Vec<EncodedRequest>;

/// The baseline: touch every name and label as the encoders do, write nothing.
fn walk_labels(b: &FlushBatch, _: &EncodeOptions) -> Vec<EncodedRequest> {
    let mut bytes = 0;
    for s in &b.series {
        bytes += s.key.name().len();
        for (k, v) in s.key.labels() {
            bytes += k.len() + v.len();
        }
    }
    vec![EncodedRequest {
        body: Vec::new(),
        points: bytes as u64,
    }]
}

/// The exposition page (`GET /metrics`): the whole batch sorted and spelled as text.
fn prometheus_text(b: &FlushBatch, _: &EncodeOptions) -> Vec<EncodedRequest> {
    vec![EncodedRequest {
        body: weir_core::encode::prometheus_text(b).into_bytes(),
        points: b.series.len() as u64,
    }]
}

fn encode(c: &mut Criterion) {
    let (agg, b) = batch();
    let cases: [(&str, Encoder, Temporality); 6] = [
        ("walk_labels", walk_labels, Temporality::Cumulative),
        (
            "remote_write",
            remote_write::encode,
            Temporality::Cumulative,
        ),
        ("influx", influx::encode, Temporality::Cumulative),
        ("otlp_cumulative", otlp::encode, Temporality::Cumulative),
        ("otlp_delta", otlp::encode, Temporality::Delta),
        ("prometheus_text", prometheus_text, Temporality::Cumulative),
    ];
    for (name, f, t) in &cases[1..] {
        let reqs = f(&b, &options(*t));
        let bytes: usize = reqs.iter().map(|r| r.body.len()).sum();
        let points: u64 = reqs.iter().map(|r| r.points).sum();
        eprintln!(
            "encode/{name}: {} requests, {:.2} MB body ({} B/series), {points} points",
            reqs.len(),
            bytes as f64 / 1e6,
            bytes / SERIES,
        );
    }
    let mut g = c.benchmark_group("encode");
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(SERIES as u64));
    for (name, f, t) in cases {
        let opts = options(t);
        g.bench_function(format!("{name}/100k"), |bench| {
            bench.iter(|| black_box(f(black_box(&b), &opts)))
        });
    }
    // The daemon's page of the same series, from the aggregator: a whole peek sorted
    // and spelled (what `GET /metrics` did), and `prometheus_page` (what it does).
    g.bench_function("page_of_peek/100k", |bench| {
        bench.iter(|| black_box(weir_core::encode::prometheus_text(&agg.peek())))
    });
    g.bench_function("page/100k", |bench| {
        bench.iter(|| black_box(weir_core::encode::prometheus_page(&agg)))
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
