//! Sources: where points come in. One module per way in, each turning bytes from
//! the network into aggregator updates.
//!
//! - [`statsd`]: StatsD/DogStatsD over UDP, on dedicated OS threads;
//! - [`otlp`]: OTLP metrics over gRPC and HTTP;
//! - [`scrape`]: the Prometheus scraper.

pub mod otlp;
pub mod scrape;
pub mod statsd;
