//! The embeddable runtime: one aggregator, its flush loop and its forwarding
//! pipelines, with nothing network-facing of its own. The daemon runs on it (adding
//! sources and listeners around it), and so do the C ABI and the Python module: there
//! is one flush loop and one pipeline implementation.
//!
//! Owns: the [`Aggregator`] of a process, the flush (aggregator -> one
//! [`FlushBatch`] -> every pipeline's WAL), the periodic flush task, the per-flush
//! summary and log line, the series-ceiling warning, and the stop sequence (final flush
//! into the WALs, then a bounded grace period for sending). Must never: run a flush on
//! an async worker (flushes run on the calling thread or the blocking pool), let two
//! flushes overlap (one mutex around the flush), or lose what was flushed (it is in the
//! WALs before `close` returns; what was not sent is replayed by the next start on the
//! same data directory).
//!
//! Two ways to run it:
//! - embedded ([`Instance::from_toml`], [`Instance::start`]): the instance owns a
//!   small tokio runtime (one worker thread, `weir-rt`) for the forwarders and the
//!   periodic flush; [`Instance::flush`] and [`Instance::close`] block the caller;
//! - inside a tokio program (the daemon): [`Instance::new`], then
//!   [`Instance::start_pipelines`] and [`Instance::spawn_flush_loop`] on the caller's
//!   runtime, [`Instance::flush_async`] and [`Instance::close_async`].
//!
//! Fork: an instance's threads (tokio workers, the blocking pool) do not exist in a
//! child process. A child must not use an instance created before the fork (its
//! flushes would never run and its pipelines never send); it creates its own, on a
//! data directory of its own (two instances must never share a WAL directory). The
//! parent keeps working unaffected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::warn;
use weir_core::{Aggregator, FlushBatch};

use crate::config::{Config, ConfigError};
use crate::control::FlushSummary;
use crate::pipeline::{Pipeline, PipelineError, PipelineSet};
use crate::telemetry::{Kind, MetricsPage, ProcessMetrics, StageMetrics, Telemetry, labels};

/// Shortest time between two warnings that the series ceiling refuses points.
const CEILING_WARN_EVERY: Duration = Duration::from_secs(60);

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The configuration text is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration has a section an embedded instance cannot run.
    #[error(
        "an embedded weir instance has no {0} (only data_dir, [aggregation], [[pipelines]], \
         [shutdown] and [log] apply); remove the section"
    )]
    UnsupportedSection(&'static str),
    /// A pipeline could not start (its WAL directory unusable, say).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The instance's runtime could not be created.
    #[error("cannot start the instance's threads: {0}")]
    Runtime(std::io::Error),
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
                "How long the latest flush's walk over the series took (encoding and WAL appends not included).",
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

/// The flush itself, shared by the periodic loop and flushes on demand.
struct Flusher {
    aggregator: Aggregator,
    pipelines: Vec<Arc<Pipeline>>,
    /// Refusals counted in the previous summary.
    rejected_seen: u64,
    ceiling: CeilingWarning,
    metrics: Arc<AggregationMetrics>,
}

/// Live entries per chunk of a flush whose batch nobody keeps (the periodic and
/// requested flushes): each chunk is encoded into every pipeline as it comes, so a
/// flush holds ~330 KB of batch (40 bytes an entry; a few times that while several
/// threads walk, from 256k series) rather than an entry per series (40 MB at 1M
/// series). Small enough to stay in a core's cache between the walk that writes a
/// chunk and the encoders that read it (at 65,536 entries, 2.6 MB, the daemon's flush
/// of 1M series took ~12 % longer); the number of requests does not depend on it
/// (`max_request_bytes` splits each chunk), nor the WAL's syncs (one per flush, at the
/// commit).
const FLUSH_CHUNK: usize = 1 << 13;

impl Flusher {
    /// Flushes once on the calling thread in chunks, each encoded by every pipeline
    /// and appended to its WAL as it comes, then committed (synced once, queued for
    /// the forwarders; never waiting on a backend); the summary is logged with
    /// `message`.
    fn flush(&mut self, message: &str) -> FlushSummary {
        let started = Instant::now();
        let mut summary = FlushSummary::default();
        let mut encoding = Duration::ZERO;
        let pipelines = &self.pipelines;
        self.aggregator.flush_chunked(FLUSH_CHUNK, |chunk| {
            summary.add(chunk);
            let t = Instant::now();
            for p in pipelines {
                p.append(chunk);
            }
            encoding += t.elapsed();
        });
        let duration = started.elapsed().saturating_sub(encoding);
        summary.pipeline_heads = pipelines.iter().map(|p| p.commit()).collect();
        self.finish(summary, duration, message)
    }

    /// [`Flusher::flush`] in one batch, which it returns.
    fn flush_whole(&mut self, message: &str) -> (FlushSummary, FlushBatch) {
        let started = Instant::now();
        let batch = self.aggregator.flush();
        let duration = started.elapsed();
        let mut summary = FlushSummary::default();
        summary.add(&batch);
        summary.pipeline_heads = self.pipelines.iter().map(|p| p.accept(&batch)).collect();
        (self.finish(summary, duration, message), batch)
    }

    /// Completes, logs and keeps the summary of a flush whose walk took `duration`
    /// (encoding excluded).
    fn finish(
        &mut self,
        mut summary: FlushSummary,
        duration: Duration,
        message: &str,
    ) -> FlushSummary {
        summary.finish(&self.aggregator.stats(), self.rejected_seen, duration);
        self.rejected_seen = summary.rejected_total;
        summary.log(message);
        *self
            .metrics
            .last_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(summary.clone());
        self.ceiling.check(&self.aggregator);
        summary
    }
}

/// What an instance shares with its flush task.
struct Inner {
    flusher: Mutex<Flusher>,
    /// The sequence number of the latest flush, for those who act after each one.
    flushed: watch::Sender<u64>,
}

impl Inner {
    fn flusher(&self) -> std::sync::MutexGuard<'_, Flusher> {
        self.flusher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A flush whose batch nobody keeps (see [`FLUSH_CHUNK`]).
    fn flush(&self, message: &str) -> FlushSummary {
        let summary = self.flusher().flush(message);
        self.flushed.send_replace(summary.sequence);
        summary
    }

    /// A flush that returns its batch.
    fn flush_whole(&self, message: &str) -> (FlushSummary, FlushBatch) {
        let out = self.flusher().flush_whole(message);
        self.flushed.send_replace(out.0.sequence);
        out
    }
}

/// One aggregator with its flush loop and pipelines. `Send + Sync`: every method
/// takes `&self`.
pub struct Instance {
    config: Config,
    aggregator: Aggregator,
    telemetry: Arc<Telemetry>,
    inner: Arc<Inner>,
    pipelines: Mutex<Vec<Arc<Pipeline>>>,
    flush_loop: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// The runtime of an embedded instance (none inside the daemon's).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Instance {
    /// An instance on `config`, not running yet: the aggregator takes points, and
    /// [`Instance::flush`] works, but there are no pipelines and no periodic flush
    /// until [`Instance::start_pipelines`] and [`Instance::spawn_flush_loop`].
    pub fn new(config: &Config) -> Instance {
        let aggregator = Aggregator::new(config.aggregator_config());
        let telemetry = Arc::new(Telemetry::new());
        telemetry.register(
            "process",
            Arc::new(ProcessMetrics {
                started: Instant::now(),
            }),
        );
        let metrics = Arc::new(AggregationMetrics {
            aggregator: aggregator.clone(),
            last_flush: Mutex::new(None),
        });
        telemetry.register("aggregation", metrics.clone());
        let flusher = Flusher {
            aggregator: aggregator.clone(),
            pipelines: Vec::new(),
            rejected_seen: 0,
            ceiling: CeilingWarning::default(),
            metrics,
        };
        Instance {
            config: config.clone(),
            aggregator,
            telemetry,
            inner: Arc::new(Inner {
                flusher: Mutex::new(flusher),
                flushed: watch::channel(0).0,
            }),
            pipelines: Mutex::new(Vec::new()),
            flush_loop: Mutex::new(None),
            closed: AtomicBool::new(false),
            runtime: None,
        }
    }

    /// Starts an embedded instance from TOML text with the daemon's schema (empty
    /// text: the defaults). Only `data_dir`, `[aggregation]`, `[[pipelines]]`,
    /// `[shutdown]` and `[log]` apply; a source or listener section that differs from
    /// its default is refused (an embedded instance has none).
    ///
    /// # Errors
    /// [`InstanceError`] for invalid text, an unsupported section, a pipeline that
    /// cannot start, or threads that cannot be created.
    pub fn from_toml(text: &str) -> Result<Instance, InstanceError> {
        let config = Config::from_toml(text, "embedded instance config")?;
        Instance::start(config)
    }

    /// Starts an embedded instance: its own runtime (one worker thread), its
    /// pipelines (which replay what their WALs hold), and the periodic flush.
    ///
    /// # Errors
    /// As [`Instance::from_toml`].
    pub fn start(config: Config) -> Result<Instance, InstanceError> {
        let defaults = Config::default();
        for (section, same) in [
            ("receivers", config.receivers == defaults.receivers),
            ("scrape", config.scrape == defaults.scrape),
            ("exposition", config.exposition == defaults.exposition),
            ("admin", config.admin == defaults.admin),
        ] {
            if !same {
                return Err(InstanceError::UnsupportedSection(section));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("weir-rt")
            .enable_all()
            .build()
            .map_err(InstanceError::Runtime)?;
        let mut instance = Instance::new(&config);
        runtime.block_on(instance.start_pipelines())?;
        {
            let _entered = runtime.enter();
            instance.spawn_flush_loop();
        }
        instance.runtime = Some(runtime);
        Ok(instance)
    }

    /// Opens every `[[pipelines]]` entry (WAL recovery on the blocking pool; each
    /// forwarder first sends what its WAL holds) and registers their self-metrics.
    /// Call once, inside a tokio runtime.
    ///
    /// # Errors
    /// [`PipelineError`] for the first pipeline that cannot start.
    pub async fn start_pipelines(&self) -> Result<(), PipelineError> {
        let mut started = Vec::new();
        for p in &self.config.pipelines {
            started.push(Arc::new(Pipeline::start(p, &self.config.data_dir).await?));
        }
        self.telemetry
            .register("pipelines", Arc::new(PipelineSet(started.clone())));
        self.inner
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pipelines = started.clone();
        *self.pipelines.lock().unwrap_or_else(|p| p.into_inner()) = started;
        Ok(())
    }

    /// Starts the periodic flush (every `aggregation.flush_interval`) on the current
    /// tokio runtime. Each flush runs on the blocking pool, in chunks that every
    /// pipeline encodes as they come ([`Aggregator::flush_chunked_at`]).
    ///
    /// [`Aggregator::flush_chunked_at`]: weir_core::Aggregator::flush_chunked_at
    pub fn spawn_flush_loop(&self) {
        let period = self.config.aggregation.flush_interval;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let inner = inner.clone();
                let flush = move || {
                    inner.flush("flush");
                };
                if let Err(e) = tokio::task::spawn_blocking(flush).await {
                    // A panicking flush is a bug; the next tick tries again.
                    tracing::error!(error = %e, "flush failed");
                }
            }
        });
        *self.flush_loop.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The aggregator: resolve handles, record points.
    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// What the instance's stages report (`/metrics`, `/status`); the daemon
    /// registers its sources and listeners here too.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// The running pipelines, in config order.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Flushes now on the calling thread (into every pipeline too) and returns the
    /// batch. Blocking: encoding and WAL appends. Never call it on an async worker;
    /// use [`Instance::flush_async`] there.
    pub fn flush(&self) -> FlushBatch {
        self.inner.flush_whole("flush (requested)").1
    }

    /// Flushes now on the blocking pool; returns the summary (logged with `message`).
    ///
    /// # Errors
    /// The flush panicked (a bug).
    pub async fn flush_async(
        &self,
        message: &'static str,
    ) -> Result<FlushSummary, tokio::task::JoinError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(message)).await
    }

    /// Fires after every flush with its sequence number.
    pub fn flushes(&self) -> watch::Receiver<u64> {
        self.inner.flushed.subscribe()
    }

    /// weir's own metrics of this instance, in the Prometheus text format.
    pub fn self_metrics(&self) -> String {
        let mut page = MetricsPage::new();
        self.telemetry.render(&mut page);
        page.into_string()
    }

    /// Stops an embedded instance: the periodic flush ends, a final flush goes into
    /// the WALs, and the pipelines get up to `grace` to send; what is not sent stays
    /// in the WALs for the next start. Blocks the caller. Idempotent: later calls
    /// return at once. Inside a tokio program use [`Instance::close_async`].
    pub fn close(&self, grace: Duration) {
        match &self.runtime {
            Some(rt) => {
                let _ = rt.block_on(self.close_async(grace));
            }
            None => warn!("Instance::close without a runtime of its own: use close_async"),
        }
    }

    /// [`Instance::close`] on the caller's runtime; returns the final flush's summary
    /// (`None` if the instance was closed already).
    ///
    /// # Errors
    /// The final flush panicked (a bug).
    pub async fn close_async(
        &self,
        grace: Duration,
    ) -> Result<Option<FlushSummary>, tokio::task::JoinError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        if let Some(task) = self
            .flush_loop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        let last = self.flush_async("final flush").await?;
        let pipelines = self.pipelines();
        if !pipelines.is_empty() {
            tracing::info!(
                grace_period = %crate::config::fmt_duration(grace),
                "forwarding what the WALs hold before stopping"
            );
        }
        let tasks: Vec<_> = pipelines
            .into_iter()
            .map(|p| tokio::spawn(async move { p.shutdown(grace).await }))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        Ok(Some(last))
    }
}

impl Drop for Instance {
    /// An embedded instance that was not closed is closed with its config's grace
    /// period, so nothing aggregated is lost by dropping it.
    fn drop(&mut self) {
        if self.runtime.is_some() && !self.closed.load(Ordering::Acquire) {
            self.close(self.config.shutdown.grace_period);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::Sample;

    fn config(flush: Duration) -> Config {
        let mut c = Config::default();
        c.aggregation.flush_interval = flush;
        c
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

    #[test]
    fn an_embedded_instance_aggregates_flushes_on_demand_and_closes_once() {
        let instance = Instance::from_toml("[aggregation]\nflush_interval = \"1h\"\n").unwrap();
        let requests = instance
            .aggregator()
            .handle(
                "requests_total",
                &[("path", "/")],
                weir_core::MetricKind::Counter,
            )
            .unwrap();
        requests.increment(3).unwrap();
        let batch = instance.flush();
        assert_eq!(batch.counter_delta_sum(), 3.0);
        assert!(instance.self_metrics().contains("weir_active_series 1\n"));
        drop(requests);
        instance.close(Duration::from_millis(10));
        // Idempotent: nothing more is flushed.
        instance.close(Duration::from_millis(10));
        assert_eq!(instance.aggregator().stats().flushes, 2);
    }

    #[test]
    fn an_embedded_instance_refuses_sections_it_cannot_run() {
        for (text, section) in [
            ("[receivers.statsd]\nenabled = false\n", "receivers"),
            ("[admin]\nenabled = false\n", "admin"),
            (
                "[[scrape.targets]]\nurl = \"http://127.0.0.1:9/m\"\n",
                "scrape",
            ),
        ] {
            match Instance::from_toml(text) {
                Err(e @ InstanceError::UnsupportedSection(s)) => {
                    assert_eq!(s, section);
                    assert!(e.to_string().contains(section), "{e}");
                }
                Err(e) => panic!("{text}: {e}"),
                Ok(_) => panic!("{text}: accepted"),
            }
        }
    }

    #[test]
    fn what_an_embedded_instance_could_not_send_stays_in_its_wal_for_the_next_start() {
        let dir = std::env::temp_dir().join(format!(
            "weir-instance-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        // A socket bound but never listening: every connection is refused, and the
        // port stays ours for the whole test.
        let dead =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        dead.bind(&any.into()).unwrap();
        let addr = dead.local_addr().unwrap().as_socket().unwrap();
        let text = format!(
            "data_dir = {dir:?}\n[aggregation]\nflush_interval = \"1h\"\n\
             [[pipelines]]\nname = \"prom\"\ntype = \"prometheus_remote_write\"\n\
             endpoint = \"http://{addr}/api/v1/write\"\n[pipelines.retry]\n\
             initial_backoff = \"1h\"\nmax_backoff = \"1h\"\n"
        );
        let first = Instance::from_toml(&text).unwrap();
        first
            .aggregator()
            .record(
                "jobs_total",
                &[],
                Sample::Counter(2.0, weir_core::Temporality::Delta),
                0,
            )
            .unwrap();
        first.close(Duration::from_millis(50));
        drop(first);
        let second = Instance::from_toml(&text).unwrap();
        let pipelines = second.pipelines();
        // The final flush of the first run, not sent, is in the WAL again.
        assert_eq!(pipelines[0].status().wal.unacked_records, 1);
        second.close(Duration::from_millis(50));
        drop(second);
        drop(dead);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
