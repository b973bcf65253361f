//! Parsers: wire bytes in, aggregator updates out, one module per incoming format.
//!
//! - [`statsd`]: StatsD / DogStatsD datagrams;
//! - [`exposition`]: Prometheus scrape bodies (text 0.0.4, OpenMetrics 1.0, protobuf);
//! - [`otlp`]: OTLP `ExportMetricsServiceRequest`s.
//!
//! Their mirror image, batches in and bytes out, is [`crate::encode`]. Must never: panic
//! on any input, or drop a point without counting it under a stable reason.
//!
//! # Histogram size
//! Every parser refuses a histogram point with more than [`MAX_HISTOGRAM_BUCKETS`]
//! buckets (not counting the `+Inf` overflow bucket and, for exponential or native
//! histograms, the zero bucket) under the stable reason `too_many_buckets`: a bucket
//! costs memory in every flush of the series, so a sender must not choose how many a
//! series holds. The cap is a constant, not a configuration key; the OpenTelemetry
//! SDKs' defaults (16 explicit bounds, 160 exponential buckets) and Prometheus client
//! libraries stay far below it.

pub mod exposition;
pub mod otlp;
pub mod statsd;
mod wire;

/// Most buckets a histogram point may have, whatever format it arrives in: finite
/// explicit bounds (OTLP explicit-bounds histograms, text/OpenMetrics `le` buckets,
/// protobuf classic buckets), or positive buckets (OTLP exponential histograms) or
/// bucket indices spanned (Prometheus native histograms). The `+Inf` bucket and the
/// zero bucket are not counted. A point past it is refused as `too_many_buckets`.
/// The same number as the most bounds `histogram_buckets` may configure
/// ([`crate::aggregator::MAX_HISTOGRAM_BOUNDS`]), so no series holds more buckets
/// than weir's own configuration could give it.
pub const MAX_HISTOGRAM_BUCKETS: usize = crate::aggregator::MAX_HISTOGRAM_BOUNDS;
