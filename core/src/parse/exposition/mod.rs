//! Prometheus scrape bodies in, samples out: the text exposition format 0.0.4
//! ([`parse_text`]), OpenMetrics text 1.0 ([`parse_openmetrics`]) and the protobuf
//! exposition format ([`parse_protobuf`]), chosen by a response's content type with
//! [`Format::from_content_type`].
//!
//! Owns: the three parsers, the counted reasons they skip input for
//! ([`ExpositionError`]), and the regrouping of histogram and summary families into
//! whole values, shared by all three ([`cumulative_histogram`], [`summary_value`]).
//! Must never: panic on any body, stop at a bad line or message (it is skipped and
//! counted by a stable reason; only a broken protobuf length prefix ends a body, since
//! nothing after it can be framed), allocate by a size the body claims rather than
//! by what it holds, or trust a body's shape (a histogram missing its `+Inf` bucket or
//! with decreasing buckets is refused, and one with more than
//! [`crate::parse::MAX_HISTOGRAM_BUCKETS`] buckets is refused as `too_many_buckets`).
//!
//! # Mapping (all formats)
//! | family type | sample |
//! |---|---|
//! | counter | cumulative counter, named as the sample (`foo_total` under `# TYPE foo counter`; the protobuf family name as is) |
//! | gauge, untyped, OpenMetrics `unknown`, none | gauge |
//! | histogram | one cumulative histogram per label set (without `le`), named as the family |
//! | summary | one summary per label set (without `quantile`), named as the family |
//! | OpenMetrics `info`, `stateset`, `gaugehistogram`; protobuf `GAUGE_HISTOGRAM` | one gauge per sample line, as Prometheus stores them (`foo_info`, `foo{foo="state"}`, `foo_bucket{le}`, `foo_gcount`, `foo_gsum`) |
//!
//! The same target therefore yields the same series whichever format it answers in.
//! Scraped counters and histograms are cumulative: the aggregator's reset detection
//! turns them into deltas. Their start time (OpenMetrics `foo_created`, protobuf
//! `created_timestamp`; text 0.0.4 has none: a `foo_created` line there is a gauge)
//! goes with each sample to [`Emit`], so that a series which started after weir
//! counts its first value and a changed start is a reset (see
//! [`Writer::record_since`](crate::aggregator::Writer::record_since)).
//!
//! # Allocation
//! The text parsers allocate nothing per sample line once the first lines of a body
//! have sized their reused label vectors (a label value with escapes is unescaped into
//! its own string); histogram and summary groups own their label sets until their
//! family ends. The protobuf parser reads counter, gauge and untyped families by a
//! borrowed walk over the message bytes that allocates nothing per sample either;
//! other families are decoded into prost's owned messages. [`Format::parse_identified`]
//! also hands over each such sample's identity as the body spells it (a text line's
//! name and labels, a protobuf family name and label fields), so that a scraper can
//! find the sample's series by those bytes alone and skip merging and encoding its
//! labels.

use std::sync::Arc;

use crate::point::{HistogramValue, Quantile, Sample, SummaryValue};

mod proto;
mod text;

pub use proto::parse_protobuf;
pub(crate) use proto::parse_protobuf_decoded;
pub use text::{parse_openmetrics, parse_text};

/// Why a line, message or group was skipped. Stable names for
/// `weir_scrape_parse_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpositionError {
    /// A text body that is not valid UTF-8 (the whole body is refused).
    InvalidUtf8,
    /// A sample line without a name, or with text where the value should be; a
    /// protobuf family without a name (counted per series); OpenMetrics text after
    /// `# EOF` (counted once).
    MalformedLine,
    /// A label set that does not parse (`{a="1"`, `{a=1}`, a bad escape); a protobuf
    /// label without a name.
    MalformedLabels,
    /// A value that is not a float, `NaN`, `+Inf` or `-Inf`; a protobuf series
    /// without the field its family's type calls for.
    MalformedValue,
    /// A timestamp that is not an integer of milliseconds (text 0.0.4) or a finite
    /// number of seconds (OpenMetrics).
    MalformedTimestamp,
    /// A `# TYPE` line with an unknown type or no name.
    MalformedType,
    /// A histogram group without `+Inf`, with an unparsable `le`, or with buckets that
    /// decrease; a summary sample with an unparsable `quantile`; a native histogram
    /// that cannot be converted (see [`parse_protobuf`]).
    MalformedGroup,
    /// A protobuf message that does not decode (skipped), or a length prefix that is
    /// truncated or longer than the rest of the body (the rest is refused).
    MalformedProtobuf,
    /// A protobuf family of a type this version does not know (counted per series).
    UnsupportedType,
    /// An OpenMetrics body that does not end with `# EOF` (what it held is kept).
    MissingEof,
    /// A histogram with more than [`crate::parse::MAX_HISTOGRAM_BUCKETS`] finite
    /// buckets (classic) or bucket indices (native), or a gauge histogram with more
    /// than that many buckets.
    TooManyBuckets,
}

impl ExpositionError {
    /// All reasons, in a stable order.
    pub const ALL: [ExpositionError; 11] = [
        ExpositionError::InvalidUtf8,
        ExpositionError::MalformedLine,
        ExpositionError::MalformedLabels,
        ExpositionError::MalformedValue,
        ExpositionError::MalformedTimestamp,
        ExpositionError::MalformedType,
        ExpositionError::MalformedGroup,
        ExpositionError::MalformedProtobuf,
        ExpositionError::UnsupportedType,
        ExpositionError::MissingEof,
        ExpositionError::TooManyBuckets,
    ];

    /// Short, stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpositionError::InvalidUtf8 => "invalid_utf8",
            ExpositionError::MalformedLine => "malformed_line",
            ExpositionError::MalformedLabels => "malformed_labels",
            ExpositionError::MalformedValue => "malformed_value",
            ExpositionError::MalformedTimestamp => "malformed_timestamp",
            ExpositionError::MalformedType => "malformed_type",
            ExpositionError::MalformedGroup => "malformed_group",
            ExpositionError::MalformedProtobuf => "malformed_protobuf",
            ExpositionError::UnsupportedType => "unsupported_type",
            ExpositionError::MissingEof => "missing_eof",
            ExpositionError::TooManyBuckets => "too_many_buckets",
        }
    }

    fn index(self) -> usize {
        ExpositionError::ALL
            .iter()
            .position(|e| *e == self)
            .unwrap_or(0)
    }
}

/// What a body yielded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseReport {
    /// Samples emitted (a histogram or summary counts once).
    pub samples: u64,
    /// Lines, messages or groups skipped, by reason (indexed like
    /// [`ExpositionError::ALL`]).
    pub errors: [u64; ExpositionError::ALL.len()],
}

impl ParseReport {
    /// The count for one reason.
    pub fn errors(&self, reason: ExpositionError) -> u64 {
        self.errors[reason.index()]
    }

    /// All skipped input, over every reason.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn count(&mut self, e: ExpositionError) {
        self.errors[e.index()] += 1;
    }
}

/// Sink for parsed samples: `(name, labels, sample, timestamp_ms, start_ms)`.
///
/// `timestamp_ms` is the sample's own timestamp, 0 for "now". `start_ms` is when a
/// cumulative counter, histogram or summary began counting (an OpenMetrics
/// `_created` line, a protobuf `created_timestamp`), in milliseconds since the Unix
/// epoch, 0 when the body does not say: what [`Writer::record_since`] takes.
///
/// [`Writer::record_since`]: crate::aggregator::Writer::record_since
pub type Emit<'e> = dyn FnMut(&str, &[(&str, &str)], Sample<'_>, i64, i64) + 'e;

/// [`Emit`] with the sample's identity first: `(identity, name, labels, sample,
/// timestamp_ms, start_ms)`.
///
/// `identity` is the name and label set of a sample exactly as the body spells them:
/// for a text sample line its bytes without the value (`name{a="1"}`); for a protobuf
/// counter, gauge or untyped sample the byte `0xFF` (never in UTF-8, so never the
/// start of a text identity), the family name after its length, and each of the
/// metric's label fields after its length. Equal identity bytes always come with equal
/// `name` and `labels`, in every format (a different spelling of the same set, such as
/// another label order, is another identity). It is `None` for a sample with no such
/// spelling: a histogram or summary (assembled from several lines or fields), and the
/// gauges of a protobuf gauge histogram.
pub type EmitIdentified<'e> =
    dyn FnMut(Option<&[u8]>, &str, &[(&str, &str)], Sample<'_>, i64, i64) + 'e;

/// A scrape body's format, as its `Content-Type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`); also what a
    /// missing or unknown content type is read as.
    Text,
    /// OpenMetrics text 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// Delimited `io.prometheus.client.MetricFamily` messages
    /// (`application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
    /// encoding=delimited`).
    Protobuf,
}

impl Format {
    /// Every format, most preferred first (the order of a scraper's `Accept`).
    pub const ALL: [Format; 3] = [Format::Protobuf, Format::OpenMetrics, Format::Text];

    /// Short, stable name for logs and labels: `text`, `openmetrics`, `protobuf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::OpenMetrics => "openmetrics",
            Format::Protobuf => "protobuf",
        }
    }

    /// The media type with the parameters that select this format, as an `Accept`
    /// header lists it.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain;version=0.0.4",
            Format::OpenMetrics => "application/openmetrics-text;version=1.0.0",
            Format::Protobuf => {
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
            }
        }
    }

    /// The format a `Content-Type` header value names: protobuf only with
    /// `proto=io.prometheus.client.MetricFamily` and `encoding=delimited`, OpenMetrics
    /// for `application/openmetrics-text` of any version, text 0.0.4 for everything
    /// else, a missing header included (as Prometheus does). Media types and parameter
    /// names are compared without regard to case.
    ///
    /// ```
    /// use weir_core::parse::exposition::Format;
    /// let pb = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
    /// assert_eq!(Format::from_content_type(Some(pb)), Format::Protobuf);
    /// assert_eq!(Format::from_content_type(Some("application/openmetrics-text; version=1.0.0; charset=utf-8")), Format::OpenMetrics);
    /// assert_eq!(Format::from_content_type(Some("application/json")), Format::Text);
    /// assert_eq!(Format::from_content_type(None), Format::Text);
    /// ```
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let Some(ct) = content_type else {
            return Format::Text;
        };
        let mut parts = ct.split(';');
        let media = parts.next().unwrap_or("").trim();
        let param = |name: &str| {
            ct.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().trim_matches('"'))
            })
        };
        if media.eq_ignore_ascii_case("application/vnd.google.protobuf") {
            if param("proto") == Some("io.prometheus.client.MetricFamily")
                && param("encoding").is_some_and(|e| e.eq_ignore_ascii_case("delimited"))
            {
                return Format::Protobuf;
            }
            return Format::Text;
        }
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            return Format::OpenMetrics;
        }
        Format::Text
    }

    /// Parses `body` in this format (see [`parse_text`], [`parse_openmetrics`],
    /// [`parse_protobuf`]).
    pub fn parse(self, body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
        match self {
            Format::Text => parse_text(body, emit),
            Format::OpenMetrics => parse_openmetrics(body, emit),
            Format::Protobuf => parse_protobuf(body, emit),
        }
    }

    /// [`Format::parse`], with each sample's identity as [`EmitIdentified`] describes.
    ///
    /// ```
    /// use weir_core::parse::exposition::Format;
    /// let body = b"up{job=\"a\"} 1\n# TYPE rpc summary\nrpc_sum 2\nrpc_count 1\n";
    /// let mut ids = Vec::new();
    /// Format::Text.parse_identified(body, &mut |id, name, _, _, _, _| {
    ///     ids.push((id.map(<[u8]>::to_vec), name.to_owned()));
    /// });
    /// assert_eq!(ids, [(Some(b"up{job=\"a\"}".to_vec()), "up".into()), (None, "rpc".into())]);
    /// ```
    pub fn parse_identified(self, body: &[u8], emit: &mut EmitIdentified<'_>) -> ParseReport {
        match self {
            Format::Text => text::parse_text_identified(body, emit),
            Format::OpenMetrics => text::parse_openmetrics_identified(body, emit),
            Format::Protobuf => proto::parse_protobuf_identified(body, emit),
        }
    }
}

/// A classic histogram from its cumulative `(le, count)` buckets in any order, which
/// must include `le = +Inf` (its count is the histogram's count); `None` when the
/// buckets are inconsistent: a NaN or repeated bound, a count that decreases as the
/// bound grows, or a count that is not a whole number in `0..2^63`.
pub fn cumulative_histogram(points: &mut [(f64, f64)], sum: f64) -> Option<HistogramValue> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (&(last_le, total), finite) = points.split_last()?;
    if last_le != f64::INFINITY
        || points.iter().any(|p| p.0.is_nan())
        || points
            .windows(2)
            .any(|w| w[0].0 == w[1].0 || w[1].1 < w[0].1)
    {
        return None;
    }
    let mut counts = Vec::with_capacity(points.len());
    let mut prev = 0u64;
    for &(_, cum) in points.iter() {
        let c = whole_count(cum)?;
        counts.push(c.checked_sub(prev)?);
        prev = c;
    }
    Some(HistogramValue {
        bounds: Arc::from(finite.iter().map(|p| p.0).collect::<Vec<_>>()),
        counts,
        sum,
        count: whole_count(total)?,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    })
}

/// A summary from its `(quantile, value)` pairs; `None` when a quantile is outside
/// `[0, 1]` (or NaN). A count that is not a whole number in `0..2^63` reads as 0.
pub fn summary_value(points: &[(f64, f64)], sum: f64, count: f64) -> Option<SummaryValue> {
    if points.iter().any(|(q, _)| !(0.0..=1.0).contains(q)) {
        return None;
    }
    Some(SummaryValue {
        quantiles: points
            .iter()
            .map(|&(quantile, value)| Quantile { quantile, value })
            .collect(),
        sum,
        count: whole_count(count.trunc()).unwrap_or(0),
    })
}

/// `v` as a count: a whole number in `0..2^63`.
fn whole_count(v: f64) -> Option<u64> {
    (v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63)).then_some(v as u64)
}

/// weir's start time in the created-time tests: 1_700_000_000 s after the epoch.
#[cfg(test)]
const WEIR_START_MS: i64 = 1_700_000_000_000;

/// Parses each of `bodies` in `format` into an aggregator that started at
/// [`WEIR_START_MS`], flushing after each (one second apart), the way a scrape source
/// records them; each flush's one series as `(delta, total)`: a counter's values, a
/// histogram's counts. Panics if a flush has another number of series, or a summary
/// or gauge (tests only).
#[cfg(test)]
fn scrape_each(format: Format, bodies: &[Vec<u8>]) -> Vec<(f64, f64)> {
    use crate::{Aggregator, AggregatorConfig, FlushedValue};
    let agg = Aggregator::starting_at(AggregatorConfig::default(), WEIR_START_MS);
    let mut w = agg.writer();
    let mut out = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let r = format.parse(body, &mut |name, labels, sample, ts, start| {
            w.record_since(name, labels, sample, ts, start).unwrap();
        });
        assert_eq!((r.samples, r.total_errors()), (1, 0), "{r:?}");
        let batch = agg.flush_at(WEIR_START_MS + 1000 * (i as i64 + 1));
        assert_eq!(batch.series.len(), 1, "{:?}", batch.series);
        out.push(match &batch.series[0].value {
            FlushedValue::Counter { delta, total } => (*delta, *total),
            FlushedValue::Histogram { delta, total } => (delta.count as f64, total.count as f64),
            other => panic!("{other:?}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_the_format() {
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Text),
            (Some(""), Format::Text),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Text,
            ),
            (Some("text/plain"), Format::Text),
            (Some("application/json"), Format::Text),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text; version=0.0.1"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
            (
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
                ),
                Format::Protobuf,
            ),
            (Some(Format::Protobuf.media_type()), Format::Protobuf),
            (
                Some(
                    "application/vnd.google.protobuf;encoding=delimited;proto=\"io.prometheus.client.MetricFamily\"",
                ),
                Format::Protobuf,
            ),
            // The text form of the protobuf messages, or another message type: not
            // something weir reads as protobuf.
            (
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
                ),
                Format::Text,
            ),
            (
                Some("application/vnd.google.protobuf; proto=other.Message; encoding=delimited"),
                Format::Text,
            ),
            (Some("application/vnd.google.protobuf"), Format::Text),
        ];
        for (ct, want) in cases {
            assert_eq!(Format::from_content_type(*ct), *want, "{ct:?}");
        }
        for f in Format::ALL {
            assert_eq!(Format::from_content_type(Some(f.media_type())), f);
        }
    }

    #[test]
    fn reasons_have_distinct_stable_names() {
        let names: std::collections::HashSet<&str> =
            ExpositionError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), ExpositionError::ALL.len());
        for (i, e) in ExpositionError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        let mut p = [(f64::INFINITY, 10.0), (0.5, 3.0), (1.0, 7.0)];
        let h = cumulative_histogram(&mut p, 4.5).unwrap();
        assert_eq!(&*h.bounds, &[0.5, 1.0]);
        assert_eq!(h.counts, vec![3, 4, 3]);
        assert_eq!((h.count, h.sum), (10, 4.5));
        for bad in [
            vec![(1.0, 1.0)],                                   // no +Inf
            vec![(1.0, 5.0), (f64::INFINITY, 3.0)],             // decreasing
            vec![(1.0, 1.0), (1.0, 1.0), (f64::INFINITY, 1.0)], // repeated bound
            vec![(f64::NAN, 1.0), (f64::INFINITY, 1.0)],        // NaN bound
            vec![(1.0, 0.5), (f64::INFINITY, 1.0)],             // fractional count
            vec![(f64::INFINITY, -1.0)],                        // negative count
            vec![],
        ] {
            let mut bad = bad;
            assert_eq!(cumulative_histogram(&mut bad, 0.0), None, "{bad:?}");
        }
    }
}
