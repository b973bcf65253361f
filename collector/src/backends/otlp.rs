//! OTLP metrics out: `ExportMetricsServiceRequest` over gRPC (one persistent HTTP/2
//! channel with keepalive) or over HTTP (`application/x-protobuf`), delta or
//! cumulative.
//!
//! Owns: the OTLP config variant, the gRPC path and codec, and reading
//! `partial_success` from answers. Must never: re-encode a body (the gRPC codec sends
//! the WAL's bytes as the message).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use hyper::header::HeaderMap;
use serde::Deserialize;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use weir_core::FlushBatch;
use weir_core::encode::{EncodeOptions, EncodedRequest};
use weir_proto::Message as _;
use weir_proto::metrics_service::ExportMetricsServiceResponse;

use super::http::{HttpClient, header, with_default_path};
use super::{Backend, FailureCause, SendError, SendFuture, Sent, gzip};
use crate::pipeline::{CompressionConfig, PipelineCommon, TemporalityConfig};
use crate::tls::client::{Alpn, LiveSecurity, TlsFailure};

/// The gRPC method OTLP metrics are exported to.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// `type = "otlp_grpc"` and `type = "otlp_http"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Delta (default) or cumulative counters and histograms.
    #[serde(default)]
    pub temporality: Option<TemporalityConfig>,
    /// `none` (default) or `gzip` (HTTP: `Content-Encoding: gzip`; gRPC: message
    /// compression).
    #[serde(default)]
    pub compression: CompressionConfig,
    /// The keys every pipeline has. `endpoint`: the gRPC server's address, or the
    /// HTTP base URL (`/v1/metrics` is appended when it has no path).
    #[serde(flatten)]
    pub common: PipelineCommon,
    /// TLS and credentials (`tls`, `basic_auth`, `bearer_token`,
    /// `bearer_token_file`, `headers_from_files`).
    #[serde(flatten)]
    pub security: crate::tls::client::ClientSecurityConfig,
}

/// Which OTLP transport a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpTransport {
    /// gRPC: bodies stay uncompressed (gRPC compresses each message itself).
    Grpc,
    /// HTTP: bodies are gzipped here when `compression = "gzip"`.
    Http,
}

/// Encodes a flush into `ExportMetricsServiceRequest` bodies as they go on the wire.
pub fn encode(
    config: &OtlpConfig,
    transport: OtlpTransport,
    batch: &FlushBatch,
    options: &EncodeOptions,
) -> Vec<EncodedRequest> {
    let mut requests = weir_core::encode::otlp::encode(batch, options);
    if transport == OtlpTransport::Http && config.compression == CompressionConfig::Gzip {
        for r in &mut requests {
            if let Ok(body) = gzip(&r.body) {
                r.body = body;
            }
        }
    }
    requests
}

/// Points refused inside an accepted export.
fn rejected_points(response: &ExportMetricsServiceResponse) -> u64 {
    response
        .partial_success
        .as_ref()
        .map_or(0, |p| p.rejected_data_points.max(0) as u64)
}

/// OTLP over HTTP.
pub struct OtlpHttp {
    http: HttpClient,
}

impl OtlpHttp {
    /// A sender for `config`.
    ///
    /// # Errors
    /// A message if the endpoint or a header cannot be used.
    pub fn new(config: &OtlpConfig, security: Arc<LiveSecurity>) -> Result<Self, String> {
        let url = with_default_path(&config.common.endpoint, "/v1/metrics");
        let mut headers = HeaderMap::new();
        headers.extend([header("content-type", "application/x-protobuf")]);
        if config.compression == CompressionConfig::Gzip {
            headers.extend([header("content-encoding", "gzip")]);
        }
        let http = HttpClient::new(&url, headers, &config.common, security)?;
        Ok(OtlpHttp { http })
    }
}

impl Backend for OtlpHttp {
    fn send(&mut self, body: Bytes) -> SendFuture<'_> {
        Box::pin(async move {
            let answer = self.http.post(body).await?;
            answer.status_outcome()?;
            // An unreadable success body still means the export was taken.
            let response = ExportMetricsServiceResponse::decode(answer.body).unwrap_or_default();
            Ok(Sent {
                rejected_points: rejected_points(&response),
            })
        })
    }
}

/// OTLP over gRPC: one lazily connected channel (TLS for `https://` endpoints),
/// reconnected by tonic as needed and rebuilt when a reload changed the credentials.
pub struct OtlpGrpc {
    endpoint: tonic::transport::Endpoint,
    gzip: bool,
    /// The pipeline's `headers` as metadata (the credentials' are added per
    /// generation of `security`).
    metadata: tonic::metadata::MetadataMap,
    security: Arc<LiveSecurity>,
    /// The channel and the full metadata for one generation of credentials.
    channel: Option<(
        u64,
        tonic::client::Grpc<tonic::transport::Channel>,
        tonic::metadata::MetadataMap,
    )>,
    timeout: Duration,
    endpoint_url: String,
}

impl OtlpGrpc {
    /// A sender for `config` (no connection is made until the first send).
    ///
    /// # Errors
    /// A message if the endpoint or a header cannot be used.
    pub fn new(config: &OtlpConfig, security: Arc<LiveSecurity>) -> Result<Self, String> {
        let c = &config.common;
        let endpoint = tonic::transport::Endpoint::from_shared(c.endpoint.clone())
            .map_err(|e| format!("bad endpoint {:?}: {e}", c.endpoint))?
            .connect_timeout(c.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &c.headers {
            let key =
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("header {name:?}: {e}"))?;
            let value = value.parse().map_err(|e| format!("header {name:?}: {e}"))?;
            metadata.insert(key, value);
        }
        Ok(OtlpGrpc {
            endpoint,
            gzip: config.compression == CompressionConfig::Gzip,
            metadata,
            security,
            channel: None,
            timeout: c.timeout,
            endpoint_url: c.endpoint.clone(),
        })
    }

    /// The client and metadata for the credentials in use (a new lazy channel when
    /// a reload changed them).
    fn client(
        &mut self,
    ) -> (
        tonic::client::Grpc<tonic::transport::Channel>,
        tonic::metadata::MetadataMap,
    ) {
        let (generation, security) = self.security.current();
        if let Some((g, client, metadata)) = &self.channel
            && *g == generation
        {
            return (client.clone(), metadata.clone());
        }
        let connector = security.connector(Alpn::H2, None);
        let mut client =
            tonic::client::Grpc::new(self.endpoint.connect_with_connector_lazy(connector));
        if self.gzip {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let mut metadata = self.metadata.clone();
        for (name, value) in security.headers() {
            // Header names and values were checked when loaded; one that is not
            // valid metadata is skipped rather than sent broken.
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.insert(key, value);
            }
        }
        self.channel = Some((generation, client.clone(), metadata.clone()));
        (client, metadata)
    }
}

impl Backend for OtlpGrpc {
    fn send(&mut self, body: Bytes) -> SendFuture<'_> {
        Box::pin(async move {
            let (mut client, metadata) = self.client();
            let mut request = tonic::Request::new(body);
            *request.metadata_mut() = metadata;
            request.set_timeout(self.timeout);
            let endpoint = &self.endpoint_url;
            let call = async {
                client
                    .ready()
                    .await
                    .map_err(|e| SendError::unreachable(endpoint, &e))?;
                let path = hyper::http::uri::PathAndQuery::from_static(OTLP_EXPORT_PATH);
                client
                    .unary(request, path, PreEncoded)
                    .await
                    .map_err(classify_status)
            };
            // tonic's own deadline covers the call; this also covers connecting.
            let response = tokio::time::timeout(self.timeout + Duration::from_secs(1), call)
                .await
                .map_err(|_| SendError::Retry {
                    reason: format!(
                        "no answer from {} within {:?}",
                        self.endpoint_url, self.timeout
                    ),
                    retry_after: None,
                    cause: FailureCause::Timeout,
                })??;
            Ok(Sent {
                rejected_points: rejected_points(response.get_ref()),
            })
        })
    }
}

/// Sorts a gRPC status into retry or permanent (the OTLP specification's retryable
/// codes, plus `RESOURCE_EXHAUSTED` and `UNKNOWN`, which tonic reports for broken
/// connections).
fn classify_status(status: tonic::Status) -> SendError {
    use tonic::Code;
    if let Some(tls) = TlsFailure::find(&status) {
        return SendError::Retry {
            reason: format!("gRPC {:?}: {tls}", status.code()),
            retry_after: None,
            cause: FailureCause::Tls,
        };
    }
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    // A status made by the transport (the connection failed) carries its error.
    let cause = if std::error::Error::source(&status).is_some() {
        FailureCause::Connect
    } else {
        FailureCause::GrpcStatus
    };
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
            cause,
        },
        _ => SendError::Permanent { reason, cause },
    }
}

/// A tonic codec that sends bytes that already are an encoded message (the WAL's
/// record; in the receiver's tests, bytes no prost client would send) and decodes the
/// OTLP export response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreEncoded;

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
    fn partial_success_is_read() {
        let response = ExportMetricsServiceResponse {
            partial_success: Some(weir_proto::metrics_service::ExportMetricsPartialSuccess {
                rejected_data_points: 7,
                error_message: "too old".into(),
            }),
        };
        let body = response.encode_to_vec();
        let decoded = ExportMetricsServiceResponse::decode(&body[..]).unwrap();
        assert_eq!(rejected_points(&decoded), 7);
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
                SendError::Permanent { .. }
            ));
        }
    }
}
