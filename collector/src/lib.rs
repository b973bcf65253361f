//! weir-collector: the daemon around weir-core. The layout is the data flow
//! (see `docs/architecture.md`):
//!
//! - [`sources`]: where points come in (StatsD over UDP, OTLP over gRPC and HTTP, the
//!   Prometheus scraper), each behind the [`sources::Source`] trait;
//! - [`daemon`]: the run loop that owns the [`weir_core::Aggregator`], flushes it every
//!   interval into one [`weir_core::FlushBatch`] and hands that to every pipeline and
//!   the exposition endpoint; on SIGINT/SIGTERM it drains the sources, flushes once
//!   more and lets the pipelines send;
//! - [`pipeline`]: one per `[[pipelines]]` entry: encode, WAL, queue, forwarder task
//!   with retries;
//! - [`backends`]: what a pipeline sends to (remote write, OTLP, InfluxDB), each
//!   owning its config variant, requests and answer classification;
//! - [`serve`]: weir's own HTTP listeners: the admin API and the exposition endpoint;
//! - [`control`]: flush and reload requests between the admin API and the run loop;
//! - [`telemetry`]: the self-metrics registry each stage reports into;
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
pub mod logging;
pub mod pipeline;
pub mod serve;
pub mod sources;
pub mod telemetry;

pub use config::{Config, ConfigError, DEFAULT_CONFIG_TOML};
pub use control::FlushSummary;
pub use daemon::Daemon;
