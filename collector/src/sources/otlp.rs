//! The OTLP metrics receivers: gRPC (`MetricsService/Export`, tonic) and HTTP
//! (`POST /v1/metrics`, protobuf or JSON bodies, gzip accepted), both into weir-core's OTLP
//! mapping ([`weir_core::parse::otlp`]).
//!
//! Owns: the `[receivers.otlp]` section ([`OtlpReceiverConfig`]: schema, defaults,
//! limits, validation), the two listeners, request size limits (compressed and decompressed, against
//! gzip bombs), the limits against hostile or overloading clients, the pool of writers
//! requests borrow, and the answers: points the aggregator refused are reported in
//! `partial_success` with their count, never by holding the request open. Must never:
//! block a request on anything but the aggregator (which does not block), queue
//! requests without bound, run a request's CPU work on an async worker, or panic on a
//! body.
//!
//! Bodies are protobuf or OTLP/JSON (`application/json`), answered in the same
//! encoding.
//!
//! TLS: each listener over TLS when its table is set (`grpc_tls`, `http_tls`; see
//! [`crate::tls::server`]): the gRPC listener offers ALPN `h2`, the HTTP one
//! `http/1.1`. Handshakes run on a task per connection, never on the accept loop, and
//! must complete within `header_read_timeout`.
//!
//! Limits (`[receivers.otlp]`):
//! - `max_connections` per listener: the HTTP listener's cap is [`crate::serve`]'s; the
//!   gRPC listener's is checked as connections are accepted ([`admitted`]). Beyond it
//!   a connection is closed at once and counted.
//! - `max_requests_in_flight` over both transports (one semaphore, taken without
//!   waiting when a request's head arrives and held until it is answered): beyond it
//!   the request is answered "retry later" as the OTLP specification says, HTTP 503
//!   with `Retry-After` and gRPC `UNAVAILABLE` (retryable; `RESOURCE_EXHAUSTED` would
//!   be retried only with `RetryInfo`), and counted in
//!   [`OtlpCounters::overloaded`]. The gRPC check wraps the generated service
//!   (`Admission`), so it runs before tonic reads and decodes the message.
//! - `header_read_timeout`: HTTP, see [`crate::serve`]; over TLS also the time a
//!   handshake may take (both listeners). gRPC connections that read
//!   nothing for `header_read_timeout + body_read_timeout` are closed ([`Admitted`]):
//!   a call ends within `body_read_timeout` of its last byte, so only an idle or
//!   stalled connection hits it.
//! - `body_read_timeout`: an HTTP body must arrive whole within it (else 408 and the
//!   connection closed, [`OtlpCounters::body_timeouts`]); a gRPC call must end within
//!   it (tonic's server timeout).
//!
//! Blocking work: decompression, decoding and aggregation of an HTTP body, and the
//! decoding and aggregation of a gRPC request, run on tokio's blocking pool
//! (`spawn_blocking`), so a large request never holds an async worker that other
//! listeners (the admin API's `/health`) need; the in-flight cap bounds how many use
//! the pool. tonic itself decompresses gRPC messages on the async worker, within
//! `max_decompressed_bytes`.
//!
//! Decoding: a protobuf request (gRPC, or HTTP `application/x-protobuf`) reaches
//! weir-core as its bytes ([`apply_export_protobuf`], which reads Sum and Gauge
//! metrics in place and decodes the others with prost). So the gRPC service is written
//! here rather than generated: `ExportService` serves
//! `MetricsService/Export` through tonic's unary handling with a codec whose decoder
//! yields the message bytes (`RawExportCodec`); a body that is not an
//! `ExportMetricsServiceRequest` is answered `INTERNAL` with prost's reason, as
//! tonic's prost codec answers it, and counted in [`OtlpCounters::bad_requests`].

use std::convert::Infallible;
use std::future::Future;
use std::io::Read as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::serve::{Limits, ListenerCounters, plain};
use crate::tls::server::{Alpn, ServerTls, ServerTlsError, TlsServerConfig};
use weir_core::parse::otlp::{
    ExportReport, OtlpProtobufError, OtlpRejection, apply_export, apply_export_protobuf,
};
use weir_core::{Aggregator, Writer};
use weir_proto::Message;
use weir_proto::metrics_service::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

use crate::config::{Step, fmt_duration, keys};

/// `[receivers.otlp]`: OTLP metrics over gRPC and HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// Whether to listen at all. Default true.
    pub enabled: bool,
    /// gRPC listener. Default `127.0.0.1:4317`.
    pub grpc_address: SocketAddr,
    /// HTTP listener (`POST /v1/metrics`). Default `127.0.0.1:4318`.
    pub http_address: SocketAddr,
    /// Largest request body as sent (compressed or not), in bytes. Default 4 MiB.
    pub max_request_bytes: usize,
    /// Largest request after decompression, in bytes (against gzip bombs). Default
    /// 16 MiB; at least `max_request_bytes`.
    pub max_decompressed_bytes: usize,
    /// Connections open at once, per listener (gRPC and HTTP each); a connection
    /// beyond it is accepted and closed at once, and counted. Default 1024; at least 1.
    pub max_connections: usize,
    /// Export requests handled at once over both transports, from the request head
    /// to the answer (body read, decompression, decoding, aggregation); a request
    /// beyond it is answered "retry later" (HTTP 503 with `Retry-After`, gRPC
    /// `UNAVAILABLE`) and counted. It bounds the memory of requests in flight at
    /// about this many times `max_request_bytes + max_decompressed_bytes` plus their
    /// decoded form. Default 32; at least 1.
    pub max_requests_in_flight: usize,
    /// Time an HTTP connection has to send a complete request head, from its accept
    /// or its previous response; so also the keep-alive idle timeout. Default 10s;
    /// between 1ms and 10m.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a request has to arrive whole once its head is in: over HTTP the body
    /// (too slow: 408 and the connection closed); over gRPC the whole call. Default
    /// 30s; between 1ms and 10m.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// TLS on the gRPC listener (`[receivers.otlp.grpc_tls]`). Default none (plain).
    pub grpc_tls: Option<TlsServerConfig>,
    /// TLS on the HTTP listener (`[receivers.otlp.http_tls]`). Default none (plain).
    pub http_tls: Option<TlsServerConfig>,
}

/// Largest accepted `receivers.otlp.header_read_timeout` and `body_read_timeout`.
pub const MAX_OTLP_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        OtlpReceiverConfig {
            enabled: true,
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_address: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_request_bytes: 4 << 20,
            max_decompressed_bytes: 16 << 20,
            max_connections: 1024,
            max_requests_in_flight: 32,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            grpc_tls: None,
            http_tls: None,
        }
    }
}

impl OtlpReceiverConfig {
    /// Checks the section; on error returns the key inside it (`max_connections`) and
    /// the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.max_request_bytes < 1024 {
            return Err((
                keys(&["max_request_bytes"]),
                "must be at least 1024".to_owned(),
            ));
        }
        if self.max_decompressed_bytes < self.max_request_bytes {
            return Err((
                keys(&["max_decompressed_bytes"]),
                "must be at least max_request_bytes".to_owned(),
            ));
        }
        for (k, n) in [
            ("max_connections", self.max_connections),
            ("max_requests_in_flight", self.max_requests_in_flight),
        ] {
            if n == 0 {
                return Err((keys(&[k]), "must be greater than 0".to_owned()));
            }
        }
        for (k, t) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if t < Duration::from_millis(1) || t > MAX_OTLP_TIMEOUT {
                return Err((
                    keys(&[k]),
                    format!(
                        "must be between 1ms and {}, got {}",
                        fmt_duration(MAX_OTLP_TIMEOUT),
                        fmt_duration(t)
                    ),
                ));
            }
        }
        for (k, tls) in [("grpc_tls", &self.grpc_tls), ("http_tls", &self.http_tls)] {
            if let Some(tls) = tls {
                crate::config::within(&[k], tls.validate())?;
            }
        }
        Ok(())
    }
}

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
    /// `rejected` by reason, indexed like [`OtlpRejection::ALL`].
    pub rejected_by_reason: [AtomicU64; OtlpRejection::ALL.len()],
    /// Requests answered "retry later" because `max_requests_in_flight` were being
    /// handled (HTTP 503, gRPC `UNAVAILABLE`).
    pub overloaded: AtomicU64,
    /// HTTP requests whose body did not arrive within `body_read_timeout`.
    pub body_timeouts: AtomicU64,
}

/// What both transports share: the aggregator, a pool of writers and the in-flight
/// cap.
pub struct OtlpIngest {
    aggregator: Aggregator,
    /// Writers that record OTLP only: `apply_export` caches series under OTLP point
    /// identities, which must not share a cache with other receivers' keys.
    writers: ArrayQueue<Writer>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
    body_read_timeout: Duration,
    /// One permit per request being handled, over both transports.
    in_flight: Arc<Semaphore>,
    /// Counters since start.
    pub counters: OtlpCounters,
    /// The HTTP listener's connection counters.
    pub http_listener: Arc<ListenerCounters>,
    /// The gRPC listener's connection counters.
    pub grpc_listener: Arc<ListenerCounters>,
    /// Called on the thread that decodes an HTTP body, before decoding (tests hold a
    /// decode there).
    #[cfg(test)]
    decode_hook: Option<Box<dyn Fn() + Send + Sync>>,
}

impl OtlpIngest {
    fn new(config: &OtlpReceiverConfig, aggregator: &Aggregator) -> Self {
        OtlpIngest {
            aggregator: aggregator.clone(),
            writers: ArrayQueue::new(WRITER_POOL),
            max_request_bytes: config.max_request_bytes,
            max_decompressed_bytes: config.max_decompressed_bytes,
            body_read_timeout: config.body_read_timeout,
            in_flight: Arc::new(Semaphore::new(config.max_requests_in_flight.max(1))),
            counters: OtlpCounters::default(),
            http_listener: Arc::new(ListenerCounters::default()),
            grpc_listener: Arc::new(ListenerCounters::default()),
            #[cfg(test)]
            decode_hook: None,
        }
    }

    /// A slot for one request, or `None` (counted) when `max_requests_in_flight` are
    /// being handled. Never waits.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Applies a decoded request (OTLP/JSON) with a pooled writer.
    fn export(&self, req: &ExportMetricsServiceRequest) -> ExportMetricsServiceResponse {
        let report = self.with_writer(|w| apply_export(req, w));
        self.count(&report);
        response(&report)
    }

    /// Applies a protobuf request's bytes with a pooled writer; a body that is not
    /// a request is counted in `bad_requests`.
    fn export_protobuf(
        &self,
        body: &[u8],
    ) -> Result<ExportMetricsServiceResponse, OtlpProtobufError> {
        match self.with_writer(|w| apply_export_protobuf(body, w)) {
            Ok(report) => {
                self.count(&report);
                Ok(response(&report))
            }
            Err(e) => {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Runs `f` with a writer from the pool (a new one when it is empty), returned
    /// to the pool afterwards.
    fn with_writer<T>(&self, f: impl FnOnce(&mut Writer) -> T) -> T {
        let mut w = self
            .writers
            .pop()
            .unwrap_or_else(|| self.aggregator.writer());
        let out = f(&mut w);
        // A full pool drops the writer: more requests in flight than pooled writers.
        let _ = self.writers.push(w);
        out
    }

    fn count(&self, r: &ExportReport) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .accepted
            .fetch_add(r.accepted, Ordering::Relaxed);
        self.counters
            .rejected
            .fetch_add(r.rejected, Ordering::Relaxed);
        for (counter, n) in self.counters.rejected_by_reason.iter().zip(r.reasons) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
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

/// The TLS of the two listeners; `None` for a plain one.
#[derive(Default, Clone)]
pub struct ListenerTls {
    /// The gRPC listener's (`receivers.otlp.grpc_tls`).
    pub grpc: Option<Arc<ServerTls>>,
    /// The HTTP listener's (`receivers.otlp.http_tls`).
    pub http: Option<Arc<ServerTls>>,
}

impl ListenerTls {
    /// Loads the `grpc_tls` and `http_tls` tables of `config`.
    ///
    /// # Errors
    /// A file of a table could not be loaded; the error names the table and the file.
    pub fn load(config: &OtlpReceiverConfig) -> Result<ListenerTls, ServerTlsError> {
        let load = |listener, key, table: &Option<TlsServerConfig>, alpn| {
            table
                .as_ref()
                .map(|t| ServerTls::new(listener, key, t, alpn))
                .transpose()
        };
        Ok(ListenerTls {
            grpc: load(
                "otlp_grpc",
                "receivers.otlp.grpc_tls",
                &config.grpc_tls,
                Alpn::Grpc,
            )?,
            http: load(
                "otlp_http",
                "receivers.otlp.http_tls",
                &config.http_tls,
                Alpn::Http1,
            )?,
        })
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
    /// The listeners' TLS, where configured.
    pub tls: ListenerTls,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Loads the listeners' TLS files (if configured), binds both listeners and
    /// starts serving. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A listener could not be bound, or a `tls` table's file loaded (an
    /// `InvalidInput` error naming the table and the file).
    pub async fn start(
        config: &OtlpReceiverConfig,
        aggregator: &Aggregator,
    ) -> std::io::Result<Self> {
        let tls = ListenerTls::load(config)?;
        Self::start_with(config, OtlpIngest::new(config, aggregator), tls).await
    }

    async fn start_with(
        config: &OtlpReceiverConfig,
        ingest: OtlpIngest,
        tls: ListenerTls,
    ) -> std::io::Result<Self> {
        let ingest = Arc::new(ingest);
        let mut tasks = Vec::new();
        let grpc = TcpListener::bind(config.grpc_address).await?;
        let grpc_addr = grpc.local_addr()?;
        let service = Admission {
            inner: ExportService {
                ingest: ingest.clone(),
                max_decoding_message_size: config.max_decompressed_bytes,
            },
            ingest: ingest.clone(),
        };
        let (incoming, accepting) = admitted(
            grpc,
            config.max_connections,
            GrpcDeadlines {
                handshake: config.header_read_timeout,
                idle: config.header_read_timeout + config.body_read_timeout,
            },
            ingest.grpc_listener.clone(),
            tls.grpc.clone(),
        );
        tasks.push(accepting);
        let call_timeout = config.body_read_timeout;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .timeout(call_timeout)
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
        let limits = Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        };
        tasks.push(tokio::spawn(crate::serve::serve_within(
            http,
            "otlp http",
            limits,
            ingest.http_listener.clone(),
            tls.http.clone(),
            move |req| {
                let ingest = handler_ingest.clone();
                async move { handle_http(req, &ingest).await }
            },
        )));
        info!(
            grpc = %grpc_addr,
            http = %http_addr,
            grpc_tls = tls.grpc.is_some(),
            http_tls = tls.http.is_some(),
            "otlp receiver listening (gRPC, HTTP /v1/metrics)"
        );
        Ok(OtlpReceiver {
            grpc_addr: Some(grpc_addr),
            http_addr: Some(http_addr),
            ingest,
            tls,
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

/// The deadlines of a gRPC connection.
#[derive(Debug, Clone, Copy)]
pub struct GrpcDeadlines {
    /// For the TLS handshake, from the accept.
    pub handshake: Duration,
    /// For a read that returns nothing, once connected (see [`Admitted`]).
    pub idle: Duration,
}

/// gRPC connections as accepted by [`crate::serve::accept_loop`] (within `max` open at
/// once, beyond it closed at once and counted in `counters.refused`; Nagle's algorithm
/// off), over TLS when `tls` is given (each handshake on a task of its own, within
/// `deadlines.handshake`), each closed once it has read nothing for `deadlines.idle`.
/// The second value is the accept loop's task, which ends when the stream is dropped.
pub fn admitted(
    listener: TcpListener,
    max: usize,
    deadlines: GrpcDeadlines,
    counters: Arc<ListenerCounters>,
    tls: Option<Arc<ServerTls>>,
) -> (
    impl tokio_stream::Stream<Item = std::io::Result<Admitted>>,
    JoinHandle<()>,
) {
    use tokio_stream::StreamExt as _;
    use tonic::transport::server::Connected as _;
    // At most `max` connections hold a slot, and each sends once: never full.
    let (tx, rx) = tokio::sync::mpsc::channel::<Admitted>(max.max(1));
    let closed = tx.clone();
    let accept = crate::serve::accept_loop(
        listener,
        "otlp grpc",
        max,
        counters,
        move |stream, peer, slot| {
            let info = stream.connect_info();
            match &tls {
                None => {
                    let _ =
                        tx.try_send(Admitted::new(Box::new(stream), info, slot, deadlines.idle));
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(stream) = tls.handshake(stream, peer, deadlines.handshake).await
                        {
                            let conn = Admitted::new(Box::new(stream), info, slot, deadlines.idle);
                            let _ = tx.send(conn).await;
                        }
                    });
                }
            }
        },
    );
    let task = tokio::spawn(async move {
        tokio::select! {
            () = accept => {}
            () = closed.closed() => {}
        }
    });
    (
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok),
        task,
    )
}

/// What a gRPC connection reads and writes: a TCP stream, or a TLS stream over one.
pub trait ConnIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ConnIo for T {}

/// An accepted gRPC connection: holds its slot of the connection cap until dropped,
/// and fails its reads once nothing was read for `idle` (so hyper closes it).
pub struct Admitted {
    stream: Box<dyn ConnIo>,
    info: tonic::transport::server::TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    /// When the connection counts as idle; pushed back by every read that returns
    /// bytes.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Admitted {
    fn new(
        stream: Box<dyn ConnIo>,
        info: tonic::transport::server::TcpConnectInfo,
        slot: OwnedSemaphorePermit,
        idle: Duration,
    ) -> Admitted {
        Admitted {
            stream,
            info,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nothing read for the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// The gRPC service behind the in-flight cap: a call beyond `max_requests_in_flight`
/// is answered `UNAVAILABLE` before tonic reads or decodes its message; an admitted
/// call holds its slot until its answer is ready.
#[derive(Clone)]
struct Admission<S> {
    inner: S,
    ingest: Arc<OtlpIngest>,
}

type GrpcRequest = tonic::codegen::http::Request<tonic::body::Body>;
type GrpcResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<GrpcRequest> for Admission<S>
where
    S: tonic::codegen::Service<GrpcRequest, Response = GrpcResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        match self.ingest.admit() {
            Some(slot) => {
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let r = answer.await;
                    drop(slot);
                    r
                })
            }
            None => Box::pin(std::future::ready(Ok(tonic::Status::unavailable(
                "weir is handling max_requests_in_flight requests; retry later",
            )
            .into_http()))),
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admission<S> {
    const NAME: &'static str = S::NAME;
}

/// The gRPC path of `MetricsService/Export`.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The gRPC `MetricsService`: `Export` served by tonic's unary handling (framing,
/// gzip, the decoded size limit, status codes) with [`RawExportCodec`], so the
/// request reaches [`apply_export_protobuf`] as bytes; any other method is answered
/// `UNIMPLEMENTED`.
#[derive(Clone)]
struct ExportService {
    ingest: Arc<OtlpIngest>,
    /// Largest message after decompression (`max_decompressed_bytes`): beyond it
    /// tonic answers `RESOURCE_EXHAUSTED` without reading further.
    max_decoding_message_size: usize,
}

impl tonic::server::NamedService for ExportService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl tonic::codegen::Service<GrpcRequest> for ExportService {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(std::future::ready(Ok(tonic::Status::unimplemented(
                "weir serves MetricsService/Export only",
            )
            .into_http())));
        }
        let mut grpc = tonic::server::Grpc::new(RawExportCodec)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(self.max_decoding_message_size);
        let export = ExportCall(self.ingest.clone());
        Box::pin(async move { Ok(grpc.unary(export, req).await) })
    }
}

/// One `Export` call: the message bytes applied on the blocking pool.
struct ExportCall(Arc<OtlpIngest>);

impl tonic::server::UnaryService<Bytes> for ExportCall {
    type Response = ExportMetricsServiceResponse;
    type Future = Pin<
        Box<
            dyn Future<
                    Output = Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status>,
                > + Send,
        >,
    >;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        // Decoding and aggregating a large request takes milliseconds: off the async
        // worker.
        let ingest = self.0.clone();
        let body = request.into_inner();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || ingest.export_protobuf(&body)).await {
                Ok(Ok(answer)) => Ok(tonic::Response::new(answer)),
                // What tonic's prost codec answers for a message that does not decode.
                Ok(Err(e)) => Err(tonic::Status::internal(e.to_string())),
                Err(e) => {
                    warn!(error = %e, "otlp: an export failed");
                    Err(tonic::Status::internal("the export failed"))
                }
            }
        })
    }
}

/// The codec of `Export`: requests are handed over as the message's bytes (no copy:
/// a view of tonic's buffer), responses encoded by prost.
#[derive(Debug, Clone, Copy, Default)]
struct RawExportCodec;

impl tonic::codec::Codec for RawExportCodec {
    type Encode = ExportMetricsServiceResponse;
    type Decode = Bytes;
    type Encoder = RawExportCodec;
    type Decoder = RawExportCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawExportCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawExportCodec
    }
}

impl tonic::codec::Encoder for RawExportCodec {
    type Item = ExportMetricsServiceResponse;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: ExportMetricsServiceResponse,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        // tonic's buffer grows as written to, so this does not fail; if it did, the
        // call is answered rather than the task brought down.
        item.encode(buf)
            .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))
    }
}

impl tonic::codec::Decoder for RawExportCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// How long a client told "retry later" should wait, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

async fn handle_http(req: Request<Incoming>, ingest: &Arc<OtlpIngest>) -> Response<Full<Bytes>> {
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
    let Some(slot) = ingest.admit() else {
        let mut r = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "weir is handling max_requests_in_flight requests; retry later\n",
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
        return r;
    };
    let read = Limited::new(req.into_body(), ingest.max_request_bytes).collect();
    let body = match tokio::time::timeout(ingest.body_read_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes\n", ingest.max_request_bytes),
            );
        }
        Ok(Err(e)) => {
            ingest.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("reading the body failed: {e}\n"),
            );
        }
        Err(_) => {
            ingest
                .counters
                .body_timeouts
                .fetch_add(1, Ordering::Relaxed);
            let mut r = plain(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within body_read_timeout\n",
            );
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    // Inflating, decoding and aggregating take milliseconds for a large body: on the
    // blocking pool, so this worker goes on serving other connections.
    let work = ingest.clone();
    let answer = tokio::task::spawn_blocking(move || work.decode_and_export(&body, gzip, json));
    let r = answer.await.unwrap_or_else(|e| {
        warn!(error = %e, "otlp: an export failed");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "the export failed\n")
    });
    drop(slot);
    r
}

impl OtlpIngest {
    /// Decompresses (if `gzip`), decodes and aggregates one HTTP body, and encodes the
    /// answer. Blocking: runs on the blocking pool.
    fn decode_and_export(&self, body: &Bytes, gzip: bool, json: bool) -> Response<Full<Bytes>> {
        #[cfg(test)]
        if let Some(hook) = &self.decode_hook {
            hook();
        }
        let inflated;
        let body: &[u8] = if gzip {
            let mut out = Vec::new();
            let limit = self.max_decompressed_bytes as u64;
            // One byte past the limit tells "too large" from "exactly at the limit".
            let read = flate2::read::GzDecoder::new(&body[..])
                .take(limit + 1)
                .read_to_end(&mut out);
            match read {
                Ok(n) if n as u64 > limit => {
                    self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("decompressed body over {limit} bytes\n"),
                    );
                }
                Ok(_) => {
                    inflated = out;
                    &inflated
                }
                Err(e) => {
                    self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    return plain(StatusCode::BAD_REQUEST, &format!("bad gzip body: {e}\n"));
                }
            }
        } else {
            body
        };
        let answer = if json {
            weir_core::parse::otlp::decode_json(body)
                .map(|request| self.export(&request))
                .map_err(|e| {
                    self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    e.to_string()
                })
        } else {
            self.export_protobuf(body).map_err(|e| e.to_string())
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("not an ExportMetricsServiceRequest: {e}\n"),
                );
            }
        };
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
    /// A listener could not be bound, or a `tls` table's file loaded.
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

    fn listeners(&self) -> Vec<(&'static str, Arc<crate::serve::ListenerCounters>)> {
        let ingest = &self.receiver.ingest;
        vec![
            ("otlp_http", ingest.http_listener.clone()),
            ("otlp_grpc", ingest.grpc_listener.clone()),
        ]
    }

    fn tls(&self) -> Vec<Arc<ServerTls>> {
        let tls = &self.receiver.tls;
        tls.grpc.iter().chain(&tls.http).cloned().collect()
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
        page.family(
            "weir_otlp_points_rejected_by_reason_total",
            Counter,
            "OTLP data points refused, by reason (their sum is weir_otlp_points_rejected_total).",
            OtlpRejection::ALL
                .iter()
                .zip(&c.rejected_by_reason)
                .map(|(r, n)| (crate::telemetry::labels(&[("reason", r.as_str())]), load(n))),
        );
        page.single(
            "weir_otlp_overloaded_total",
            Counter,
            "OTLP requests answered \"retry later\" (HTTP 503 + Retry-After, gRPC UNAVAILABLE) because max_requests_in_flight were being handled.",
            load(&c.overloaded),
        );
        page.single(
            "weir_otlp_body_timeouts_total",
            Counter,
            "OTLP/HTTP requests whose body did not arrive within body_read_timeout (answered 408, connection closed).",
            load(&c.body_timeouts),
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

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use weir_proto::metrics_service::metrics_service_client::MetricsServiceClient;

    /// Generous bound for "the server answered / closed it": many times any timeout
    /// under test.
    const BOUND: Duration = Duration::from_secs(10);

    fn test_config() -> OtlpReceiverConfig {
        OtlpReceiverConfig {
            grpc_address: "127.0.0.1:0".parse().unwrap(),
            http_address: "127.0.0.1:0".parse().unwrap(),
            ..OtlpReceiverConfig::default()
        }
    }

    /// Reads until the peer closes (EOF or reset), within [`BOUND`]; `None` if the
    /// connection was still open at the bound.
    async fn read_until_closed(s: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(BOUND, async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok()
            .map(|()| String::from_utf8_lossy(&got).into_owned())
    }

    /// Reads until `needle` has arrived, within [`BOUND`].
    async fn read_until(s: &mut TcpStream, needle: &str) -> String {
        let mut got = Vec::new();
        let read = tokio::time::timeout(BOUND, async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(needle) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            read.is_ok() && text.contains(needle),
            "{needle:?} not in {text:?}"
        );
        text
    }

    /// A request head for `POST /v1/metrics` of `len` protobuf bytes.
    fn export_head(len: usize, extra: &str) -> String {
        format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {len}\r\n{extra}\r\n"
        )
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_cap_are_told_to_retry_later() {
        let config = OtlpReceiverConfig {
            max_requests_in_flight: 1,
            ..test_config()
        };
        let r = OtlpReceiver::start(&config, &Aggregator::default())
            .await
            .unwrap();
        let http = r.http_addr.unwrap();
        // The only slot: a request whose body is still to come. The 100 Continue says
        // its handler holds the slot and waits for the body.
        let mut held = TcpStream::connect(http).await.unwrap();
        held.write_all(export_head(10, "Expect: 100-continue\r\n").as_bytes())
            .await
            .unwrap();
        read_until(&mut held, "HTTP/1.1 100 Continue\r\n\r\n").await;

        let mut over = TcpStream::connect(http).await.unwrap();
        over.write_all(export_head(0, "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_until_closed(&mut over).await.unwrap().to_lowercase();
        assert!(answer.starts_with("http/1.1 503"), "{answer}");
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");

        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", r.grpc_addr.unwrap()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let status = MetricsServiceClient::new(channel)
            .export(ExportMetricsServiceRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(r.ingest.counters.overloaded.load(Ordering::Relaxed), 2);

        // Once the held request is answered, the slot serves the next one.
        held.write_all(&[0u8; 10]).await.unwrap();
        read_until(&mut held, "HTTP/1.1 400").await;
        let mut next = TcpStream::connect(http).await.unwrap();
        next.write_all(export_head(0, "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_until_closed(&mut next).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        r.stop();
    }

    /// One unary call of `path` with `body` as the message, gzip-compressed when
    /// `gzip`.
    async fn raw_call(
        addr: SocketAddr,
        path: &'static str,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<ExportMetricsServiceResponse, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        if gzip {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        client.ready().await.unwrap();
        client
            .unary(
                tonic::Request::new(Bytes::from(body)),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                crate::backends::otlp::PreEncoded,
            )
            .await
            .map(tonic::Response::into_inner)
    }

    #[tokio::test]
    async fn grpc_exports_reach_the_walk_as_bytes_and_bad_ones_are_refused_and_counted() {
        use weir_proto::metrics::{AggregationTemporality, Metric, NumberDataPoint};
        use weir_proto::metrics::{ResourceMetrics, ScopeMetrics, Sum, metric::Data};
        let agg = Aggregator::default();
        let r = OtlpReceiver::start(&test_config(), &agg).await.unwrap();
        let addr = r.grpc_addr.unwrap();
        let point = |v: f64| NumberDataPoint {
            value: Some(weir_proto::metrics::number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "jobs".into(),
                        // A negative increment: refused by the aggregator.
                        data: Some(Data::Sum(Sum {
                            data_points: vec![point(3.0), point(-1.0)],
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        for gzip in [false, true] {
            let answer = raw_call(addr, EXPORT_PATH, body.clone(), gzip)
                .await
                .unwrap();
            let partial = answer.partial_success.unwrap();
            assert_eq!(partial.rejected_data_points, 1);
            assert_eq!(
                partial.error_message,
                "1 of 2 data points refused: aggregator 1"
            );
        }
        assert_eq!(agg.flush().counter_delta_sum(), 6.0);
        let c = &r.ingest.counters;
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.accepted.load(Ordering::Relaxed), 2);
        assert_eq!(c.rejected.load(Ordering::Relaxed), 2);

        // Not a request: INTERNAL with prost's reason, as tonic's prost codec says it.
        let bad = vec![0x0a, 0x05, b'x'];
        let want = ExportMetricsServiceRequest::decode(&bad[..]).unwrap_err();
        let status = raw_call(addr, EXPORT_PATH, bad, false).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), want.to_string());
        assert_eq!(c.bad_requests.load(Ordering::Relaxed), 1);
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);

        // Over max_decompressed_bytes: refused by tonic before it is read whole.
        let huge = vec![0u8; test_config().max_decompressed_bytes + 1];
        let status = raw_call(addr, EXPORT_PATH, huge, true).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

        // Another method of the service.
        let path = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Other";
        let status = raw_call(addr, path, Vec::new(), false).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        r.stop();
    }

    #[tokio::test]
    async fn a_body_that_trickles_in_is_cut_at_the_deadline() {
        let config = OtlpReceiverConfig {
            body_read_timeout: Duration::from_millis(100),
            ..test_config()
        };
        let r = OtlpReceiver::start(&config, &Aggregator::default())
            .await
            .unwrap();
        let mut s = TcpStream::connect(r.http_addr.unwrap()).await.unwrap();
        s.write_all(export_head(1000, "").as_bytes()).await.unwrap();
        s.write_all(&[0u8; 10]).await.unwrap();
        let answer = read_until_closed(&mut s)
            .await
            .expect("the connection was still open");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(r.ingest.counters.body_timeouts.load(Ordering::Relaxed), 1);
        r.stop();
    }

    /// The HTTP/2 client preface and an empty SETTINGS frame.
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    /// Opens an HTTP/2 connection and waits for the server's SETTINGS frame: it was
    /// accepted and is being served.
    async fn h2_connect(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        let mut head = [0u8; 9];
        tokio::time::timeout(BOUND, s.read_exact(&mut head))
            .await
            .expect("no SETTINGS from the server")
            .unwrap();
        assert_eq!(head[3], 0x4, "a SETTINGS frame: {head:?}");
        s
    }

    #[tokio::test]
    async fn grpc_connections_beyond_the_cap_are_closed_and_counted() {
        let config = OtlpReceiverConfig {
            max_connections: 1,
            ..test_config()
        };
        let r = OtlpReceiver::start(&config, &Aggregator::default())
            .await
            .unwrap();
        let grpc = r.grpc_addr.unwrap();
        let _first = h2_connect(grpc).await;
        let mut second = TcpStream::connect(grpc).await.unwrap();
        let _ = second.write_all(H2_PREFACE).await;
        assert_eq!(read_until_closed(&mut second).await.as_deref(), Some(""));
        let c = &r.ingest.grpc_listener;
        assert_eq!(c.refused.load(Ordering::Relaxed), 1);
        assert_eq!(c.accepted.load(Ordering::Relaxed), 1);
        r.stop();
    }

    #[tokio::test]
    async fn an_idle_grpc_connection_is_closed() {
        let config = OtlpReceiverConfig {
            header_read_timeout: Duration::from_millis(50),
            body_read_timeout: Duration::from_millis(50),
            ..test_config()
        };
        let r = OtlpReceiver::start(&config, &Aggregator::default())
            .await
            .unwrap();
        let mut s = h2_connect(r.grpc_addr.unwrap()).await;
        assert!(
            read_until_closed(&mut s).await.is_some(),
            "the connection was still open after {BOUND:?}"
        );
        r.stop();
    }

    /// The admin API's `/health` answers while an OTLP body is being decoded: the
    /// decode is held (by the hook, on the thread that decodes) until `/health` has
    /// answered. The runtime has one worker thread, so a decode on it would stall
    /// `/health` and the hook's wait would run out instead of being released.
    #[tokio::test(flavor = "current_thread")]
    async fn health_answers_while_a_body_is_being_decoded() {
        use std::sync::Mutex;
        use std::sync::atomic::AtomicBool;

        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let config = test_config();
        let aggregator = Aggregator::default();
        let mut ingest = OtlpIngest::new(&config, &aggregator);
        let entered_tx = Mutex::new(Some(entered_tx));
        let release_rx = Mutex::new(release_rx);
        let flag = released.clone();
        ingest.decode_hook = Some(Box::new(move || {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let ok = release_rx.lock().unwrap().recv_timeout(BOUND).is_ok();
            flag.store(ok, Ordering::SeqCst);
        }));
        let r = OtlpReceiver::start_with(&config, ingest, ListenerTls::default())
            .await
            .unwrap();
        let (flush_requests, _f) = tokio::sync::mpsc::channel(1);
        let (reload_requests, _r) = tokio::sync::mpsc::channel(1);
        let state = Arc::new(crate::serve::admin::AdminState {
            telemetry: Arc::new(crate::telemetry::Telemetry::new()),
            flush_requests,
            reload_requests,
            stopping: AtomicBool::new(false),
            pipelines: Vec::new(),
            token: None,
        });
        let admin = crate::serve::admin::start("127.0.0.1:0".parse().unwrap(), None, state)
            .await
            .unwrap();

        let http = r.http_addr.unwrap();
        let export = tokio::spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(export_head(0, "Connection: close\r\n").as_bytes())
                .await
                .unwrap();
            read_until_closed(&mut s).await
        });
        tokio::time::timeout(BOUND, entered_rx)
            .await
            .expect("the decode never started")
            .unwrap();
        let mut s = TcpStream::connect(admin.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let health = read_until_closed(&mut s).await.unwrap();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        release_tx.send(()).unwrap();
        let answer = export.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            released.load(Ordering::SeqCst),
            "the decode was held until its wait ran out: /health could not answer meanwhile"
        );
        admin.stop();
        r.stop();
    }
}
