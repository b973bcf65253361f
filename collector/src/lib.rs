//! weir-collector: the daemon around weir-core. The layout is the data flow
//! (see `docs/architecture.md`):
//!
//! - [`sources`]: where points come in (StatsD over UDP, OTLP over gRPC and HTTP, the
//!   Prometheus scraper), each behind the [`sources::Source`] trait;
//! - [`instance`]: the embeddable runtime: the [`weir_core::Aggregator`], its flush
//!   loop (every interval one [`weir_core::FlushBatch`] for every pipeline) and the
//!   pipelines; the C ABI and the Python module embed it;
//! - [`daemon`]: the run loop around an instance: sources, listeners, flush and reload
//!   requests; on SIGINT/SIGTERM it drains the sources, then closes the instance
//!   (final flush, grace period for the pipelines);
//! - [`pipeline`]: one per `[[pipelines]]` entry: encode, WAL, queue, forwarder task
//!   with retries;
//! - [`backends`]: what a pipeline sends to (remote write, OTLP, InfluxDB), each
//!   owning its config variant, requests and answer classification;
//! - [`serve`]: weir's own HTTP listeners: the admin API and the exposition endpoint;
//! - [`control`]: flush and reload requests between the admin API and the run loop;
//! - [`telemetry`]: the self-metrics registry each stage reports into;
//! - [`tls`]: certificate, key and CA files for every TLS client and server;
//! - [`health`]: the `weir health` probe of a running weir's `GET /health`;
//! - [`config`] and [`logging`]: the TOML configuration and the log setup.
//!
//! The `weir` binary (`src/main.rs`) only parses the command line and wires these
//! together; all behaviour lives here so it can be tested without a process.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backends;
pub mod config;
pub mod control;
pub mod daemon;
pub mod health;
pub mod instance;
pub mod logging;
pub mod pipeline;
pub mod serve;
pub mod sources;
pub mod telemetry;
pub mod tls;

pub use config::{Config, ConfigError, DEFAULT_CONFIG_TOML};
pub use control::FlushSummary;
pub use daemon::Daemon;
