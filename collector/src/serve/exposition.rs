//! The exposition endpoint: `GET /metrics` serves the aggregator's state in the
//! Prometheus text format, so any Prometheus can scrape what weir aggregated (the
//! statsd_exporter role).
//!
//! Owns: the `[exposition]` section ([`ExpositionConfig`]), the listener and the page
//! ([`Page`]). Must never: hold anything between flushes but the text it served, or
//! take a point away from the pipelines.
//!
//! The page is encoded at most once per flush, by the first request after it, on the
//! blocking pool, by [`weir_core::encode::prometheus_page`]: the values as of that
//! request (counters and histograms as running totals, as [`Aggregator::peek`] reads
//! them), which the later requests of the same interval share. Encoding on every flush instead cost weir about half its CPU when it scraped
//! 100k series and forwarded them by remote write with nobody reading this page
//! (sorting and encoding every series, every interval; see `benches/README.md`, "The
//! scrape path"); keeping each flush's batch for a request that might come held 56
//! bytes per series (56 MB at 1M series) that nobody read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tracing::info;
use weir_core::Aggregator;

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

/// The page, shared by the endpoint's requests.
#[derive(Clone)]
pub struct Page(Arc<PageState>);

struct PageState {
    aggregator: Aggregator,
    /// The text served since the flush of the given sequence. Held by a request while
    /// it encodes, so that requests racing after a flush encode once.
    latest: Mutex<Option<(u64, Bytes)>>,
}

impl Page {
    /// The page of `aggregator`'s series.
    pub fn new(aggregator: Aggregator) -> Page {
        Page(Arc::new(PageState {
            aggregator,
            latest: Mutex::new(None),
        }))
    }

    /// The series in the Prometheus text format, encoded now unless a request did
    /// since the latest flush. Blocking (an encoding takes milliseconds per 10k
    /// series, and reading waits for a flush in progress): call it on the blocking
    /// pool.
    pub fn get(&self) -> Bytes {
        let mut latest = self.0.latest.lock().unwrap_or_else(|p| p.into_inner());
        let flushes = self.0.aggregator.flushes();
        if let Some((sequence, text)) = &*latest
            && *sequence == flushes
        {
            return text.clone();
        }
        let (sequence, text) = weir_core::encode::prometheus_page(&self.0.aggregator);
        let text = Bytes::from(text);
        // The page's own sequence: a flush between the check and the page is in it.
        *latest = Some((sequence, text.clone()));
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
    fn the_page_is_the_state_at_the_first_request_after_each_flush() {
        let agg = Aggregator::default();
        let page = Page::new(agg.clone());
        let set = |v: f64| {
            agg.record("temp", &[("room", "a")], Sample::Gauge(v), 0)
                .unwrap();
        };
        assert!(page.get().is_empty(), "nothing recorded yet");
        set(1.0);
        // Still the text of this interval's first request.
        assert!(page.get().is_empty());
        agg.flush();
        set(2.0);
        let first = page.get();
        assert_eq!(&first[..], b"# TYPE temp gauge\ntemp{room=\"a\"} 2\n");
        // Later requests of the interval get the same bytes, not a new encoding.
        set(3.0);
        assert_eq!(page.get().as_ptr(), first.as_ptr());
        agg.flush();
        assert_eq!(&page.get()[..], b"# TYPE temp gauge\ntemp{room=\"a\"} 3\n");
    }

    #[test]
    fn reading_the_page_takes_nothing_from_the_flushes() {
        let agg = Aggregator::default();
        let page = Page::new(agg.clone());
        let h = agg
            .handle("hits_total", &[], weir_core::MetricKind::Counter)
            .unwrap();
        h.increment(2).unwrap();
        assert_eq!(
            &page.get()[..],
            b"# TYPE hits_total counter\nhits_total 2\n"
        );
        h.increment(3).unwrap();
        assert_eq!(agg.flush().counter_delta_sum(), 5.0);
        assert_eq!(
            &page.get()[..],
            b"# TYPE hits_total counter\nhits_total 5\n"
        );
    }
}
