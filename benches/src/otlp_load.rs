//! OTLP load for the latency harnesses (`otlp_latency`, `pipeline_latency`): a
//! 1,000-point export request, a no-op server of the same tonic stack as a baseline,
//! a client loop measuring latency at the client, and percentile table rows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_core::{Aggregator, AggregatorConfig};

use weir_proto::common::{AnyValue, KeyValue, any_value};
use weir_proto::metrics::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use weir_proto::metrics_service::metrics_service_client::MetricsServiceClient;
use weir_proto::metrics_service::metrics_service_server::{MetricsService, MetricsServiceServer};
use weir_proto::metrics_service::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};

/// 1,000 delta counter points over 1,000 series (10 metrics x 100 label values).
pub fn request() -> ExportMetricsServiceRequest {
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

/// A server that takes every export and does nothing.
pub struct Noop;

#[tonic::async_trait]
impl MetricsService for Noop {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts a [`Noop`] server on a free 127.0.0.1 port.
pub async fn noop_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Noop))
            .serve_with_incoming(weir_collector::sources::otlp::nodelay(listener))
            .await;
    });
    addr
}

/// Sends `n` exports (after 100 warm-up ones) and returns the sorted latencies.
pub async fn measure(
    addr: SocketAddr,
    n: usize,
    req: &ExportMetricsServiceRequest,
) -> Vec<Duration> {
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

/// The `p` percentile of sorted latencies, in microseconds.
pub fn pct(lat: &[Duration], p: f64) -> f64 {
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1e6
}

/// Prints one markdown table row: p50, p99, p99.9 and the difference to `base`.
pub fn row(name: &str, lat: &[Duration], base: Option<&[Duration]>) {
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

/// The harnesses' runtime (two workers, as on the 2-core target machine) and an
/// aggregator without eviction or a per-metric limit in the way of 100k series.
pub fn harness() -> (tokio::runtime::Runtime, Aggregator) {
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
    (rt, agg)
}
