//! Parsers: wire bytes in, aggregator updates out, one module per incoming format.
//!
//! - [`statsd`]: StatsD / DogStatsD datagrams;
//! - [`exposition`]: Prometheus scrape bodies (text 0.0.4, OpenMetrics 1.0, protobuf);
//! - [`otlp`]: OTLP `ExportMetricsServiceRequest`s.
//!
//! Their mirror image, batches in and bytes out, is [`crate::encode`]. Must never: panic
//! on any input, or drop a point without counting it under a stable reason.

pub mod exposition;
pub mod otlp;
pub mod statsd;
