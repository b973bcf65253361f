//! The small HTTP/1 server the daemon's endpoints share (OTLP/HTTP, the admin API, the
//! exposition endpoint): accept, `TCP_NODELAY`, one task per connection, a handler per
//! request, and the limits that keep a hostile or broken client from holding the
//! listener.
//!
//! Owns: the accept loop ([`accept_loop`], which the OTLP gRPC listener shares),
//! connection tasks, TLS on a listener whose `tls` table is set (the handshake runs on
//! the connection's task, within `header_read_timeout`, see
//! [`crate::tls::server`]), and the per-listener [`Limits`]:
//! - **Connection cap** (`max_connections`, a semaphore): a connection accepted while
//!   the cap is reached is closed at once and counted in
//!   [`ListenerCounters::refused`]. Closing, rather than leaving it in the kernel's
//!   backlog, gives the client an immediate answer it can retry on (an EOF or a reset)
//!   instead of a connect that hangs until its own timeout, and keeps the backlog for
//!   the connections the cap will admit.
//! - **Header read timeout** (`header_read_timeout`, hyper's timer): a connection must
//!   deliver a complete request head within that time of being accepted, and again of
//!   its previous response. So it is also the keep-alive idle timeout: hyper starts the
//!   timer whenever the connection waits for a request head, and a connection that
//!   sends nothing for that long is closed ([`ListenerCounters::header_timeouts`]).
//!   Over TLS the handshake has its own `header_read_timeout` from the accept (a
//!   failure counted in `weir_tls_handshakes_failed_total`), and the request head's
//!   starts after it.
//! - Request bodies are read by the handlers, which bound them in time themselves (the
//!   OTLP receiver's `body_read_timeout`); a handler that does not read the body lets
//!   hyper close the connection after the response instead of draining it.
//!
//! Must never: stop accepting because one accept, handshake or connection failed, wait
//! for a handshake on the accept loop, or hold more connections than the cap.

pub mod admin;
pub mod exposition;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::tls::server::ServerTls;

/// A response body of the server.
pub type Body = Full<Bytes>;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are accepted and closed at once. At least 1.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, from its accept or its
    /// previous response (so also the keep-alive idle timeout). Above zero.
    pub header_read_timeout: Duration,
}

impl Limits {
    /// The limits of the admin API and the exposition endpoint: a few scrapers and
    /// operators, never thousands of clients, so fixed rather than configured.
    pub const INTERNAL: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
    };
}

/// Counters of one listener since start. Relaxed: independent counters, read only for
/// reporting.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because a request head did not arrive in time (a slow or
    /// stalled head, or a kept-alive connection idle too long).
    pub header_timeouts: AtomicU64,
}

/// Serves `handler` on `listener` within [`Limits::INTERNAL`], in plain text, until
/// the task is aborted; see [`serve_within`].
pub async fn serve<F, Fut>(listener: TcpListener, what: &'static str, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let counters = Arc::new(ListenerCounters::default());
    serve_within(listener, what, Limits::INTERNAL, counters, None, handler).await;
}

/// Serves `handler` on `listener` within `limits` until the task is aborted, counting
/// into `counters`; over TLS when `tls` is given (the handshake on the connection's
/// task, within `limits.header_read_timeout`). `what` names the server in logs.
pub async fn serve_within<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    counters: Arc<ListenerCounters>,
    tls: Option<Arc<ServerTls>>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn_counters = counters.clone();
    accept_loop(
        listener,
        what,
        limits.max_connections,
        counters,
        move |stream, peer, slot| {
            let handler = handler.clone();
            let builder = builder.clone();
            let counters = conn_counters.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                match tls {
                    None => serve_connection(&builder, stream, service, &counters, what).await,
                    Some(tls) => {
                        let handshake = tls.handshake(stream, peer, limits.header_read_timeout);
                        if let Some(stream) = handshake.await {
                            serve_connection(&builder, stream, service, &counters, what).await;
                        }
                    }
                }
                drop(slot);
            });
        },
    )
    .await;
}

/// Serves one connection until it ends, counting a header timeout.
async fn serve_connection<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    counters: &ListenerCounters,
    what: &'static str,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    // Pinned here so the socket closes only after the outcome is counted.
    let mut conn = std::pin::pin!(conn);
    if let Err(e) = conn.as_mut().await {
        if e.is_timeout() {
            counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        debug!(error = %e, "{what}: connection ended");
    }
}

/// Accepts connections on `listener` forever: each is given to `admit` with its peer
/// and a slot of the `max` connections allowed at once (held until dropped), with
/// Nagle's algorithm off. Beyond `max` a connection is closed at once and counted in
/// `counters.refused`. `admit` must not wait: it spawns what the connection needs.
pub async fn accept_loop(
    listener: TcpListener,
    what: &'static str,
    max: usize,
    counters: Arc<ListenerCounters>,
    mut admit: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(max.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(what, &counters, max, peer);
            drop(stream);
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        // A response written in pieces must not wait for the client's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "{what}: cannot set TCP_NODELAY");
        }
        admit(stream, peer, slot);
    }
}

/// Counts a connection refused over the cap; warns on the first and then on every
/// power of two, so a flood is visible in the log without flooding it.
pub fn refuse(
    what: &'static str,
    counters: &ListenerCounters,
    max: usize,
    peer: std::net::SocketAddr,
) {
    let n = counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        warn!(%peer, refused_total = n, max_connections = max, "{what}: connection refused, too many open");
    } else {
        debug!(%peer, "{what}: connection refused, too many open");
    }
}

/// A `text/plain` response.
pub fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One of weir's own listeners (admin API, exposition endpoint): a handler served
/// within [`Limits::INTERNAL`] until stopped.
pub struct Server {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The listener's connection counters.
    pub counters: Arc<ListenerCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `address` and serves `handler` on it, over TLS when `tls` is given.
    /// `what` names the listener in logs. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start<F, Fut>(
        address: std::net::SocketAddr,
        what: &'static str,
        tls: Option<Arc<ServerTls>>,
        handler: F,
    ) -> std::io::Result<Server>
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(ListenerCounters::default());
        let task = tokio::spawn(serve_within(
            listener,
            what,
            Limits::INTERNAL,
            counters.clone(),
            tls,
            handler,
        ));
        Ok(Server {
            addr,
            counters,
            task,
        })
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The listeners' connection counters, as reported (label `listener`).
pub struct Listeners(pub Vec<(&'static str, Arc<ListenerCounters>)>);

impl crate::telemetry::StageMetrics for Listeners {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::{Kind::Counter, labels};
        let per = |get: fn(&ListenerCounters) -> &AtomicU64| {
            self.0.iter().map(move |(l, c)| {
                (
                    labels(&[("listener", l)]),
                    get(c).load(Ordering::Relaxed) as f64,
                )
            })
        };
        page.family(
            "weir_listener_connections_accepted_total",
            Counter,
            "TCP connections accepted and served, by listener.",
            per(|c| &c.accepted),
        );
        page.family(
            "weir_listener_connections_refused_total",
            Counter,
            "TCP connections closed at once because the listener's connection cap was reached.",
            per(|c| &c.refused),
        );
        page.family(
            "weir_listener_header_timeouts_total",
            Counter,
            "HTTP connections closed because no complete request head arrived in time (stalled, or idle between requests).",
            per(|c| &c.header_timeouts),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// Generous bound for "the server closed it": many times any timeout under test.
    const BOUND: Duration = Duration::from_secs(10);

    async fn start(limits: Limits) -> (std::net::SocketAddr, Arc<ListenerCounters>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ListenerCounters::default());
        tokio::spawn(serve_within(
            listener,
            "test",
            limits,
            counters.clone(),
            None,
            |_req| async { plain(StatusCode::OK, "ok\n") },
        ));
        (addr, counters)
    }

    /// Reads until the peer closes (EOF or reset), within [`BOUND`]; returns what was
    /// read, or `None` if the connection was still open at the bound.
    async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(BOUND, async {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok().map(|()| got)
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_disconnected() {
        let (addr, counters) = start(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(100),
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HT").await.unwrap();
        let got = read_until_closed(&mut s).await;
        assert!(
            got.is_some(),
            "the connection was still open after {BOUND:?}"
        );
        assert_eq!(counters.header_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_once_idle_past_the_timeout() {
        let (addr, counters) = start(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(100),
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut s).await.expect("closed when idle");
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        assert_eq!(counters.header_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_counted() {
        let (addr, counters) = start(Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(60),
        })
        .await;
        // The first holds the only slot: the server reads its head, so it was
        // accepted before the second connects.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        let mut second = TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let got = read_until_closed(&mut second).await;
        assert_eq!(got.as_deref(), Some(&b""[..]), "refused without an answer");
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(counters.accepted.load(Ordering::Relaxed), 1);
        // The first connection is still served.
        first
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let rest = read_until_closed(&mut first).await.expect("answered");
        assert!(
            String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"),
            "{rest:?}"
        );
    }
}
