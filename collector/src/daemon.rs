//! The daemon's run loop: builds the aggregator, flushes it every interval, and
//! flushes one last time on shutdown.
//!
//! Owns: the aggregator of the running process, the flush cadence, the per-flush
//! summary log line, and the shutdown sequence (stop signal, final flush, return).
//! Must never: run a flush on an async worker thread (flushes go to
//! `spawn_blocking`, so request/response tasks added later keep running), let two
//! flushes overlap, or exit on a stop signal without the final flush.
//!
//! Receivers: StatsD over UDP ([`crate::sources::statsd`]) and the scraper
//! ([`crate::sources::scrape`]). OTLP and the admin API come in later issues and plug in
//! through [`Daemon::aggregator`]. Batches are only
//! summarised until the pipelines exist.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};
use weir_core::Aggregator;

use crate::config::{Config, fmt_duration};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::control::{FlushRequest, FlushSummary, ReloadReport, ReloadRequest, ReloadResult};
use crate::pipeline::Pipeline;
use crate::serve::admin::{AdminServer, AdminState};
use crate::serve::exposition::{ExpositionServer, Page};
use crate::sources::otlp::OtlpReceiver;
use crate::sources::scrape::Scraper;
use crate::sources::statsd::{StatsdReceiver, StatsdStats};

/// How long shutdown waits for scrapes in flight.
const SCRAPE_STOP_WAIT: Duration = Duration::from_secs(2);

/// The error for a listener that could not start.
fn cannot_start(
    receiver: &'static str,
    address: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Receiver {
        receiver,
        address: address.to_string(),
        source,
    }
}

/// Warns when the kernel dropped StatsD datagrams since the last report (`seen` of
/// them were reported before); returns the new total.
fn warn_kernel_drops(stats: &StatsdStats, seen: u64) -> u64 {
    let total = stats.kernel_drops.unwrap_or(0);
    if total > seen {
        tracing::warn!(
            dropped = total - seen,
            since_start = total,
            "statsd: the kernel dropped datagrams (receive buffer full: raise \
             receivers.statsd.recv_buffer_bytes and net.core.rmem_max)"
        );
    }
    total
}

/// Warns about StatsD lines skipped since the last report (`seen` of them were
/// reported before); returns the new total. At most one line per flush.
fn warn_parse_errors(stats: &StatsdStats, seen: u64) -> u64 {
    let total = stats.parse_errors_total();
    if total > seen {
        let reasons: Vec<String> = stats
            .parse_errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        tracing::warn!(
            skipped = total - seen,
            since_start = %reasons.join(","),
            "statsd: malformed lines skipped"
        );
    }
    total
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A receiver could not start (its address in use, say).
    #[error("cannot start the {receiver} receiver on {address}: {source}")]
    Receiver {
        /// Which receiver.
        receiver: &'static str,
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
}

impl Daemon {
    /// Builds the aggregator for `config`. `config_source` says where the config came
    /// from (a path, or "embedded default") for the startup line.
    pub fn new(config: Config, config_source: impl Into<String>) -> Daemon {
        let aggregator = Aggregator::new(config.aggregator_config());
        Daemon {
            config,
            config_source: config_source.into(),
            aggregator,
            page: Page::default(),
            rejected_seen: 0,
            config_path: None,
            pipelines: Vec::new(),
        }
    }

    /// Where the config was read from: `POST /config/reload` and SIGHUP re-read it.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Daemon {
        self.config_path = Some(path);
        self
    }

    /// Re-reads the config file and applies what can change at run time: the scrape
    /// section (targets added, removed or changed; unchanged targets keep running,
    /// stopped ones finish their scrape in flight) and the shutdown grace period.
    /// Other changed sections are reported as needing a restart and left as they
    /// are. An invalid file changes nothing.
    fn reload(&mut self, scraper: &mut Option<Scraper>, admin: &AdminState) -> ReloadResult {
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
        let shutdown_changed = new.shutdown != old.shutdown;
        let scrape_changed = new.scrape != old.scrape;
        if shutdown_changed {
            self.config.shutdown = new.shutdown.clone();
            applied.push("shutdown");
        }
        if scrape_changed {
            self.config.scrape = new.scrape;
            match scraper {
                Some(s) => {
                    let changes = s.reconcile(&self.config.scrape, &self.aggregator);
                    info!(
                        started = changes.started,
                        stopped = changes.stopped,
                        kept = changes.kept,
                        "scrape targets reloaded (stopped targets finish their scrape in flight)"
                    );
                    self.log_scrape_targets();
                }
                None => *scraper = self.start_scraper(),
            }
            *admin.scrape.lock().unwrap_or_else(|p| p.into_inner()) = scraper
                .as_ref()
                .map(|s| s.targets.clone())
                .unwrap_or_default();
            applied.push("scrape");
        }
        info!(?applied, ?needs_restart, "config reloaded");
        Ok(ReloadReport {
            applied,
            needs_restart,
        })
    }

    /// The aggregator receivers write into (through [`Aggregator::writer`]).
    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
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
        Ok(summary)
    }

    /// Runs until `shutdown` completes: logs the startup line, flushes every
    /// `flush_interval` (one info line each), then on shutdown flushes a last time,
    /// logs it and returns its summary. `shutdown` yields the reason (e.g. the
    /// signal's name) for the log.
    ///
    /// # Errors
    /// [`DaemonError::FlushFailed`] if a flush panicked.
    pub async fn run<F>(mut self, shutdown: F) -> Result<FlushSummary, DaemonError>
    where
        F: Future<Output = &'static str>,
    {
        self.log_startup();
        // Pipelines first: they begin replaying their WALs while receivers start.
        for p in &self.config.pipelines {
            self.pipelines
                .push(Arc::new(Pipeline::start(p, &self.config.data_dir)?));
        }
        let statsd = self.start_statsd()?;
        let mut scraper = self.start_scraper();
        let otlp = self.start_otlp().await?;
        let exposition = self.start_exposition().await?;
        let (flush_tx, mut flush_rx) = tokio::sync::mpsc::channel::<FlushRequest>(16);
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
        let mut hangups = Hangups::install();
        let admin_state = Arc::new(AdminState {
            aggregator: self.aggregator.clone(),
            statsd: statsd.as_ref().map(StatsdReceiver::counters),
            otlp: otlp.as_ref().map(|o| o.ingest.clone()),
            scrape: Mutex::new(
                scraper
                    .as_ref()
                    .map(|s| s.targets.clone())
                    .unwrap_or_default(),
            ),
            reload_requests: reload_tx,
            last_flush: Mutex::new(None),
            flush_requests: flush_tx,
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            pipelines: self.pipelines.clone(),
            token: self.config.admin.token.clone(),
        });
        let admin = self.start_admin(admin_state.clone()).await?;
        let mut statsd_errors_seen = 0;
        let mut kernel_drops_seen = 0;
        let period = self.config.aggregation.flush_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let reason = loop {
            tokio::select! {
                biased;
                reason = &mut shutdown => break reason,
                Some(reply) = reload_rx.recv() => {
                    let result = self.reload(&mut scraper, &admin_state);
                    if let Err(e) = &result {
                        warn!(error = %e, "config reload refused; the running config stays");
                    }
                    let _ = reply.send(result);
                }
                () = hangups.recv() => {
                    if let Err(e) = self.reload(&mut scraper, &admin_state) {
                        warn!(error = %e, "config reload (SIGHUP) refused; the running config stays");
                    }
                }
                Some(reply) = flush_rx.recv() => {
                    let summary = self.flush().await?;
                    summary.log("flush (requested)");
                    *admin_state.last_flush.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary.clone());
                    let _ = reply.send(summary);
                }
                _ = ticker.tick() => {
                    let summary = self.flush().await?;
                    summary.log("flush");
                    *admin_state.last_flush.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary);
                    if let Some(r) = &statsd {
                        let stats = r.stats();
                        statsd_errors_seen = warn_parse_errors(&stats, statsd_errors_seen);
                        kernel_drops_seen = warn_kernel_drops(&stats, kernel_drops_seen);
                    }
                }
            }
        };
        // Release: pairs with /health's Acquire load.
        admin_state.stopping.store(true, Ordering::Release);
        info!(
            reason,
            "shutting down: draining receivers, then a final flush"
        );
        if let Some(s) = scraper {
            // Points of a scrape in flight make the final flush.
            s.stop(SCRAPE_STOP_WAIT).await;
        }
        if let Some(e) = exposition {
            e.stop();
        }
        if let Some(o) = otlp {
            let c = &o.ingest.counters;
            info!(
                requests = c.requests.load(std::sync::atomic::Ordering::Relaxed),
                bad_requests = c.bad_requests.load(std::sync::atomic::Ordering::Relaxed),
                accepted = c.accepted.load(std::sync::atomic::Ordering::Relaxed),
                rejected = c.rejected.load(std::sync::atomic::Ordering::Relaxed),
                "otlp receiver stopped"
            );
            o.stop();
        }
        if let Some(r) = statsd {
            let stats = r.stop();
            warn_parse_errors(&stats, statsd_errors_seen);
            info!(
                datagrams = stats.datagrams,
                lines = stats.lines,
                samples = stats.samples,
                rejected = stats.rejected,
                parse_errors = stats.parse_errors_total(),
                kernel_drops = stats.kernel_drops,
                "statsd receiver stopped"
            );
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

    fn start_statsd(&self) -> Result<Option<StatsdReceiver>, DaemonError> {
        let c = &self.config.receivers.statsd;
        if !c.enabled {
            return Ok(None);
        }
        let r = StatsdReceiver::start(c, &self.aggregator)
            .map_err(cannot_start("statsd", c.address))?;
        crate::sources::statsd::log_listening(&r);
        Ok(Some(r))
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
            .map_err(cannot_start("admin", c.address))
    }

    async fn start_exposition(&self) -> Result<Option<ExpositionServer>, DaemonError> {
        let c = &self.config.exposition;
        if !c.enabled {
            return Ok(None);
        }
        ExpositionServer::start(c.address, self.page.clone())
            .await
            .map(Some)
            .map_err(cannot_start("exposition", c.address))
    }

    async fn start_otlp(&self) -> Result<Option<OtlpReceiver>, DaemonError> {
        let c = &self.config.receivers.otlp;
        if !c.enabled {
            return Ok(None);
        }
        OtlpReceiver::start(c, &self.aggregator)
            .await
            .map(Some)
            .map_err(cannot_start(
                "otlp",
                format!("{} / {}", c.grpc_address, c.http_address),
            ))
    }

    fn start_scraper(&self) -> Option<Scraper> {
        let c = &self.config.scrape;
        if c.targets.is_empty() {
            return None;
        }
        let s = Scraper::start(c, &self.aggregator);
        self.log_scrape_targets();
        Some(s)
    }

    fn log_scrape_targets(&self) {
        for t in &self.config.scrape.targets {
            info!(
                url = %t.url,
                job = %t.job,
                interval = %fmt_duration(t.interval),
                timeout = %fmt_duration(t.timeout),
                offset = %fmt_duration(crate::sources::scrape::jitter(&t.url, t.interval)),
                "scrape target"
            );
        }
    }

    fn log_startup(&self) {
        let a = &self.config.aggregation;
        let buckets = format!("{:?}", a.histogram_buckets);
        let (log_filter, log_filter_from) = crate::logging::filter_text(&self.config.log);
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
            log_filter = %log_filter,
            log_filter_from = log_filter_from,
            log_format = self.config.log.format.as_str(),
            "weir started; no forwarding pipelines yet: flushed batches go to the \
             exposition endpoint and this log"
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
