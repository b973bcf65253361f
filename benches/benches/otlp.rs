//! OTLP ingest cost per data point (issue 13): one `ExportMetricsServiceRequest` of
//! 1,000 delta counter points (10 metrics x 100 points, three attributes each, a
//! resource with `service.name`, `service.namespace`, `service.instance.id` and two
//! attributes that are not labels), into an aggregator that already holds those
//! series (the steady state of a client exporting the same series every interval).
//!
//! Five rows, per data point: `decode_only` (prost, the body into the request
//! structs), `apply_only` ([`apply_export`] on a decoded request), `decode_and_apply`
//! (both: what the gRPC and HTTP protobuf receivers did per request before the
//! borrowed walk), `walk_only` (the borrowed walk reading the body, nothing applied)
//! and `walk_and_apply` ([`apply_export_protobuf`]: what the receivers do now).
//!
//! Run: `cargo bench -p weir-benches --bench otlp`; see `benches/README.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use weir_benches::harness::otlp::{delta_sums, kv};
use weir_core::parse::otlp::{apply_export, apply_export_protobuf, walks};
use weir_core::{Aggregator, AggregatorConfig};
use weir_proto::metrics::{NumberDataPoint, number_data_point};
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::resource::Resource;

/// Data points in [`request`].
const POINTS: u64 = 1_000;

/// The request described in the module doc.
fn request() -> ExportMetricsServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv("service.name", "checkout"),
            kv("service.namespace", "shop"),
            kv("service.instance.id", "checkout-7d9f-abcde"),
            kv("host.name", "node-17"),
            kv("telemetry.sdk.language", "rust"),
        ],
        ..Default::default()
    };
    delta_sums(
        |m| format!("http.server.requests.{m}"),
        |i| NumberDataPoint {
            attributes: vec![
                kv("http.route", &format!("/api/v1/items/{i}")),
                kv(
                    "http.request.method",
                    if i % 2 == 0 { "GET" } else { "POST" },
                ),
                kv("http.response.status_code", "200"),
            ],
            start_time_unix_nano: 1_700_000_000_000_000_000,
            time_unix_nano: 1_700_000_010_000_000_000,
            value: Some(number_data_point::Value::AsInt(1)),
            ..Default::default()
        },
        Some(resource),
    )
}

fn otlp(c: &mut Criterion) {
    let req = request();
    let body = req.encode_to_vec();
    let mut g = c.benchmark_group("otlp_export_1000_points");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(POINTS));
    // Timestamps are ignored by weir's aggregation of deltas; a TTL of zero keeps
    // every series for the whole run.
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        ..AggregatorConfig::default()
    });
    let mut w = agg.writer();
    // Create and cache every series: the steady state.
    let warm = apply_export(&req, &mut w);
    assert_eq!(warm.accepted, POINTS, "{warm:?}");

    g.bench_function("decode_only", |b| {
        b.iter(|| {
            ExportMetricsServiceRequest::decode(black_box(&body[..]))
                .map(|r| r.resource_metrics.len())
        })
    });
    g.bench_function("apply_only", |b| {
        b.iter(|| apply_export(black_box(&req), &mut w).accepted)
    });
    g.bench_function("decode_and_apply", |b| {
        b.iter(|| {
            ExportMetricsServiceRequest::decode(black_box(&body[..]))
                .map(|r| apply_export(&r, &mut w).accepted)
        })
    });
    assert!(walks(&body), "the walk must take this request on");
    g.bench_function("walk_only", |b| b.iter(|| walks(black_box(&body[..]))));
    g.bench_function("walk_and_apply", |b| {
        b.iter(|| apply_export_protobuf(black_box(&body[..]), &mut w).map(|r| r.accepted))
    });
    g.finish();
    // Keep the deltas bounded over a long run (and the aggregator alive to here).
    black_box(agg.flush().series.len());
}

criterion_group!(benches, otlp);
criterion_main!(benches);
