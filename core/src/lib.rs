//! weir-core: the data model, series identity and the lock-free aggregation engine of
//! the weir metrics collector.
//!
//! Data flow inside this crate: a receiver turns bytes into samples and hands them to
//! a [`aggregator::Writer`]; the writer finds the series (through its private cache,
//! else the shared lock-free index) and updates the series' atomic [`cell`]; every
//! interval [`aggregator::Aggregator::flush`] takes each series' share out exactly once
//! into an immutable [`flush::FlushBatch`] that every pipeline reads.
//!
//! Around the engine: the wire formats, bytes in and points out ([`parse`]: StatsD,
//! Prometheus scrape bodies, OTLP), and batches in, bytes out ([`encode`]).
//!
//! No async runtime and no sockets live here: everything is plain threads and atomics,
//! usable from the daemon, the C ABI and the Python module alike.
#![deny(missing_docs)]

pub mod aggregator;
pub mod cell;
pub mod encode;
pub mod flush;
mod hint;
pub mod key;
pub mod parse;
pub mod point;
mod sync;
#[doc(hidden)]
pub mod testing;
pub mod wal;

pub use aggregator::{
    Aggregator, AggregatorConfig, AggregatorStats, Rejected, SeriesHandle, Writer,
};
pub use flush::{FlushBatch, FlushedSeries, FlushedValue};
pub use key::{KeyError, SeriesKey};
pub use point::{MetricKind, MetricPoint, PointValue, Sample, Temporality};

/// Compiles and runs the README's snippet as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
