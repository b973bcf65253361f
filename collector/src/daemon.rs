//! The daemon's run loop: starts the sources, the pipelines and the listeners around
//! one aggregator, flushes every interval, serves flush and reload requests, and on a
//! stop signal drains the sources, flushes one last time and lets the pipelines send.
//!
//! Owns: the aggregator of the running process, the flush cadence, the per-flush
//! summary log line, the series-ceiling warning, and the startup and shutdown
//! sequences. Must never: run a flush on an async worker thread (flushes go to
//! `spawn_blocking`), let two flushes overlap, or exit on a stop signal without the
//! final flush.
//!
//! Startup: pipelines first (they open and recover their WALs on the blocking pool and
//! begin replaying), then the sources ([`crate::sources::start`]), the exposition
//! endpoint and the admin API; each stage registers its self-metrics in the
//! process's [`Telemetry`]. Shutdown: `/health` turns 503, sources stop (each drains
//! what it already received, bounded), the final flush goes into every WAL, the
//! pipelines get `shutdown.grace_period` to send, then the listeners close.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};
use weir_core::Aggregator;

use crate::config::{Config, fmt_duration};
use crate::control::{FlushRequest, FlushSummary, ReloadReport, ReloadRequest, ReloadResult};
use crate::pipeline::{Pipeline, PipelineSet};
use crate::serve::Listeners;
use crate::serve::admin::{AdminServer, AdminState};
use crate::serve::exposition::{ExpositionServer, Page};
use crate::sources::{Source, SourceError};
use crate::telemetry::{Kind, MetricsPage, ProcessMetrics, StageMetrics, Telemetry, labels};

/// Shortest time between two warnings that the series ceiling refuses points.
const CEILING_WARN_EVERY: Duration = Duration::from_secs(60);

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A source could not start (its address in use, say).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A listener of weir's own (admin API, exposition endpoint) could not start.
    #[error("cannot start the {listener} listener on {address}: {source}")]
    Listener {
        /// Which listener.
        listener: &'static str,
        /// The configured address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A flush panicked on its blocking thread (a bug; the batch is lost).
    #[error("flush task failed: {0}")]
    FlushFailed(#[from] tokio::task::JoinError),
    /// A pipeline could not start (its WAL directory unusable, say).
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// The error for a listener that could not start.
fn cannot_listen(
    listener: &'static str,
    address: std::net::SocketAddr,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Listener {
        listener,
        address: address.to_string(),
        source,
    }
}

/// The aggregator and the flushes, as reported in `/metrics` and `/status`.
struct AggregationMetrics {
    aggregator: Aggregator,
    last_flush: Mutex<Option<FlushSummary>>,
}

impl AggregationMetrics {
    fn last_flush(&self) -> Option<FlushSummary> {
        self.last_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl StageMetrics for AggregationMetrics {
    fn render(&self, page: &mut MetricsPage) {
        let stats = self.aggregator.stats();
        page.single(
            "weir_active_series",
            Kind::Gauge,
            "Series held by the aggregator.",
            stats.active_series as f64,
        );
        page.single(
            "weir_series_limit",
            Kind::Gauge,
            "The global series ceiling.",
            stats.max_series as f64,
        );
        page.single(
            "weir_series_ceiling_reached",
            Kind::Gauge,
            "1 while the global ceiling refuses new series.",
            f64::from(u8::from(stats.ceiling_reached)),
        );
        page.single(
            "weir_series_created_total",
            Kind::Counter,
            "Series created.",
            stats.created_series as f64,
        );
        page.single(
            "weir_series_evicted_total",
            Kind::Counter,
            "Series evicted after series_ttl without updates.",
            stats.evicted_series as f64,
        );
        page.single(
            "weir_kept_totals",
            Kind::Gauge,
            "Evicted counters and histograms whose running totals are kept for their return.",
            stats.kept_totals as f64,
        );
        page.single(
            "weir_kept_totals_dropped_total",
            Kind::Counter,
            "Kept totals dropped because aggregation.kept_totals_capacity was reached; such a series restarts at 0 with a new start time.",
            stats.kept_totals_dropped as f64,
        );
        page.family(
            "weir_rejected_total",
            Kind::Counter,
            "Points the aggregator refused, by reason.",
            stats
                .rejected
                .iter()
                .map(|(r, n)| (labels(&[("reason", r)]), *n as f64)),
        );
        page.family(
            "weir_cardinality_limit_exceeded_total",
            Kind::Counter,
            "Points refused by the per-metric series limit, by metric (bounded; the rest as other).",
            self.aggregator
                .cardinality_limit_exceeded()
                .into_iter()
                .map(|(m, n)| (labels(&[("metric", &m)]), n as f64)),
        );
        page.single(
            "weir_flushes_total",
            Kind::Counter,
            "Flushes.",
            stats.flushes as f64,
        );
        if let Some(last) = self.last_flush() {
            page.single(
                "weir_last_flush_duration_seconds",
                Kind::Gauge,
                "How long the latest flush took.",
                last.duration.as_secs_f64(),
            );
        }
    }

    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        let stats = self.aggregator.stats();
        vec![
            ("active_series", stats.active_series.into()),
            ("max_series", stats.max_series.into()),
            ("ceiling_reached", stats.ceiling_reached.into()),
            (
                "top_metrics",
                self.aggregator
                    .top_metrics(10)
                    .into_iter()
                    .map(|(name, n)| serde_json::json!({"metric": name, "series": n}))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            (
                "rejected",
                stats
                    .rejected
                    .iter()
                    .map(|(r, n)| (r.to_string(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            ),
            (
                "last_flush",
                self.last_flush()
                    .map_or(serde_json::Value::Null, |s| s.to_json()),
            ),
        ]
    }
}

/// Warns, at most once per [`CEILING_WARN_EVERY`], while the global series ceiling
/// refuses points: reaching it is a loss of data the operator must hear of, as the
/// WAL cap's drops are.
#[derive(Default)]
struct CeilingWarning {
    /// Ceiling refusals already reported.
    reported: u64,
    last_warned: Option<Instant>,
}

impl CeilingWarning {
    /// Looks at the refusals after a flush; returns true if it warned.
    fn check(&mut self, aggregator: &Aggregator) -> bool {
        let stats = aggregator.stats();
        let refused = stats
            .rejected
            .iter()
            .find(|(r, _)| *r == weir_core::Rejected::GlobalLimit.as_str())
            .map_or(0, |(_, n)| *n);
        let due = self
            .last_warned
            .is_none_or(|t| t.elapsed() >= CEILING_WARN_EVERY);
        if refused > self.reported && due {
            warn!(
                refused_points = refused - self.reported,
                refused_points_total = refused,
                active_series = stats.active_series,
                max_series = stats.max_series,
                "series ceiling reached: points of new series are refused (raise \
                 aggregation.max_series, or find the label that explodes in /status top_metrics)"
            );
            self.reported = refused;
            self.last_warned = Some(Instant::now());
            return true;
        }
        false
    }
}

/// The running collector: an aggregator and its flush loop.
pub struct Daemon {
    config: Config,
    config_source: String,
    aggregator: Aggregator,
    /// The exposition endpoint's page, replaced after every flush.
    page: Page,
    rejected_seen: u64,
    /// The file the config came from, for reloads (none for the embedded default).
    config_path: Option<std::path::PathBuf>,
    /// The forwarding pipelines, in config order (started by [`Daemon::run`]).
    pipelines: Vec<Arc<Pipeline>>,
    /// What every stage reports.
    telemetry: Arc<Telemetry>,
    aggregation: Arc<AggregationMetrics>,
    ceiling: CeilingWarning,
}

impl Daemon {
    /// Builds the aggregator for `config`. `config_source` says where the config came
    /// from (a path, or "embedded default") for the startup line.
    pub fn new(config: Config, config_source: impl Into<String>) -> Daemon {
        let aggregator = Aggregator::new(config.aggregator_config());
        let telemetry = Arc::new(Telemetry::new());
        telemetry.register(
            "process",
            Arc::new(ProcessMetrics {
                started: Instant::now(),
            }),
        );
        let aggregation = Arc::new(AggregationMetrics {
            aggregator: aggregator.clone(),
            last_flush: Mutex::new(None),
        });
        telemetry.register("aggregation", aggregation.clone());
        Daemon {
            config,
            config_source: config_source.into(),
            aggregator,
            page: Page::default(),
            rejected_seen: 0,
            config_path: None,
            pipelines: Vec::new(),
            telemetry,
            aggregation,
            ceiling: CeilingWarning::default(),
        }
    }

    /// Where the config was read from: `POST /config/reload` and SIGHUP re-read it.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Daemon {
        self.config_path = Some(path);
        self
    }

    /// Re-reads the config file and applies what can change at run time: what the
    /// sources take on reload (the scrape section: targets added, removed or changed;
    /// unchanged targets keep running, stopped ones finish their scrape in flight)
    /// and the shutdown grace period. Other changed sections are reported as needing
    /// a restart and left as they are. An invalid file changes nothing.
    fn reload(&mut self, sources: &mut [Box<dyn Source>]) -> ReloadResult {
        let Some(path) = &self.config_path else {
            return Err(
                "weir runs on the embedded default config: there is no file to reload".into(),
            );
        };
        let new = Config::from_file(path).map_err(|e| e.to_string())?;
        let old = &self.config;
        let needs_restart: Vec<&'static str> = [
            ("data_dir", new.data_dir == old.data_dir),
            ("aggregation", new.aggregation == old.aggregation),
            ("receivers", new.receivers == old.receivers),
            ("exposition", new.exposition == old.exposition),
            ("admin", new.admin == old.admin),
            ("log", new.log == old.log),
            ("pipelines", new.pipelines == old.pipelines),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect();
        let mut applied = Vec::new();
        if new.shutdown != old.shutdown {
            applied.push("shutdown");
        }
        for s in sources.iter_mut() {
            if s.reload(&new, &self.aggregator) {
                self.telemetry.register(s.name(), s.metrics());
                applied.push(s.name());
            }
        }
        // Only the sections applied above differ from the running config now, or
        // they are reported as needing a restart (and take effect after it).
        self.config.shutdown = new.shutdown.clone();
        self.config.scrape = new.scrape;
        info!(?applied, ?needs_restart, "config reloaded");
        Ok(ReloadReport {
            applied,
            needs_restart,
        })
    }

    /// The aggregator sources write into (through [`Aggregator::writer`]).
    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// What every stage reports (the admin API renders it).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// Flushes once on a blocking thread and returns the summary (not logged).
    ///
    /// # Errors
    /// [`DaemonError::FlushFailed`] if the flush panicked.
    pub async fn flush(&mut self) -> Result<FlushSummary, DaemonError> {
        let aggregator = self.aggregator.clone();
        let previous = self.rejected_seen;
        let page = self.config.exposition.enabled.then(|| self.page.clone());
        let pipelines = self.pipelines.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let batch = aggregator.flush();
            let duration = started.elapsed();
            // Every pipeline reads the same batch: encode, append to its WAL, queue
            // for its forwarder (never waiting on a backend).
            let heads = pipelines.iter().map(|p| p.accept(&batch)).collect();
            if let Some(page) = page {
                page.publish(&batch);
            }
            let mut summary = FlushSummary::new(&batch, &aggregator.stats(), previous, duration);
            summary.pipeline_heads = heads;
            summary
        })
        .await?;
        self.rejected_seen = summary.rejected_total;
        *self
            .aggregation
            .last_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(summary.clone());
        self.ceiling.check(&self.aggregator);
        Ok(summary)
    }

    /// Runs until `shutdown` completes: logs the startup line, flushes every
    /// `flush_interval` (one info line each), then on shutdown flushes a last time,
    /// logs it and returns its summary. `shutdown` yields the reason (e.g. the
    /// signal's name) for the log.
    ///
    /// # Errors
    /// [`DaemonError`] if a stage could not start or a flush panicked.
    pub async fn run<F>(mut self, shutdown: F) -> Result<FlushSummary, DaemonError>
    where
        F: Future<Output = &'static str>,
    {
        self.log_startup();
        // Pipelines first: they begin replaying their WALs while sources start.
        for p in self.config.pipelines.clone() {
            let data_dir = self.config.data_dir.clone();
            let pipeline = Pipeline::start(&p, &data_dir).await?;
            self.pipelines.push(Arc::new(pipeline));
        }
        self.telemetry
            .register("pipelines", Arc::new(PipelineSet(self.pipelines.clone())));
        let mut sources = crate::sources::start(&self.config, &self.aggregator).await?;
        for s in &sources {
            self.telemetry.register(s.name(), s.metrics());
        }
        let exposition = self.start_exposition().await?;
        let (flush_tx, mut flush_rx) = tokio::sync::mpsc::channel::<FlushRequest>(16);
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
        let mut hangups = Hangups::install();
        let admin_state = Arc::new(AdminState {
            telemetry: self.telemetry.clone(),
            reload_requests: reload_tx,
            flush_requests: flush_tx,
            stopping: AtomicBool::new(false),
            pipelines: self.pipelines.clone(),
            token: self.config.admin.token.clone(),
        });
        let admin = self.start_admin(admin_state.clone()).await?;
        let mut listeners: Vec<_> = sources.iter().flat_map(|s| s.listeners()).collect();
        listeners.extend(admin.as_ref().map(|a| ("admin", a.counters.clone())));
        listeners.extend(
            exposition
                .as_ref()
                .map(|e| ("exposition", e.counters.clone())),
        );
        self.telemetry
            .register("listeners", Arc::new(Listeners(listeners)));
        let period = self.config.aggregation.flush_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let reason = loop {
            tokio::select! {
                biased;
                reason = &mut shutdown => break reason,
                Some(reply) = reload_rx.recv() => {
                    let result = self.reload(&mut sources);
                    if let Err(e) = &result {
                        warn!(error = %e, "config reload refused; the running config stays");
                    }
                    let _ = reply.send(result);
                }
                () = hangups.recv() => {
                    if let Err(e) = self.reload(&mut sources) {
                        warn!(error = %e, "config reload (SIGHUP) refused; the running config stays");
                    }
                }
                Some(reply) = flush_rx.recv() => {
                    let summary = self.flush().await?;
                    summary.log("flush (requested)");
                    let _ = reply.send(summary);
                }
                _ = ticker.tick() => {
                    let summary = self.flush().await?;
                    summary.log("flush");
                    for s in &mut sources {
                        s.after_flush();
                    }
                }
            }
        };
        // Release: pairs with /health's Acquire load.
        admin_state.stopping.store(true, Ordering::Release);
        info!(
            reason,
            "shutting down: draining sources, then a final flush"
        );
        if let Some(e) = exposition {
            e.stop();
        }
        // Every source drains at once; the final flush takes what they drained.
        let stops: Vec<_> = sources
            .into_iter()
            .map(|s| tokio::spawn(s.stop()))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        let last = self.flush().await?;
        last.log("final flush");
        self.stop_pipelines().await;
        if let Some(a) = admin {
            a.stop();
        }
        info!("weir stopped");
        Ok(last)
    }

    /// Gives every pipeline the grace period (concurrently) to send what its WAL
    /// holds, then stops it; what is left goes out after the next start.
    async fn stop_pipelines(&mut self) {
        let grace = self.config.shutdown.grace_period;
        if !self.pipelines.is_empty() {
            info!(
                grace_period = %fmt_duration(grace),
                "forwarding what the WALs hold before exiting"
            );
        }
        let tasks: Vec<_> = self
            .pipelines
            .drain(..)
            .map(|p| tokio::spawn(async move { p.shutdown(grace).await }))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn start_admin(
        &self,
        state: Arc<AdminState>,
    ) -> Result<Option<AdminServer>, DaemonError> {
        let c = &self.config.admin;
        if !c.enabled {
            return Ok(None);
        }
        AdminServer::start(c.address, state)
            .await
            .map(Some)
            .map_err(cannot_listen("admin", c.address))
    }

    async fn start_exposition(&self) -> Result<Option<ExpositionServer>, DaemonError> {
        let c = &self.config.exposition;
        if !c.enabled {
            return Ok(None);
        }
        ExpositionServer::start(c.address, self.page.clone())
            .await
            .map(Some)
            .map_err(cannot_listen("exposition", c.address))
    }

    fn log_startup(&self) {
        let a = &self.config.aggregation;
        let buckets = format!("{:?}", a.histogram_buckets);
        let (log_filter, log_filter_from) = crate::logging::filter_text(&self.config.log);
        let pipelines: Vec<String> = self
            .config
            .pipelines
            .iter()
            .map(|p| format!("{} ({})", p.name(), p.kind()))
            .collect();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %self.config_source,
            flush_interval = %fmt_duration(a.flush_interval),
            series_ttl = %if a.series_ttl.is_zero() {
                "0s (eviction disabled)".to_owned()
            } else {
                fmt_duration(a.series_ttl)
            },
            max_series_per_metric = a.max_series_per_metric,
            max_series = a.max_series,
            writer_cache_capacity = a.writer_cache_capacity,
            max_tracked_metric_names = a.max_tracked_metric_names,
            histogram_buckets = %buckets,
            data_dir = %self.config.data_dir.display(),
            pipelines = %if pipelines.is_empty() {
                "none (flushes go to the exposition endpoint and this log)".to_owned()
            } else {
                pipelines.join(", ")
            },
            log_filter = %log_filter,
            log_filter_from = log_filter_from,
            log_format = self.config.log.format.as_str(),
            "weir started"
        );
    }
}

/// SIGHUP, which asks for a config reload. Never fires where the OS has no SIGHUP or
/// the handler cannot be installed (then only `POST /config/reload` reloads).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn install() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(
                    |e| warn!(error = %e, "no SIGHUP handler; reload with POST /config/reload"),
                )
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        {
            Hangups {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// The process's stop signals (SIGINT and SIGTERM), registered up front so a signal
/// that arrives early is not lost.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers the handlers. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The OS error if a handler cannot be registered.
    pub fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    /// Waits for the first stop signal and returns its name.
    pub async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            match tokio::signal::ctrl_c().await {
                Ok(()) => "ctrl-c",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{Sample, Temporality};

    fn config(flush: Duration) -> Config {
        let mut c = Config::default();
        c.aggregation.flush_interval = flush;
        c.receivers.statsd.address = "127.0.0.1:0".parse().unwrap();
        c.receivers.otlp.enabled = false;
        c.exposition.enabled = false;
        c.admin.enabled = false;
        c
    }

    #[tokio::test]
    async fn summary_counts_what_was_recorded() {
        let mut d = Daemon::new(config(Duration::from_secs(10)), "test");
        let agg = d.aggregator().clone();
        agg.record("hits", &[], Sample::Counter(2.0, Temporality::Delta), 0)
            .unwrap();
        agg.record(
            "hits",
            &[("a", "b")],
            Sample::Counter(3.0, Temporality::Delta),
            0,
        )
        .unwrap();
        agg.record(
            "lat",
            &[],
            Sample::Observe {
                value: 0.2,
                count: 4,
            },
            0,
        )
        .unwrap();
        assert!(
            agg.record("hits", &[], Sample::Counter(-1.0, Temporality::Delta), 0)
                .is_err()
        );
        let s = d.flush().await.unwrap();
        assert_eq!(s.sequence, 1);
        assert_eq!(s.series, 3);
        assert_eq!(s.counter_delta_sum, 5.0);
        assert_eq!(s.histogram_observations, 4);
        assert_eq!(s.rejected_total, 1);
        assert_eq!(s.rejected_since_last, 1);
        assert_eq!(s.rejected_reasons, "invalid_value=1");
        let s = d.flush().await.unwrap();
        assert_eq!(s.sequence, 2);
        assert_eq!(s.counter_delta_sum, 0.0);
        assert_eq!(s.rejected_total, 1);
        assert_eq!(s.rejected_since_last, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn run_flushes_every_interval_and_once_more_on_shutdown() {
        let d = Daemon::new(config(Duration::from_millis(100)), "test");
        let agg = d.aggregator().clone();
        agg.record("hits", &[], Sample::Counter(1.0, Temporality::Delta), 0)
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(d.run(async move {
            let _ = rx.await;
            "test"
        }));
        tokio::time::sleep(Duration::from_millis(350)).await;
        tx.send(()).unwrap();
        let last = task.await.unwrap().unwrap();
        // Three interval flushes (100, 200, 300 ms), then the final one.
        assert_eq!(last.sequence, 4);
        assert_eq!(agg.stats().flushes, 4);
    }

    #[test]
    fn reaching_the_series_ceiling_warns_once_per_period_with_the_count() {
        let mut c = config(Duration::from_secs(10));
        c.aggregation.max_series = 1;
        let agg = Aggregator::new(c.aggregator_config());
        let mut warning = CeilingWarning::default();
        agg.record("a", &[], Sample::Gauge(1.0), 0).unwrap();
        assert!(!warning.check(&agg), "no refusal yet: no warning");
        assert!(agg.record("b", &[], Sample::Gauge(1.0), 0).is_err());
        assert!(warning.check(&agg), "the first refusal warns");
        assert_eq!(warning.reported, 1);
        assert!(agg.record("c", &[], Sample::Gauge(1.0), 0).is_err());
        assert!(
            !warning.check(&agg),
            "a second refusal within the period is not warned again"
        );
        // Once the period is over, the refusals since the last warning are reported.
        warning.last_warned = Instant::now().checked_sub(CEILING_WARN_EVERY);
        assert!(warning.check(&agg));
        assert_eq!(warning.reported, 2);
        assert!(!warning.check(&agg), "nothing new: no warning");
    }

    #[tokio::test]
    async fn shutdown_before_the_first_tick_still_flushes() {
        let d = Daemon::new(config(Duration::from_secs(3600)), "test");
        let agg = d.aggregator().clone();
        agg.record("hits", &[], Sample::Counter(7.0, Temporality::Delta), 0)
            .unwrap();
        let last = d.run(async { "test" }).await.unwrap();
        assert_eq!(last.sequence, 1);
        assert_eq!(last.counter_delta_sum, 7.0);
    }
}
