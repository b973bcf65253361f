//! The Prometheus scraper: static targets scraped over HTTP on their own schedule,
//! bodies parsed by weir-core's exposition parsers into the aggregator.
//!
//! Owns: the `[scrape]` section and its `[[scrape.targets]]` ([`ScrapeConfig`],
//! [`ScrapeTarget`]: schema, defaults, validation), the schedule (one task per target, a stable jittered offset inside its
//! interval so targets never scrape in lock-step), the concurrency limit (a
//! semaphore), the HTTP GET with its timeout and body size limit, target labels
//! (`job`, `instance`, extra labels, `honor_labels`) and the per-target series
//! Prometheus itself records: `up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped`. Must never: let a slow target delay another (each has its
//! own task; only the semaphore is shared), or crash on a body: garbage gives `up 0`
//! and counted errors.
//!
//! Content negotiation, as Prometheus does it: the request's `Accept` ([`ACCEPT`])
//! prefers the protobuf exposition format, then OpenMetrics text 1.0, then text 0.0.4,
//! and the body is parsed by the response's `Content-Type`
//! ([`Format::from_content_type`]: missing or unknown reads as text 0.0.4). The request
//! also says `Accept-Encoding: gzip`; a gzip body is decompressed with
//! `body_limit_bytes` applied to the compressed bytes as they arrive and to the
//! decompressed ones (a gzip bomb fails the scrape as `body_too_large`, `up 0`). Each
//! target logs the format it answers in once, and again whenever it changes.
//!
//! Reload ([`Scraper::reconcile`]): unchanged targets keep their task, schedule and
//! counters; removed or changed targets stop after the scrape they have in flight;
//! added or changed ones start. Shutdown ([`Scraper::stop`]) lets scrapes in flight
//! finish for a bounded time.
//!
//! Blocking work: decompressing, parsing and aggregating a body take milliseconds for a
//! large one, so they run on tokio's blocking pool (`spawn_blocking`), never on the
//! async workers the listeners share; at most one body per core is parsed at once
//! (`parse_slots`), whatever `concurrency` lets run.
//! Only the HTTP exchange runs on the async workers. Each target records through its
//! own writer, finding a text line's series by the line's bytes (module `ingest`).
//!
//! HTTP: each target has its own HTTP/1.1 client (module `http1`), which keeps the
//! connection between scrapes and nothing else.
//!
//! TLS and credentials: each target's client is built from its
//! `tls` table and credentials ([`ClientSecurityConfig`]); `https://` targets are
//! verified against the system roots or `tls.ca_file`. A handshake refused (unknown
//! issuer, expired certificate, wrong name) fails the scrape as `tls` (`up 0`, the
//! reason in words in the log and `/status`); credentials files that cannot be read
//! fail every scrape of the target as `credentials` until a reload reads them.
//! [`Scraper::reload_security`] re-reads every running target's files (on each
//! config reload); the target's client is rebuilt on its next scrape.
//!
//! Not yet: other content encodings than gzip.

use std::hash::{Hash, Hasher};
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weir_core::parse::exposition::{ExpositionError, Format};

use ingest::{TargetLabels, parse_into};
use weir_core::{Aggregator, Sample, Writer};

use crate::config::{MIN_FLUSH_INTERVAL, Step, fmt_duration, keys};
use crate::tls::client::{Alpn, ClientSecurityConfig, LiveSecurity, TlsFailure, check_url};

mod file_sd;
mod http1;
mod ingest;

pub use file_sd::{FileSd, FileSdConfig, FileSdCounters, FileSdError, read_file};

/// `[scrape]`: the Prometheus scraper.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// Most scrapes running at once. Default 8.
    pub concurrency: usize,
    /// Largest scrape body accepted, in bytes; a larger one fails the scrape
    /// (`body_too_large`, `up 0`). Default 10 MiB.
    pub body_limit_bytes: usize,
    /// The `[[scrape.targets]]` entries. Default none.
    pub targets: Vec<ScrapeTarget>,
    /// The `[[scrape.file_sd]]` entries: targets from files. Default none.
    pub file_sd: Vec<FileSdConfig>,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            concurrency: 8,
            body_limit_bytes: 10 << 20,
            targets: Vec::new(),
            file_sd: Vec::new(),
        }
    }
}

/// One `[[scrape.targets]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeTarget {
    /// `http[s]://host[:port]/path` (path usually `/metrics`; the port defaults to the
    /// scheme's). Required.
    pub url: String,
    /// The `job` label. Default `"scrape"`.
    #[serde(default = "default_job")]
    pub job: String,
    /// How often to scrape. Default 15 s.
    #[serde(default = "default_scrape_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one scrape may take. Default 10 s; at most `interval`.
    #[serde(default = "default_scrape_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra labels for every series of this target.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// On a clash between a scraped label and a target label: true keeps the scraped
    /// value, false (the default, as Prometheus) keeps the target's and renames the
    /// scraped one `exported_<name>`.
    #[serde(default)]
    pub honor_labels: bool,
    /// `tls`, `basic_auth`, `bearer_token`, `bearer_token_file`,
    /// `headers_from_files`: how the target is verified and how weir authenticates.
    #[serde(flatten)]
    pub security: ClientSecurityConfig,
}

fn default_job() -> String {
    "scrape".to_owned()
}

fn default_scrape_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_scrape_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ScrapeConfig {
    /// Checks the section; on error returns the key inside it (`concurrency`,
    /// `targets[2].url`) and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.concurrency == 0 {
            return Err((keys(&["concurrency"]), "must be greater than 0".to_owned()));
        }
        if self.body_limit_bytes < 1024 {
            return Err((
                keys(&["body_limit_bytes"]),
                "must be at least 1024".to_owned(),
            ));
        }
        for (i, t) in self.targets.iter().enumerate() {
            t.validate().map_err(|(inner, reason)| {
                let mut path = vec![Step::Key("targets".to_owned()), Step::Index(i)];
                path.extend(inner);
                (path, reason)
            })?;
        }
        for (i, f) in self.file_sd.iter().enumerate() {
            f.validate().map_err(|(inner, reason)| {
                let mut path = vec![Step::Key("file_sd".to_owned()), Step::Index(i)];
                path.extend(inner);
                (path, reason)
            })?;
        }
        Ok(())
    }
}

impl ScrapeTarget {
    /// Checks the entry; on error returns the key inside it (`url`) and the reason.
    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        check_url(&self.url, &self.security).map_err(|reason| (keys(&["url"]), reason))?;
        self.security
            .validate()
            .map_err(|(key, reason)| (keys(&[key]), reason))?;
        if self.interval < MIN_FLUSH_INTERVAL {
            return Err((
                keys(&["interval"]),
                format!("must be at least {}", fmt_duration(MIN_FLUSH_INTERVAL)),
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err((
                keys(&["timeout"]),
                "must be above 0 and at most the interval".to_owned(),
            ));
        }
        for name in self.labels.keys() {
            if !weir_core::key::is_valid_label_name(name) {
                return Err((
                    keys(&["labels"]),
                    format!("{name:?} is not a valid label name"),
                ));
            }
        }
        Ok(())
    }
}

/// The Accept header of every scrape: the protobuf exposition format first, then
/// OpenMetrics text 1.0, then text 0.0.4, then anything (read as text 0.0.4), in the
/// order of [`Format::ALL`] (checked by a test).
pub const ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
     application/openmetrics-text;version=1.0.0;q=0.5,\
     text/plain;version=0.0.4;q=0.3,\
     */*;q=0.1";

/// The Accept-Encoding header of every scrape.
const ACCEPT_ENCODING: &str = "gzip";

/// Why one scrape failed. Stable names for counters and logs.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connecting or sending failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No complete answer within the target's timeout.
    #[error("timed out")]
    Timeout,
    /// The target answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body was larger than `body_limit_bytes`, as received or once
    /// decompressed.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Reading the body failed.
    #[error("reading the body failed: {0}")]
    Body(String),
    /// The body said `Content-Encoding: gzip` but did not decompress.
    #[error("gzip body did not decompress: {0}")]
    Decompress(String),
    /// The body came in a content encoding weir did not ask for.
    #[error("unsupported content encoding {0:?}")]
    Encoding(String),
    /// The task that parses the body failed (a bug: parsing does not panic).
    #[error("parsing failed: {0}")]
    Parse(String),
    /// The TLS handshake failed (unknown issuer, expired certificate, wrong name,
    /// client certificate refused).
    #[error("{0}")]
    Tls(TlsFailure),
    /// The target's TLS or credentials files could not be used.
    #[error("credentials: {0}")]
    Credentials(String),
}

impl ScrapeError {
    /// Short, stable reason label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScrapeError::Request(_) => "request_failed",
            ScrapeError::Timeout => "timeout",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::BodyTooLarge(_) => "body_too_large",
            ScrapeError::Body(_) => "body_read_failed",
            ScrapeError::Decompress(_) => "decompress_failed",
            ScrapeError::Encoding(_) => "unsupported_encoding",
            ScrapeError::Parse(_) => "parse_failed",
            ScrapeError::Tls(_) => "tls",
            ScrapeError::Credentials(_) => "credentials",
        }
    }

    /// Every reason label, in the order of [`ScrapeError::index`].
    pub const REASONS: [&'static str; 10] = [
        "request_failed",
        "timeout",
        "http_status",
        "body_too_large",
        "body_read_failed",
        "decompress_failed",
        "unsupported_encoding",
        "parse_failed",
        "tls",
        "credentials",
    ];

    /// The reason's index in [`ScrapeError::REASONS`].
    pub fn index(&self) -> usize {
        Self::REASONS
            .iter()
            .position(|r| *r == self.as_str())
            .unwrap_or(0)
    }

    /// A failed request: `Tls` when the error chain holds a TLS failure.
    fn request(e: &(dyn std::error::Error + 'static)) -> ScrapeError {
        match TlsFailure::find(e) {
            Some(tls) => ScrapeError::Tls(tls),
            None => {
                let mut text = e.to_string();
                if let Some(source) = e.source() {
                    text = format!("{text}: {source}");
                }
                ScrapeError::Request(text)
            }
        }
    }
}

/// Counters of one target since start. Relaxed: independent counters, read only for
/// reporting.
#[derive(Default)]
pub struct TargetCounters {
    /// Scrapes attempted.
    pub scrapes: AtomicU64,
    /// Scrapes that failed (no body parsed).
    pub failures: AtomicU64,
    /// Failed scrapes by reason, indexed by [`ScrapeError::index`].
    pub errors: [AtomicU64; ScrapeError::REASONS.len()],
    /// Samples emitted by the parser over all scrapes.
    pub samples: AtomicU64,
    /// Lines or groups the parser skipped over all scrapes.
    pub parse_errors: AtomicU64,
    /// 1 if the last scrape succeeded.
    pub up: AtomicU64,
    /// When the last scrape ended, ms since the Unix epoch (0: none yet).
    pub last_scrape_ms: AtomicU64,
    /// Why the last scrape failed (`None` after a good one).
    pub last_error: std::sync::Mutex<Option<String>>,
    /// The exposition format the target answered in last.
    pub format: std::sync::Mutex<Option<&'static str>>,
}

impl TargetCounters {
    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// The running scraper: one task per target.
pub struct Scraper {
    running: Vec<Running>,
    permits: Arc<Semaphore>,
    /// Bodies decompressed and parsed at once: one per core (see [`parse_slots`]).
    parses: Arc<Semaphore>,
    concurrency: usize,
    body_limit: usize,
    /// Per target (in config order): its URL and counters.
    pub targets: Vec<(String, Arc<TargetCounters>)>,
}

/// One target's running task.
struct Running {
    target: ScrapeTarget,
    security: Arc<TargetSecurity>,
    counters: Arc<TargetCounters>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Asks the task to stop once its scrape in flight (if any) is done; the task
    /// ends by itself.
    fn finish(self) {
        let _ = self.stop.send(true);
    }
}

/// What [`Scraper::reconcile`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeChanges {
    /// Targets started.
    pub started: usize,
    /// Targets stopped (after their scrape in flight).
    pub stopped: usize,
    /// Targets left running as they were.
    pub kept: usize,
}

impl Scraper {
    /// Starts one task per target. Must be called inside a tokio runtime.
    pub fn start(config: &ScrapeConfig, aggregator: &Aggregator) -> Scraper {
        let mut scraper = Scraper {
            running: Vec::new(),
            permits: Arc::new(Semaphore::new(config.concurrency)),
            parses: Arc::new(Semaphore::new(parse_slots())),
            concurrency: config.concurrency,
            body_limit: config.body_limit_bytes,
            targets: Vec::new(),
        };
        scraper.reconcile(config, aggregator);
        scraper
    }

    /// Applies a (new) `[scrape]` section: targets whose settings did not change keep
    /// running untouched; removed and changed ones stop after the scrape they have
    /// in flight; new and changed ones start. A change of `concurrency` or
    /// `body_limit_bytes` (shared by all targets) restarts every target that way.
    pub fn reconcile(&mut self, config: &ScrapeConfig, aggregator: &Aggregator) -> ScrapeChanges {
        let mut changes = ScrapeChanges::default();
        let mut old = std::mem::take(&mut self.running);
        if config.concurrency != self.concurrency || config.body_limit_bytes != self.body_limit {
            self.permits = Arc::new(Semaphore::new(config.concurrency));
            self.concurrency = config.concurrency;
            self.body_limit = config.body_limit_bytes;
            changes.stopped += old.len();
            old.drain(..).for_each(Running::finish);
        }
        for t in &config.targets {
            if let Some(i) = old.iter().position(|r| r.target == *t) {
                self.running.push(old.swap_remove(i));
                changes.kept += 1;
            } else if let Some(r) = self.spawn(t, aggregator) {
                self.running.push(r);
                changes.started += 1;
            }
        }
        changes.stopped += old.len();
        old.into_iter().for_each(Running::finish);
        self.targets = self
            .running
            .iter()
            .map(|r| (r.target.url.clone(), r.counters.clone()))
            .collect();
        changes
    }

    fn spawn(&self, t: &ScrapeTarget, aggregator: &Aggregator) -> Option<Running> {
        // Checked when the config was loaded; a bad one is skipped, not fatal.
        let Ok(uri) = t.url.parse::<hyper::Uri>() else {
            warn!(url = %t.url, "scrape: invalid URL, target skipped");
            return None;
        };
        let (stop, stopped) = watch::channel(false);
        let run = TargetRun::new(
            t,
            uri,
            self.body_limit,
            [&self.permits, &self.parses],
            aggregator,
        );
        let (security, counters) = (run.security.clone(), run.counters.clone());
        Some(Running {
            target: t.clone(),
            security,
            counters,
            stop,
            task: tokio::spawn(run.run(stopped)),
        })
    }

    /// Re-reads the TLS and credentials files of every running target (a target
    /// whose files failed to load before gets another try). A file that cannot be
    /// used now is logged and leaves that target's material as it was. Returns how
    /// many targets have such files.
    pub fn reload_security(&self) -> usize {
        let mut with_files = 0;
        for r in &self.running {
            if r.target.security != ClientSecurityConfig::default() {
                with_files += 1;
                r.security.reload();
            }
        }
        with_files
    }

    /// Stops every target: scrapes in flight may finish for up to `wait` (their
    /// points then make the final flush); the rest are abandoned (nothing of an
    /// abandoned scrape was recorded).
    pub async fn stop(self, wait: Duration) {
        let tasks: Vec<JoinHandle<()>> = self
            .running
            .into_iter()
            .map(|r| {
                let _ = r.stop.send(true);
                r.task
            })
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

/// `job`, `instance` (host:port of the URL, with the scheme's default port when the
/// URL has none, as Prometheus 2 does) and the target's extra labels, sorted.
fn target_labels(t: &ScrapeTarget, uri: &hyper::Uri) -> Vec<(String, String)> {
    let instance = match uri.authority() {
        Some(a) if a.port_u16().is_none() => {
            let port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            format!("{}:{port}", a.as_str())
        }
        Some(a) => a.as_str().to_owned(),
        None => String::new(),
    };
    let mut labels = vec![
        ("job".to_owned(), t.job.clone()),
        ("instance".to_owned(), instance),
    ];
    for (k, v) in &t.labels {
        labels.retain(|(lk, _)| lk != k);
        labels.push((k.clone(), v.clone()));
    }
    labels.sort();
    labels
}

/// A stable offset inside `interval` for `url`, so targets spread over the interval
/// and keep their slot across restarts.
pub fn jitter(url: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    let nanos = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(h.finish()) % nanos) as u64)
}

/// One target's TLS material and credentials: loaded, or why not (then every scrape
/// fails as `credentials` until a reload loads them).
struct TargetSecurity {
    target: ScrapeTarget,
    live: std::sync::Mutex<Result<Arc<LiveSecurity>, String>>,
}

impl TargetSecurity {
    fn make(t: &ScrapeTarget) -> Result<Arc<LiveSecurity>, String> {
        LiveSecurity::new(
            format!("scrape {}", t.url),
            &t.security,
            t.url.starts_with("https://"),
        )
        .map(Arc::new)
        .map_err(|e| e.to_string())
    }

    fn load(t: &ScrapeTarget) -> TargetSecurity {
        let live = TargetSecurity::make(t);
        if let Err(e) = &live {
            warn!(url = %t.url, error = %e, "scrape: the target's TLS or credentials files cannot be used; its scrapes fail until a reload reads them");
        }
        TargetSecurity {
            target: t.clone(),
            live: std::sync::Mutex::new(live),
        }
    }

    /// Re-reads the files; on error the material in use (if any) stays.
    fn reload(&self) {
        let mut live = locked(&self.live);
        let result = match &*live {
            Ok(l) => l.reload().map_err(|e| e.to_string()),
            Err(_) => TargetSecurity::make(&self.target).map(|l| *live = Ok(l)),
        };
        if let Err(e) = result {
            warn!(url = %self.target.url, error = %e, "scrape: reload could not use the target's TLS or credentials files; what was in use stays");
        }
    }

    fn current(&self) -> Result<Arc<LiveSecurity>, String> {
        locked(&self.live).clone()
    }
}

/// A target's HTTP client and request headers for one generation of its credentials.
struct TargetClient {
    generation: u64,
    http: http1::Client,
    headers: hyper::HeaderMap,
}

/// One target's task state.
struct TargetRun {
    target: ScrapeTarget,
    uri: hyper::Uri,
    /// Shared with the parsing task on the blocking pool.
    labels: Arc<TargetLabels>,
    body_limit: usize,
    security: Arc<TargetSecurity>,
    /// Rebuilt when the credentials' generation changes.
    client: Option<TargetClient>,
    permits: Arc<Semaphore>,
    /// Shared by all targets: see [`Scraper::parses`].
    parses: Arc<Semaphore>,
    /// `None` only while a parsing task has it (or if that task failed: then a new
    /// one is made from `aggregator`).
    writer: Option<Writer>,
    aggregator: Aggregator,
    counters: Arc<TargetCounters>,
    /// The format of the last body, to log when it changes.
    format: Option<Format>,
}

/// A body as fetched: as sent, with its `Content-Encoding` and the format its content
/// type names.
struct Fetched {
    body: Bytes,
    encoding: Option<String>,
    format: Format,
}

impl TargetRun {
    fn new(
        t: &ScrapeTarget,
        uri: hyper::Uri,
        body_limit: usize,
        [permits, parses]: [&Arc<Semaphore>; 2],
        aggregator: &Aggregator,
    ) -> TargetRun {
        TargetRun {
            labels: Arc::new(TargetLabels::new(target_labels(t, &uri), t.honor_labels)),
            uri,
            target: t.clone(),
            body_limit,
            security: Arc::new(TargetSecurity::load(t)),
            client: None,
            permits: permits.clone(),
            parses: parses.clone(),
            writer: Some(aggregator.writer()),
            aggregator: aggregator.clone(),
            counters: Arc::new(TargetCounters::default()),
            format: None,
        }
    }

    /// Scrapes on schedule until `stop` says true (or its sender is gone); a scrape
    /// that has started is always finished.
    ///
    /// (An `async move` block rather than an `async fn`: an async fn's future holds
    /// its arguments twice, here the whole `TargetRun`, in every idle target's task.)
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, mut stop: watch::Receiver<bool>) -> impl Future<Output = ()> {
        async move {
            let interval = self.target.interval;
            let offset = jitter(&self.target.url, interval);
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return,
                    _ = ticker.tick() => {}
                }
                let permit = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return,
                    p = self.permits.clone().acquire_owned() => p,
                };
                let Ok(_permit) = permit else {
                    return; // the semaphore is never closed; stop if it ever is
                };
                // Boxed: a scrape's state (its HTTP exchange, the parse job) is several KB,
                // and inline it would be held by every idle target's task (10 MB at 1,000
                // targets); boxed it exists while the scrape runs.
                Box::pin(self.scrape_once()).await;
            }
        }
    }

    async fn scrape_once(&mut self) {
        let started = Instant::now();
        self.counters.scrapes.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.target.timeout, self.fetch()).await;
        let fetched = match result {
            Ok(Ok(fetched)) => Some(fetched),
            Ok(Err(e)) => {
                self.fail(&e);
                None
            }
            Err(_) => {
                self.fail(&ScrapeError::Timeout);
                None
            }
        };
        let format = fetched.as_ref().map(|f| f.format);
        let parsed = match fetched {
            Some(f) => match self.ingest(f).await {
                Ok(parsed) => Some(parsed),
                Err(e) => {
                    self.fail(&e);
                    None
                }
            },
            None => None,
        };
        let mut samples = 0u64;
        if let (Some((report, gzip)), Some(format)) = (&parsed, format) {
            if self.format != Some(format) {
                self.format = Some(format);
                *self
                    .counters
                    .format
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format.as_str());
                info!(url = %self.target.url, format = format.as_str(), gzip, "scrape format");
            }
            samples = report.samples;
            let errors: u64 = report.errors.iter().sum();
            self.counters.samples.fetch_add(samples, Ordering::Relaxed);
            self.counters
                .parse_errors
                .fetch_add(errors, Ordering::Relaxed);
            if errors > 0 {
                let reasons: Vec<String> = ExpositionError::ALL
                    .iter()
                    .filter(|r| report.errors(**r) > 0)
                    .map(|r| format!("{}={}", r.as_str(), report.errors(*r)))
                    .collect();
                warn!(url = %self.target.url, skipped = errors, reasons = %reasons.join(","), "scrape: malformed lines skipped");
            }
        }
        // As Prometheus: a body that yields nothing at all is not a healthy target.
        let up = parsed.is_some() && samples > 0;
        self.counters.up.store(u64::from(up), Ordering::Relaxed);
        if up {
            self.counters.set_last_error(None);
        } else if parsed.is_some() {
            self.counters
                .set_last_error(Some("the body held no samples".to_owned()));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.counters
            .last_scrape_ms
            .store(now_ms, Ordering::Relaxed);
        let duration = started.elapsed().as_secs_f64();
        let labels = self.labels.pairs();
        let writer = self.writer.get_or_insert_with(|| self.aggregator.writer());
        for (name, value) in [
            ("up", if up { 1.0 } else { 0.0 }),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", samples as f64),
        ] {
            let _ = writer.record(name, &labels, Sample::Gauge(value), 0);
        }
        debug!(url = %self.target.url, up, samples, duration, "scraped");
    }

    fn fail(&self, e: &ScrapeError) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.counters.errors[e.index()].fetch_add(1, Ordering::Relaxed);
        self.counters
            .set_last_error(Some(format!("{}: {e}", e.as_str())));
        warn!(url = %self.target.url, reason = e.as_str(), error = %e, "scrape failed");
    }

    /// The client for the target's credentials in use (rebuilt, with a new
    /// connection, after a reload changed them).
    fn client(&mut self) -> Result<&mut TargetClient, ScrapeError> {
        let live = self.security.current().map_err(ScrapeError::Credentials)?;
        let (generation, security) = live.current();
        if self
            .client
            .as_ref()
            .is_none_or(|c| c.generation != generation)
        {
            self.client = Some(TargetClient {
                generation,
                http: http1::Client::new(security.connector(Alpn::Http1, None)),
                headers: security.headers().clone(),
            });
        }
        self.client
            .as_mut()
            .ok_or_else(|| ScrapeError::Credentials("no client".to_owned()))
    }

    async fn fetch(&mut self) -> Result<Fetched, ScrapeError> {
        let uri = self.uri.clone();
        let (body_limit, timeout) = (self.body_limit, self.target.timeout);
        let client = self.client()?;
        let request = http1::request_bytes(&uri, timeout, &client.headers);
        let response = client.http.get(&uri, &request, body_limit).await?;
        let format = Format::from_content_type(response.content_type.as_deref());
        Ok(Fetched {
            body: Bytes::from(response.body),
            encoding: response.content_encoding,
            format,
        })
    }

    /// Decompresses `fetched` and parses it into the aggregator with the target's
    /// labels applied, on the blocking pool; the bool says whether it came
    /// gzip-compressed.
    async fn ingest(
        &mut self,
        fetched: Fetched,
    ) -> Result<(weir_core::parse::exposition::ParseReport, bool), ScrapeError> {
        let mut writer = self
            .writer
            .take()
            .unwrap_or_else(|| self.aggregator.writer());
        let labels = self.labels.clone();
        let limit = self.body_limit;
        // Never closed; if it were, the parse would go ahead unlimited.
        let slot = self.parses.clone().acquire_owned().await.ok();
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let parsed = decode_body(fetched.body, fetched.encoding.as_deref(), limit).map(
                |(body, gzip)| {
                    let report = parse_into(&mut writer, &labels, fetched.format, &body);
                    (report, gzip)
                },
            );
            (writer, parsed)
        });
        match job.await {
            Ok((writer, parsed)) => {
                self.writer = Some(writer);
                parsed
            }
            Err(e) => Err(ScrapeError::Parse(e.to_string())),
        }
    }
}

/// How many bodies are decompressed and parsed at once, over all targets: one per core.
/// Parsing is CPU-bound, so more at once would not finish sooner; each would hold a
/// blocking-pool thread (its stack, and with glibc its own malloc arena, where the
/// series it creates then live) and a decompressed body. Scrapes waiting for a slot
/// hold only their body as received.
fn parse_slots() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The body as its `Content-Encoding` says: as is for none or `identity`,
/// decompressed for `gzip` (or `x-gzip`) and then at most `limit` bytes; the bool says
/// whether it was compressed. Any other encoding is an error (weir asks for gzip only).
pub fn decode_body(
    body: Bytes,
    encoding: Option<&str>,
    limit: usize,
) -> Result<(Bytes, bool), ScrapeError> {
    let encoding = encoding.map(str::trim).unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok((body, false));
    }
    if !(encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip")) {
        return Err(ScrapeError::Encoding(encoding.to_owned()));
    }
    // Capacity from what arrived, not from what the stream claims; `take` stops one
    // byte past the limit, which tells "too large" from "exactly at the limit".
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let read = flate2::read::GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => Err(ScrapeError::BodyTooLarge(limit)),
        Ok(_) => Ok((Bytes::from(out), true)),
        Err(e) => Err(ScrapeError::Decompress(e.to_string())),
    }
}

/// The scrape source: the scraper, the config it runs, and file discovery.
pub struct ScrapeSource {
    shared: Arc<ScrapeShared>,
    /// Polls the `[[scrape.file_sd]]` files (none without entries).
    watcher: Option<JoinHandle<()>>,
}

/// What the source shares with its file watcher. Lock order: `config`, `file_sd`,
/// `scraper`, `targets`; none is held across an await.
struct ScrapeShared {
    aggregator: Aggregator,
    config: std::sync::Mutex<ScrapeConfig>,
    file_sd: std::sync::Mutex<FileSd>,
    /// `None` once stopped.
    scraper: std::sync::Mutex<Option<Scraper>>,
    /// The running targets, as reported.
    targets: std::sync::Mutex<Vec<(String, Arc<TargetCounters>)>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ScrapeShared {
    /// Runs the static targets plus every target the files give (a URL that is both
    /// runs once, as its static entry): unchanged targets keep running.
    fn apply(&self) -> ScrapeChanges {
        let mut config = locked(&self.config).clone();
        let mut urls: std::collections::HashSet<String> =
            config.targets.iter().map(|t| t.url.clone()).collect();
        for t in locked(&self.file_sd).targets() {
            if urls.insert(t.url.clone()) {
                config.targets.push(t);
            }
        }
        let mut scraper = locked(&self.scraper);
        let Some(scraper) = scraper.as_mut() else {
            return ScrapeChanges::default();
        };
        let changes = scraper.reconcile(&config, &self.aggregator);
        *locked(&self.targets) = scraper.targets.clone();
        changes
    }
}

impl ScrapeSource {
    /// Starts one task per `[[scrape.targets]]` entry (none is fine: a reload may add
    /// some) and the file watcher of the `[[scrape.file_sd]]` entries, which reads
    /// the files at once and then every `refresh_interval`. Must be called inside a
    /// tokio runtime.
    pub fn start(config: &crate::config::Config, aggregator: &Aggregator) -> ScrapeSource {
        let scraper = Scraper::start(&config.scrape, aggregator);
        let shared = Arc::new(ScrapeShared {
            aggregator: aggregator.clone(),
            config: std::sync::Mutex::new(config.scrape.clone()),
            file_sd: std::sync::Mutex::new(FileSd::new(&config.scrape.file_sd)),
            targets: std::sync::Mutex::new(scraper.targets.clone()),
            scraper: std::sync::Mutex::new(Some(scraper)),
        });
        let source = ScrapeSource {
            watcher: spawn_watcher(&shared),
            shared,
        };
        source.log_targets();
        source
    }

    fn log_targets(&self) {
        for t in &locked(&self.shared.config).targets {
            info!(
                url = %t.url,
                job = %t.job,
                interval = %crate::config::fmt_duration(t.interval),
                timeout = %crate::config::fmt_duration(t.timeout),
                offset = %crate::config::fmt_duration(jitter(&t.url, t.interval)),
                "scrape target"
            );
        }
    }
}

/// Polls the files every (shortest) `refresh_interval`, reading them on the blocking
/// pool; applies the targets when they changed.
fn spawn_watcher(shared: &Arc<ScrapeShared>) -> Option<JoinHandle<()>> {
    let every = locked(&shared.file_sd).refresh_interval()?;
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let reading = shared.clone();
            let changed = tokio::task::spawn_blocking(move || locked(&reading.file_sd).refresh())
                .await
                .unwrap_or(false);
            if changed {
                let c = shared.apply();
                info!(
                    started = c.started,
                    stopped = c.stopped,
                    kept = c.kept,
                    "scrape targets from files applied (stopped targets finish their scrape in flight)"
                );
            }
        }
    }))
}

/// How long stopping waits for scrapes in flight.
const STOP_WAIT: Duration = Duration::from_secs(2);

impl crate::sources::Source for ScrapeSource {
    fn name(&self) -> &'static str {
        "scrape"
    }

    fn metrics(&self) -> Arc<dyn crate::telemetry::StageMetrics> {
        Arc::new(ScrapeMetrics(self.shared.clone()))
    }

    fn reload(&mut self, config: &crate::config::Config, _aggregator: &Aggregator) -> bool {
        // Files are read again on every reload, whether the config changed or not
        // (a rotated token, a renewed certificate). Targets the reload starts read
        // theirs as they start.
        let with_files = locked(&self.shared.scraper)
            .as_ref()
            .map_or(0, Scraper::reload_security);
        if with_files > 0 {
            info!(
                targets = with_files,
                "scrape: TLS and credentials files read again"
            );
        }
        let mut current = locked(&self.shared.config);
        let new = &config.scrape;
        if *new == *current {
            return with_files > 0;
        }
        let file_sd_changed = new.file_sd != current.file_sd;
        *current = new.clone();
        drop(current);
        if file_sd_changed {
            *locked(&self.shared.file_sd) = FileSd::new(&new.file_sd);
            if let Some(w) = self.watcher.take() {
                w.abort();
            }
            self.watcher = spawn_watcher(&self.shared);
        }
        let changes = self.shared.apply();
        info!(
            started = changes.started,
            stopped = changes.stopped,
            kept = changes.kept,
            "scrape targets reloaded (stopped targets finish their scrape in flight)"
        );
        self.log_targets();
        true
    }

    fn stop(self: Box<Self>) -> crate::sources::StopFuture {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let scraper = locked(&self.shared.scraper).take();
        // Points of a scrape in flight make the final flush.
        Box::pin(async move {
            if let Some(s) = scraper {
                s.stop(STOP_WAIT).await;
            }
        })
    }
}

/// The scrape source as reported: its running targets and file discovery.
struct ScrapeMetrics(Arc<ScrapeShared>);

impl crate::telemetry::StageMetrics for ScrapeMetrics {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::Kind::{Counter, Gauge};
        ScrapeTargets(locked(&self.0.targets).clone()).render(page);
        let sd = locked(&self.0.file_sd);
        if sd.configs().is_empty() {
            return;
        }
        let c = sd.counters.clone();
        drop(sd);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        page.single(
            "weir_scrape_file_sd_reads_total",
            Counter,
            "Target files read (first time or after a change).",
            load(&c.reads),
        );
        page.single(
            "weir_scrape_file_sd_read_errors_total",
            Counter,
            "Target files refused (unreadable or not a list of target groups); their previous targets stay.",
            load(&c.read_errors),
        );
        page.single(
            "weir_scrape_file_sd_skipped_targets_total",
            Counter,
            "Targets in files skipped as invalid (host:port, label names, scheme).",
            load(&c.skipped_targets),
        );
        page.single(
            "weir_scrape_file_sd_targets",
            Gauge,
            "Targets the files give now.",
            load(&c.targets),
        );
    }

    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        ScrapeTargets(locked(&self.0.targets).clone()).status()
    }
}

/// The targets of a scraper and their counters, as reported.
pub struct ScrapeTargets(pub Vec<(String, Arc<TargetCounters>)>);

impl crate::telemetry::StageMetrics for ScrapeTargets {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::Kind::{Counter, Gauge};
        if self.0.is_empty() {
            return;
        }
        let per = |f: &dyn Fn(&TargetCounters) -> f64| {
            self.0
                .iter()
                .map(|(url, c)| (crate::telemetry::labels(&[("target", url)]), f(c)))
                .collect::<Vec<_>>()
        };
        page.family(
            "weir_scrapes_total",
            Counter,
            "Scrapes attempted, by target.",
            per(&|c| c.scrapes.load(Ordering::Relaxed) as f64),
        );
        page.family(
            "weir_scrape_failures_total",
            Counter,
            "Scrapes that failed, by target.",
            per(&|c| c.failures.load(Ordering::Relaxed) as f64),
        );
        page.family(
            "weir_scrape_errors_total",
            Counter,
            "Scrapes that failed, by target and reason (tls, timeout, http_status, credentials, ...).",
            self.0
                .iter()
                .flat_map(|(url, c)| {
                    ScrapeError::REASONS
                        .iter()
                        .enumerate()
                        .map(move |(i, reason)| {
                            (
                                crate::telemetry::labels(&[("target", url), ("reason", reason)]),
                                c.errors[i].load(Ordering::Relaxed) as f64,
                            )
                        })
                })
                .collect::<Vec<_>>(),
        );
        page.family(
            "weir_scrape_up",
            Gauge,
            "1 if the target's last scrape succeeded.",
            per(&|c| c.up.load(Ordering::Relaxed) as f64),
        );
    }

    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        let targets: Vec<serde_json::Value> = self
            .0
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
        vec![("scrape_targets", targets.into())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle target's task holds its schedule and state once, not a scrape's (boxed
    /// while it runs): it was ~10 KB, 10 MB at 1,000 targets.
    #[tokio::test]
    async fn an_idle_targets_task_is_small() {
        let aggregator = Aggregator::default();
        let t: ScrapeTarget = toml::from_str("url = \"http://127.0.0.1:1/metrics\"").unwrap();
        let permits = Arc::new(Semaphore::new(1));
        let run = TargetRun::new(
            &t,
            t.url.parse().unwrap(),
            1 << 20,
            [&permits, &permits],
            &aggregator,
        );
        let (_stop, stopped) = watch::channel(false);
        let task = run.run(stopped);
        // About a `TargetRun` (~1.2 KB, its TLS stream boxed) and the schedule; a
        // scrape's own state is ~2.8 KB more.
        let size = std::mem::size_of_val(&task);
        assert!(size < 2 * std::mem::size_of::<TargetRun>(), "{size}");
        assert!(size < 2048, "{size}");
    }

    #[test]
    fn the_instance_label_carries_the_schemes_port_when_the_url_has_none() {
        let target = |url: &str| ScrapeTarget {
            url: url.to_owned(),
            job: "node".to_owned(),
            interval: default_scrape_interval(),
            timeout: default_scrape_timeout(),
            labels: Default::default(),
            honor_labels: false,
            security: ClientSecurityConfig::default(),
        };
        for (url, instance) in [
            ("http://h:9100/metrics", "h:9100"),
            ("http://h/metrics", "h:80"),
            ("https://h/metrics", "h:443"),
            ("https://[::1]/metrics", "[::1]:443"),
        ] {
            let t = target(url);
            let labels = target_labels(&t, &url.parse().unwrap());
            assert_eq!(
                labels,
                vec![
                    ("instance".to_owned(), instance.to_owned()),
                    ("job".to_owned(), "node".to_owned())
                ],
                "{url}"
            );
        }
    }

    #[test]
    fn accept_prefers_protobuf_then_openmetrics_then_text() {
        let offered: Vec<(&str, f64)> = ACCEPT
            .split(',')
            .map(|part| {
                let (media, q) = part.rsplit_once(";q=").unwrap();
                (media, q.parse().unwrap())
            })
            .collect();
        let formats: Vec<&str> = Format::ALL.iter().map(|f| f.media_type()).collect();
        assert_eq!(
            offered.iter().map(|o| o.0).collect::<Vec<_>>(),
            [&formats[..], &["*/*"]].concat()
        );
        assert!(offered.windows(2).all(|w| w[0].1 > w[1].1), "{offered:?}");
    }

    fn gzip(data: &[u8]) -> Bytes {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        Bytes::from(gz.finish().unwrap())
    }

    #[test]
    fn gzip_bodies_are_decompressed_within_the_limit() {
        let text = Bytes::from_static(b"a 1\n");
        for enc in [None, Some(""), Some("identity")] {
            assert_eq!(
                decode_body(text.clone(), enc, 1024).unwrap(),
                (text.clone(), false)
            );
        }
        for enc in ["gzip", "GZIP", "x-gzip", " gzip "] {
            assert_eq!(
                decode_body(gzip(&text), Some(enc), 1024).unwrap(),
                (text.clone(), true)
            );
        }
        // Exactly at the limit is fine; one byte more is too large.
        let exact = vec![b'x'; 1024];
        assert_eq!(
            decode_body(gzip(&exact), Some("gzip"), 1024)
                .unwrap()
                .0
                .len(),
            1024
        );
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
        let e = decode_body(bomb, Some("gzip"), 10 << 20).unwrap_err();
        assert_eq!(e.as_str(), "body_too_large");
        let e = decode_body(gzip(&[b'x'; 1025]), Some("gzip"), 1024).unwrap_err();
        assert_eq!(e.as_str(), "body_too_large");
        let e = decode_body(text.clone(), Some("gzip"), 1024).unwrap_err();
        assert_eq!(e.as_str(), "decompress_failed");
        let mut cut = gzip(b"a 1\nb 2\n").to_vec();
        cut.truncate(cut.len() - 4);
        let e = decode_body(Bytes::from(cut), Some("gzip"), 1024).unwrap_err();
        assert_eq!(e.as_str(), "decompress_failed");
        let e = decode_body(text, Some("br"), 1024).unwrap_err();
        assert_eq!(e.as_str(), "unsupported_encoding");
    }

    #[test]
    fn jitter_is_stable_and_inside_the_interval() {
        let i = Duration::from_secs(15);
        let a = jitter("http://a:9100/metrics", i);
        assert_eq!(a, jitter("http://a:9100/metrics", i));
        assert!(a < i);
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|n| jitter(&format!("http://h{n}:9100/metrics"), i).as_secs())
            .collect();
        assert!(
            spread.len() > 5,
            "offsets spread over the interval: {spread:?}"
        );
    }
}
