//! The daemon's configuration: the whole file, composed of the sections each stage
//! owns, loaded and checked.
//!
//! Owns: the top-level [`Config`] and the daemon's own sections (`[aggregation]`,
//! `[shutdown]`, the `[receivers]` table), turning config text into a checked
//! [`Config`] ([`Config::from_file`], [`Config::from_toml`]), the errors and their
//! rendering (key paths with indices, line and column), the embedded default file
//! ([`DEFAULT_CONFIG_TOML`]), and the mapping onto [`weir_core::AggregatorConfig`].
//! Every error names the key it is about (`aggregation.flush_interval`) and, when the
//! key is in the file, its line.
//!
//! Every other section's schema, defaults, limits and validation live with the stage
//! that uses it, and are re-exported here:
//!
//! | section | type | module |
//! |---|---|---|
//! | `[receivers.statsd]` | [`StatsdConfig`] | [`crate::sources::statsd`] |
//! | `[receivers.otlp]` | [`OtlpReceiverConfig`] | [`crate::sources::otlp`] |
//! | `[receivers.statsd_unix]` | [`StatsdUnixConfig`] | [`crate::sources::statsd_unix`] |
//! | `[receivers.statsd_unix_stream]`, `[receivers.statsd_tcp]` | [`StatsdUnixStreamConfig`], [`StatsdTcpConfig`] | [`crate::sources::statsd_stream`] |
//! | `[scrape]`, `[[scrape.targets]]` | [`ScrapeConfig`], [`ScrapeTarget`] | [`crate::sources::scrape`] |
//! | `[exposition]` | [`ExpositionConfig`] | [`crate::serve::exposition`] |
//! | `[admin]` | [`AdminConfig`] | [`crate::serve::admin`] |
//! | `[log]` | [`LogConfig`] | [`crate::logging`] |
//! | `[[pipelines]]` | [`PipelineConfig`] | [`crate::pipeline`] (variants in [`crate::backends`]) |
//!
//! A section checks itself with a `validate` that returns the key path inside the
//! section (`Step`s, built with `keys`) and the reason; `Config::validate` puts
//! the section's own path in front (`within`), so errors name the full key
//! (`receivers.statsd.sockets`, `scrape.targets[2].url`). Adding a section: its struct
//! (`deny_unknown_fields`, `default`) and `validate` in its stage's module, a field in
//! [`Config`] (or [`ReceiversConfig`]), one line in `Config::validate`, and its keys
//! in `default.toml` and `docs/configuration.md`.
//!
//! Must never: accept a key it does not know (every section's struct is
//! `deny_unknown_fields`), panic on any input (config files are untrusted), or let a
//! value through that would make the daemon misbehave later (zero limits, a zero
//! flush interval, unordered buckets); nor do I/O beyond reading the one file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use weir_core::AggregatorConfig;

pub use crate::logging::{LogConfig, LogFormat};
pub use crate::pipeline::{
    CompressionConfig, PipelineCommon, PipelineConfig, PipelineWalConfig, RetryConfig,
    TemporalityConfig, WalSyncConfig,
};
pub use crate::serve::admin::AdminConfig;
pub use crate::serve::exposition::ExpositionConfig;
pub use crate::sources::otlp::{MAX_OTLP_TIMEOUT, OtlpReceiverConfig};
pub use crate::sources::scrape::{ScrapeConfig, ScrapeTarget};
pub use crate::sources::statsd::{
    MAX_RECV_BATCH, MAX_RECV_BUFFER, MAX_STATSD_SOCKETS, MIN_RECV_BUFFER, StatsdConfig,
};
pub use crate::sources::statsd_stream::{StatsdTcpConfig, StatsdUnixStreamConfig};
pub use crate::sources::statsd_unix::{SocketMode, StatsdUnixConfig};

/// The embedded default configuration, with a comment on every key. `weir
/// --print-default-config` prints it; it parses to [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

/// Shortest accepted `aggregation.flush_interval`.
pub const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Longest accepted `aggregation.flush_interval`.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted `aggregation.series_ttl`.
pub const MAX_SERIES_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The whole configuration file. Every key is optional; see `default.toml` for what
/// each one means.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where weir keeps its state on disk: one write-ahead log directory per
    /// pipeline (`<data_dir>/wal/<pipeline name>`). Default `./weir-data`.
    pub data_dir: PathBuf,
    /// The `[aggregation]` section.
    pub aggregation: AggregationConfig,
    /// The `[receivers]` section.
    pub receivers: ReceiversConfig,
    /// The `[scrape]` section.
    pub scrape: ScrapeConfig,
    /// The `[exposition]` section.
    pub exposition: ExpositionConfig,
    /// The `[admin]` section.
    pub admin: AdminConfig,
    /// The `[log]` section.
    pub log: LogConfig,
    /// The `[shutdown]` section.
    pub shutdown: ShutdownConfig,
    /// The `[[pipelines]]` entries: backends every flush is forwarded to. Default none.
    pub pipelines: Vec<PipelineConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./weir-data"),
            aggregation: AggregationConfig::default(),
            receivers: ReceiversConfig::default(),
            scrape: ScrapeConfig::default(),
            exposition: ExpositionConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            pipelines: Vec::new(),
        }
    }
}

/// `[shutdown]`: what SIGTERM/SIGINT does after the final flush.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long the pipelines may keep sending what is in their write-ahead logs
    /// after the final flush. What is not sent by then stays in the WAL and goes out
    /// after the next start. Default 5 s, at most 10 min.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(5),
        }
    }
}

/// Longest accepted `shutdown.grace_period`.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(600);

impl ShutdownConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.grace_period > MAX_GRACE_PERIOD {
            return Err((keys(&["grace_period"]), "must be at most 10m".to_owned()));
        }
        Ok(())
    }
}

/// `[aggregation]`: the flush cadence and the aggregator's limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// How often the aggregated state is flushed. Default 10 s; between
    /// [`MIN_FLUSH_INTERVAL`] and [`MAX_FLUSH_INTERVAL`].
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Idle time after which a series is evicted; zero disables eviction. Default
    /// 5 min, at most [`MAX_SERIES_TTL`].
    #[serde(with = "humantime_serde")]
    pub series_ttl: Duration,
    /// Most series per metric name. Default 10,000.
    pub max_series_per_metric: usize,
    /// Most series in all. Default 1,000,000.
    pub max_series: usize,
    /// Most label sets one ingest writer caches. Default 1,000,000 (the default
    /// `max_series`).
    pub writer_cache_capacity: usize,
    /// Most metric names with their own count of per-metric limit drops. Default 1,000.
    pub max_tracked_metric_names: usize,
    /// Histogram bucket upper bounds for series built from single observations.
    /// Default: the Prometheus client defaults.
    pub histogram_buckets: Vec<f64>,
    /// Most evicted counters and histograms whose running totals are kept for their
    /// return; 0 keeps none. Default 100,000.
    pub kept_totals_capacity: usize,
    /// How long a kept total waits for its series to come back. Default 24 h.
    #[serde(with = "humantime_serde")]
    pub kept_totals_ttl: Duration,
}

impl AggregationConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.flush_interval < MIN_FLUSH_INTERVAL || self.flush_interval > MAX_FLUSH_INTERVAL {
            return Err((
                keys(&["flush_interval"]),
                format!(
                    "must be between {} and {}, got {}",
                    fmt_duration(MIN_FLUSH_INTERVAL),
                    fmt_duration(MAX_FLUSH_INTERVAL),
                    fmt_duration(self.flush_interval)
                ),
            ));
        }
        if self.series_ttl > MAX_SERIES_TTL {
            return Err((
                keys(&["series_ttl"]),
                format!(
                    "must be at most {} (or \"0s\" to disable eviction), got {}",
                    fmt_duration(MAX_SERIES_TTL),
                    fmt_duration(self.series_ttl)
                ),
            ));
        }
        self.aggregator_config().validate().map_err(|e| {
            // The core's field names are the config keys, except for the buckets.
            let field = match e.field {
                "histogram_bounds" => "histogram_buckets",
                f => f,
            };
            (keys(&[field]), e.reason)
        })
    }

    /// The aggregator settings this section asks for.
    pub fn aggregator_config(&self) -> AggregatorConfig {
        AggregatorConfig {
            series_ttl: self.series_ttl,
            max_series_per_metric: self.max_series_per_metric,
            max_series: self.max_series,
            writer_cache_capacity: self.writer_cache_capacity,
            max_tracked_metric_names: self.max_tracked_metric_names,
            histogram_bounds: Arc::from(&self.histogram_buckets[..]),
            kept_totals_capacity: self.kept_totals_capacity,
            kept_totals_ttl: self.kept_totals_ttl,
        }
    }
}

impl Default for AggregationConfig {
    fn default() -> Self {
        let core = AggregatorConfig::default();
        AggregationConfig {
            flush_interval: Duration::from_secs(10),
            series_ttl: core.series_ttl,
            max_series_per_metric: core.max_series_per_metric,
            max_series: core.max_series,
            writer_cache_capacity: core.writer_cache_capacity,
            max_tracked_metric_names: core.max_tracked_metric_names,
            histogram_buckets: core.histogram_bounds.to_vec(),
            kept_totals_capacity: core.kept_totals_capacity,
            kept_totals_ttl: core.kept_totals_ttl,
        }
    }
}

/// `[receivers]`: where points come in.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    /// The `[receivers.statsd]` section.
    pub statsd: StatsdConfig,
    /// The `[receivers.otlp]` section.
    pub otlp: OtlpReceiverConfig,
    /// The `[receivers.statsd_unix]` section (Unix datagram socket).
    pub statsd_unix: StatsdUnixConfig,
    /// The `[receivers.statsd_unix_stream]` section (Unix stream socket).
    pub statsd_unix_stream: StatsdUnixStreamConfig,
    /// The `[receivers.statsd_tcp]` section.
    pub statsd_tcp: StatsdTcpConfig,
}

impl ReceiversConfig {
    /// Checks both receivers (OTLP first); on error returns the key inside
    /// `[receivers]` (`statsd.sockets`) and the reason.
    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        within(&["otlp"], self.otlp.validate())?;
        within(&["statsd"], self.statsd.validate())?;
        within(&["statsd_unix"], self.statsd_unix.validate())?;
        within(&["statsd_unix_stream"], self.statsd_unix_stream.validate())?;
        within(&["statsd_tcp"], self.statsd_tcp.validate())
    }
}

/// Where in the config file an error points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The text of that line.
    pub text: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a key or value is unknown or invalid.
    #[error("{}", render_invalid(origin, key.as_deref(), reason, location.as_ref()))]
    Invalid {
        /// Where the text came from (a file path, or a name for embedded text).
        origin: String,
        /// The dotted key path the error is about (`aggregation.flush_interval`,
        /// `aggregation.histogram_buckets[2]`); `None` for TOML syntax errors outside
        /// any key.
        key: Option<String>,
        /// What is wrong, in one line.
        reason: String,
        /// The place in the text, when known.
        location: Option<Location>,
    },
}

impl ConfigError {
    /// The dotted key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// What is wrong, without the key and location.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::Invalid { reason, .. } => reason.clone(),
            ConfigError::Read { source, .. } => source.to_string(),
        }
    }
}

fn render_invalid(
    origin: &str,
    key: Option<&str>,
    reason: &str,
    location: Option<&Location>,
) -> String {
    use fmt::Write as _;
    let mut s = format!("invalid config {origin}: ");
    if let Some(key) = key {
        let _ = write!(s, "`{key}`: ");
    }
    s.push_str(reason);
    if let Some(loc) = location {
        let _ = write!(
            s,
            "\n  --> line {}, column {}\n   | {}",
            loc.line,
            loc.column,
            loc.text.trim_end()
        );
    }
    s
}

impl Config {
    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read (or is not UTF-8),
    /// [`ConfigError::Invalid`] as for [`Config::from_toml`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks config text. `origin` names the text in errors (usually the
    /// file path).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key for a TOML syntax error, an unknown
    /// key, a value of the wrong type, or a value out of range.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| toml_error(text, origin, None, &e))?;
        let config: Config =
            toml::from_str(text).map_err(|e| toml_error(text, origin, Some(doc.get_ref()), &e))?;
        config.validate().map_err(|(path, reason)| {
            let location = value_span(doc.get_ref(), &path).map(|span| locate(text, span.start));
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: Some(render_path(&path)),
                reason,
                location,
            }
        })?;
        Ok(config)
    }

    /// The embedded default configuration (equal to [`Config::default`]).
    pub fn embedded_default() -> Config {
        Config::default()
    }

    /// Checks every section, in a fixed order (so a file with several errors always
    /// gets the same one first); on error returns the full key path and the reason.
    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        within(&["aggregation"], self.aggregation.validate())?;
        within(&["admin"], self.admin.validate())?;
        within(&["exposition"], self.exposition.validate())?;
        within(&["scrape"], self.scrape.validate())?;
        within(&["receivers"], self.receivers.validate())?;
        within(&["shutdown"], self.shutdown.validate())?;
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = |inner: Vec<&'static str>| {
                let mut path = vec![Step::Key("pipelines".to_owned()), Step::Index(i)];
                path.extend(inner.into_iter().map(|k| Step::Key(k.to_owned())));
                path
            };
            p.validate()
                .map_err(|(inner, reason)| (at(inner), reason))?;
            if !names.insert(p.name()) {
                return Err((
                    at(vec!["name"]),
                    format!("{:?} is used by two pipelines", p.name()),
                ));
            }
        }
        within(&["log"], self.log.validate())
    }

    /// Reads every TLS and credentials file the config names (pipelines, scrape
    /// targets, file discovery entries), as starting or reloading would: for
    /// `weir validate`, the daemon's start and every reload, so a missing or
    /// unreadable file is refused before anything changes.
    ///
    /// # Errors
    /// The full key of the file and why it cannot be used
    /// (`pipelines[0].bearer_token_file: cannot read /etc/weir/token: ...`).
    pub fn check_security_files(&self) -> Result<(), String> {
        let https = |url: &str| url.starts_with("https://");
        let mut entries: Vec<(String, &crate::tls::client::ClientSecurityConfig, bool)> =
            Vec::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            entries.push((format!("pipelines[{i}]"), p.security(), p.is_https()));
        }
        for (i, t) in self.scrape.targets.iter().enumerate() {
            entries.push((format!("scrape.targets[{i}]"), &t.security, https(&t.url)));
        }
        for (i, f) in self.scrape.file_sd.iter().enumerate() {
            entries.push((
                format!("scrape.file_sd[{i}]"),
                &f.security,
                f.scheme == "https" || f.security.tls.is_some(),
            ));
        }
        for (at, security, https) in entries {
            if *security == crate::tls::client::ClientSecurityConfig::default() {
                continue;
            }
            security.load(https).map_err(|e| format!("{at}.{e}"))?;
        }
        Ok(())
    }

    /// Loads every listener `tls` table's certificate, key and client CA files, as the
    /// listeners will at start, so `weir validate` catches a missing or mismatched file
    /// (a reload re-reads them per listener instead, keeping the old ones on failure).
    ///
    /// # Errors
    /// The first table whose files do not load, naming its key and the file.
    pub fn check_listener_tls_files(&self) -> Result<(), String> {
        use crate::tls::server::{Alpn, ServerTls, tables};
        for (listener, key, table) in tables(self) {
            if let Some(table) = table {
                ServerTls::new(listener, key, table, Alpn::Http1).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// The aggregator settings this config asks for.
    pub fn aggregator_config(&self) -> AggregatorConfig {
        self.aggregation.aggregator_config()
    }
}

/// Formats a duration the way the config file spells it ("10s", "5m", "200ms").
pub fn fmt_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// Turns a toml error into a [`ConfigError`], finding the key path its span points
/// into when the document parsed.
fn toml_error(
    text: &str,
    origin: &str,
    doc: Option<&DeTable<'_>>,
    e: &toml::de::Error,
) -> ConfigError {
    let mut span = e.span();
    let key = match (doc, &span) {
        (Some(doc), Some(at)) => {
            let mut path = Vec::new();
            if key_path_at(doc, at.start, &mut path) {
                // An unknown key inside an array of tables is reported by serde at the
                // table (the backends' variants are flattened): point at the key itself.
                if let Some(field) = unknown_field(e.message())
                    && let Some(key_span) = key_span_in(doc, &path, field)
                {
                    path.push(Step::Key(field.to_owned()));
                    span = Some(key_span);
                }
                Some(render_path(&path))
            } else {
                None
            }
        }
        _ => None,
    };
    ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        reason: e.message().trim().replace('\n', "; "),
        location: span.map(|s| locate(text, s.start)),
    }
}

/// The key named by serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.trim().strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The span of key `field` in the table at `path`, if that is a table holding it.
fn key_span_in(doc: &DeTable<'_>, path: &[Step], field: &str) -> Option<Range<usize>> {
    fn table_at<'a, 'b>(v: &'b DeValue<'a>, rest: &[Step]) -> Option<&'b DeTable<'a>> {
        match (rest.first(), v) {
            (None, DeValue::Table(t)) => Some(t),
            (Some(Step::Key(k)), DeValue::Table(t)) => {
                let (_, v) = t.iter().find(|(key, _)| key.get_ref() == k)?;
                table_at(v.get_ref(), &rest[1..])
            }
            (Some(Step::Index(i)), DeValue::Array(a)) => table_at(a.get(*i)?.get_ref(), &rest[1..]),
            _ => None,
        }
    }
    let (Step::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let (_, v) = doc.iter().find(|(k, _)| k.get_ref() == first)?;
    let table = table_at(v.get_ref(), rest)?;
    table
        .iter()
        .find(|(k, _)| k.get_ref() == field)
        .map(|(k, _)| k.span())
}

/// A key path of plain keys (`keys(&["receivers", "statsd"])`).
pub(crate) fn keys(path: &[&str]) -> Vec<Step> {
    path.iter().map(|k| Step::Key((*k).to_owned())).collect()
}

/// Puts `section`'s keys in front of the key path a section's `validate` refused, so
/// a section names its keys relative to itself and the error names the full key.
pub(crate) fn within(
    section: &[&str],
    checked: Result<(), (Vec<Step>, String)>,
) -> Result<(), (Vec<Step>, String)> {
    checked.map_err(|(inner, reason)| {
        let mut path = keys(section);
        path.extend(inner);
        (path, reason)
    })
}

/// One step of a key path: what a section's `validate` returns, relative to the
/// section, with the reason a value was refused.
pub(crate) enum Step {
    /// A table key.
    Key(String),
    /// An element of an array of tables (`targets[2]`).
    Index(usize),
}

fn render_path(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Finds the key (or array element) whose key or value span holds byte `pos`, and
/// leaves its path in `path`. Depth-first over a small document.
fn key_path_at(table: &DeTable<'_>, pos: usize, path: &mut Vec<Step>) -> bool {
    for (k, v) in table.iter() {
        path.push(Step::Key(k.get_ref().to_string()));
        if k.span().contains(&pos) || value_path_at(v.get_ref(), v.span(), pos, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path_at(v: &DeValue<'_>, span: Range<usize>, pos: usize, path: &mut Vec<Step>) -> bool {
    match v {
        DeValue::Table(t) if key_path_at(t, pos, path) => return true,
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if value_path_at(item.get_ref(), item.span(), pos, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    span.contains(&pos)
}

/// The span of the value at `path` (keys and array indices), if the document has it.
fn value_span(doc: &DeTable<'_>, path: &[Step]) -> Option<Range<usize>> {
    let (Step::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let (_, v) = doc.iter().find(|(k, _)| k.get_ref() == first)?;
    inner_span(v.get_ref(), v.span(), rest)
}

fn inner_span(v: &DeValue<'_>, span: Range<usize>, rest: &[Step]) -> Option<Range<usize>> {
    match (rest.first(), v) {
        (None, _) => Some(span),
        (Some(Step::Key(_)), DeValue::Table(t)) => value_span(t, rest),
        (Some(Step::Index(i)), DeValue::Array(a)) => {
            let item = a.get(*i)?;
            inner_span(item.get_ref(), item.span(), &rest[1..])
        }
        _ => None,
    }
}

/// Line, column and line text of byte offset `pos` in `text`.
fn locate(text: &str, pos: usize) -> Location {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    Location {
        line: text[..line_start].matches('\n').count() + 1,
        column: text[line_start..pos].chars().count() + 1,
        text: text[line_start..line_end].to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml")
    }

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("config should be refused")
    }

    #[test]
    fn embedded_default_parses_to_default() {
        let parsed = parse(DEFAULT_CONFIG_TOML).expect("embedded default parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::embedded_default(), Config::default());
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.data_dir, PathBuf::from("./weir-data"));
        let a = &c.aggregation;
        assert_eq!(a.flush_interval, Duration::from_secs(10));
        assert_eq!(a.series_ttl, Duration::from_secs(300));
        assert_eq!(a.max_series_per_metric, 10_000);
        assert_eq!(a.max_series, 1_000_000);
        assert_eq!(a.writer_cache_capacity, 1_000_000);
        assert_eq!(a.max_tracked_metric_names, 1_000);
        assert_eq!(
            a.histogram_buckets,
            [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
            ]
        );
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.aggregator_config(), AggregatorConfig::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("[aggregation]\n[log]\n").unwrap(), Config::default());
    }

    #[test]
    fn durations_and_values_are_parsed() {
        let c = parse(
            r#"
data_dir = "/var/lib/weir"
[aggregation]
flush_interval = "200ms"
series_ttl = "1h 30m"
max_series_per_metric = 5
max_series = 7
writer_cache_capacity = 9
max_tracked_metric_names = 3
histogram_buckets = [1, 2.5, 10]
[log]
level = "debug"
format = "json"
"#,
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/weir"));
        let a = &c.aggregation;
        assert_eq!(a.flush_interval, Duration::from_millis(200));
        assert_eq!(a.series_ttl, Duration::from_secs(5400));
        assert_eq!(a.histogram_buckets, [1.0, 2.5, 10.0]);
        assert_eq!(c.log.format, LogFormat::Json);
        let core = c.aggregator_config();
        assert_eq!(core.series_ttl, Duration::from_secs(5400));
        assert_eq!(core.max_series_per_metric, 5);
        assert_eq!(core.max_series, 7);
        assert_eq!(core.writer_cache_capacity, 9);
        assert_eq!(core.max_tracked_metric_names, 3);
        assert_eq!(&core.histogram_bounds[..], [1.0, 2.5, 10.0]);
    }

    #[test]
    fn zero_ttl_disables_eviction() {
        let c = parse("[aggregation]\nseries_ttl = \"0s\"\n").unwrap();
        assert_eq!(c.aggregator_config().series_ttl, Duration::ZERO);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = err("[aggregation]\nflush_interval = \"1s\"\nflush_intervall = \"2s\"\n");
        assert_eq!(e.key(), Some("aggregation.flush_intervall"), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("`aggregation.flush_intervall`"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let e = err("colour = \"blue\"\n");
        assert_eq!(e.key(), Some("colour"), "{e}");

        let e = err("[logging]\nlevel = \"info\"\n");
        assert_eq!(e.key(), Some("logging"), "{e}");

        let e = err("[log]\nlevel = \"info\"\nfile = \"/tmp/x\"\n");
        assert_eq!(e.key(), Some("log.file"), "{e}");

        let e = err("aggregation.extra = 1\n");
        assert_eq!(e.key(), Some("aggregation.extra"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = err("[aggregation]\nmax_series = \"many\"\n");
        assert_eq!(e.key(), Some("aggregation.max_series"), "{e}");
        let e = err("[aggregation]\nmax_series = -1\n");
        assert_eq!(e.key(), Some("aggregation.max_series"), "{e}");
        let e = err("[aggregation]\nflush_interval = \"soon\"\n");
        assert_eq!(e.key(), Some("aggregation.flush_interval"), "{e}");
        let e = err("[aggregation]\nflush_interval = 10\n");
        assert_eq!(e.key(), Some("aggregation.flush_interval"), "{e}");
        let e = err("[aggregation]\nhistogram_buckets = [1, \"2\", 3]\n");
        assert_eq!(e.key(), Some("aggregation.histogram_buckets[1]"), "{e}");
        let e = err("[log]\nformat = \"xml\"\n");
        assert_eq!(e.key(), Some("log.format"), "{e}");
        assert!(e.to_string().contains("xml"), "{e}");
        let e = err("log = 5\n");
        assert_eq!(e.key(), Some("log"), "{e}");
    }

    #[test]
    fn scrape_targets_parse_with_defaults_and_bad_ones_name_the_key() {
        let c = parse("[[scrape.targets]]\nurl = \"http://127.0.0.1:9100/metrics\"\nlabels = { env = \"prod\" }\n").unwrap();
        let t = &c.scrape.targets[0];
        assert_eq!(
            (t.job.as_str(), t.interval, t.timeout),
            ("scrape", Duration::from_secs(15), Duration::from_secs(10))
        );
        assert_eq!(t.labels.get("env").map(String::as_str), Some("prod"));
        assert!(!t.honor_labels);
        for (text, key, reason) in [
            (
                "[[scrape.targets]]\nurl = \"ftp://h:1/m\"\n",
                "scrape.targets[0].url",
                "not an http",
            ),
            (
                "[[scrape.targets]]\nurl = \"http:///m\"\n",
                "scrape.targets[0].url",
                "not an http",
            ),
            (
                "[[scrape.targets]]\nurl = \"http://h:1/m\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
                "scrape.targets[0].timeout",
                "at most the interval",
            ),
            (
                "[[scrape.targets]]\nurl = \"http://h:1/m\"\nlabels = { \"a-b\" = \"x\" }\n",
                "scrape.targets[0].labels",
                "not a valid label name",
            ),
            (
                "[scrape]\nconcurrency = 0\n",
                "scrape.concurrency",
                "greater than 0",
            ),
        ] {
            let e = err(text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
        let e = err("[[scrape.targets]]\njob = \"x\"\n");
        assert!(e.to_string().contains("url"), "{e}");
    }

    #[test]
    fn pipelines_parse_with_defaults_and_bad_ones_name_the_key() {
        let c = parse(
            "data_dir = \"/d\"\n[[pipelines]]\nname = \"prom\"\ntype = \"prometheus_remote_write\"\n\
             endpoint = \"http://127.0.0.1:9090/api/v1/write\"\n\
             [[pipelines]]\nname = \"otel\"\ntype = \"otlp_grpc\"\nendpoint = \"http://127.0.0.1:4317\"\n\
             [pipelines.wal]\nmax_bytes = 2097152\nsegment_bytes = 1048576\n",
        )
        .unwrap();
        let (prom, otel) = (&c.pipelines[0], &c.pipelines[1]);
        assert_eq!(prom.temporality(), TemporalityConfig::Cumulative);
        assert_eq!(otel.temporality(), TemporalityConfig::Delta);
        assert_eq!(prom.common().wal, PipelineWalConfig::default());
        assert_eq!(prom.common().wal.max_bytes, 512 << 20);
        assert_eq!(otel.common().wal.max_bytes, 2 << 20);
        assert_eq!(prom.wal_dir(&c.data_dir), PathBuf::from("/d/wal/prom"));
        assert_eq!(prom.common().retry, RetryConfig::default());
        assert_eq!(prom.common().queue_capacity, 64);
        let c = parse(
            "[[pipelines]]\nname = \"o\"\ntype = \"otlp_http\"\nendpoint = \"http://h:1\"\n\
             external_labels = { \"service.name\" = \"edge\" }\n",
        )
        .expect("OTLP external labels are resource attributes: dotted keys are fine");
        assert_eq!(
            c.pipelines[0].common().external_labels["service.name"],
            "edge"
        );
        let p = |extra: &str| {
            format!(
                "[[pipelines]]\nname = \"p\"\ntype = \"influxdb\"\nendpoint = \"http://h:1\"\n{extra}\n"
            )
        };
        for (text, key, reason) in [
            (p("database = \"db\"\nname2 = 1"), "pipelines[0].name2", "unknown field"),
            (p(""), "pipelines[0].database", "needs `database`"),
            (p("database = \"a\"\nbucket = \"b\""), "pipelines[0].database", "not both"),
            (p("bucket = \"b\""), "pipelines[0].org", "needs `org`"),
            (
                p("database = \"a\"\n[[pipelines]]\nname = \"q\"\ntype = \"otlp_http\"\nendpoint = \"ftp://h:1\""),
                "pipelines[1].endpoint",
                "not an http",
            ),
            (
                "[[pipelines]]\nname = \"a/b\"\ntype = \"otlp_http\"\nendpoint = \"http://h:1\"\n".to_owned(),
                "pipelines[0].name",
                "letters, digits",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://u:p@h:1\"\n".to_owned(),
                "pipelines[0].endpoint",
                "credentials inside",
            ),
            (
                p("database = \"d\"\nbearer_token = \"t\"\nbasic_auth = { username = \"u\", password = \"p\" }"),
                "pipelines[0].basic_auth",
                "mutually exclusive",
            ),
            (
                p("database = \"d\"\ntoken = \"t\"\nbearer_token_file = \"/t\""),
                "pipelines[0].token",
                "set one",
            ),
            (
                p("database = \"d\"\ntls = { ca_file = \"/ca.pem\" }"),
                "pipelines[0].endpoint",
                "use https://",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_grpc\"\nendpoint = \"https://h:1\"\ntls = { ca = \"/x\" }\n".to_owned(),
                "pipelines[0]",
                "unknown field `ca`",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://h:1\"\nbearer_token = \"t\"\nheaders = { authorization = \"x\" }\n".to_owned(),
                "pipelines[0].headers",
                "also set by",
            ),
            (
                "[[scrape.targets]]\nurl = \"https://h:1/m\"\nbasic_auth = { username = \"u\" }\n".to_owned(),
                "scrape.targets[0].basic_auth",
                "exactly one",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"kafka\"\nendpoint = \"http://h:1\"\n".to_owned(),
                "pipelines[0].type",
                "unknown variant",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"prometheus_remote_write\"\nendpoint = \"http://h:1/w\"\ntemporality = \"delta\"\n".to_owned(),
                "pipelines[0].temporality",
                "unknown field `temporality`",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"influxdb\"\nendpoint = \"http://h:1\"\ndatabase = \"d\"\nexternal_labels = { \"a.b\" = \"x\" }\n".to_owned(),
                "pipelines[0].external_labels",
                "not a valid label name",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_grpc\"\nendpoint = \"http://h:1\"\n[pipelines.wal]\nmax_bytes = 1000\n".to_owned(),
                "pipelines[0].wal.max_bytes",
                "at least 1 MiB",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_grpc\"\nendpoint = \"http://h:1\"\n[pipelines.retry]\ninitial_backoff = \"0s\"\n".to_owned(),
                "pipelines[0].retry.initial_backoff",
                "above 0",
            ),
            (
                "[[pipelines]]\nname = \"a\"\ntype = \"otlp_grpc\"\nendpoint = \"http://h:1\"\n[[pipelines]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://h:2\"\n".to_owned(),
                "pipelines[1].name",
                "used by two pipelines",
            ),
        ] {
            let e = err(&text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn statsd_socket_and_stream_sections_parse_and_bad_modes_name_their_key() {
        let c = parse(
            "[receivers.statsd_unix]\nenabled = true\npath = \"/tmp/d.sock\"\nmode = \"0600\"\n\
             [receivers.statsd_tcp]\nenabled = true\naddress = \"127.0.0.1:9125\"\n",
        )
        .unwrap();
        assert!(c.receivers.statsd_unix.enabled && c.receivers.statsd_tcp.enabled);
        assert_eq!(c.receivers.statsd_unix.mode, SocketMode(0o600));
        assert!(!c.receivers.statsd_unix_stream.enabled);
        let e = err("[receivers.statsd_unix_stream]\nmode = \"0999\"\n");
        assert_eq!(e.key(), Some("receivers.statsd_unix_stream.mode"), "{e}");
        assert!(e.to_string().contains("octal"), "{e}");
        let e = err(&format!(
            "[receivers.statsd_unix]\npath = \"/{}\"\n",
            "p".repeat(200)
        ));
        assert_eq!(e.key(), Some("receivers.statsd_unix.path"), "{e}");
    }

    #[test]
    fn statsd_receiver_settings_parse_and_unknown_ones_are_refused() {
        let c = parse("[receivers.statsd]\nenabled = false\naddress = \"0.0.0.0:9125\"\n").unwrap();
        assert!(!c.receivers.statsd.enabled);
        assert_eq!(c.receivers.statsd.address.to_string(), "0.0.0.0:9125");
        let s = &c.receivers.statsd;
        assert_eq!((s.sockets, s.recv_batch, s.workers), (1, 64, 1), "defaults");
        let c = parse("[receivers.statsd]\nsockets = 4\nrecv_batch = 1\nworkers = 2\n").unwrap();
        let s = &c.receivers.statsd;
        assert_eq!((s.sockets, s.recv_batch, s.workers), (4, 1, 2));
        let e = err("[receivers.statsd]\nadress = \"127.0.0.1:1\"\n");
        assert_eq!(e.key(), Some("receivers.statsd.adress"), "{e}");
        let e = err("[receivers.statsd]\naddress = \"localhost\"\n");
        assert_eq!(e.key(), Some("receivers.statsd.address"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[aggregation]\nflush_interval = \"0s\"\n",
                "aggregation.flush_interval",
                "between",
            ),
            (
                "[aggregation]\nflush_interval = \"1ms\"\n",
                "aggregation.flush_interval",
                "between",
            ),
            (
                "[aggregation]\nflush_interval = \"2days\"\n",
                "aggregation.flush_interval",
                "between",
            ),
            (
                "[aggregation]\nseries_ttl = \"400days\"\n",
                "aggregation.series_ttl",
                "at most",
            ),
            (
                "[aggregation]\nmax_series = 0\n",
                "aggregation.max_series",
                "greater than 0",
            ),
            (
                "[aggregation]\nmax_series_per_metric = 0\n",
                "aggregation.max_series_per_metric",
                "greater than 0",
            ),
            (
                "[aggregation]\nwriter_cache_capacity = 0\n",
                "aggregation.writer_cache_capacity",
                "greater than 0",
            ),
            (
                "[aggregation]\nmax_tracked_metric_names = 0\n",
                "aggregation.max_tracked_metric_names",
                "greater than 0",
            ),
            (
                "[aggregation]\nhistogram_buckets = [1, 1]\n",
                "aggregation.histogram_buckets",
                "strictly increasing",
            ),
            (
                "[aggregation]\nhistogram_buckets = [2, 1]\n",
                "aggregation.histogram_buckets",
                "strictly increasing",
            ),
            (
                "[aggregation]\nhistogram_buckets = [1, inf]\n",
                "aggregation.histogram_buckets",
                "finite",
            ),
            (
                "[aggregation]\nhistogram_buckets = [nan]\n",
                "aggregation.histogram_buckets",
                "finite",
            ),
            (
                "[aggregation]\nhistogram_buckets = []\n",
                "aggregation.histogram_buckets",
                "1 to 1024 bounds, got 0",
            ),
            (
                "[receivers.statsd]\nrecv_buffer_bytes = 10\n",
                "receivers.statsd.recv_buffer_bytes",
                "between 4096",
            ),
            (
                "[receivers.statsd]\nsockets = 0\n",
                "receivers.statsd.sockets",
                "between 1 and 64, got 0",
            ),
            (
                "[receivers.statsd]\nrecv_batch = 1000\n",
                "receivers.statsd.recv_batch",
                "between 1 and 256, got 1000",
            ),
            (
                "[receivers.statsd]\nworkers = 17\n",
                "receivers.statsd.workers",
                "between 0 and 16, got 17",
            ),
            (
                "[receivers.statsd_unix]\npath = \"\"\n",
                "receivers.statsd_unix.path",
                "must not be empty",
            ),
            (
                "[receivers.statsd_unix]\nrecv_buffer_bytes = 1\n",
                "receivers.statsd_unix.recv_buffer_bytes",
                "between 4096",
            ),
            (
                "[receivers.statsd_unix_stream]\nmax_line_bytes = 1\n",
                "receivers.statsd_unix_stream.max_line_bytes",
                "between 64",
            ),
            (
                "[receivers.statsd_tcp]\nmax_connections = 0\n",
                "receivers.statsd_tcp.max_connections",
                "between 1 and 65536, got 0",
            ),
            (
                "[admin]\naddress = \"0.0.0.0:8686\"\n",
                "admin.address",
                "set admin.token",
            ),
            ("[admin]\ntoken = \"short\"\n", "admin.token", "at least 16"),
            (
                "[receivers.otlp]\nmax_request_bytes = 10\n",
                "receivers.otlp.max_request_bytes",
                "at least 1024",
            ),
            (
                "[receivers.otlp]\nmax_decompressed_bytes = 2048\n",
                "receivers.otlp.max_decompressed_bytes",
                "at least max_request_bytes",
            ),
            (
                "[receivers.otlp]\nmax_requests_in_flight = 0\n",
                "receivers.otlp.max_requests_in_flight",
                "greater than 0",
            ),
            (
                "[receivers.otlp]\nbody_read_timeout = \"11m\"\n",
                "receivers.otlp.body_read_timeout",
                "between 1ms and 10m",
            ),
            (
                "[scrape]\nbody_limit_bytes = 10\n",
                "scrape.body_limit_bytes",
                "at least 1024",
            ),
            (
                "[shutdown]\ngrace_period = \"11m\"\n",
                "shutdown.grace_period",
                "at most 10m",
            ),
            ("[log]\nlevel = \"\"\n", "log.level", "empty"),
            ("[log]\nlevel = \"loud=[\"\n", "log.level", "not a level"),
        ];
        for (text, key, reason) in cases {
            let e = err(text);
            assert_eq!(e.key(), Some(*key), "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{key}`")), "{text}: {msg}");
            assert!(msg.contains(reason), "{text}: {msg}");
            assert!(msg.contains("line 2"), "{text}: {msg}");
        }
    }

    #[test]
    fn several_bad_sections_report_the_same_first_one_whatever_their_order_in_the_file() {
        // Sections are checked in a fixed order (aggregation, admin, scrape, receivers,
        // shutdown, pipelines, log), not in the file's.
        let bad = [
            "[log]\nlevel = \"\"\n",
            "[receivers.statsd]\nsockets = 0\n",
            "[admin]\ntoken = \"short\"\n",
            "[shutdown]\ngrace_period = \"1h\"\n",
        ];
        for first in 0..bad.len() {
            let text: String = bad[first..].iter().chain(&bad[..first]).copied().collect();
            assert_eq!(err(&text).key(), Some("admin.token"), "{text}");
        }
        let e = err("[receivers.statsd]\nsockets = 0\n[receivers.otlp]\nmax_connections = 0\n");
        assert_eq!(e.key(), Some("receivers.otlp.max_connections"), "{e}");
    }

    #[test]
    fn syntax_errors_are_reported_with_a_line() {
        let e = err("[aggregation]\nflush_interval = \n");
        let msg = e.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        let e = err("[aggregation]\nmax_series = 1\nmax_series = 2\n");
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for text in [
            "\u{0}",
            "[[[",
            "a = \"\u{1F600}",
            "[aggregation]\nflush_interval = \"18446744073709551615s\"\n",
            "[aggregation]\nseries_ttl = \"99999999999999999999years\"\n",
            "[aggregation]\nmax_series = 99999999999999999999\n",
            "[aggregation]\nhistogram_buckets = [[1]]\n",
            "[[aggregation]]\n",
            "[aggregation.x.y.z]\n",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::from_file(Path::new("/nonexistent/weir.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/weir.toml"), "{e}");
    }
}
