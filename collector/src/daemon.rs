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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};
use weir_core::Aggregator;

use crate::config::{Config, fmt_duration};
use crate::control::{FlushRequest, FlushSummary, ReloadReport, ReloadRequest, ReloadResult};
use crate::instance::Instance;
use crate::serve::Listeners;
use crate::serve::Server;
use crate::serve::admin::AdminState;
use crate::serve::exposition::Page;
use crate::sources::{Source, SourceError};
use crate::telemetry::Telemetry;
use crate::tls::server::{
    Alpn, ServerTls, TlsListeners, tables as tls_tables, tables_mut as tls_tables_mut,
};

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
    /// A listener's `tls` table names a file that could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::server::ServerTlsError),
    /// A TLS or credentials file of the config cannot be used.
    #[error("{0}")]
    Security(String),
    /// The instance was closed before the daemon's own shutdown (a bug).
    #[error("the instance was already closed")]
    Closed,
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

/// The running collector: an [`Instance`] (aggregator, flush loop, pipelines) with
/// the sources and listeners around it.
pub struct Daemon {
    config: Config,
    config_source: String,
    instance: Instance,
    /// The exposition endpoint's page (it reads the instance's aggregator).
    page: Page,
    /// The file the config came from, for reloads (none for the embedded default).
    config_path: Option<std::path::PathBuf>,
    /// The listeners served over TLS (their certificates are re-read on reload).
    tls: Vec<Arc<ServerTls>>,
}

impl Daemon {
    /// Builds the instance for `config`. `config_source` says where the config came
    /// from (a path, or "embedded default") for the startup line.
    pub fn new(config: Config, config_source: impl Into<String>) -> Daemon {
        let instance = Instance::new(&config);
        let page = Page::new(instance.aggregator().clone());
        Daemon {
            config,
            config_source: config_source.into(),
            instance,
            page,
            config_path: None,
            tls: Vec::new(),
        }
    }

    /// Where the config was read from: `POST /config/reload` and SIGHUP re-read it.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Daemon {
        self.config_path = Some(path);
        self
    }

    /// Re-reads the config file and applies what can change at run time: what the
    /// sources take on reload (the scrape section: targets added, removed or changed;
    /// unchanged targets keep running, stopped ones finish their scrape in flight),
    /// the shutdown grace period, and every TLS listener's certificate, key and
    /// client CA files (re-read each time, so replaced files take effect; a table's
    /// new paths too). A TLS file that does not load leaves that listener on its
    /// previous certificate and is reported in [`ReloadReport::errors`]. Other
    /// changed sections (a `tls` table added or removed among them) are reported as
    /// needing a restart and left as they are. An invalid file changes nothing.
    fn reload(&mut self, sources: &mut [Box<dyn Source>]) -> ReloadResult {
        let Some(path) = &self.config_path else {
            return Err(
                "weir runs on the embedded default config: there is no file to reload".into(),
            );
        };
        let new = Config::from_file(path).map_err(|e| e.to_string())?;
        new.check_security_files()?;
        // A listener's `tls` table is re-read on every reload, so a change inside it
        // is applied, not a reason to restart; adding or removing one is.
        let mut old = self.config.clone();
        for (running, (_, _, table)) in tls_tables_mut(&mut old).into_iter().zip(tls_tables(&new)) {
            if running.is_some() && table.is_some() {
                *running = table.cloned();
            }
        }
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
        // The running pipelines read their TLS and credentials files again (their
        // other settings take a restart).
        let mut reread = false;
        for p in self.instance.pipelines() {
            if p.has_security_files() {
                reread = true;
                if let Err(e) = p.reload_security() {
                    warn!(pipeline = %p.name(), error = %e, "reload could not use the pipeline's TLS or credentials files; what was in use stays");
                }
            }
        }
        if reread {
            applied.push("pipeline_credentials");
        }
        for s in sources.iter_mut() {
            if s.reload(&new, self.instance.aggregator()) {
                self.instance.telemetry().register(s.name(), s.metrics());
                applied.push(s.name());
            }
        }
        let mut errors = Vec::new();
        let mut tls_reloaded = false;
        for tls in &self.tls {
            let table = tls_tables(&new)
                .into_iter()
                .find_map(|(listener, _, table)| (listener == tls.listener()).then_some(table))
                .flatten();
            // None: the table was removed, which takes a restart (reported above).
            let Some(table) = table else { continue };
            match tls.reload(table) {
                Ok(()) => tls_reloaded = true,
                Err(e) => {
                    warn!(error = %e, "TLS certificate reload failed; the listener keeps its previous certificate");
                    errors.push(e.to_string());
                }
            }
        }
        if tls_reloaded {
            applied.push("tls");
        }
        // Only the sections applied above differ from the running config now, or
        // they are reported as needing a restart (and take effect after it).
        self.config.shutdown = new.shutdown.clone();
        self.config.scrape = new.scrape.clone();
        for (running, (_, _, table)) in tls_tables_mut(&mut self.config)
            .into_iter()
            .zip(tls_tables(&new))
        {
            if running.is_some() && table.is_some() {
                *running = table.cloned();
            }
        }
        info!(?applied, ?needs_restart, ?errors, "config reloaded");
        Ok(ReloadReport {
            applied,
            needs_restart,
            errors,
        })
    }

    /// The aggregator sources write into (through [`Aggregator::writer`]).
    pub fn aggregator(&self) -> &Aggregator {
        self.instance.aggregator()
    }

    /// What every stage reports (the admin API renders it).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.instance.telemetry()
    }

    /// Flushes once on a blocking thread and returns the summary (logged).
    ///
    /// # Errors
    /// [`DaemonError::FlushFailed`] if the flush panicked.
    pub async fn flush(&mut self) -> Result<FlushSummary, DaemonError> {
        Ok(self.instance.flush_async("flush (requested)").await?)
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
        self.config
            .check_security_files()
            .map_err(DaemonError::Security)?;
        // Pipelines first: they begin replaying their WALs while sources start.
        self.instance.start_pipelines().await?;
        let telemetry = self.instance.telemetry();
        let mut sources = crate::sources::start(&self.config, self.instance.aggregator()).await?;
        for s in &sources {
            telemetry.register(s.name(), s.metrics());
            self.tls.extend(s.tls());
        }
        let exposition = self.start_exposition().await?;
        let (flush_tx, mut flush_rx) = tokio::sync::mpsc::channel::<FlushRequest>(16);
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
        let mut hangups = Hangups::install();
        let admin_state = Arc::new(AdminState {
            telemetry: telemetry.clone(),
            reload_requests: reload_tx,
            flush_requests: flush_tx,
            stopping: AtomicBool::new(false),
            pipelines: self.instance.pipelines(),
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
        telemetry.register("listeners", Arc::new(Listeners(listeners)));
        if !self.tls.is_empty() {
            telemetry.register("tls", Arc::new(TlsListeners(self.tls.clone())));
        }
        let mut flushes = self.instance.flushes();
        self.instance.spawn_flush_loop();
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
                    let _ = reply.send(summary);
                }
                Ok(()) = flushes.changed() => {
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
        let last = self
            .instance
            .close_async(self.config.shutdown.grace_period)
            .await?;
        if let Some(a) = admin {
            a.stop();
        }
        info!("weir stopped");
        last.ok_or(DaemonError::Closed)
    }

    async fn start_admin(&mut self, state: Arc<AdminState>) -> Result<Option<Server>, DaemonError> {
        let c = &self.config.admin;
        if !c.enabled {
            return Ok(None);
        }
        let tls = ServerTls::for_listener(&self.config, "admin", Alpn::Http1)?;
        self.tls.extend(tls.clone());
        crate::serve::admin::start(c.address, tls, state)
            .await
            .map(Some)
            .map_err(cannot_listen("admin", c.address))
    }

    async fn start_exposition(&mut self) -> Result<Option<Server>, DaemonError> {
        let c = &self.config.exposition;
        if !c.enabled {
            return Ok(None);
        }
        let tls = ServerTls::for_listener(&self.config, "exposition", Alpn::Http1)?;
        self.tls.extend(tls.clone());
        crate::serve::exposition::start(c.address, tls, self.page.clone())
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
    use std::time::Duration;
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
