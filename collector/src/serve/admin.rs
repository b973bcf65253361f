//! The admin API (default `127.0.0.1:8686`): `GET /health`, `GET /status` (JSON),
//! `GET /metrics` (weir's own metrics, `weir_` prefix, Prometheus text),
//! `POST /flush` (flush now; answers with the flush's summary) and
//! `POST /config/reload` (re-read the config file; scrape changes are applied,
//! others reported as needing a restart; an invalid file answers 400).
//!
//! With `admin.token` set, the mutating endpoints (`POST /flush`, `POST
//! /config/reload`) answer 401 unless the request carries `Authorization: Bearer
//! <token>`; the read-only ones stay open (like a Prometheus target).
//!
//! Owns: the endpoint and the rendering of weir's self-metrics. Must never: block the
//! daemon (a flush request is a message to the run loop, answered when that flush is
//! done), run a mutating endpoint without the token when one is configured, or expose
//! more than counters and settings (never the token).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;
use weir_core::Aggregator;
use weir_core::parse::statsd::LineError;

use crate::control::{FlushRequest, FlushSummary, ReloadRequest};
use crate::pipeline::{Pipeline, PipelineCounters, PipelineStatus};
use crate::serve::{Body, Limits, ListenerCounters, plain};
use crate::sources::otlp::OtlpIngest;
use crate::sources::scrape::TargetCounters;
use crate::sources::statsd::StatsdCounters;

/// What the admin API reports on, shared with the daemon.
pub struct AdminState {
    /// The aggregator (its stats and limits).
    pub aggregator: Aggregator,
    /// The StatsD receiver's counters, if it runs.
    pub statsd: Option<Arc<StatsdCounters>>,
    /// The OTLP receivers' state, if they run.
    pub otlp: Option<Arc<OtlpIngest>>,
    /// Scrape targets and their counters (replaced by a reload).
    pub scrape: Mutex<Vec<(String, Arc<TargetCounters>)>>,
    /// The latest flush.
    pub last_flush: Mutex<Option<FlushSummary>>,
    /// Flush requests to the run loop.
    pub flush_requests: mpsc::Sender<FlushRequest>,
    /// Reload requests to the run loop.
    pub reload_requests: mpsc::Sender<ReloadRequest>,
    /// Set when shutdown begins: `/health` answers 503 from then on.
    pub stopping: AtomicBool,
    /// When the daemon started.
    pub started: Instant,
    /// The forwarding pipelines, in config order.
    pub pipelines: Vec<Arc<Pipeline>>,
    /// The bearer token of the mutating endpoints, if configured.
    pub token: Option<String>,
}

/// The running admin API.
pub struct AdminServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// The listener's connection counters.
    pub counters: Arc<ListenerCounters>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds and serves within [`Limits::INTERNAL`]. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start(address: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(ListenerCounters::default());
        let own = counters.clone();
        let limits = Limits::INTERNAL;
        let task = tokio::spawn(crate::serve::serve_within(
            listener,
            "admin",
            limits,
            counters.clone(),
            move |req| {
                let state = state.clone();
                let own = own.clone();
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
                    handle(req.method(), req.uri().path(), &state, &own).await
                }
            },
        ));
        info!(address = %addr, "admin API listening (/health, /status, /metrics, POST /flush)");
        Ok(AdminServer {
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

/// True if no token is configured, or the request carries it as a bearer token.
/// Compared without an early exit, so the time taken says nothing about the token.
fn authorized(headers: &hyper::HeaderMap, token: Option<&str>) -> bool {
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
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, t) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ t;
    }
    diff == 0
}

fn with_type(body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(
    method: &Method,
    path: &str,
    state: &AdminState,
    own: &ListenerCounters,
) -> Response<Body> {
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
            self_metrics(state, own),
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
                    let mut body = summary_json(&summary);
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
                    serde_json::json!({"applied": r.applied, "needs_restart": r.needs_restart})
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

fn summary_json(s: &FlushSummary) -> serde_json::Value {
    serde_json::json!({
        "sequence": s.sequence,
        "time_unix_ms": s.end_ms,
        "series": s.series,
        "evicted": s.evicted,
        "counter_delta_sum": s.counter_delta_sum,
        "histogram_observations": s.histogram_observations,
        "active_series": s.active_series,
        "rejected_total": s.rejected_total,
        "duration_seconds": s.duration.as_secs_f64(),
    })
}

fn status(state: &AdminState) -> serde_json::Value {
    let stats = state.aggregator.stats();
    let last = state
        .last_flush
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(summary_json);
    let scrape = state
        .scrape
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let targets: Vec<serde_json::Value> = scrape
        .iter()
        .map(|(url, c)| {
            serde_json::json!({
                "url": url,
                "up": c.up.load(Ordering::Relaxed) == 1,
                "scrapes": c.scrapes.load(Ordering::Relaxed),
                "failures": c.failures.load(Ordering::Relaxed),
                "last_scrape_unix_ms": match c.last_scrape_ms.load(Ordering::Relaxed) {
                    0 => None,
                    t => Some(t),
                },
                "last_error": c.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                "format": *c.format.lock().unwrap_or_else(|p| p.into_inner()),
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "active_series": stats.active_series,
        "max_series": stats.max_series,
        "ceiling_reached": stats.ceiling_reached,
        "top_metrics": state.aggregator.top_metrics(10).into_iter()
            .map(|(name, n)| serde_json::json!({"metric": name, "series": n}))
            .collect::<Vec<_>>(),
        "rejected": stats.rejected.iter().map(|(r, n)| (r.to_string(), serde_json::json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "last_flush": last,
        "scrape_targets": targets,
        "pipelines": state.pipelines.iter().map(|p| pipeline_json(p)).collect::<Vec<_>>(),
    })
}

/// How long `POST /flush` waits for each pipeline's forward attempt.
const FLUSH_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

fn pipeline_json(p: &Pipeline) -> serde_json::Value {
    let s = p.status();
    let c = p.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let last_success = load(&c.last_success_ms);
    serde_json::json!({
        "name": s.name,
        "type": s.kind.as_str(),
        "endpoint": s.endpoint,
        "wal_bytes": s.wal.bytes,
        "wal_segments": s.wal.segments,
        "unsent_batches": s.wal.unacked_records,
        "unsent_bytes": s.wal.unacked_bytes,
        "forward_lag_seconds": s.lag_seconds,
        "wal_dropped_batches": s.wal.dropped_records,
        "wal_dropped_bytes": s.wal.dropped_bytes,
        "sent_batches": load(&c.sent_batches),
        "sent_points": load(&c.sent_points),
        "failed_batches": load(&c.failed_batches),
        "retries": load(&c.retries),
        "last_success_unix_ms": (last_success > 0).then_some(last_success),
        "last_error": s.last_error,
    })
}

/// Escapes a label value for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// weir's own metrics in the Prometheus text format; `admin` is the admin listener's
/// own counters.
pub fn self_metrics(state: &AdminState, admin: &ListenerCounters) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let stats = state.aggregator.stats();
    metric(
        "weir_uptime_seconds",
        "gauge",
        "Seconds since weir started.",
        &one(state.started.elapsed().as_secs_f64()),
    );
    metric(
        "weir_active_series",
        "gauge",
        "Series held by the aggregator.",
        &one(stats.active_series as f64),
    );
    metric(
        "weir_series_limit",
        "gauge",
        "The global series ceiling.",
        &one(stats.max_series as f64),
    );
    metric(
        "weir_series_ceiling_reached",
        "gauge",
        "1 while the global ceiling refuses new series.",
        &one(f64::from(u8::from(stats.ceiling_reached))),
    );
    metric(
        "weir_series_created_total",
        "counter",
        "Series created.",
        &one(stats.created_series as f64),
    );
    metric(
        "weir_series_evicted_total",
        "counter",
        "Series evicted after series_ttl without updates.",
        &one(stats.evicted_series as f64),
    );
    metric(
        "weir_rejected_total",
        "counter",
        "Points the aggregator refused, by reason.",
        &stats
            .rejected
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        "weir_cardinality_limit_exceeded_total",
        "counter",
        "Points refused by the per-metric series limit, by metric (bounded; the rest as other).",
        &state
            .aggregator
            .cardinality_limit_exceeded()
            .into_iter()
            .map(|(m, n)| (format!("{{metric=\"{}\"}}", esc(&m)), n as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        "weir_flushes_total",
        "counter",
        "Flushes.",
        &one(stats.flushes as f64),
    );
    if let Some(last) = state
        .last_flush
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        metric(
            "weir_last_flush_duration_seconds",
            "gauge",
            "How long the latest flush took.",
            &one(last.duration.as_secs_f64()),
        );
    }
    if let Some(c) = &state.statsd {
        let s = c.stats();
        metric(
            "weir_statsd_datagrams_total",
            "counter",
            "StatsD datagrams read.",
            &one(s.datagrams as f64),
        );
        metric(
            "weir_statsd_lines_total",
            "counter",
            "StatsD lines that parsed.",
            &one(s.lines as f64),
        );
        metric(
            "weir_statsd_samples_total",
            "counter",
            "StatsD samples aggregated.",
            &one(s.samples as f64),
        );
        if let Some(drops) = s.kernel_drops {
            metric(
                "weir_statsd_kernel_drops_total",
                "counter",
                "StatsD datagrams the kernel dropped because a socket's receive buffer was full (/proc/net/udp).",
                &one(drops as f64),
            );
        }
        metric(
            "weir_statsd_parse_errors_total",
            "counter",
            "StatsD lines skipped, by reason.",
            &LineError::ALL
                .iter()
                .zip(&s.parse_errors)
                .map(|(r, (_, n))| (format!("{{reason=\"{}\"}}", r.as_str()), *n as f64))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(o) = &state.otlp {
        let c = &o.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric(
            "weir_otlp_requests_total",
            "counter",
            "OTLP export requests answered.",
            &one(load(&c.requests)),
        );
        metric(
            "weir_otlp_bad_requests_total",
            "counter",
            "OTLP requests refused whole.",
            &one(load(&c.bad_requests)),
        );
        metric(
            "weir_otlp_points_accepted_total",
            "counter",
            "OTLP data points aggregated.",
            &one(load(&c.accepted)),
        );
        metric(
            "weir_otlp_points_rejected_total",
            "counter",
            "OTLP data points refused (reported in partial_success).",
            &one(load(&c.rejected)),
        );
        metric(
            "weir_otlp_overloaded_total",
            "counter",
            "OTLP requests answered \"retry later\" (HTTP 503 + Retry-After, gRPC UNAVAILABLE) because max_requests_in_flight were being handled.",
            &one(load(&c.overloaded)),
        );
        metric(
            "weir_otlp_body_timeouts_total",
            "counter",
            "OTLP/HTTP requests whose body did not arrive within body_read_timeout (answered 408, connection closed).",
            &one(load(&c.body_timeouts)),
        );
    }
    let mut listeners: Vec<(&str, &ListenerCounters)> = vec![("admin", admin)];
    if let Some(o) = &state.otlp {
        listeners.push(("otlp_http", &*o.http_listener));
        listeners.push(("otlp_grpc", &*o.grpc_listener));
    }
    let per_listener = |get: fn(&ListenerCounters) -> u64| {
        listeners
            .iter()
            .map(|(l, c)| (format!("{{listener=\"{l}\"}}"), get(c) as f64))
            .collect::<Vec<_>>()
    };
    metric(
        "weir_listener_connections_accepted_total",
        "counter",
        "TCP connections accepted and served, by listener.",
        &per_listener(|c| c.accepted.load(Ordering::Relaxed)),
    );
    metric(
        "weir_listener_connections_refused_total",
        "counter",
        "TCP connections closed at once because the listener's connection cap was reached.",
        &per_listener(|c| c.refused.load(Ordering::Relaxed)),
    );
    metric(
        "weir_listener_header_timeouts_total",
        "counter",
        "HTTP connections closed because no complete request head arrived in time (stalled, or idle between requests).",
        &per_listener(|c| c.header_timeouts.load(Ordering::Relaxed)),
    );
    pipeline_metrics(state, &mut metric);
    process_metrics(state, &mut metric);
    let scrape = state
        .scrape
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !scrape.is_empty() {
        let per = |f: &dyn Fn(&TargetCounters) -> f64| {
            scrape
                .iter()
                .map(|(url, c)| (format!("{{target=\"{}\"}}", esc(url)), f(c)))
                .collect::<Vec<_>>()
        };
        metric(
            "weir_scrapes_total",
            "counter",
            "Scrapes attempted, by target.",
            &per(&|c| c.scrapes.load(Ordering::Relaxed) as f64),
        );
        metric(
            "weir_scrape_failures_total",
            "counter",
            "Scrapes that failed, by target.",
            &per(&|c| c.failures.load(Ordering::Relaxed) as f64),
        );
        metric(
            "weir_scrape_up",
            "gauge",
            "1 if the target's last scrape succeeded.",
            &per(&|c| c.up.load(Ordering::Relaxed) as f64),
        );
    }
    o
}

/// The per-pipeline self-metrics (label `pipeline`).
fn pipeline_metrics(
    state: &AdminState,
    metric: &mut impl FnMut(&str, &str, &str, &[(String, f64)]),
) {
    if state.pipelines.is_empty() {
        return;
    }
    let snapshots: Vec<_> = state
        .pipelines
        .iter()
        .map(|p| {
            (
                format!("{{pipeline=\"{}\"}}", esc(p.name())),
                p.status(),
                p.counters(),
            )
        })
        .collect();
    type Get = fn(&PipelineStatus, &PipelineCounters) -> f64;
    let table: [(&str, &str, &str, Get); 17] = [
        (
            "weir_pipeline_sent_batches_total",
            "counter",
            "Batches (request bodies) the backend took.",
            |_, c| c.sent_batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_sent_points_total",
            "counter",
            "Points in batches the backend took.",
            |_, c| c.sent_points.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_sent_bytes_total",
            "counter",
            "Bytes sent in batches the backend took (as sent).",
            |_, c| c.sent_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_failed_batches_total",
            "counter",
            "Batches the backend refused for good (dropped).",
            |_, c| c.failed_batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_failed_points_total",
            "counter",
            "Points in batches refused for good.",
            |_, c| c.failed_points.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_rejected_points_total",
            "counter",
            "Points the backend refused inside accepted batches (partial success).",
            |_, c| c.rejected_points.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_retries_total",
            "counter",
            "Send attempts that failed and are retried.",
            |_, c| c.retries.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_queue_full_total",
            "counter",
            "Batches that did not fit the forwarder queue (read back from the WAL).",
            |_, c| c.queue_full.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_wal_errors_total",
            "counter",
            "WAL appends, syncs, reads or acknowledgements that failed.",
            |_, c| c.wal_errors.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_dropped_batches_total",
            "counter",
            "Batches lost because the WAL failed and the queue was full.",
            |_, c| c.dropped_batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "weir_pipeline_last_success_timestamp_seconds",
            "gauge",
            "When the backend last took a batch (0: never).",
            |_, c| c.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        ),
        (
            "weir_pipeline_forward_lag_seconds",
            "gauge",
            "Age of the oldest unsent batch in the WAL (0 when all is sent).",
            |s, _| s.lag_seconds,
        ),
        (
            "weir_wal_bytes",
            "gauge",
            "Size of the pipeline's WAL segments on disk.",
            |s, _| s.wal.bytes as f64,
        ),
        (
            "weir_wal_segments",
            "gauge",
            "Segment files in the pipeline's WAL.",
            |s, _| s.wal.segments as f64,
        ),
        (
            "weir_wal_unsent_batches",
            "gauge",
            "Batches in the WAL not yet acknowledged by the backend.",
            |s, _| s.wal.unacked_records as f64,
        ),
        (
            "weir_wal_dropped_batches_total",
            "counter",
            "Unsent batches deleted because the WAL reached its size cap.",
            |s, _| s.wal.dropped_records as f64,
        ),
        (
            "weir_wal_dropped_bytes_total",
            "counter",
            "Bytes of unsent batches deleted because the WAL reached its size cap.",
            |s, _| s.wal.dropped_bytes as f64,
        ),
    ];
    for (name, kind, help, get) in table {
        let samples: Vec<(String, f64)> = snapshots
            .iter()
            .map(|(labels, s, c)| (labels.clone(), get(s, c)))
            .collect();
        metric(name, kind, help, &samples);
    }
}

/// The standard `process_*` metrics of Prometheus client libraries, read from
/// `/proc/self` (Linux); left out where the file is not there.
fn process_metrics(
    state: &AdminState,
    metric: &mut impl FnMut(&str, &str, &str, &[(String, f64)]),
) {
    let one = |v: f64| [(String::new(), v)];
    // USER_HZ, the unit of /proc times: 100 on every Linux architecture weir runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")";
        // vsize is field 23 (21 after ")").
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (num(11), num(12)) {
            metric(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                &one((u + s) / TICKS_PER_SECOND),
            );
        }
        if let Some(v) = num(20) {
            metric(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                &one(v),
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                &one(kib * 1024.0),
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            &one(fds.count() as f64),
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(max) = max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            &one(max),
        );
    }
    let start = std::time::SystemTime::now()
        .checked_sub(state.started.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
        &one(start),
    );
}
