//! The admin API (default `127.0.0.1:8686`): `GET /health`, `GET /status` (JSON),
//! `GET /metrics` (weir's own metrics, `weir_` prefix, Prometheus text),
//! `POST /flush` (flush now; answers with the flush's summary) and
//! `POST /config/reload` (re-read the config file; scrape changes and the TLS
//! listeners' certificate files are applied, others reported as needing a restart,
//! certificate files that did not load listed in `errors`; an invalid file answers
//! 400).
//!
//! With `admin.token` set, the mutating endpoints (`POST /flush`, `POST
//! /config/reload`) answer 401 unless the request carries `Authorization: Bearer
//! <token>`; the read-only ones stay open (like a Prometheus target).
//!
//! Owns: the `[admin]` section ([`AdminConfig`]: schema, defaults, and the check that a
//! non-loopback address has a token), the endpoint and the rendering of weir's self-metrics. Must never: block the
//! daemon (a flush request is a message to the run loop, answered when that flush is
//! done), run a mutating endpoint without the token when one is configured, or expose
//! more than counters and settings (never the token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::config::{Step, keys, within};
use crate::control::{FlushRequest, ReloadRequest};
use crate::pipeline::Pipeline;
use crate::serve::{Body, Server, plain};
use crate::telemetry::{MetricsPage, Telemetry};
use crate::tls::server::{ServerTls, TlsServerConfig};

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether to serve it. Default true.
    pub enabled: bool,
    /// Listener. Default `127.0.0.1:8686`. A non-loopback address needs `token`.
    pub address: SocketAddr,
    /// Bearer token the mutating endpoints (`POST /flush`, `POST /config/reload`)
    /// require (`Authorization: Bearer <token>`). Default none; required when
    /// `address` is not a loopback address. At least 16 characters.
    pub token: Option<String>,
    /// TLS (`[admin.tls]`). Default none (plain HTTP).
    pub tls: Option<TlsServerConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 8686)),
            token: None,
            tls: None,
        }
    }
}

impl AdminConfig {
    /// Checks the section; on error returns the key inside it (`token`) and the
    /// reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.enabled && !self.address.ip().is_loopback() && self.token.is_none() {
            return Err((
                keys(&["address"]),
                "is not a loopback address: set admin.token too (mutating endpoints \
                 would be open to the network)"
                    .to_owned(),
            ));
        }
        if let Some(t) = &self.token
            && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err((
                keys(&["token"]),
                "must be at least 16 characters, without spaces".to_owned(),
            ));
        }
        if let Some(tls) = &self.tls {
            within(&["tls"], tls.validate())?;
        }
        Ok(())
    }
}

/// What the admin API serves, shared with the daemon.
pub struct AdminState {
    /// What every stage reports (`/metrics`, `/status`).
    pub telemetry: Arc<Telemetry>,
    /// Flush requests to the run loop.
    pub flush_requests: mpsc::Sender<FlushRequest>,
    /// Reload requests to the run loop.
    pub reload_requests: mpsc::Sender<ReloadRequest>,
    /// Set when shutdown begins: `/health` answers 503 from then on.
    pub stopping: AtomicBool,
    /// The forwarding pipelines, in config order (`POST /flush` waits for them).
    pub pipelines: Vec<Arc<Pipeline>>,
    /// The bearer token of the mutating endpoints, if configured.
    pub token: Option<String>,
}

/// Binds and serves the admin API, over TLS when `tls` is given. Must be called inside
/// a tokio runtime.
///
/// # Errors
/// The listener could not be bound.
pub async fn start(
    address: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    state: Arc<AdminState>,
) -> std::io::Result<Server> {
    let https = tls.is_some();
    let server = Server::start(address, "admin", tls, move |req| {
        let state = state.clone();
        async move {
            let mutating = req.method() == Method::POST;
            if mutating && !authorized(req.headers(), state.token.as_deref()) {
                let mut r = plain(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs Authorization: Bearer <admin.token>\n",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            handle(req.method(), req.uri().path(), &state).await
        }
    })
    .await?;
    info!(address = %server.addr, tls = https, "admin API listening (/health, /status, /metrics, POST /flush)");
    Ok(server)
}

/// True if no token is configured, or the request carries it as a bearer token.
/// Compared in constant time (`subtle`), so the time taken says nothing about how
/// much of a guess was right.
fn authorized(headers: &hyper::HeaderMap, token: Option<&str>) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(token) = token else {
        return true;
    };
    let Some(given) = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

fn with_type(body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(method: &Method, path: &str, state: &AdminState) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/health") => {
            // Acquire: pairs with the daemon's Release store when shutdown begins.
            if state.stopping.load(Ordering::Acquire) {
                plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                plain(StatusCode::OK, "ok\n")
            }
        }
        (&Method::GET, "/metrics") => with_type(
            self_metrics(state),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, "/status") => with_type(status(state).to_string(), "application/json"),
        (&Method::POST, "/flush") => {
            let (tx, rx) = oneshot::channel();
            if state.flush_requests.send(tx).await.is_err() {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(Ok(summary)) => {
                    // The attempt: every pipeline either delivers what this flush
                    // wrote, fails an attempt, or runs out of time.
                    // All pipelines at once: the answer takes as long as the slowest.
                    let waits: Vec<_> = state
                        .pipelines
                        .iter()
                        .zip(&summary.pipeline_heads)
                        .map(|(p, head)| {
                            let (p, head) = (p.clone(), *head);
                            tokio::spawn(async move {
                                p.wait_delivered(head, FLUSH_FORWARD_TIMEOUT).await
                            })
                        })
                        .collect();
                    let mut outcomes = Vec::new();
                    for w in waits {
                        if let Ok(outcome) = w.await {
                            outcomes.push(outcome);
                        }
                    }
                    let mut body = summary.to_json();
                    body["pipelines"] = outcomes
                        .iter()
                        .map(|o| {
                            serde_json::json!({
                                "pipeline": o.pipeline,
                                "delivered": o.delivered,
                                "error": o.error,
                            })
                        })
                        .collect();
                    with_type(body.to_string(), "application/json")
                }
                _ => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the flush did not complete\n",
                ),
            }
        }
        (&Method::POST, "/config/reload") => {
            let (tx, rx) = oneshot::channel();
            if state.reload_requests.send(tx).await.is_err() {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(Ok(Ok(r))) => with_type(
                    serde_json::json!({
                        "applied": r.applied,
                        "needs_restart": r.needs_restart,
                        "errors": r.errors,
                    })
                    .to_string(),
                    "application/json",
                ),
                Ok(Ok(Err(e))) => plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
                _ => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the reload did not complete\n",
                ),
            }
        }
        (_, "/health" | "/metrics" | "/status" | "/flush" | "/config/reload") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "wrong method\n")
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "see /health, /status, /metrics, POST /flush, POST /config/reload\n",
        ),
    }
}

fn status(state: &AdminState) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    state.telemetry.status(&mut object);
    serde_json::Value::Object(object)
}

/// How long `POST /flush` waits for each pipeline's forward attempt.
const FLUSH_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// weir's own metrics in the Prometheus text format: whatever the stages registered.
pub fn self_metrics(state: &AdminState) -> String {
    let mut page = MetricsPage::new();
    state.telemetry.render(&mut page);
    page.into_string()
}
