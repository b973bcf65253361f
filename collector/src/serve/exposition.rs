//! The exposition endpoint: `GET /metrics` serves the latest flushed batch in the
//! Prometheus text format, so any Prometheus can scrape what weir aggregated (the
//! statsd_exporter role).
//!
//! Owns: the `[exposition]` section ([`ExpositionConfig`]), the listener and the latest
//! page. Must never: make a scrape wait for a flush, or a flush wait for an encoding.
//!
//! The page is encoded at most once per flush, by the first request after it, on the
//! blocking pool: a flush only swaps in its batch (an `Arc`) under a lock held for the
//! swap, and later requests of the same interval get the encoded bytes. Encoding on
//! every flush instead cost weir about half its CPU when it scraped 100k series and
//! forwarded them by remote write with nobody reading this page (sorting and encoding
//! every series, every interval; see `benches/README.md`, "The scrape path").

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tracing::info;
use weir_core::FlushBatch;

use crate::config::{Step, within};
use crate::serve::{Server, plain};
use crate::tls::server::{ServerTls, TlsServerConfig};

/// `[exposition]`: `GET /metrics` with the latest flush, for Prometheus to scrape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpositionConfig {
    /// Whether to serve it. Default true.
    pub enabled: bool,
    /// Listener. Default `127.0.0.1:9102` (statsd_exporter's port).
    pub address: SocketAddr,
    /// TLS (`[exposition.tls]`). Default none (plain HTTP).
    pub tls: Option<TlsServerConfig>,
}

impl Default for ExpositionConfig {
    fn default() -> Self {
        ExpositionConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9102)),
            tls: None,
        }
    }
}

impl ExpositionConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        match &self.tls {
            Some(tls) => within(&["tls"], tls.validate()),
            None => Ok(()),
        }
    }
}

/// The latest page, shared between the flusher (writer) and the endpoint (readers).
#[derive(Default, Clone)]
pub struct Page(Arc<PageState>);

#[derive(Default)]
struct PageState {
    latest: Mutex<Latest>,
    /// Held by a request while it encodes, so that requests racing after a flush
    /// encode its batch once; never taken by the flusher.
    encoding: Mutex<()>,
}

/// What the page holds: the latest batch until a request encodes it, then its text.
enum Latest {
    Batch(Arc<FlushBatch>),
    Encoded(Bytes),
}

impl Default for Latest {
    fn default() -> Self {
        Latest::Encoded(Bytes::new())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Page {
    /// Makes `batch` the page served from now on; it is encoded when first requested.
    /// Returns the batch it replaces if no request encoded that one, so its allocation
    /// can go to the next flush ([`weir_core::Aggregator::recycle`]).
    pub fn publish(&self, batch: &Arc<FlushBatch>) -> Option<Arc<FlushBatch>> {
        match std::mem::replace(&mut *lock(&self.0.latest), Latest::Batch(batch.clone())) {
            Latest::Batch(previous) => Some(previous),
            Latest::Encoded(_) => None,
        }
    }

    /// The latest batch in the Prometheus text format, encoded now if no request did
    /// since it was published. Blocking (an encoding takes milliseconds per 10k
    /// series): call it on the blocking pool.
    pub fn get(&self) -> Bytes {
        let _one = lock(&self.0.encoding);
        let batch = match &*lock(&self.0.latest) {
            Latest::Encoded(text) => return text.clone(),
            Latest::Batch(batch) => batch.clone(),
        };
        let text = Bytes::from(weir_core::encode::prometheus_text(&batch));
        let mut latest = lock(&self.0.latest);
        // A flush may have published a newer batch meanwhile: that one stays pending.
        if matches!(&*latest, Latest::Batch(b) if Arc::ptr_eq(b, &batch)) {
            *latest = Latest::Encoded(text.clone());
        }
        text
    }
}

/// Binds and serves `page` on `GET /metrics`, over TLS when `tls` is given. Must be
/// called inside a tokio runtime.
///
/// # Errors
/// The listener could not be bound.
pub async fn start(
    address: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    page: Page,
) -> std::io::Result<Server> {
    let https = tls.is_some();
    let server = Server::start(address, "exposition", tls, move |req| {
        let page = page.clone();
        async move {
            if req.uri().path() != "/metrics" {
                return plain(StatusCode::NOT_FOUND, "see /metrics\n");
            }
            if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            }
            let Ok(text) = tokio::task::spawn_blocking(move || page.get()).await else {
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            };
            let mut r = Response::new(Full::new(text));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    })
    .await?;
    info!(address = %server.addr, tls = https, "exposition endpoint listening (GET /metrics)");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use weir_core::{Aggregator, Sample};

    use super::*;

    #[test]
    fn the_page_is_the_latest_batch_encoded_once_per_flush() {
        let agg = Aggregator::default();
        let page = Page::default();
        assert!(page.get().is_empty(), "nothing flushed yet");
        let flush_with = |v: f64| {
            agg.record("temp", &[("room", "a")], Sample::Gauge(v), 0)
                .unwrap();
            page.publish(&Arc::new(agg.flush()));
        };
        flush_with(1.0);
        let first = page.get();
        assert_eq!(&first[..], b"# TYPE temp gauge\ntemp{room=\"a\"} 1\n");
        // The second request of the interval gets the same bytes, not a new encoding.
        assert_eq!(page.get().as_ptr(), first.as_ptr());
        flush_with(2.0);
        assert_eq!(&page.get()[..], b"# TYPE temp gauge\ntemp{room=\"a\"} 2\n");
    }

    #[test]
    fn a_batch_nobody_requested_comes_back_for_the_next_flush() {
        let agg = Aggregator::default();
        let page = Page::default();
        let first = Arc::new(agg.flush());
        assert!(page.publish(&first).is_none(), "nothing published before");
        let second = Arc::new(agg.flush());
        let back = page.publish(&second).expect("the first was never encoded");
        assert!(Arc::ptr_eq(&back, &first));
        page.get(); // a request encodes the second: the page drops it
        assert!(page.publish(&Arc::new(agg.flush())).is_none());
    }
}
