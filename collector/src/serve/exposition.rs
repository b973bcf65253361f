//! The exposition endpoint: `GET /metrics` serves the aggregator's state in the
//! Prometheus text format, so any Prometheus can scrape what weir aggregated (the
//! statsd_exporter role).
//!
//! Owns: the `[exposition]` section ([`ExpositionConfig`]), the listener and the page
//! ([`Page`]). Must never: hold anything between flushes but the page it served (as
//! text, gzip-compressed, or both), or take a point away from the pipelines.
//!
//! The page is encoded at most once per flush, by the first request after it, on the
//! blocking pool, by [`weir_core::encode::prometheus_page`]: the values as of that
//! request (counters and histograms as running totals, as [`Aggregator::peek`] reads
//! them), which the later requests of the same interval share. Encoding on every
//! flush instead cost weir about half its CPU when it scraped 100k series and
//! forwarded them by remote write with nobody reading this page (sorting and encoding
//! every series, every interval; see `benches/README.md`, "The scrape path"); keeping
//! each flush's batch for a request that might come held 56 bytes per series (56 MB
//! at 1M series) that nobody read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tracing::{info, warn};
use weir_core::Aggregator;

use crate::backends;
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
    /// The page served since the flush of its sequence. Held by a request while it
    /// encodes, so that requests racing after a flush encode once.
    latest: Mutex<Option<Rendered>>,
}

/// One flush's page, in the forms its requests asked for: the text, gzip-compressed
/// once a request accepted gzip (as Prometheus always does), when the text is let go
/// (a tenth of its size held until the next flush: ~2.5 instead of 25 MB at 1M
/// series), and inflated again only for a later request that wants it plain.
struct Rendered {
    sequence: u64,
    plain: Option<Bytes>,
    gzip: Option<Bytes>,
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
    /// since the latest flush: gzip-compressed if `gzip` (the request accepts it),
    /// which the returned flag confirms. Blocking (an encoding takes milliseconds per
    /// 10k series, and reading waits for a flush in progress): call it on the
    /// blocking pool.
    pub fn get(&self, gzip: bool) -> (Bytes, bool) {
        let mut latest = self.0.latest.lock().unwrap_or_else(|p| p.into_inner());
        let flushes = self.0.aggregator.flushes();
        let page = match &mut *latest {
            Some(page) if page.sequence == flushes => page,
            stale => {
                let (sequence, text) = weir_core::encode::prometheus_page(&self.0.aggregator);
                // The page's own sequence: a flush between the check and the page is
                // in it.
                stale.insert(Rendered {
                    sequence,
                    plain: Some(Bytes::from(text)),
                    gzip: None,
                })
            }
        };
        if gzip {
            if page.gzip.is_none() {
                let text = page.plain.as_deref().unwrap_or_default();
                // The fastest level: a page is mostly repeated names and label pairs,
                // which even that shrinks ~10x, at a fraction of the encoding's time.
                match backends::gzip(text) {
                    Ok(body) => {
                        page.gzip = Some(Bytes::from(body));
                        page.plain = None;
                    }
                    Err(e) => warn!(error = %e, "gzip of the exposition page failed; served plain"),
                }
            }
            if let Some(body) = &page.gzip {
                return (body.clone(), true);
            }
        }
        if page.plain.is_none() {
            let body = page.gzip.as_deref().unwrap_or_default();
            page.plain = Some(Bytes::from(inflate(body)));
        }
        (page.plain.clone().unwrap_or_default(), false)
    }
}

/// A page [`backends::gzip`] compressed, inflated again.
fn inflate(body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut text = Vec::with_capacity(body.len().saturating_mul(10));
    // Our own output, in memory: reading it cannot fail.
    let _ = flate2::read::GzDecoder::new(body).read_to_end(&mut text);
    text
}

/// Whether an `Accept-Encoding` header accepts gzip: a `gzip` (or `x-gzip`) coding, or
/// else `*`, with a weight other than 0 (RFC 9110, 12.5.3).
fn accepts_gzip(header: Option<&hyper::header::HeaderValue>) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let mut star = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        // No weight is 1; one that does not parse accepts nothing.
        let weight = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
        let accepted = weight.is_some_and(|q| q > 0.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return accepted;
        }
        if coding == "*" {
            star = accepted;
        }
    }
    star
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
            let gzip = accepts_gzip(req.headers().get(hyper::header::ACCEPT_ENCODING));
            let Ok((body, gzipped)) = tokio::task::spawn_blocking(move || page.get(gzip)).await
            else {
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            };
            let mut r = Response::new(Full::new(body));
            let headers = r.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            headers.insert(
                hyper::header::VARY,
                hyper::header::HeaderValue::from_static("Accept-Encoding"),
            );
            if gzipped {
                headers.insert(
                    hyper::header::CONTENT_ENCODING,
                    hyper::header::HeaderValue::from_static("gzip"),
                );
            }
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
        assert!(page.get(false).0.is_empty(), "nothing recorded yet");
        set(1.0);
        // Still the text of this interval's first request.
        assert!(page.get(false).0.is_empty());
        agg.flush();
        set(2.0);
        let (first, _) = page.get(false);
        assert_eq!(&first[..], b"# TYPE temp gauge\ntemp{room=\"a\"} 2\n");
        // Later requests of the interval get the same bytes, not a new encoding.
        set(3.0);
        assert_eq!(page.get(false).0.as_ptr(), first.as_ptr());
        agg.flush();
        assert_eq!(
            &page.get(false).0[..],
            b"# TYPE temp gauge\ntemp{room=\"a\"} 3\n"
        );
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
            &page.get(false).0[..],
            b"# TYPE hits_total counter\nhits_total 2\n"
        );
        h.increment(3).unwrap();
        assert_eq!(agg.flush().counter_delta_sum(), 5.0);
        assert_eq!(
            &page.get(false).0[..],
            b"# TYPE hits_total counter\nhits_total 5\n"
        );
    }

    #[test]
    fn a_page_is_gzipped_for_requests_that_accept_it_and_held_in_one_form() {
        let agg = Aggregator::default();
        let page = Page::new(agg.clone());
        for i in 0..1_000 {
            let v = i.to_string();
            agg.record("temp", &[("room", &v)], Sample::Gauge(1.0), 0)
                .unwrap();
        }
        let (text, gzipped) = page.get(false);
        assert!(!gzipped);
        let (gz, gzipped) = page.get(true);
        assert!(gzipped);
        assert!(gz.len() * 5 < text.len(), "{} of {}", gz.len(), text.len());
        assert_eq!(inflate(&gz), text);
        {
            let latest = page.0.latest.lock().unwrap();
            let held = latest.as_ref().unwrap();
            assert!(held.plain.is_none(), "the text is let go once compressed");
        }
        // The same interval's pages, in either form, until the next flush.
        assert_eq!(page.get(true).0.as_ptr(), gz.as_ptr());
        assert_eq!(page.get(false).0, text);
        agg.record("temp", &[("room", "0")], Sample::Gauge(2.0), 0)
            .unwrap();
        agg.flush();
        let (gz, gzipped) = page.get(true);
        assert!(gzipped);
        assert!(inflate(&gz).starts_with(b"# TYPE temp gauge\ntemp{room=\"0\"} 2\n"));
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        let accepts =
            |v: &str| accepts_gzip(Some(&hyper::header::HeaderValue::from_str(v).unwrap()));
        assert!(!accepts_gzip(None));
        for yes in [
            "gzip",
            "GZIP",
            "x-gzip",
            "identity, gzip;q=0.5",
            "*",
            "br;q=1, *;q=0.1",
            "gzip ; q=1.0",
        ] {
            assert!(accepts(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.000",
            "*;q=0",
            "gzip;q=x",
            "gzip;q=0, *",
        ] {
            assert!(!accepts(no), "{no}");
        }
    }
}
