//! The OTLP metrics receivers: gRPC (`MetricsService/Export`, tonic) and HTTP
//! (`POST /v1/metrics`, protobuf or JSON bodies, gzip accepted), both into weir-core's OTLP
//! mapping ([`weir_core::parse::otlp`]).
//!
//! Owns: the two listeners, request size limits (compressed and decompressed, against
//! gzip bombs), the pool of writers requests borrow, and the answers: points the
//! aggregator refused are reported in `partial_success` with their count, never by
//! holding the request open. Must never: block a request on anything but the
//! aggregator (which does not block), or panic on a body.
//!
//! Bodies are protobuf or OTLP/JSON (`application/json`), answered in the same
//! encoding.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::serve::plain;
use weir_core::parse::otlp::{ExportReport, apply_export};
use weir_core::{Aggregator, Writer};
use weir_proto::Message;
use weir_proto::metrics_service::metrics_service_server::{MetricsService, MetricsServiceServer};
use weir_proto::metrics_service::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

use crate::config::OtlpConfig;

/// Writers kept for reuse between requests (each keeps its label-set cache warm).
const WRITER_POOL: usize = 16;

/// Counters since start. Relaxed: independent counters, read only for reporting.
#[derive(Default)]
pub struct OtlpCounters {
    /// Requests answered (both transports).
    pub requests: AtomicU64,
    /// Requests refused whole (bad body, too large, wrong type).
    pub bad_requests: AtomicU64,
    /// Data points accepted.
    pub accepted: AtomicU64,
    /// Data points refused (reported back in `partial_success`).
    pub rejected: AtomicU64,
}

/// What both transports share: the aggregator and a pool of writers.
pub struct OtlpIngest {
    aggregator: Aggregator,
    writers: ArrayQueue<Writer>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
    /// Counters since start.
    pub counters: OtlpCounters,
}

impl OtlpIngest {
    fn export(&self, req: &ExportMetricsServiceRequest) -> ExportMetricsServiceResponse {
        let mut w = self
            .writers
            .pop()
            .unwrap_or_else(|| self.aggregator.writer());
        let report = apply_export(req, &mut w);
        // A full pool drops the writer: more requests in flight than pooled writers.
        let _ = self.writers.push(w);
        self.count(&report);
        response(&report)
    }

    fn count(&self, r: &ExportReport) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .accepted
            .fetch_add(r.accepted, Ordering::Relaxed);
        self.counters
            .rejected
            .fetch_add(r.rejected, Ordering::Relaxed);
    }
}

fn response(r: &ExportReport) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: r
            .message()
            .map(|error_message| ExportMetricsPartialSuccess {
                rejected_data_points: i64::try_from(r.rejected).unwrap_or(i64::MAX),
                error_message,
            }),
    }
}

/// The running OTLP listeners.
pub struct OtlpReceiver {
    /// The gRPC listener's address, if enabled.
    pub grpc_addr: Option<SocketAddr>,
    /// The HTTP listener's address, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// What both share (counters included).
    pub ingest: Arc<OtlpIngest>,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds both listeners and starts serving. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A listener could not be bound.
    pub async fn start(config: &OtlpConfig, aggregator: &Aggregator) -> std::io::Result<Self> {
        let ingest = Arc::new(OtlpIngest {
            aggregator: aggregator.clone(),
            writers: ArrayQueue::new(WRITER_POOL),
            max_request_bytes: config.max_request_bytes,
            max_decompressed_bytes: config.max_decompressed_bytes,
            counters: OtlpCounters::default(),
        });
        let mut tasks = Vec::new();
        let grpc = TcpListener::bind(config.grpc_address).await?;
        let grpc_addr = grpc.local_addr()?;
        let service = MetricsServiceServer::new(Grpc(ingest.clone()))
            .max_decoding_message_size(config.max_decompressed_bytes)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tasks.push(tokio::spawn(async move {
            let incoming = nodelay(grpc);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                warn!(error = %e, "otlp: gRPC server stopped");
            }
        }));
        let http = TcpListener::bind(config.http_address).await?;
        let http_addr = http.local_addr()?;
        let handler_ingest = ingest.clone();
        tasks.push(tokio::spawn(crate::serve::serve(
            http,
            "otlp http",
            move |req| {
                let ingest = handler_ingest.clone();
                async move { handle_http(req, &ingest).await }
            },
        )));
        info!(grpc = %grpc_addr, http = %http_addr, "otlp receiver listening (gRPC, HTTP /v1/metrics)");
        Ok(OtlpReceiver {
            grpc_addr: Some(grpc_addr),
            http_addr: Some(http_addr),
            ingest,
            tasks,
        })
    }

    /// Stops accepting; requests in flight are abandoned (their senders retry).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accepted connections with Nagle's algorithm off: a response written in pieces
/// must not wait for the client's delayed ACK (a 40 ms stall on ~1% of requests).
pub fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

struct Grpc(Arc<OtlpIngest>);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.export(request.get_ref())))
    }
}

async fn handle_http(req: Request<Incoming>, ingest: &OtlpIngest) -> Response<Full<Bytes>> {
    if req.uri().path() != "/v1/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "only POST /v1/metrics is served here\n",
        );
    }
    if req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = if content_type.starts_with("application/x-protobuf") {
        false
    } else if content_type.starts_with("application/json") {
        true
    } else {
        ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "weir takes application/x-protobuf or application/json (OTLP/JSON)\n",
        );
    };
    let gzip = match req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("content-encoding {other:?} is not supported (gzip is)\n"),
            );
        }
    };
    let body = match Limited::new(req.into_body(), ingest.max_request_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes\n", ingest.max_request_bytes),
            );
        }
    };
    let body = if gzip {
        let mut out = Vec::new();
        let limit = ingest.max_decompressed_bytes as u64;
        // One byte past the limit tells "too large" from "exactly at the limit".
        let read = flate2::read::GzDecoder::new(&body[..])
            .take(limit + 1)
            .read_to_end(&mut out);
        match read {
            Ok(n) if n as u64 > limit => {
                ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("decompressed body over {limit} bytes\n"),
                );
            }
            Ok(_) => Bytes::from(out),
            Err(e) => {
                ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return plain(StatusCode::BAD_REQUEST, &format!("bad gzip body: {e}\n"));
            }
        }
    } else {
        body
    };
    let request = match decode(&body, json) {
        Ok(r) => r,
        Err(e) => {
            ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("not an ExportMetricsServiceRequest: {e}\n"),
            );
        }
    };
    let answer = ingest.export(&request);
    // The answer in the request's encoding, as OTLP/HTTP requires.
    let (bytes, content_type) = if json {
        (
            serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec()),
            "application/json",
        )
    } else {
        (answer.encode_to_vec(), "application/x-protobuf")
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// An export request from protobuf or OTLP/JSON bytes.
pub fn decode(body: &[u8], json: bool) -> Result<ExportMetricsServiceRequest, String> {
    if json {
        weir_core::parse::otlp::decode_json(body).map_err(|e| e.to_string())
    } else {
        ExportMetricsServiceRequest::decode(body).map_err(|e| e.to_string())
    }
}

/// The OTLP source: both listeners.
pub struct OtlpSource {
    receiver: OtlpReceiver,
}

impl OtlpSource {
    /// Starts the listeners if `receivers.otlp` is enabled. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// A listener could not be bound.
    pub async fn start(
        config: &crate::config::Config,
        aggregator: &Aggregator,
    ) -> Result<Option<OtlpSource>, crate::sources::SourceError> {
        let c = &config.receivers.otlp;
        if !c.enabled {
            return Ok(None);
        }
        let receiver =
            OtlpReceiver::start(c, aggregator)
                .await
                .map_err(crate::sources::SourceError::at(
                    "otlp",
                    format!("{} / {}", c.grpc_address, c.http_address),
                ))?;
        Ok(Some(OtlpSource { receiver }))
    }
}

impl crate::sources::Source for OtlpSource {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn metrics(&self) -> Arc<dyn crate::telemetry::StageMetrics> {
        self.receiver.ingest.clone()
    }

    fn stop(self: Box<Self>) -> crate::sources::StopFuture {
        Box::pin(async move {
            let c = &self.receiver.ingest.counters;
            info!(
                requests = c.requests.load(Ordering::Relaxed),
                bad_requests = c.bad_requests.load(Ordering::Relaxed),
                accepted = c.accepted.load(Ordering::Relaxed),
                rejected = c.rejected.load(Ordering::Relaxed),
                "otlp receiver stopped"
            );
            self.receiver.stop();
        })
    }
}

impl crate::telemetry::StageMetrics for OtlpIngest {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::Kind::Counter;
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        page.single(
            "weir_otlp_requests_total",
            Counter,
            "OTLP export requests answered.",
            load(&c.requests),
        );
        page.single(
            "weir_otlp_bad_requests_total",
            Counter,
            "OTLP requests refused whole.",
            load(&c.bad_requests),
        );
        page.single(
            "weir_otlp_points_accepted_total",
            Counter,
            "OTLP data points aggregated.",
            load(&c.accepted),
        );
        page.single(
            "weir_otlp_points_rejected_total",
            Counter,
            "OTLP data points refused (reported in partial_success).",
            load(&c.rejected),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the OTLP/JSON example in the specification: camelCase keys,
    /// 64-bit integers as strings, enums as numbers.
    const EXAMPLE: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},"scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},"metrics":[
      {"name":"my.counter","unit":"1","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{"asDouble":5,"startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000","attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}},
      {"name":"my.gauge","gauge":{"dataPoints":[{"asInt":"10","timeUnixNano":"1544712660300000000"}]}},
      {"name":"my.histogram","histogram":{"aggregationTemporality":1,"dataPoints":[{"count":"2","sum":2,"bucketCounts":["1","1"],"explicitBounds":[1],"min":0,"max":2,"timeUnixNano":"1544712660300000000"}]}}
    ]}]}]}"#;

    #[test]
    fn otlp_json_decodes_into_the_same_points() {
        let req = decode(EXAMPLE.as_bytes(), true).unwrap();
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let r = apply_export(&req, &mut w);
        assert_eq!((r.accepted, r.rejected), (3, 0));
        let b = agg.flush();
        assert_eq!(b.counter_delta_sum(), 5.0);
        let text = weir_core::encode::prometheus_text(&b);
        assert!(
            text.contains("my_counter{job=\"my.service\",my_counter_attr=\"some value\"} 5"),
            "{text}"
        );
        assert!(text.contains("my_gauge{job=\"my.service\"} 10"), "{text}");
        assert!(
            text.contains("my_histogram_count{job=\"my.service\"} 2"),
            "{text}"
        );
        // The same request as protobuf decodes to the same value.
        let again = decode(&req.encode_to_vec(), false).unwrap();
        assert_eq!(again, req);
        assert!(decode(b"{\"resourceMetrics\": 7}", true).is_err());
    }
}
