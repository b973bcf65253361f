//! Load harness: client-side latency of OTLP gRPC exports of 1,000-point requests to
//! weir's receiver, against a no-op server of the same stack side by side (the
//! difference is what weir adds), idle and while a flush of 100k series runs every
//! 100 ms in the same process.
//!
//! Run: `cargo run --release -p weir-benches --bin otlp_latency [requests]`
//! (default 2,000 per scenario). Everything is on 127.0.0.1 ports chosen by the OS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_collector::config::OtlpConfig;
use weir_collector::otlp::OtlpReceiver;
use weir_core::{Aggregator, AggregatorConfig, Sample, Temporality};
use weir_proto::common::{AnyValue, KeyValue, any_value};
use weir_proto::metrics::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use weir_proto::metrics_service::metrics_service_client::MetricsServiceClient;
use weir_proto::metrics_service::metrics_service_server::{MetricsService, MetricsServiceServer};
use weir_proto::metrics_service::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};

/// 1,000 delta counter points over 1,000 series (10 metrics x 100 label values).
fn request() -> ExportMetricsServiceRequest {
    let metrics = (0..10)
        .map(|m| Metric {
            name: format!("app.requests.{m}"),
            data: Some(Data::Sum(Sum {
                data_points: (0..100)
                    .map(|i| NumberDataPoint {
                        attributes: vec![KeyValue {
                            key: "route".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(format!("/r/{i}"))),
                            }),
                            ..Default::default()
                        }],
                        value: Some(number_data_point::Value::AsInt(1)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

struct Noop;

#[tonic::async_trait]
impl MetricsService for Noop {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn noop_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Noop))
            .serve_with_incoming(weir_collector::otlp::nodelay(listener))
            .await;
    });
    addr
}

/// Sends `n` exports (after 100 warm-up ones) and returns the sorted latencies.
async fn measure(addr: SocketAddr, n: usize, req: &ExportMetricsServiceRequest) -> Vec<Duration> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let mut client = MetricsServiceClient::new(channel);
    for _ in 0..100 {
        client.export(req.clone()).await.expect("warm-up export");
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let r = req.clone();
        let t = Instant::now();
        let resp = client.export(r).await.expect("export");
        lat.push(t.elapsed());
        assert!(resp.get_ref().partial_success.is_none(), "points refused");
    }
    lat.sort();
    lat
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1e6
}

fn row(name: &str, lat: &[Duration], base: Option<&[Duration]>) {
    let (p50, p99, p999) = (pct(lat, 0.5), pct(lat, 0.99), pct(lat, 0.999));
    match base {
        Some(b) => println!(
            "| {name} | {p50:.0} | {p99:.0} | {p999:.0} | {:+.0} / {:+.0} / {:+.0} |",
            p50 - pct(b, 0.5),
            p99 - pct(b, 0.99),
            p999 - pct(b, 0.999)
        ),
        None => println!("| {name} | {p50:.0} | {p99:.0} | {p999:.0} | (baseline) |"),
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        max_series_per_metric: 1_000_000,
        ..AggregatorConfig::default()
    });
    // 100k more series so that the flush scenario flushes a realistic map.
    {
        let mut w = agg.writer();
        for i in 0..100_000 {
            let id = i.to_string();
            w.record(
                "background_total",
                &[("id", &id)],
                Sample::Counter(1.0, Temporality::Delta),
                0,
            )
            .expect("series");
        }
    }
    let req = request();
    rt.block_on(async {
        let config = OtlpConfig {
            grpc_address: "127.0.0.1:0".parse().expect("addr"),
            http_address: "127.0.0.1:0".parse().expect("addr"),
            ..OtlpConfig::default()
        };
        let weir = OtlpReceiver::start(&config, &agg)
            .await
            .expect("start weir");
        let weir_addr = weir.grpc_addr.expect("grpc");
        let noop_addr = noop_server().await;
        let base = measure(noop_addr, n, &req).await;
        let idle = measure(weir_addr, n, &req).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (agg, stop) = (agg.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut flushes = 0u32;
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    agg.flush();
                    worst = worst.max(t.elapsed());
                    flushes += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                (flushes, worst)
            })
        };
        let flushing = measure(weir_addr, n, &req).await;
        stop.store(true, Ordering::Relaxed);
        let (flushes, worst) = flusher.join().expect("flusher");
        println!("{n} exports of 1,000 points per scenario; latency at the client, microseconds");
        println!();
        println!("| scenario | p50 | p99 | p99.9 | added vs no-op (p50 / p99 / p99.9) |");
        println!("|---|---|---|---|---|");
        row("no-op gRPC server (same tonic stack)", &base, None);
        row("weir, idle", &idle, Some(&base));
        row(
            &format!(
                "weir, {flushes} flushes of ~101k series meanwhile (slowest {:.1} ms)",
                worst.as_secs_f64() * 1e3
            ),
            &flushing,
            Some(&base),
        );
        weir.stop();
    });
}
