//! One `[[pipelines]]` entry: [`PipelineConfig`], an enum tagged by `type` whose
//! variants are the backends' own config structs, so a key that does not belong to a
//! backend (`temporality` for remote write, `database` for OTLP) is an unknown key, not
//! a value to be ignored. The keys every pipeline has are [`PipelineCommon`].
//!
//! Owns: the schema of a pipeline entry, its defaults and its validation (errors name
//! the key inside the entry; the caller adds `pipelines[i]`). Must never: do I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use weir_core::FlushBatch;
use weir_core::encode::{EncodeOptions, EncodedRequest};

use crate::backends::influx::InfluxConfig;
use crate::backends::otlp::{OtlpConfig, OtlpTransport};
use crate::backends::remote_write::RemoteWriteConfig;
use crate::backends::{self, Backend};
use crate::tls::client::{ClientSecurityConfig, LiveSecurity};

/// One `[[pipelines]]` entry, by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PipelineConfig {
    /// Prometheus remote write 1.0 (protobuf + snappy over HTTP POST).
    PrometheusRemoteWrite(RemoteWriteConfig),
    /// OTLP `ExportMetricsServiceRequest` over gRPC.
    OtlpGrpc(OtlpConfig),
    /// OTLP `ExportMetricsServiceRequest` over HTTP (`application/x-protobuf`).
    OtlpHttp(OtlpConfig),
    /// InfluxDB line protocol over HTTP (v1 `/write` or v2 `/api/v2/write`).
    Influxdb(InfluxConfig),
}

impl PipelineConfig {
    /// The keys every pipeline has.
    pub fn common(&self) -> &PipelineCommon {
        match self {
            PipelineConfig::PrometheusRemoteWrite(c) => &c.common,
            PipelineConfig::OtlpGrpc(c) | PipelineConfig::OtlpHttp(c) => &c.common,
            PipelineConfig::Influxdb(c) => &c.common,
        }
    }

    /// `tls`, `basic_auth`, `bearer_token`, `bearer_token_file`,
    /// `headers_from_files`: how the backend is verified and how weir
    /// authenticates. (A sibling of `common` in each variant, not inside it: serde
    /// cannot refuse unknown keys through two levels of `flatten`.)
    pub fn security(&self) -> &ClientSecurityConfig {
        match self {
            PipelineConfig::PrometheusRemoteWrite(c) => &c.security,
            PipelineConfig::OtlpGrpc(c) | PipelineConfig::OtlpHttp(c) => &c.security,
            PipelineConfig::Influxdb(c) => &c.security,
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.common().name
    }

    /// The `type` as the config file spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineConfig::PrometheusRemoteWrite(_) => "prometheus_remote_write",
            PipelineConfig::OtlpGrpc(_) => "otlp_grpc",
            PipelineConfig::OtlpHttp(_) => "otlp_http",
            PipelineConfig::Influxdb(_) => "influxdb",
        }
    }

    /// The temporality this pipeline sends (its own, or its backend's default:
    /// delta for OTLP, cumulative for InfluxDB; remote write is always cumulative).
    pub fn temporality(&self) -> TemporalityConfig {
        match self {
            PipelineConfig::PrometheusRemoteWrite(_) => TemporalityConfig::Cumulative,
            PipelineConfig::OtlpGrpc(c) | PipelineConfig::OtlpHttp(c) => {
                c.temporality.unwrap_or(TemporalityConfig::Delta)
            }
            PipelineConfig::Influxdb(c) => c.temporality.unwrap_or(TemporalityConfig::Cumulative),
        }
    }

    /// The WAL directory: `wal.dir`, or `<data_dir>/wal/<name>`.
    pub fn wal_dir(&self, data_dir: &Path) -> PathBuf {
        let c = self.common();
        c.wal
            .dir
            .clone()
            .unwrap_or_else(|| data_dir.join("wal").join(&c.name))
    }

    /// Encodes one flush into this backend's request bodies, as they go on the wire
    /// (and into the WAL). Blocking work: call it off the async workers.
    pub fn encode(&self, batch: &FlushBatch, options: &EncodeOptions) -> Vec<EncodedRequest> {
        match self {
            PipelineConfig::PrometheusRemoteWrite(_) => {
                backends::remote_write::encode(batch, options)
            }
            PipelineConfig::OtlpGrpc(c) => {
                backends::otlp::encode(c, OtlpTransport::Grpc, batch, options)
            }
            PipelineConfig::OtlpHttp(c) => {
                backends::otlp::encode(c, OtlpTransport::Http, batch, options)
            }
            PipelineConfig::Influxdb(c) => backends::influx::encode(c, batch, options),
        }
    }

    /// Whether the endpoint is an `https://` one.
    pub fn is_https(&self) -> bool {
        self.common().endpoint.starts_with("https://")
    }

    /// Reads the entry's TLS and credentials files (see
    /// [`ClientSecurityConfig::load`]).
    ///
    /// # Errors
    /// A message naming the key and the file that cannot be used.
    pub fn load_security(&self) -> Result<LiveSecurity, String> {
        LiveSecurity::new(
            format!("pipeline {}", self.name()),
            self.security(),
            self.is_https(),
        )
        .map_err(|e| e.to_string())
    }

    /// The sender of this backend, using `security`'s TLS material and credentials
    /// (no connection is made until the first send).
    ///
    /// # Errors
    /// A message if the endpoint cannot be used (validation normally catches this
    /// first).
    pub fn connect(&self, security: Arc<LiveSecurity>) -> Result<Box<dyn Backend>, String> {
        Ok(match self {
            PipelineConfig::PrometheusRemoteWrite(c) => {
                Box::new(backends::remote_write::RemoteWrite::new(c, security)?)
            }
            PipelineConfig::OtlpGrpc(c) => Box::new(backends::otlp::OtlpGrpc::new(c, security)?),
            PipelineConfig::OtlpHttp(c) => Box::new(backends::otlp::OtlpHttp::new(c, security)?),
            PipelineConfig::Influxdb(c) => Box::new(backends::influx::Influx::new(c, security)?),
        })
    }

    /// Checks the entry; on error returns the key inside the entry (`endpoint`,
    /// `wal.max_bytes`) and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<&'static str>, String)> {
        let attribute_keys = matches!(
            self,
            PipelineConfig::OtlpGrpc(_) | PipelineConfig::OtlpHttp(_)
        );
        self.common().validate(attribute_keys, self.security())?;
        match self {
            PipelineConfig::PrometheusRemoteWrite(_) => Ok(()),
            PipelineConfig::OtlpGrpc(_) | PipelineConfig::OtlpHttp(_) => Ok(()),
            PipelineConfig::Influxdb(c) => c.validate().map_err(|(k, m)| (vec![k], m)),
        }
    }
}

/// Counter and histogram temporality a pipeline sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemporalityConfig {
    /// The increase during each flush interval.
    Delta,
    /// Running totals since the series started.
    Cumulative,
}

impl TemporalityConfig {
    /// The core's name for it.
    pub fn to_core(self) -> weir_core::Temporality {
        match self {
            TemporalityConfig::Delta => weir_core::Temporality::Delta,
            TemporalityConfig::Cumulative => weir_core::Temporality::Cumulative,
        }
    }
}

/// Request body compression of a pipeline (remote write is always snappy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionConfig {
    /// Bodies as encoded.
    #[default]
    None,
    /// gzip (`Content-Encoding: gzip`, or gRPC's gzip message compression).
    Gzip,
}

/// When a pipeline's write-ahead log is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSyncConfig {
    /// Once per flush, after the flush's requests were appended (the default).
    #[default]
    Flush,
    /// Never explicitly: the kernel writes back when it likes. A crash of weir
    /// loses nothing, a crash of the machine may lose the last seconds.
    Never,
}

/// The keys every `[[pipelines]]` entry has, whatever its `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineCommon {
    /// Unique name: letters, digits, `_` and `-`. Names the WAL directory and the
    /// `pipeline` label of the self-metrics. Required.
    pub name: String,
    /// `http[s]://host[:port][/path]` (the port defaults to the scheme's). Remote write: the full write URL. OTLP/HTTP and
    /// InfluxDB: the base URL (`/v1/metrics`, `/write` or `/api/v2/write` is
    /// appended when the path is empty). OTLP/gRPC: the server's address. Required.
    pub endpoint: String,
    /// Extra request headers (HTTP headers, or gRPC metadata).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Labels added to every series that does not have them already. OTLP: resource
    /// attributes instead, whose keys may be dotted (`service.name`).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Metric name patterns (`*` and `?` wildcards) to send; empty means all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Metric name patterns never to send (applied after `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How long one send may take. Default 10 s.
    #[serde(default = "default_pipeline_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest request body before compression; a flush is split into several
    /// requests to stay under it. Default 1 MiB, at least 1 KiB.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most batches waiting in memory for the forwarder. When full, batches are
    /// still in the WAL and are read back from disk. Default 64.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// The `[pipelines.wal]` table.
    #[serde(default)]
    pub wal: PipelineWalConfig,
    /// The `[pipelines.retry]` table.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_pipeline_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_request_bytes() -> usize {
    1 << 20
}

fn default_queue_capacity() -> usize {
    64
}

impl PipelineCommon {
    /// Checks the common keys. `attribute_keys`: external labels become OTLP
    /// resource attributes, whose keys may be dotted.
    fn validate(
        &self,
        attribute_keys: bool,
        security: &ClientSecurityConfig,
    ) -> Result<(), (Vec<&'static str>, String)> {
        let key = |k: &'static str| vec![k];
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err((
                key("name"),
                format!(
                    "{:?} must be 1 to 64 letters, digits, '_' or '-' (it names a directory)",
                    self.name
                ),
            ));
        }
        crate::tls::client::check_url(&self.endpoint, security)
            .map_err(|reason| (key("endpoint"), reason))?;
        security.validate().map_err(|(k, m)| (key(k), m))?;
        for name in self.external_labels.keys() {
            let ok = if attribute_keys {
                !name.is_empty() && !name.chars().any(char::is_control)
            } else {
                weir_core::key::is_valid_label_name(name)
            };
            if !ok {
                return Err((
                    key("external_labels"),
                    format!("{name:?} is not a valid label name"),
                ));
            }
        }
        for (name, value) in &self.headers {
            if name.parse::<hyper::header::HeaderName>().is_err()
                || value.parse::<hyper::header::HeaderValue>().is_err()
            {
                return Err((key("headers"), format!("{name:?} is not a valid header")));
            }
            if security.header_names().contains(&name.to_ascii_lowercase()) {
                return Err((
                    key("headers"),
                    format!(
                        "{name:?} is also set by basic_auth, the bearer token or headers_from_files"
                    ),
                ));
            }
        }
        if let Err(e) = weir_core::encode::NameFilter::new(&self.include, &self.exclude) {
            return Err((key("include"), e.to_string()));
        }
        if self.timeout.is_zero() {
            return Err((key("timeout"), "must be above 0".to_owned()));
        }
        if self.max_request_bytes < 1024 {
            return Err((key("max_request_bytes"), "must be at least 1024".to_owned()));
        }
        if self.queue_capacity == 0 || self.queue_capacity > 1 << 16 {
            return Err((
                key("queue_capacity"),
                "must be between 1 and 65536".to_owned(),
            ));
        }
        let w = &self.wal;
        if w.max_bytes < 1 << 20 {
            return Err((
                vec!["wal", "max_bytes"],
                "must be at least 1 MiB".to_owned(),
            ));
        }
        if w.segment_bytes < 64 << 10 || w.segment_bytes > w.max_bytes {
            return Err((
                vec!["wal", "segment_bytes"],
                "must be at least 64 KiB and at most wal.max_bytes".to_owned(),
            ));
        }
        let r = &self.retry;
        if r.initial_backoff.is_zero() || r.max_backoff < r.initial_backoff {
            return Err((
                vec!["retry", "initial_backoff"],
                "must be above 0 and at most retry.max_backoff".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `[pipelines.wal]`: one pipeline's write-ahead log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineWalConfig {
    /// Directory; default `<data_dir>/wal/<pipeline name>`.
    pub dir: Option<PathBuf>,
    /// Total size cap in bytes. When it is reached the oldest unsent segments are
    /// deleted, logged and counted (`weir_wal_dropped_*`). Default 512 MiB.
    pub max_bytes: u64,
    /// Segment file size in bytes. Default 64 MiB, at most `max_bytes`.
    pub segment_bytes: u64,
    /// When appends are synced. Default `flush`.
    pub sync: WalSyncConfig,
}

impl Default for PipelineWalConfig {
    fn default() -> Self {
        PipelineWalConfig {
            dir: None,
            max_bytes: 512 << 20,
            segment_bytes: 64 << 20,
            sync: WalSyncConfig::Flush,
        }
    }
}

/// `[pipelines.retry]`: exponential backoff with full jitter between attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// The first backoff's upper bound. Default 250 ms.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The largest backoff. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}
