//! Forwarders' wire side: one request body out, one classified outcome back.
//!
//! Owns: the HTTP and gRPC clients of the pipelines, the request headers each protocol
//! needs (remote write's `Content-Encoding: snappy` and version header, InfluxDB's
//! query parameters and token, OTLP's content type and gRPC path), and the rule that
//! sorts every outcome into *sent*, *retry* (connection errors, timeouts, HTTP 408,
//! 429 and 5xx, gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`,
//! `ABORTED`, `CANCELLED`, `UNKNOWN`) or *permanent* (any other 4xx, any other gRPC
//! code: retrying the same bytes cannot succeed).
//!
//! Must never: retry, sleep or touch the WAL (the pipeline's forwarder loop does),
//! hold a request longer than the pipeline's `timeout`, or change a body (it is sent
//! exactly as the WAL holds it).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use weir_proto::Message as _;
use weir_proto::metrics_service::ExportMetricsServiceResponse;

use crate::config::{CompressionConfig, PipelineConfig, PipelineKind};

/// The gRPC method OTLP metrics are exported to.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Most bytes of an error response body quoted in a log line.
const ERROR_BODY_QUOTE: usize = 256;

/// A send that went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Points the backend said it refused although the request as a whole succeeded
    /// (OTLP `partial_success.rejected_data_points`).
    pub rejected_points: u64,
}

/// A send that did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt later; `retry_after` is the backend's own hint.
    #[error("{reason}")]
    Retry {
        /// What happened, for the log.
        reason: String,
        /// HTTP `Retry-After`, when the backend sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// The backend refused these bytes for good; sending them again cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// Sends request bodies of one pipeline to its backend.
pub enum Sender {
    /// Remote write, InfluxDB and OTLP/HTTP: HTTP/1.1 POST with a keep-alive pool.
    Http(HttpSender),
    /// OTLP/gRPC on one persistent HTTP/2 channel with keepalive pings.
    Grpc(GrpcSender),
}

impl Sender {
    /// Builds the sender for `config` (no connection is made until the first send).
    ///
    /// # Errors
    /// A message if the endpoint cannot be used (config validation normally catches
    /// this first).
    pub fn new(config: &PipelineConfig) -> Result<Sender, String> {
        match config.kind {
            PipelineKind::OtlpGrpc => GrpcSender::new(config).map(Sender::Grpc),
            _ => HttpSender::new(config).map(Sender::Http),
        }
    }

    /// Sends one body as the WAL holds it.
    pub async fn send(&mut self, body: Bytes) -> Result<Sent, SendError> {
        match self {
            Sender::Http(s) => s.send(body).await,
            Sender::Grpc(s) => s.send(body).await,
        }
    }
}

/// Remote write, InfluxDB and OTLP/HTTP over HTTP/1.1.
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    kind: PipelineKind,
}

/// `endpoint` with `path` appended when the endpoint has no path of its own.
fn with_default_path(endpoint: &str, path_and_query: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = endpoint
        .parse::<Uri>()
        .ok()
        .is_some_and(|u| !matches!(u.path(), "" | "/"));
    if has_path {
        endpoint.to_owned()
    } else {
        format!("{trimmed}{path_and_query}")
    }
}

/// Percent-encodes a query parameter value.
fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
    )
}

impl HttpSender {
    fn new(config: &PipelineConfig) -> Result<HttpSender, String> {
        let url = match config.kind {
            PipelineKind::PrometheusRemoteWrite => config.endpoint.clone(),
            PipelineKind::OtlpHttp => with_default_path(&config.endpoint, "/v1/metrics"),
            PipelineKind::Influxdb => match (&config.database, &config.bucket) {
                (Some(db), _) => with_default_path(
                    &config.endpoint,
                    &format!("/write?db={}&precision=ms", query_value(db)),
                ),
                (None, Some(bucket)) => with_default_path(
                    &config.endpoint,
                    &format!(
                        "/api/v2/write?org={}&bucket={}&precision=ms",
                        query_value(config.org.as_deref().unwrap_or_default()),
                        query_value(bucket)
                    ),
                ),
                (None, None) => return Err("influxdb needs `database` or `bucket`".into()),
            },
            PipelineKind::OtlpGrpc => return Err("OTLP/gRPC is not sent over HTTP/1".into()),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad endpoint {url:?}: {e}"))?;
        let mut headers = HeaderMap::new();
        let ua = concat!("weir/", env!("CARGO_PKG_VERSION"));
        headers.extend([header("user-agent", ua)]);
        match config.kind {
            PipelineKind::PrometheusRemoteWrite => headers.extend([
                header("content-type", "application/x-protobuf"),
                header("content-encoding", "snappy"),
                header("x-prometheus-remote-write-version", "0.1.0"),
            ]),
            PipelineKind::OtlpHttp => {
                headers.extend([header("content-type", "application/x-protobuf")]);
            }
            PipelineKind::Influxdb => {
                headers.extend([header("content-type", "text/plain; charset=utf-8")]);
                if let Some(token) = &config.token {
                    headers.extend([header("authorization", &format!("Token {token}"))]);
                }
            }
            PipelineKind::OtlpGrpc => {}
        }
        if config.compression == CompressionConfig::Gzip {
            headers.extend([header("content-encoding", "gzip")]);
        }
        for (name, value) in &config.headers {
            let name: HeaderName = name.parse().map_err(|e| format!("header {name:?}: {e}"))?;
            let value: HeaderValue = value.parse().map_err(|e| format!("header {name}: {e}"))?;
            headers.insert(name, value);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(HttpSender {
            client,
            uri,
            headers,
            timeout: config.timeout,
            kind: config.kind,
        })
    }

    async fn send(&mut self, body: Bytes) -> Result<Sent, SendError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::Permanent(format!("cannot build the request: {e}")))?;
        *request.headers_mut() = self.headers.clone();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| SendError::Retry {
                    reason: format!("cannot reach {}: {e}", self.uri),
                    retry_after: None,
                })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, SendError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SendError::Retry {
                reason: format!("no answer from {} within {:?}", self.uri, self.timeout),
                retry_after: None,
            })??;
        classify_http(self.kind, status, retry_after, &body)
    }
}

/// Sorts an HTTP answer into sent, retry or permanent.
fn classify_http(
    kind: PipelineKind,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Sent, SendError> {
    let quote = || {
        let end = body.len().min(ERROR_BODY_QUOTE);
        String::from_utf8_lossy(&body[..end]).trim().to_owned()
    };
    if status.is_success() {
        let rejected_points = match kind {
            PipelineKind::OtlpHttp => ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_data_points.max(0) as u64),
            _ => 0,
        };
        return Ok(Sent { rejected_points });
    }
    let reason = format!("HTTP {status}: {}", quote());
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(SendError::Retry {
            reason,
            retry_after,
        })
    } else {
        Err(SendError::Permanent(reason))
    }
}

/// OTLP over gRPC: one lazily connected channel, reconnected by tonic as needed.
pub struct GrpcSender {
    client: tonic::client::Grpc<tonic::transport::Channel>,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
    endpoint: String,
}

impl GrpcSender {
    fn new(config: &PipelineConfig) -> Result<GrpcSender, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| format!("bad endpoint {:?}: {e}", config.endpoint))?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
        if config.compression == CompressionConfig::Gzip {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &config.headers {
            let key =
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("header {name:?}: {e}"))?;
            let value = value.parse().map_err(|e| format!("header {name:?}: {e}"))?;
            metadata.insert(key, value);
        }
        Ok(GrpcSender {
            client,
            metadata,
            timeout: config.timeout,
            endpoint: config.endpoint.clone(),
        })
    }

    async fn send(&mut self, body: Bytes) -> Result<Sent, SendError> {
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        let call = async {
            self.client.ready().await.map_err(|e| SendError::Retry {
                reason: format!("cannot reach {}: {e}", self.endpoint),
                retry_after: None,
            })?;
            let path = hyper::http::uri::PathAndQuery::from_static(OTLP_EXPORT_PATH);
            self.client
                .unary(request, path, PreEncoded)
                .await
                .map_err(classify_status)
        };
        // tonic's own deadline covers the call; this also covers connecting.
        let response = tokio::time::timeout(self.timeout + Duration::from_secs(1), call)
            .await
            .map_err(|_| SendError::Retry {
                reason: format!("no answer from {} within {:?}", self.endpoint, self.timeout),
                retry_after: None,
            })??;
        let rejected_points = response
            .into_inner()
            .partial_success
            .map_or(0, |p| p.rejected_data_points.max(0) as u64);
        Ok(Sent { rejected_points })
    }
}

/// Sorts a gRPC status into retry or permanent (the OTLP specification's retryable
/// codes, plus `RESOURCE_EXHAUSTED` and `UNKNOWN`, which tonic reports for broken
/// connections).
fn classify_status(status: tonic::Status) -> SendError {
    use tonic::Code;
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss
        | Code::Unknown => SendError::Retry {
            reason,
            retry_after: None,
        },
        _ => SendError::Permanent(reason),
    }
}

/// A tonic codec that sends bytes that already are an encoded message (the WAL's
/// record) and decodes the OTLP export response.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportMetricsServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportMetricsServiceResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportMetricsServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("bad export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_are_appended_only_to_bare_endpoints() {
        assert_eq!(
            with_default_path("http://h:1", "/v1/metrics"),
            "http://h:1/v1/metrics"
        );
        assert_eq!(
            with_default_path("http://h:1/", "/v1/metrics"),
            "http://h:1/v1/metrics"
        );
        assert_eq!(
            with_default_path("http://h:1/otlp/v1/metrics", "/v1/metrics"),
            "http://h:1/otlp/v1/metrics"
        );
        assert_eq!(query_value("my db&x"), "my%20db%26x");
    }

    #[test]
    fn http_outcomes_are_classified() {
        let k = PipelineKind::PrometheusRemoteWrite;
        assert_eq!(
            classify_http(k, StatusCode::NO_CONTENT, None, b""),
            Ok(Sent::default())
        );
        for code in [429, 408, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_http(k, status, Some(Duration::from_secs(3)), b"busy"),
                    Err(SendError::Retry { retry_after: Some(d), .. }) if d == Duration::from_secs(3)
                ),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify_http(k, status, None, b"no"), Err(SendError::Permanent(m)) if m.contains("no")),
                "{code}"
            );
        }
    }

    #[test]
    fn otlp_http_partial_success_is_read() {
        let response = ExportMetricsServiceResponse {
            partial_success: Some(weir_proto::metrics_service::ExportMetricsPartialSuccess {
                rejected_data_points: 7,
                error_message: "too old".into(),
            }),
        };
        let body = response.encode_to_vec();
        assert_eq!(
            classify_http(PipelineKind::OtlpHttp, StatusCode::OK, None, &body),
            Ok(Sent { rejected_points: 7 })
        );
    }

    #[test]
    fn grpc_codes_are_classified() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(matches!(
                classify_status(Status::new(code, "x")),
                SendError::Retry { .. }
            ));
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::Unimplemented,
        ] {
            assert!(matches!(
                classify_status(Status::new(code, "x")),
                SendError::Permanent(_)
            ));
        }
    }
}
