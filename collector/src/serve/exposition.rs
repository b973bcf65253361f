//! The exposition endpoint: `GET /metrics` serves the latest flushed batch in the
//! Prometheus text format, so any Prometheus can scrape what weir aggregated (the
//! statsd_exporter role).
//!
//! Owns: the `[exposition]` section ([`ExpositionConfig`]), the listener and the latest
//! encoded page. Must never: make a scrape wait for
//! a flush (the page is encoded once per flush, off the request path, and swapped in
//! under a lock held only for the swap or a clone of an `Arc`).

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
pub struct Page(Arc<Mutex<Bytes>>);

impl Page {
    /// Encodes `batch` and makes it the page served from now on.
    pub fn publish(&self, batch: &FlushBatch) {
        let text = Bytes::from(weir_core::encode::prometheus_text(batch));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    fn get(&self) -> Bytes {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
            let mut r = Response::new(Full::new(page.get()));
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
