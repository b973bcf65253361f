//! OTLP load (was `src/otlp_load.rs`): 1,000-point export requests, a no-op server of
//! the same tonic stack as a baseline, a client loop measuring latency at the client,
//! and percentiles.
//!
//! Owns: the request shapes and the client-side timing. Must never: time a request
//! that weir refused in part as if it were accepted (a partial success is an error).

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
use weir_proto::resource::Resource;

/// 1,000 delta counter points over 1,000 series (10 metrics x 100 label values).
pub fn request() -> ExportMetricsServiceRequest {
    request_named("app.requests")
}

/// Like [`request`], with metric names `<prefix>.<0..10>`: distinct prefixes give
/// distinct series (the background series of the latency scenario).
pub fn request_named(prefix: &str) -> ExportMetricsServiceRequest {
    delta_sums(
        |m| format!("{prefix}.{m}"),
        |i| NumberDataPoint {
            attributes: vec![kv("route", &format!("/r/{i}"))],
            value: Some(number_data_point::Value::AsInt(1)),
            ..Default::default()
        },
        None,
    )
}

/// One request of 10 monotonic delta sums of 100 points each under `resource`: metric
/// `m` named `name(m)`, its point `i` being `point(i)`.
pub fn delta_sums(
    name: impl Fn(usize) -> String,
    point: impl Fn(usize) -> NumberDataPoint,
    resource: Option<Resource>,
) -> ExportMetricsServiceRequest {
    let metrics = (0..10)
        .map(|m| Metric {
            name: name(m),
            data: Some(Data::Sum(Sum {
                data_points: (0..100).map(&point).collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource,
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
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
pub async fn noop_server() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Noop))
            .serve_with_incoming(weir_collector::sources::otlp::nodelay(listener))
            .await;
    });
    Ok(addr)
}

/// Sends `n` exports (after `warm_up` ones) and returns the sorted latencies.
///
/// # Errors
/// When the server cannot be reached, fails an export or refuses points in one.
pub async fn measure(
    addr: SocketAddr,
    n: usize,
    warm_up: usize,
    req: &ExportMetricsServiceRequest,
) -> anyhow::Result<Vec<Duration>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = MetricsServiceClient::new(channel);
    for _ in 0..warm_up {
        client.export(req.clone()).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let r = req.clone();
        let t = Instant::now();
        let resp = client.export(r).await?;
        lat.push(t.elapsed());
        if let Some(p) = &resp.get_ref().partial_success {
            anyhow::bail!(
                "{} points refused: {}",
                p.rejected_data_points,
                p.error_message
            );
        }
    }
    lat.sort();
    Ok(lat)
}

/// The `p` percentile of sorted latencies, in microseconds (0 if there are none).
pub fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1e6
}

/// The harnesses' runtime (two workers, as on the 2-core target machine) and an
/// aggregator without eviction or a per-metric limit in the way of 100k series.
pub fn harness() -> std::io::Result<(tokio::runtime::Runtime, Aggregator)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        max_series_per_metric: 1_000_000,
        ..AggregatorConfig::default()
    });
    Ok((rt, agg))
}
