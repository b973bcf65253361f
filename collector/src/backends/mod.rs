//! Backends: where a pipeline's batches go. One module per backend, each owning its
//! `[[pipelines]]` config variant, how a flush becomes request bodies, the requests it
//! sends and how an answer is sorted.
//!
//! - [`remote_write`]: Prometheus remote write 1.0 (protobuf + snappy over HTTP);
//! - [`otlp`]: OTLP `ExportMetricsServiceRequest` over gRPC or HTTP;
//! - [`influx`]: InfluxDB line protocol (1.x `/write`, 2.x `/api/v2/write`).
//!
//! Every outcome of a send is *sent* (perhaps with points the backend refused inside
//! an accepted request), *retry* (connection errors, timeouts, HTTP 408, 429 and 5xx,
//! gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, `ABORTED`,
//! `CANCELLED`, `UNKNOWN`) or *permanent* (any other 4xx, any other gRPC code:
//! retrying the same bytes cannot succeed).
//!
//! Adding a backend: a module here with its config struct (the common keys flattened
//! in as [`PipelineCommon`](crate::pipeline::PipelineCommon)), an `encode` function and
//! a [`Backend`] implementation, and one variant in
//! [`PipelineConfig`](crate::pipeline::PipelineConfig).
//!
//! Must never: retry, sleep or touch the WAL (the pipeline's forwarder loop does),
//! hold a request longer than the pipeline's `timeout`, or change a body (it is sent
//! exactly as the WAL holds it).

mod http;
pub mod influx;
pub mod otlp;
pub mod remote_write;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// Most bytes of an error response body quoted in a log line.
const ERROR_BODY_QUOTE: usize = 256;

/// A send that went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Points the backend said it refused although the request as a whole was taken
    /// (OTLP `partial_success.rejected_data_points`, the lines of an InfluxDB partial
    /// write).
    pub rejected_points: u64,
}

/// Why a send failed, as a stable label (`reason` of
/// `weir_pipeline_send_failures_total`): dashboards depend on these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The TLS handshake failed (unknown issuer, expired certificate, wrong name,
    /// client certificate refused).
    Tls,
    /// The backend could not be reached (connection refused, DNS, reset).
    Connect,
    /// No complete answer within the pipeline's `timeout`.
    Timeout,
    /// The backend answered with an HTTP error status.
    HttpStatus,
    /// The backend answered with a gRPC error status.
    GrpcStatus,
    /// The request could not be built.
    Request,
}

impl FailureCause {
    /// Every cause, in label order.
    pub const ALL: [FailureCause; 6] = [
        FailureCause::Tls,
        FailureCause::Connect,
        FailureCause::Timeout,
        FailureCause::HttpStatus,
        FailureCause::GrpcStatus,
        FailureCause::Request,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Tls => "tls",
            FailureCause::Connect => "connect",
            FailureCause::Timeout => "timeout",
            FailureCause::HttpStatus => "http_status",
            FailureCause::GrpcStatus => "grpc_status",
            FailureCause::Request => "request",
        }
    }

    /// Its index in [`FailureCause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
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
        /// Why, as a stable label.
        cause: FailureCause,
    },
    /// The backend refused these bytes for good; sending them again cannot help.
    #[error("{reason}")]
    Permanent {
        /// What happened, for the log.
        reason: String,
        /// Why, as a stable label.
        cause: FailureCause,
    },
}

impl SendError {
    /// Why, as a stable label.
    pub fn cause(&self) -> FailureCause {
        match self {
            SendError::Retry { cause, .. } | SendError::Permanent { cause, .. } => *cause,
        }
    }

    /// A failure to connect or exchange with `peer`: a TLS failure when the error
    /// chain holds one (with the handshake's reason in words), else a connection
    /// failure. Both are worth a retry (a certificate may be renewed, a CA file
    /// reloaded).
    pub fn unreachable(peer: &str, error: &(dyn std::error::Error + 'static)) -> SendError {
        match crate::tls::client::TlsFailure::find(error) {
            Some(tls) => SendError::Retry {
                reason: format!("cannot reach {peer}: {tls}"),
                retry_after: None,
                cause: FailureCause::Tls,
            },
            None => SendError::Retry {
                reason: format!("cannot reach {peer}: {}", error_chain(error)),
                retry_after: None,
                cause: FailureCause::Connect,
            },
        }
    }
}

/// An error and its sources, joined with ": " (hyper's own message is often just
/// "client error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut at = error.source();
    for _ in 0..8 {
        let Some(e) = at else { break };
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        at = e.source();
    }
    out
}

/// The future of one send.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, SendError>> + Send + 'a>>;

/// Sends the request bodies of one pipeline to its backend, one at a time, in the
/// order the forwarder hands them over.
pub trait Backend: Send {
    /// Sends one body exactly as the WAL holds it and sorts the answer.
    fn send(&mut self, body: Bytes) -> SendFuture<'_>;
}

/// The start of an error body, for a log line.
fn quote(body: &[u8]) -> String {
    let end = body.len().min(ERROR_BODY_QUOTE);
    String::from_utf8_lossy(&body[..end]).trim().to_owned()
}

/// `body` gzipped (fast level), for HTTP backends with `compression = "gzip"` and the
/// exposition page. Writing into a `Vec` cannot fail; callers keep the plain body if
/// it did.
pub(crate) fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(body)?;
    gz.finish()
}
