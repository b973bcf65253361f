//! weir-collector: the daemon around weir-core.
//!
//! This crate will hold the receivers, the scraper, the pipelines and forwarders, and
//! the admin API. At this stage it has:
//! - [`config`]: the TOML configuration, its embedded defaults and validation;
//! - [`logging`]: the tracing-subscriber setup (text or JSON on standard error);
//! - [`statsd`]: the StatsD/DogStatsD UDP receiver;
//! - [`otlp`]: the OTLP metrics receivers (gRPC and HTTP);
//! - [`scrape`]: the Prometheus scraper (static targets, text format);
//! - [`exposition`]: the exposition endpoint serving the latest flush to Prometheus;
//! - [`http`]: the HTTP/1 server the endpoints share;
//! - [`pipeline`]: forwarding pipelines (encoder, WAL, queue, forwarder task);
//! - [`forward`]: the pipelines' HTTP and gRPC senders and how outcomes are sorted;
//! - [`admin`]: the admin API (health, status, self-metrics, flush on demand);
//! - [`daemon`]: the run loop that owns the [`weir_core::Aggregator`] and the
//!   receivers, flushes every interval, logs a summary per flush and, on
//!   SIGINT/SIGTERM, stops the receivers (draining their sockets) and flushes once more.
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

pub use config::{Config, ConfigError, DEFAULT_CONFIG_TOML};
pub use control::FlushSummary;
pub use daemon::Daemon;
