//! Encoders: a [`FlushBatch`] in, a backend's wire format out.
//!
//! Owns: every outgoing wire format of a batch. [`prometheus_text`] (and
//! [`prometheus_page`], an aggregator's current values) for the exposition endpoint,
//! and the three forwarding encoders a pipeline runs once per flush: [`remote_write`]
//! (Prometheus remote write 1.0), [`influx`] (line protocol) and [`otlp`]
//! (OTLP/protobuf). Each forwarding encoder returns a list of
//! [`EncodedRequest`]s whose bodies the collector writes to its WAL and later sends
//! unchanged, so a body is complete and self-contained. An empty list means nothing to
//! send (no series left after filtering).
//!
//! Must never: panic on any batch, emit a request a backend would reject for its shape
//! (unsorted or duplicate labels, empty tag values, unescaped separators, non-finite
//! line protocol fields), allocate per point where a reused buffer does, or drop a
//! series silently (what an encoder leaves out is stated in its module doc).
//!
//! # Rules shared by the forwarding encoders
//! - **Evicted series are encoded.** An entry of [`FlushBatch::evicted_series`] carries
//!   the last share of a series that is now gone; it is real data. Its timestamp is
//!   `batch.end_ms - 1` instead of `batch.end_ms`: a series evicted and created again
//!   within one interval appears twice in one batch, and two samples of one series with
//!   one timestamp would be rejected as duplicates.
//! - **Filter by metric name.** [`EncodeOptions::filter`] is applied to the series'
//!   metric name (for histograms and summaries the base name, before any `_bucket`,
//!   `_sum` or `_count` suffix).
//! - **External labels** ([`EncodeOptions::external_labels`]) are added to every series
//!   that does not already have a label of that name (the series' own value wins; a
//!   series label with an empty value counts as absent, as in Prometheus).
//!   They are expected sorted by name and unique; if they are not, the encoders sort
//!   them (first of a name wins) rather than send unsorted labels.
//! - **Request size.** Series are packed into requests whose uncompressed body stays at
//!   or under [`EncodeOptions::max_request_bytes`]. One series (with a histogram's or
//!   summary's companion series) is never split across requests, so one bigger than
//!   the limit goes alone in a request of its own.
//! - **Points.** [`EncodedRequest::points`] counts what the backend stores: remote
//!   write samples, line protocol field values, OTLP data points.

use std::borrow::Cow;

use crate::flush::{FlushBatch, FlushedSeries};
use crate::point::Temporality;

mod body;
mod filter;
mod float;
pub mod influx;
mod labels;
pub mod otlp;
pub mod remote_write;
mod text;
mod wire;

pub use filter::{NameFilter, PatternError, glob_matches};
pub use text::{prometheus_page, prometheus_text};

/// How many series ahead [`prefetched`] asks for a key: far enough for a DRAM access
/// to land while the series in between are encoded.
const KEY_PREFETCH_AHEAD: usize = 8;

/// Yields `series` in order, asking the CPU for the key bytes of the series
/// [`KEY_PREFETCH_AHEAD`] places ahead. A batch's keys are scattered over the heap, so
/// without the hint an encoder waits on a cache miss at every series' key (criterion
/// `encode` at 100k series: OTLP, which walks the batch twice, 0.6–0.8x the time;
/// remote write and line protocol 0.7–1.0x, within the noise).
pub(crate) fn prefetched<'a, I>(series: I) -> impl Iterator<Item = &'a FlushedSeries>
where
    I: Iterator<Item = &'a FlushedSeries> + Clone,
{
    let mut ahead = series.clone().skip(KEY_PREFETCH_AHEAD);
    series.inspect(move |_| {
        if let Some(a) = ahead.next() {
            a.key.prefetch();
        }
    })
}

/// The default [`EncodeOptions::max_request_bytes`]: 1 MiB.
///
/// Why 1 MiB: an OTLP/gRPC request must stay under the 4 MiB default receive limit
/// of gRPC servers (the OpenTelemetry Collector keeps it); InfluxDB refuses bodies over
/// 25 MB by default; remote write receivers (Prometheus, Mimir, Cortex) take far more,
/// and Prometheus itself sends 2,000 samples (~200 KB) per request. 1 MiB holds
/// ~8–10k remote write samples or ~10k line protocol lines, so a 100k-series flush
/// becomes ~10–15 requests: few enough to keep per-request overhead low, small
/// enough that one retry resends little and no backend refuses it.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;

/// The largest limit honoured: bigger [`EncodeOptions::max_request_bytes`] values act
/// as 1 GiB. A snappy block cannot describe more than 4 GiB, and no backend takes a
/// body near that size.
pub const MAX_REQUEST_BYTES: usize = 1 << 30;

/// How a pipeline encodes: fixed when the pipeline is built.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOptions {
    /// Labels added to every series unless it already has a label of that name. Valid
    /// label names, sorted by name, unique (see the module doc for what happens
    /// otherwise). Remote write and line protocol add them to each series; OTLP sends
    /// them once, as resource attributes.
    pub external_labels: Vec<(String, String)>,
    /// Which metric names are sent.
    pub filter: NameFilter,
    /// Each request's uncompressed body stays at or under this many bytes, except a
    /// request holding a single series bigger than it (values over
    /// [`MAX_REQUEST_BYTES`] act as that).
    pub max_request_bytes: usize,
    /// What counters and histograms send: the increase during the interval (`Delta`)
    /// or the running total since the series started (`Cumulative`). Used by OTLP and
    /// line protocol; remote write always sends running totals.
    pub temporality: Temporality,
}

impl Default for EncodeOptions {
    /// No external labels, every name, [`DEFAULT_MAX_REQUEST_BYTES`], cumulative.
    fn default() -> EncodeOptions {
        EncodeOptions {
            external_labels: Vec::new(),
            filter: NameFilter::all(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            temporality: Temporality::Cumulative,
        }
    }
}

impl EncodeOptions {
    /// The size limit actually applied (see [`MAX_REQUEST_BYTES`]).
    fn limit(&self) -> usize {
        self.max_request_bytes.min(MAX_REQUEST_BYTES)
    }

    /// The external labels sorted by name, first of each name kept (borrowed when they
    /// already are, which is the configured case).
    fn external(&self) -> Cow<'_, [(String, String)]> {
        let e = &self.external_labels;
        if e.windows(2).all(|w| w[0].0 < w[1].0) {
            return Cow::Borrowed(e);
        }
        let mut owned = e.clone();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        owned.dedup_by(|later, first| later.0 == first.0);
        Cow::Owned(owned)
    }
}

/// One request body, ready to be written to the WAL and sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    /// The body, in the encoder's wire format (see each encoder).
    pub body: Vec<u8>,
    /// Samples / field values / data points in this body (see the module doc).
    pub points: u64,
}

/// The timestamp every sample of `s` carries (see the module doc on eviction).
fn sample_ms(batch: &FlushBatch, s: &FlushedSeries) -> i64 {
    if batch.is_evicted(s) {
        batch.end_ms.saturating_sub(1)
    } else {
        batch.end_ms
    }
}
