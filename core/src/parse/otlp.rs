//! OTLP metrics: an `ExportMetricsServiceRequest` in, aggregator updates out.
//!
//! Owns: the mapping of OTLP's data model onto weir's, including how resource and
//! scope attributes become labels. Must never: panic on any request (every field is
//! untrusted), or drop a point without counting it.
//!
//! # Mapping
//! | OTLP | weir |
//! |---|---|
//! | Sum, monotonic, delta / cumulative | counter, delta / cumulative (resets detected, start time below) |
//! | Sum, not monotonic, delta / cumulative | gauge adjustment / gauge |
//! | Gauge | gauge |
//! | Histogram (explicit bounds), delta / cumulative | histogram, delta / cumulative |
//! | Summary | summary |
//! | ExponentialHistogram, delta / cumulative | histogram with explicit bounds (rule below) |
//!
//! Names and attribute keys are sanitised to Prometheus rules (`http.server.duration`
//! becomes `http_server_duration`); attribute values become strings (arrays and maps
//! as their JSON-like text). Resource attributes follow Prometheus' OTLP rule:
//! `service.name` (prefixed by `service.namespace/` when set) becomes `job`,
//! `service.instance.id` becomes `instance`; other resource and scope attributes are
//! not labels. A data point's own attributes win over these.
//!
//! # The steady state is one lookup per point
//! A client exports the same series request after request; only the values change.
//! So each point is looked up in the writer's cache by its identity as received (the
//! resource's `job` and `instance`, the metric name, the attribute keys and values
//! before sanitising, see `PointScratch`), built in a buffer reused across points: a
//! hit applies the value without sanitising, de-duplicating or allocating anything
//! for its labels.
//! Only a miss builds the label set (into reused buffers too) and goes through the
//! aggregator's index, caching the series under the identity. That is sound because
//! the label set follows from the identity alone; a writer that records OTLP must
//! record nothing else, so every key of its cache is such an identity.
//!
//! # Two ways to read a protobuf request
//! [`apply_export_protobuf`] takes the request's bytes. The borrowed walk (`walk`)
//! reads the Sum and Gauge metrics (what counters, up-down counters and gauges export)
//! in place: attribute keys and string values are slices of the body, and nothing is
//! allocated per data point, so their steady state costs one identity and one cache
//! lookup per point. Every other metric (a histogram or summary, a field prost would
//! merge) is decoded by prost on its own and applied in its place; a request the walk
//! cannot take on at all (see its module doc) is decoded by prost into an
//! [`ExportMetricsServiceRequest`] and applied by [`apply_export`]. All give the same
//! series, samples, [`ExportReport`] and errors: the walk shares this module's mapping
//! (attributes through one `Attribute` trait, number points through
//! `Target::number_metric`, other metrics through `apply_metric`) and leaves to prost
//! every byte it would read differently; the property tests in `walk_vs_prost` and the
//! `otlp` fuzz target compare the paths.
//!
//! # Accounting
//! Every data point of a request ends in exactly one of two counts of its
//! [`ExportReport`], so `accepted + rejected` always equals [`data_points`] of the
//! request (a property test and the `otlp` fuzz target check it):
//! - `accepted`: the aggregator took it, or it is flagged "no recorded value" (there
//!   is nothing to record; those are also counted in `no_value`);
//! - `rejected`: refused, under one [`OtlpRejection`] reason. A metric that carries
//!   no point at all (no data field, which is also what a data kind newer than this
//!   version decodes to, or an empty point list) counts as one refused point, so a
//!   request whose metrics are all empty is never answered with a bare success.
//!
//! [`ExportReport::message`] is the `partial_success.error_message` that says why.
//!
//! # Start times of cumulative points
//! A cumulative Sum or histogram point's `start_time_unix_nano` goes to the aggregator
//! with the point ([`Writer::record_since`]): a stream that started after weir did
//! counts from zero (its first value is an increase, as the OpenTelemetry Collector's
//! cumulative-to-delta processor does with `initial_value: auto`), one that started
//! earlier or has no start time gives a baseline first, and a start time that changes
//! is a reset.
//!
//! # Exponential histograms
//! A point of scale `s` has base `b = 2^(2^-s)`; positive bucket `i` holds
//! `(b^i, b^(i+1)]`. weir keeps the positive buckets with their exact upper bounds
//! `b^(offset+k+1)`, and puts the zero bucket and every negative observation into one
//! first bucket with upper bound `zero_threshold` (weir's histograms have no negative
//! side). Count, sum, min and max are kept. Bounds follow the point's scale and
//! offset; a series keeps the bounds of its first point, and later points with other
//! bounds are re-bucketed upward (see `HistogramCell::merge`). More than
//! [`MAX_HISTOGRAM_BUCKETS`] positive buckets is refused as `too_many_buckets`, a
//! scale outside -10..=20 as `malformed_histogram`. An explicit-bounds point with
//! more than [`MAX_HISTOGRAM_BUCKETS`] finite bounds is refused as `too_many_buckets`.

use std::ops::Range;

use weir_proto::Message as _;
use weir_proto::common::{AnyValue, KeyValue, any_value};
use weir_proto::metrics::{self, metric::Data, number_data_point};
use weir_proto::metrics_service::ExportMetricsServiceRequest;

use crate::aggregator::Writer;
use crate::key::LabelBuf;
pub use crate::parse::MAX_HISTOGRAM_BUCKETS;
use crate::parse::statsd::{sanitize_label_name, sanitize_metric_name};
use crate::point::{HistogramValue, Quantile, Sample, SummaryValue, Temporality};

mod json;
mod walk;
pub use json::{OtlpJsonError, decode_json};

/// A protobuf body that is not an `ExportMetricsServiceRequest`: prost's reason (the
/// same for the borrowed walk, which leaves every body it cannot take to prost).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OtlpProtobufError(#[from] weir_proto::DecodeError);

/// Applies every data point of a protobuf `ExportMetricsServiceRequest` through
/// `writer`, as decoding it with prost and calling [`apply_export`] would: the same
/// series, samples and [`ExportReport`], the same error for the same bad bytes.
///
/// Sum and Gauge metrics are read in place by the borrowed walk (see the module doc),
/// other metrics decoded by prost one by one; a request the walk cannot take on is
/// decoded by prost whole. Nothing is applied from a body that does not decode.
///
/// `writer` must be used for OTLP only (as for [`apply_export`]).
///
/// ```
/// use weir_core::Aggregator;
/// use weir_core::parse::otlp::apply_export_protobuf;
/// use weir_proto::Message;
/// use weir_proto::metrics::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
/// use weir_proto::metrics::{metric::Data, number_data_point::Value};
/// use weir_proto::metrics_service::ExportMetricsServiceRequest;
/// let point = NumberDataPoint { value: Some(Value::AsInt(3)), ..Default::default() };
/// let metric = Metric {
///     name: "queue.depth".into(),
///     data: Some(Data::Gauge(Gauge { data_points: vec![point] })),
///     ..Default::default()
/// };
/// let request = ExportMetricsServiceRequest {
///     resource_metrics: vec![ResourceMetrics {
///         scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
///         ..Default::default()
///     }],
/// };
/// let agg = Aggregator::default();
/// let mut writer = agg.writer();
/// let report = apply_export_protobuf(&request.encode_to_vec(), &mut writer).unwrap();
/// assert_eq!((report.accepted, report.rejected), (1, 0));
/// assert!(apply_export_protobuf(b"\x0a\xff", &mut writer).is_err());
/// ```
///
/// # Errors
/// The body is not a protobuf `ExportMetricsServiceRequest` (prost's reason).
pub fn apply_export_protobuf(
    body: &[u8],
    writer: &mut Writer,
) -> Result<ExportReport, OtlpProtobufError> {
    let mut walk = walk::Walk::default();
    if walk.read(body).is_ok() {
        return Ok(walk.apply(writer));
    }
    let request = ExportMetricsServiceRequest::decode(body)?;
    Ok(apply_export(&request, writer))
}

/// Whether the borrowed walk takes `body` on (rather than leaving all of it to
/// prost): for the tests and the fuzz target that check both paths agree.
#[doc(hidden)]
pub fn walks(body: &[u8]) -> bool {
    walk::Walk::default().read(body).is_ok()
}

/// An exponential histogram point as an explicit-bounds histogram (see the module
/// doc), or `None` when it cannot be one (more than [`MAX_HISTOGRAM_BUCKETS`]
/// positive buckets included; callers that must tell that apart check it first).
pub fn exponential_to_explicit(
    p: &metrics::ExponentialHistogramDataPoint,
) -> Option<HistogramValue> {
    let positive = p.positive.as_ref();
    let pos_counts: &[u64] = positive.map_or(&[], |b| &b.bucket_counts);
    if pos_counts.len() > MAX_HISTOGRAM_BUCKETS || !(-10..=20).contains(&p.scale) {
        return None;
    }
    let negative: u64 = p.negative.as_ref().map_or(Some(0), |b| {
        b.bucket_counts
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(*c))
    })?;
    let base = 2f64.powf(2f64.powi(-p.scale));
    let offset = positive.map_or(0, |b| b.offset);
    let mut bounds = Vec::with_capacity(pos_counts.len() + 1);
    let mut counts = Vec::with_capacity(pos_counts.len() + 2);
    bounds.push(p.zero_threshold.max(0.0));
    counts.push(p.zero_count.checked_add(negative)?);
    for (k, &c) in pos_counts.iter().enumerate() {
        let upper = base.powf(f64::from(offset) + k as f64 + 1.0);
        if !upper.is_finite() {
            return None;
        }
        if upper > *bounds.last()? {
            bounds.push(upper);
            counts.push(c);
        } else {
            // At or below the zero threshold: merged into the first bucket.
            counts[0] = counts[0].checked_add(c)?;
        }
    }
    counts.push(0); // +Inf
    Some(histogram(bounds, counts, p.sum, p.count, p.min, p.max))
}

/// A histogram value from OTLP's fields (absent sum 0, absent min/max empty).
fn histogram(
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: Option<f64>,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
) -> HistogramValue {
    HistogramValue {
        bounds: bounds.into(),
        counts,
        sum: sum.unwrap_or(0.0),
        count,
        min: min.unwrap_or(f64::INFINITY),
        max: max.unwrap_or(f64::NEG_INFINITY),
    }
}

/// Why a data point was refused. Stable names, for `partial_success` messages and
/// self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtlpRejection {
    /// A metric without a data field: none was sent, or one of a kind this version
    /// does not know (it decodes as none). Counted as one point.
    MissingData,
    /// A metric whose data holds no data point. Counted as one point.
    NoDataPoints,
    /// A sum or (exponential) histogram whose aggregation temporality is unspecified
    /// or a number OTLP does not define.
    InvalidTemporality,
    /// A number data point without a value.
    MissingValue,
    /// A histogram point whose buckets are inconsistent (counts that do not match the
    /// bounds or the count, bounds that do not increase, a scale outside -10..=20).
    MalformedHistogram,
    /// A histogram point with more than [`MAX_HISTOGRAM_BUCKETS`] buckets.
    TooManyBuckets,
    /// Refused by the aggregator: an invalid name or value, a type conflict, a series
    /// limit (its own `weir_rejected_total{reason}` says which).
    Aggregator,
}

impl OtlpRejection {
    /// All reasons, in a stable order.
    pub const ALL: [OtlpRejection; 7] = [
        OtlpRejection::MissingData,
        OtlpRejection::NoDataPoints,
        OtlpRejection::InvalidTemporality,
        OtlpRejection::MissingValue,
        OtlpRejection::MalformedHistogram,
        OtlpRejection::TooManyBuckets,
        OtlpRejection::Aggregator,
    ];

    /// Short, stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpRejection::MissingData => "missing_data",
            OtlpRejection::NoDataPoints => "no_data_points",
            OtlpRejection::InvalidTemporality => "invalid_temporality",
            OtlpRejection::MissingValue => "missing_value",
            OtlpRejection::MalformedHistogram => "malformed_histogram",
            OtlpRejection::TooManyBuckets => "too_many_buckets",
            OtlpRejection::Aggregator => "aggregator",
        }
    }

    fn index(self) -> usize {
        OtlpRejection::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// What one request did. `accepted + rejected` is [`data_points`] of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Data points taken: recorded by the aggregator, or flagged "no recorded value"
    /// (nothing to record; those are also counted in `no_value`).
    pub accepted: u64,
    /// Data points refused, each under one reason in `reasons`. OTLP's
    /// `partial_success.rejected_data_points`.
    pub rejected: u64,
    /// Of `accepted`, points flagged "no recorded value".
    pub no_value: u64,
    /// `rejected` by reason, indexed like [`OtlpRejection::ALL`].
    pub reasons: [u64; OtlpRejection::ALL.len()],
}

impl ExportReport {
    /// The refused points counted under `reason`.
    pub fn rejected_for(&self, reason: OtlpRejection) -> u64 {
        self.reasons[reason.index()]
    }

    /// The `partial_success.error_message` for this request: `None` when nothing was
    /// refused, else the count and every reason that occurred, e.g.
    /// `2 of 5 data points refused: too_many_buckets 1, invalid_temporality 1`.
    pub fn message(&self) -> Option<String> {
        if self.rejected == 0 {
            return None;
        }
        let reasons: Vec<String> = OtlpRejection::ALL
            .iter()
            .filter(|r| self.rejected_for(**r) > 0)
            .map(|r| format!("{} {}", r.as_str(), self.rejected_for(*r)))
            .collect();
        Some(format!(
            "{} of {} data points refused: {}",
            self.rejected,
            self.accepted + self.rejected,
            reasons.join(", ")
        ))
    }

    fn reject(&mut self, reason: OtlpRejection, n: u64) {
        self.rejected += n;
        self.reasons[reason.index()] += n;
    }
}

/// The data points a request holds, as [`ExportReport`] counts them: every data point,
/// and one for each metric that holds none (see the module doc).
pub fn data_points(req: &ExportMetricsServiceRequest) -> u64 {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| {
            let n = match &m.data {
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            };
            n.max(1) as u64
        })
        .sum()
}

/// An attribute value that is neither an array nor a key-value list, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar<'a> {
    /// No value set, or an index into a profiles string table (meaningless for
    /// metrics): empty text.
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
}

impl Scalar<'_> {
    /// Appends the value's text: strings as they are, numbers and booleans as Rust
    /// formats them, bytes in lowercase hex.
    fn text(self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Scalar::Empty => {}
            Scalar::Str(s) => out.push_str(s),
            Scalar::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Scalar::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Scalar::Double(d) => {
                let _ = write!(out, "{d}");
            }
            Scalar::Bytes(b) => {
                for byte in b {
                    let _ = write!(out, "{byte:02x}");
                }
            }
        }
    }
}

/// Text of an attribute value.
fn value_text(v: &AnyValue, out: &mut String) {
    let scalar = match &v.value {
        Some(any_value::Value::StringValue(s)) => Scalar::Str(s),
        Some(any_value::Value::BoolValue(b)) => Scalar::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Scalar::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => Scalar::Double(*d),
        Some(any_value::Value::BytesValue(b)) => Scalar::Bytes(b),
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value_text(v, out);
            }
            out.push(']');
            return;
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, kv) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&kv.key);
                out.push(':');
                if let Some(v) = &kv.value {
                    value_text(v, out);
                }
            }
            out.push('}');
            return;
        }
        Some(any_value::Value::StringValueStrindex(_)) | None => Scalar::Empty,
    };
    scalar.text(out);
}

/// An attribute as the mapping reads it: a decoded [`KeyValue`], or one the borrowed
/// walk read in place ([`walk`]). Both give the same key and text for the same bytes.
trait Attribute {
    /// The key as received.
    fn key(&self) -> &str;
    /// The value when it is a string (its text is then itself).
    fn string(&self) -> Option<&str>;
    /// Whether the attribute has a value field at all (an empty value is one).
    fn has_value(&self) -> bool;
    /// Appends the value's text ([`value_text`]); nothing when it has none.
    fn text(&self, out: &mut String);
}

impl Attribute for KeyValue {
    fn key(&self) -> &str {
        &self.key
    }
    fn string(&self) -> Option<&str> {
        match self.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }
    fn has_value(&self) -> bool {
        self.value.is_some()
    }
    fn text(&self, out: &mut String) {
        if let Some(v) = &self.value {
            value_text(v, out);
        }
    }
}

fn attr(attrs: &[impl Attribute], key: &str) -> Option<String> {
    let a = attrs.iter().find(|a| a.key() == key)?;
    if !a.has_value() {
        return None;
    }
    let mut s = String::new();
    a.text(&mut s);
    Some(s)
}

/// `job` and `instance` from resource attributes, as Prometheus derives them.
fn resource_labels(attrs: &[impl Attribute]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(name) = attr(attrs, "service.name") {
        let job = match attr(attrs, "service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        };
        out.push(("job".to_owned(), job));
    }
    if let Some(id) = attr(attrs, "service.instance.id") {
        out.push(("instance".to_owned(), id));
    }
    out
}

/// Applies every data point of `req` through `writer`.
///
/// `writer` must be used for OTLP only (it caches series under the identities of
/// `PointScratch`, see the module doc).
pub fn apply_export(req: &ExportMetricsServiceRequest, writer: &mut Writer) -> ExportReport {
    let mut report = ExportReport::default();
    let mut name = String::new();
    let mut scratch = PointScratch::default();
    for rm in &req.resource_metrics {
        let base = resource_labels(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        scratch.set_base(&base);
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                sanitize_metric_name(&m.name, &mut name);
                apply_metric(m, &name, &base, writer, &mut scratch, &mut report);
            }
        }
    }
    report
}

/// The byte in front of every OTLP identity in a writer cache: `0xFE` occurs in no
/// UTF-8 text, so no aggregator raw encoding (which starts with a metric name) starts
/// with it, and the two kinds of cache key never meet.
const IDENT_MARK: u8 = 0xFE;

/// Appends `bytes` to `out` behind their length (LEB128), so that a sequence of
/// fields decodes one way only.
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

/// The reused buffers of one request's points, so that a point whose series the
/// writer has cached costs no allocation.
///
/// A point is looked up in the writer cache by its *identity*: [`IDENT_MARK`], the
/// resource labels (`job`, `instance`), the sanitised metric name, then each attribute
/// as received (its key, unsanitised, and its value's text), every field behind its
/// length. A point's label set follows from those alone ([`PointScratch::labels`]), so
/// equal identities always mean one series; a point whose identity is not cached
/// (new series, full or cleared cache) has its labels built and goes through the
/// aggregator's index, and its series is cached under the identity.
#[derive(Default)]
struct PointScratch {
    /// Length of the current resource's identity prefix in `ident` (the mark and
    /// the resource labels).
    base_len: usize,
    /// The identity of the current point (its first `base_len` bytes: the resource).
    ident: Vec<u8>,
    /// Text of a non-string attribute value.
    value: String,
    /// A sanitised attribute key.
    key: String,
    /// The current point's label keys and values, back to back (see `ranges`).
    text: String,
    /// `(key, value)` of each label of the current point, as byte ranges of `text`.
    ranges: Vec<(Range<usize>, Range<usize>)>,
    /// The `(&str, &str)` view of `ranges` the aggregator takes.
    view: LabelBuf,
}

impl PointScratch {
    /// Starts the identities of a resource with labels `base`.
    fn set_base(&mut self, base: &[(String, String)]) {
        self.ident.clear();
        self.ident.push(IDENT_MARK);
        // At most two labels (`job`, `instance`): the count fits a byte.
        self.ident.push(base.len() as u8);
        for (k, v) in base {
            push_field(&mut self.ident, k.as_bytes());
            push_field(&mut self.ident, v.as_bytes());
        }
        self.base_len = self.ident.len();
    }

    /// Builds the identity of a point of metric `name` (sanitised) with `attrs` into
    /// `self.ident`, after the resource's.
    fn identify(&mut self, name: &str, attrs: &[impl Attribute]) {
        self.ident.truncate(self.base_len);
        push_field(&mut self.ident, name.as_bytes());
        for a in attrs {
            push_field(&mut self.ident, a.key().as_bytes());
            match a.string() {
                Some(s) => push_field(&mut self.ident, s.as_bytes()),
                None => {
                    self.value.clear();
                    a.text(&mut self.value);
                    push_field(&mut self.ident, self.value.as_bytes());
                }
            }
        }
    }

    /// A data point's labels into `text` and `ranges`: its attributes (sanitised keys,
    /// the first of two keys that sanitise alike wins) over the resource labels.
    fn labels(&mut self, attrs: &[impl Attribute], base: &[(String, String)]) {
        self.text.clear();
        self.ranges.clear();
        for a in attrs {
            sanitize_label_name(a.key(), &mut self.key);
            if self.has(&self.key) {
                continue;
            }
            let start = self.text.len();
            self.text.push_str(&self.key);
            let mid = self.text.len();
            a.text(&mut self.text);
            self.ranges.push((start..mid, mid..self.text.len()));
        }
        for (k, v) in base {
            if self.has(k) {
                continue;
            }
            let start = self.text.len();
            self.text.push_str(k);
            let mid = self.text.len();
            self.text.push_str(v);
            self.ranges.push((start..mid, mid..self.text.len()));
        }
    }

    /// Whether the labels built so far have key `key`.
    fn has(&self, key: &str) -> bool {
        self.ranges
            .iter()
            .any(|(k, _)| &self.text[k.clone()] == key)
    }
}

fn temporality_of(t: i32) -> Option<Temporality> {
    match metrics::AggregationTemporality::try_from(t).ok()? {
        metrics::AggregationTemporality::Delta => Some(Temporality::Delta),
        metrics::AggregationTemporality::Cumulative => Some(Temporality::Cumulative),
        metrics::AggregationTemporality::Unspecified => None,
    }
}

fn ms(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano / 1_000_000).unwrap_or(0)
}

/// The "no recorded value" flag (bit 0 of a point's flags).
fn no_value(flags: u32) -> bool {
    flags & 1 == 1
}

/// What every data point of one metric is recorded with.
/// What every OTLP data point kind has: its attributes, flags, start and end times.
trait DataPoint {
    fn attributes(&self) -> &[KeyValue];
    fn flags(&self) -> u32;
    /// `(start_time_unix_nano, time_unix_nano)`.
    fn times(&self) -> (u64, u64);
}

macro_rules! data_point {
    ($($t:ty),*) => {$(
        impl DataPoint for $t {
            fn attributes(&self) -> &[KeyValue] {
                &self.attributes
            }
            fn flags(&self) -> u32 {
                self.flags
            }
            fn times(&self) -> (u64, u64) {
                (self.start_time_unix_nano, self.time_unix_nano)
            }
        }
    )*};
}

data_point!(
    metrics::NumberDataPoint,
    metrics::HistogramDataPoint,
    metrics::ExponentialHistogramDataPoint,
    metrics::SummaryDataPoint
);

struct Target<'a> {
    writer: &'a mut Writer,
    name: &'a str,
    base: &'a [(String, String)],
    scratch: &'a mut PointScratch,
    report: &'a mut ExportReport,
}

/// A number data point as the mapping reads it, decoded or walked.
struct NumberPoint<'a, A> {
    attrs: &'a [A],
    flags: u32,
    /// `(start_time_unix_nano, time_unix_nano)`.
    times: (u64, u64),
    /// `as_double`, or `as_int` as a double; `None` when neither was sent.
    value: Option<f64>,
}

impl<'a> From<&'a metrics::NumberDataPoint> for NumberPoint<'a, KeyValue> {
    fn from(p: &'a metrics::NumberDataPoint) -> Self {
        NumberPoint {
            attrs: &p.attributes,
            flags: p.flags,
            times: p.times(),
            value: p.value.map(|v| match v {
                number_data_point::Value::AsDouble(d) => d,
                number_data_point::Value::AsInt(i) => i as f64,
            }),
        }
    }
}

/// What a number metric's points are recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberKind {
    Gauge,
    /// A Sum, with its `aggregation_temporality` as received and `is_monotonic`.
    Sum {
        temporality: i32,
        monotonic: bool,
    },
}

impl Target<'_> {
    /// Records one decoded data point (see [`Target::point`]).
    fn decoded(&mut self, p: &impl DataPoint, sample: Result<Sample<'_>, OtlpRejection>) {
        self.point(p.attributes(), p.flags(), p.times(), sample);
    }

    /// Records every point of a Gauge or Sum: the metric refused as a whole when it has
    /// no point or its temporality is not one OTLP defines.
    fn number_metric<'p, A: Attribute + 'p>(
        &mut self,
        kind: NumberKind,
        points: impl ExactSizeIterator<Item = NumberPoint<'p, A>>,
    ) {
        let n = points.len();
        if n == 0 {
            return self.reject_metric(OtlpRejection::NoDataPoints, 1);
        }
        let sample: fn(f64) -> Sample<'static> = match kind {
            NumberKind::Gauge => Sample::Gauge,
            NumberKind::Sum {
                temporality,
                monotonic,
            } => match (monotonic, temporality_of(temporality)) {
                (_, None) => return self.reject_metric(OtlpRejection::InvalidTemporality, n),
                (true, Some(Temporality::Delta)) => |v| Sample::Counter(v, Temporality::Delta),
                (true, Some(Temporality::Cumulative)) => {
                    |v| Sample::Counter(v, Temporality::Cumulative)
                }
                (false, Some(Temporality::Delta)) => Sample::GaugeDelta,
                (false, Some(Temporality::Cumulative)) => Sample::Gauge,
            },
        };
        for p in points {
            let s = p.value.map(sample).ok_or(OtlpRejection::MissingValue);
            self.point(p.attrs, p.flags, p.times, s);
        }
    }

    /// Records one data point: taken as is when flagged "no recorded value" (nothing
    /// to record), refused for `sample`'s reason when it yields no sample.
    fn point(
        &mut self,
        attrs: &[impl Attribute],
        flags: u32,
        (start_unix_nano, time_unix_nano): (u64, u64),
        sample: Result<Sample<'_>, OtlpRejection>,
    ) {
        if no_value(flags) {
            self.report.accepted += 1;
            self.report.no_value += 1;
            return;
        }
        let sample = match sample {
            Ok(s) => s,
            Err(reason) => return self.report.reject(reason, 1),
        };
        let (start, time) = (ms(start_unix_nano), ms(time_unix_nano));
        let scratch = &mut *self.scratch;
        scratch.identify(self.name, attrs);
        let result = match self
            .writer
            .record_cached_since(&scratch.ident, sample, time, start)
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                scratch.labels(attrs, self.base);
                let PointScratch {
                    ident,
                    text,
                    ranges,
                    view,
                    ..
                } = scratch;
                let (writer, name) = (&mut *self.writer, self.name);
                view.with(|labels| {
                    labels.extend(
                        ranges
                            .iter()
                            .map(|(k, v)| (&text[k.clone()], &text[v.clone()])),
                    );
                    writer.record_with_raw_since(ident, name, labels, sample, time, start)
                })
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => self.report.accepted += 1,
            Err(_) => self.report.reject(OtlpRejection::Aggregator, 1),
        }
    }

    /// Refuses a whole metric: each of its `n` points, or one when it has none.
    fn reject_metric(&mut self, reason: OtlpRejection, n: usize) {
        self.report.reject(reason, n.max(1) as u64);
    }
}

/// An explicit-bounds histogram point as weir's histogram, if consistent and within
/// [`MAX_HISTOGRAM_BUCKETS`].
fn explicit(p: &metrics::HistogramDataPoint) -> Result<HistogramValue, OtlpRejection> {
    // Checked before anything is copied: the count of buckets is the sender's choice.
    if p.explicit_bounds.len() > MAX_HISTOGRAM_BUCKETS
        || p.bucket_counts.len() > MAX_HISTOGRAM_BUCKETS + 1
    {
        return Err(OtlpRejection::TooManyBuckets);
    }
    // No buckets at all is allowed: count and sum only, one +Inf bucket.
    let (bounds, counts) = if p.bucket_counts.is_empty() {
        (Vec::new(), vec![p.count])
    } else {
        (p.explicit_bounds.clone(), p.bucket_counts.clone())
    };
    let value = histogram(bounds, counts, p.sum, p.count, p.min, p.max);
    if value.is_well_formed() {
        Ok(value)
    } else {
        Err(OtlpRejection::MalformedHistogram)
    }
}

/// An exponential histogram point as weir's histogram (see the module doc).
fn exponential(
    p: &metrics::ExponentialHistogramDataPoint,
) -> Result<HistogramValue, OtlpRejection> {
    let positive = p.positive.as_ref().map_or(0, |b| b.bucket_counts.len());
    if positive > MAX_HISTOGRAM_BUCKETS {
        return Err(OtlpRejection::TooManyBuckets);
    }
    exponential_to_explicit(p)
        .filter(HistogramValue::is_well_formed)
        .ok_or(OtlpRejection::MalformedHistogram)
}

fn summary(p: &metrics::SummaryDataPoint) -> SummaryValue {
    SummaryValue {
        quantiles: p
            .quantile_values
            .iter()
            .map(|q| Quantile {
                quantile: q.quantile,
                value: q.value,
            })
            .collect(),
        sum: p.sum,
        count: p.count,
    }
}

fn apply_metric(
    m: &metrics::Metric,
    name: &str,
    base: &[(String, String)],
    writer: &mut Writer,
    scratch: &mut PointScratch,
    report: &mut ExportReport,
) {
    let mut to = Target {
        writer,
        name,
        base,
        scratch,
        report,
    };
    let points = match &m.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => return to.reject_metric(OtlpRejection::MissingData, 1),
    };
    if points == 0 {
        return to.reject_metric(OtlpRejection::NoDataPoints, 1);
    }
    match &m.data {
        Some(Data::Sum(sum)) => to.number_metric(
            NumberKind::Sum {
                temporality: sum.aggregation_temporality,
                monotonic: sum.is_monotonic,
            },
            sum.data_points.iter().map(NumberPoint::from),
        ),
        Some(Data::Gauge(g)) => to.number_metric(
            NumberKind::Gauge,
            g.data_points.iter().map(NumberPoint::from),
        ),
        Some(Data::Histogram(h)) => {
            let Some(t) = temporality_of(h.aggregation_temporality) else {
                return to.reject_metric(OtlpRejection::InvalidTemporality, points);
            };
            for p in &h.data_points {
                let value = explicit(p);
                let sample = value
                    .as_ref()
                    .map(|v| Sample::Histogram(v, t))
                    .map_err(|e| *e);
                to.decoded(p, sample);
            }
        }
        Some(Data::ExponentialHistogram(e)) => {
            let Some(t) = temporality_of(e.aggregation_temporality) else {
                return to.reject_metric(OtlpRejection::InvalidTemporality, points);
            };
            for p in &e.data_points {
                let value = exponential(p);
                let sample = value
                    .as_ref()
                    .map(|v| Sample::Histogram(v, t))
                    .map_err(|e| *e);
                to.decoded(p, sample);
            }
        }
        Some(Data::Summary(s)) => {
            for p in &s.data_points {
                let value = summary(p);
                to.decoded(p, Ok(Sample::Summary(&value)));
            }
        }
        // Counted above.
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use weir_proto::common::{AnyValue, KeyValue, any_value};
    use weir_proto::metrics::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    };
    use weir_proto::resource::Resource;

    use super::*;
    use crate::aggregator::Aggregator;
    use crate::flush::FlushedValue;
    use crate::key::SeriesKey;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn num(v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "api"),
                        kv("service.namespace", "shop"),
                        kv("service.instance.id", "pod-1"),
                        kv("host.name", "h1"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_maps_onto_weir_with_resource_labels() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let delta = AggregationTemporality::Delta as i32;
        let req = request(vec![
            metric(
                "http.requests",
                Data::Sum(Sum {
                    data_points: vec![num(3.0, vec![kv("http.route", "/a")]), num(2.0, vec![])],
                    aggregation_temporality: delta,
                    is_monotonic: true,
                }),
            ),
            metric(
                "queue.size",
                Data::Sum(Sum {
                    data_points: vec![num(-2.0, vec![])],
                    aggregation_temporality: delta,
                    is_monotonic: false,
                }),
            ),
            metric(
                "temp",
                Data::Gauge(Gauge {
                    data_points: vec![num(21.5, vec![])],
                }),
            ),
            metric(
                "lat",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        sum: Some(1.5),
                        bucket_counts: vec![1, 2],
                        explicit_bounds: vec![0.5],
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "exp",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        count: 1,
                        zero_count: 1,
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "bad_hist",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        bucket_counts: vec![1],
                        explicit_bounds: vec![0.5, 1.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "no_temporality",
                Data::Sum(Sum {
                    data_points: vec![num(1.0, vec![])],
                    aggregation_temporality: 0,
                    is_monotonic: true,
                }),
            ),
        ]);
        let r = apply_export(&req, &mut w);
        assert_eq!((r.accepted, r.rejected, r.no_value), (6, 2, 0));
        assert_eq!(r.rejected_for(OtlpRejection::MalformedHistogram), 1);
        assert_eq!(r.rejected_for(OtlpRejection::InvalidTemporality), 1);
        assert_eq!(data_points(&req), 8);
        let b = agg.flush();
        let base = [("instance", "pod-1"), ("job", "shop/api")];
        let k = |name: &str, extra: &[(&'static str, &'static str)]| {
            let mut l: Vec<(&str, &str)> = base.to_vec();
            l.extend_from_slice(extra);
            SeriesKey::new(name, &l).unwrap()
        };
        let value = |key: SeriesKey| {
            b.find(&key)
                .next()
                .unwrap_or_else(|| panic!("{key}"))
                .value
                .clone()
        };
        assert_eq!(
            value(k("http_requests", &[("http_route", "/a")])),
            FlushedValue::Counter {
                delta: 3.0,
                total: 3.0
            }
        );
        assert_eq!(
            value(k("http_requests", &[])),
            FlushedValue::Counter {
                delta: 2.0,
                total: 2.0
            }
        );
        assert!(matches!(
            value(k("queue_size", &[])),
            FlushedValue::Gauge { value: -2.0, .. }
        ));
        assert!(matches!(
            value(k("temp", &[])),
            FlushedValue::Gauge { value: 21.5, .. }
        ));
        let FlushedValue::Histogram { delta, .. } = value(k("lat", &[])) else {
            panic!()
        };
        assert_eq!((delta.counts.clone(), delta.count), (vec![1, 2], 3));
    }

    fn cumulative_sum(v: f64, start_ms: u64) -> Metric {
        metric(
            "jobs",
            Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    start_time_unix_nano: start_ms * 1_000_000,
                    ..num(v, vec![])
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        )
    }

    /// Delta and total of the one counter in a flush.
    fn counter(agg: &Aggregator) -> (f64, f64) {
        match agg.flush().series.first().map(|s| s.value.clone()) {
            Some(FlushedValue::Counter { delta, total }) => (delta, total),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cumulative_stream_that_started_after_weir_counts_its_first_value() {
        let agg = Aggregator::starting_at(Default::default(), 1_000_000);
        let mut w = agg.writer();
        apply_export(&request(vec![cumulative_sum(7.0, 1_000_500)]), &mut w);
        assert_eq!(counter(&agg), (7.0, 7.0));
        apply_export(&request(vec![cumulative_sum(10.0, 1_000_500)]), &mut w);
        assert_eq!(counter(&agg), (3.0, 10.0));
    }

    #[test]
    fn a_cumulative_stream_older_than_weir_or_without_start_gives_a_baseline() {
        for start_ms in [999_000, 0] {
            let agg = Aggregator::starting_at(Default::default(), 1_000_000);
            let mut w = agg.writer();
            apply_export(&request(vec![cumulative_sum(7.0, start_ms)]), &mut w);
            assert_eq!(counter(&agg), (0.0, 7.0), "start {start_ms}");
            apply_export(&request(vec![cumulative_sum(10.0, start_ms)]), &mut w);
            assert_eq!(counter(&agg), (3.0, 10.0), "start {start_ms}");
        }
    }

    #[test]
    fn a_new_start_time_is_a_reset_even_when_the_value_grew() {
        let agg = Aggregator::starting_at(Default::default(), 1_000_000);
        let mut w = agg.writer();
        apply_export(&request(vec![cumulative_sum(7.0, 999_000)]), &mut w);
        assert_eq!(counter(&agg), (0.0, 7.0));
        // The source restarted at 1_002_000 and has counted 9 since.
        apply_export(&request(vec![cumulative_sum(9.0, 1_002_000)]), &mut w);
        assert_eq!(counter(&agg), (9.0, 16.0));
    }

    #[test]
    fn a_cumulative_histogram_that_started_after_weir_counts_its_first_value() {
        let hist = |start_ms: u64| {
            metric(
                "lat",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: start_ms * 1_000_000,
                        count: 3,
                        sum: Some(1.5),
                        bucket_counts: vec![1, 2],
                        explicit_bounds: vec![0.5],
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )
        };
        for (start_ms, want) in [(1_000_001, 3), (999_999, 0), (0, 0)] {
            let agg = Aggregator::starting_at(Default::default(), 1_000_000);
            let mut w = agg.writer();
            apply_export(&request(vec![hist(start_ms)]), &mut w);
            let b = agg.flush();
            let Some(FlushedValue::Histogram { delta, total }) =
                b.series.first().map(|s| s.value.clone())
            else {
                panic!()
            };
            assert_eq!((delta.count, total.count), (want, 3), "start {start_ms}");
        }
    }

    #[test]
    fn point_attributes_win_over_resource_labels_and_values_become_text() {
        let attrs = vec![
            kv("job", "override"),
            KeyValue {
                key: "ok".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "n".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(-4)),
                }),
                ..Default::default()
            },
        ];
        let base = [
            ("job".to_owned(), "api".to_owned()),
            ("instance".to_owned(), "i".to_owned()),
        ];
        let mut scratch = PointScratch::default();
        scratch.labels(&attrs, &base);
        let labels: Vec<(&str, &str)> = scratch
            .ranges
            .iter()
            .map(|(k, v)| (&scratch.text[k.clone()], &scratch.text[v.clone()]))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("job", "override"),
                ("ok", "true"),
                ("n", "-4"),
                ("instance", "i"),
            ]
        );
    }

    #[test]
    fn exponential_buckets_keep_exact_upper_bounds() {
        use weir_proto::metrics::exponential_histogram_data_point::Buckets;
        // Scale 0: base 2, bucket i holds (2^i, 2^(i+1)].
        let p = ExponentialHistogramDataPoint {
            scale: 0,
            count: 10,
            sum: Some(40.0),
            zero_count: 1,
            zero_threshold: 0.0,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![3, 4],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2],
            }),
            ..Default::default()
        };
        let h = exponential_to_explicit(&p).unwrap();
        assert_eq!(&h.bounds[..], &[0.0, 4.0, 8.0]);
        assert_eq!(h.counts, vec![3, 3, 4, 0]);
        assert!(h.is_well_formed());
        // Scale 1: base sqrt(2).
        let p = ExponentialHistogramDataPoint {
            scale: 1,
            count: 2,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1, 1],
            }),
            ..Default::default()
        };
        let h = exponential_to_explicit(&p).unwrap();
        assert_eq!(h.bounds.len(), 3);
        assert!((h.bounds[1] - 2f64.sqrt()).abs() < 1e-12 && (h.bounds[2] - 2.0).abs() < 1e-12);
        // Too many buckets, or an absurd scale, is refused.
        let huge = ExponentialHistogramDataPoint {
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![0; MAX_HISTOGRAM_BUCKETS + 1],
            }),
            ..Default::default()
        };
        assert!(exponential_to_explicit(&huge).is_none());
        let scale = ExponentialHistogramDataPoint {
            scale: 90,
            ..Default::default()
        };
        assert!(exponential_to_explicit(&scale).is_none());
    }

    fn explicit_point(buckets: usize) -> HistogramDataPoint {
        HistogramDataPoint {
            count: buckets as u64 + 1,
            bucket_counts: vec![1; buckets + 1],
            explicit_bounds: (0..buckets).map(|b| b as f64).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn explicit_histograms_past_the_bucket_cap_are_refused_as_too_many_buckets() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let delta = AggregationTemporality::Delta as i32;
        let huge: Vec<HistogramDataPoint> = (0..8)
            .map(|i| HistogramDataPoint {
                attributes: vec![kv("i", &i.to_string())],
                ..explicit_point(100_000)
            })
            .collect();
        let req = request(vec![
            metric(
                "huge",
                Data::Histogram(Histogram {
                    data_points: huge,
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "at_cap",
                Data::Histogram(Histogram {
                    data_points: vec![explicit_point(MAX_HISTOGRAM_BUCKETS)],
                    aggregation_temporality: delta,
                }),
            ),
            metric(
                "past_cap",
                Data::Histogram(Histogram {
                    data_points: vec![explicit_point(MAX_HISTOGRAM_BUCKETS + 1)],
                    aggregation_temporality: delta,
                }),
            ),
        ]);
        let r = apply_export(&req, &mut w);
        assert_eq!((r.accepted, r.rejected), (1, 9));
        assert_eq!(r.rejected_for(OtlpRejection::TooManyBuckets), 9);
        assert_eq!(
            r.message().as_deref(),
            Some("9 of 10 data points refused: too_many_buckets 9")
        );
        let b = agg.flush();
        assert_eq!(b.series.len(), 1, "only the point at the cap is stored");
    }

    #[test]
    fn exponential_histograms_past_the_bucket_cap_are_refused_as_too_many_buckets() {
        use weir_proto::metrics::exponential_histogram_data_point::Buckets;
        let agg = Aggregator::default();
        let point = |n: usize| ExponentialHistogramDataPoint {
            count: n as u64,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1; n],
            }),
            scale: -2,
            ..Default::default()
        };
        let req = request(vec![metric(
            "exp",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![point(MAX_HISTOGRAM_BUCKETS + 1), point(4)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        )]);
        let r = apply_export(&req, &mut agg.writer());
        assert_eq!((r.accepted, r.rejected), (1, 1));
        assert_eq!(r.rejected_for(OtlpRejection::TooManyBuckets), 1);
    }

    #[test]
    fn every_point_is_taken_or_refused_with_a_reason_never_skipped_silently() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let no_value_point = NumberDataPoint {
            flags: 1,
            ..Default::default()
        };
        let req = request(vec![
            // No data field: what a data kind newer than this version decodes to.
            Metric {
                name: "future_kind".into(),
                ..Default::default()
            },
            metric("empty_gauge", Data::Gauge(Gauge::default())),
            metric(
                "empty_sum",
                Data::Sum(Sum {
                    aggregation_temporality: 0,
                    ..Default::default()
                }),
            ),
            metric(
                "unknown_temporality",
                Data::Histogram(Histogram {
                    data_points: vec![explicit_point(1), explicit_point(2)],
                    aggregation_temporality: 9,
                }),
            ),
            metric(
                "no_values",
                Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint::default(), no_value_point, num(1.0, vec![])],
                }),
            ),
            // A negative counter increment: the aggregator refuses it.
            metric(
                "negative",
                Data::Sum(Sum {
                    data_points: vec![num(-1.0, vec![])],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                }),
            ),
        ]);
        let r = apply_export(&req, &mut w);
        assert_eq!(data_points(&req), 9, "{r:?}");
        assert_eq!((r.accepted, r.rejected, r.no_value), (2, 7, 1));
        let by = |reason| r.rejected_for(reason);
        assert_eq!(by(OtlpRejection::MissingData), 1);
        assert_eq!(by(OtlpRejection::NoDataPoints), 2);
        assert_eq!(by(OtlpRejection::InvalidTemporality), 2);
        assert_eq!(by(OtlpRejection::MissingValue), 1);
        assert_eq!(by(OtlpRejection::Aggregator), 1);
        assert_eq!(r.reasons.iter().sum::<u64>(), r.rejected);
        let msg = r.message().unwrap();
        assert_eq!(
            msg,
            "7 of 9 data points refused: missing_data 1, no_data_points 2, \
             invalid_temporality 2, missing_value 1, aggregator 1"
        );
        // Nothing refused, nothing said.
        let ok = request(vec![metric(
            "g",
            Data::Gauge(Gauge {
                data_points: vec![num(2.0, vec![])],
            }),
        )]);
        assert_eq!(apply_export(&ok, &mut w).message(), None);
    }

    #[test]
    fn rejection_reasons_have_distinct_stable_names() {
        let names: std::collections::HashSet<&str> =
            OtlpRejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), OtlpRejection::ALL.len());
        for (i, r) in OtlpRejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    /// The model the cached path is checked against: per point, labels built the
    /// straightforward way (owned strings, sanitised keys, the first key that sanitises
    /// alike wins, point attributes over resource labels) and recorded through the
    /// aggregator's label-set path. Covers what [`request_strategy`] generates: sums and
    /// gauges of number points.
    fn model_apply(req: &ExportMetricsServiceRequest, w: &mut Writer) -> ExportReport {
        let mut r = ExportReport::default();
        let mut name = String::new();
        for rm in &req.resource_metrics {
            let base = resource_labels(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                sanitize_metric_name(&m.name, &mut name);
                let (points, sum) = match &m.data {
                    None => {
                        r.reject(OtlpRejection::MissingData, 1);
                        continue;
                    }
                    Some(Data::Sum(s)) => (&s.data_points, Some(s)),
                    Some(Data::Gauge(g)) => (&g.data_points, None),
                    Some(other) => panic!("not generated: {other:?}"),
                };
                if points.is_empty() {
                    r.reject(OtlpRejection::NoDataPoints, 1);
                    continue;
                }
                let kind = match sum.map(|s| (s.is_monotonic, s.aggregation_temporality)) {
                    None => None,
                    Some((mono, 1)) => Some((mono, Temporality::Delta)),
                    Some((mono, 2)) => Some((mono, Temporality::Cumulative)),
                    Some(_) => {
                        r.reject(OtlpRejection::InvalidTemporality, points.len() as u64);
                        continue;
                    }
                };
                for p in points {
                    if p.flags & 1 == 1 {
                        r.accepted += 1;
                        r.no_value += 1;
                        continue;
                    }
                    let v = match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => {
                            r.reject(OtlpRejection::MissingValue, 1);
                            continue;
                        }
                    };
                    let sample = match kind {
                        Some((true, t)) => Sample::Counter(v, t),
                        Some((false, Temporality::Delta)) => Sample::GaugeDelta(v),
                        Some((false, Temporality::Cumulative)) | None => Sample::Gauge(v),
                    };
                    let mut labels: Vec<(String, String)> = Vec::new();
                    for kv in &p.attributes {
                        let mut key = String::new();
                        sanitize_label_name(&kv.key, &mut key);
                        let mut text = String::new();
                        if let Some(v) = &kv.value {
                            value_text(v, &mut text);
                        }
                        if !labels.iter().any(|(k, _)| *k == key) {
                            labels.push((key, text));
                        }
                    }
                    for (k, v) in &base {
                        if !labels.iter().any(|(ok, _)| ok == k) {
                            labels.push((k.clone(), v.clone()));
                        }
                    }
                    let view: Vec<(&str, &str)> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let (start, time) = (ms(p.start_time_unix_nano), ms(p.time_unix_nano));
                    match w.record_since(&name, &view, sample, time, start) {
                        Ok(()) => r.accepted += 1,
                        Err(_) => r.reject(OtlpRejection::Aggregator, 1),
                    }
                }
            }
        }
        r
    }

    mod cached_path {
        use proptest::prelude::*;

        use super::*;
        use crate::AggregatorConfig;

        /// Keys that clash once sanitised (`a.b`, `a_b`, `a-b`), clash with the
        /// resource labels, start with a digit or are empty.
        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "a.b", "a_b", "a-b", "job", "instance", "1x", "_1x", "", "k",
            ])
            .prop_map(str::to_owned)
        }

        /// Values whose texts coincide across kinds (`1` as a string, an int, a double).
        fn value() -> impl Strategy<Value = Option<AnyValue>> {
            use any_value::Value as V;
            let v = prop_oneof![
                prop::sample::select(vec!["", "x", "1", "true", "é"])
                    .prop_map(|s| V::StringValue(s.to_owned())),
                (0i64..3).prop_map(V::IntValue),
                any::<bool>().prop_map(V::BoolValue),
                Just(V::DoubleValue(1.0)),
                Just(V::BytesValue(vec![1, 0xfe])),
            ];
            prop::option::weighted(0.9, v.prop_map(|v| AnyValue { value: Some(v) }))
        }

        fn point() -> impl Strategy<Value = NumberDataPoint> {
            let number = prop::option::weighted(
                0.9,
                prop_oneof![
                    (-1i64..4).prop_map(number_data_point::Value::AsInt),
                    Just(number_data_point::Value::AsDouble(0.5)),
                ],
            );
            (
                prop::collection::vec(
                    (key(), value()).prop_map(|(key, value)| KeyValue {
                        key,
                        value,
                        ..Default::default()
                    }),
                    0..4,
                ),
                number,
                prop::sample::select(vec![0u32, 0, 0, 1]),
                prop::sample::select(vec![0u64, 999_000, 1_000_500]),
                1_000_000u64..1_000_010,
            )
                .prop_map(|(attributes, value, flags, start, time)| NumberDataPoint {
                    attributes,
                    value,
                    flags,
                    start_time_unix_nano: start * 1_000_000,
                    time_unix_nano: time * 1_000_000,
                    ..Default::default()
                })
        }

        fn metric() -> impl Strategy<Value = Metric> {
            let points = || prop::collection::vec(point(), 0..5);
            let data = prop_oneof![
                (
                    points(),
                    any::<bool>(),
                    prop::sample::select(vec![0, 1, 1, 2, 2, 7])
                )
                    .prop_map(
                        |(data_points, is_monotonic, aggregation_temporality)| Data::Sum(Sum {
                            data_points,
                            aggregation_temporality,
                            is_monotonic,
                        })
                    ),
                points().prop_map(|data_points| Data::Gauge(Gauge { data_points })),
            ];
            (
                prop::sample::select(vec!["m", "m.x", "m_x", "1m"]),
                prop::option::weighted(0.95, data),
            )
                .prop_map(|(name, data)| Metric {
                    name: name.to_owned(),
                    data,
                    ..Default::default()
                })
        }

        fn resource() -> impl Strategy<Value = Option<Resource>> {
            let attr = prop::sample::select(vec![
                ("service.name", "api"),
                ("service.name", "web"),
                ("service.namespace", "shop"),
                ("service.namespace", ""),
                ("service.instance.id", "pod-1"),
                ("host.name", "h"),
            ]);
            prop::option::weighted(
                0.8,
                prop::collection::vec(attr, 0..4).prop_map(|attrs| Resource {
                    attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
                    ..Default::default()
                }),
            )
        }

        pub(super) fn request_strategy() -> impl Strategy<Value = ExportMetricsServiceRequest> {
            prop::collection::vec((resource(), prop::collection::vec(metric(), 0..4)), 0..3)
                .prop_map(|rms| ExportMetricsServiceRequest {
                    resource_metrics: rms
                        .into_iter()
                        .map(|(resource, metrics)| ResourceMetrics {
                            resource,
                            scope_metrics: vec![ScopeMetrics {
                                metrics,
                                ..Default::default()
                            }],
                            ..Default::default()
                        })
                        .collect(),
                })
        }

        /// A flush as comparable rows: key text and value.
        fn rows(agg: &Aggregator) -> Vec<(String, FlushedValue)> {
            let mut rows: Vec<(String, FlushedValue)> = agg
                .flush()
                .series
                .into_iter()
                .map(|s| (s.key.to_string(), s.value))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_cached_path_gives_the_model_s_batches_and_reports(
                requests in prop::collection::vec(request_strategy(), 1..4),
                cache in prop::sample::select(vec![1usize, 3, 1_000]),
            ) {
                let config = || AggregatorConfig {
                    writer_cache_capacity: cache,
                    ..AggregatorConfig::default()
                };
                let (agg, model) = (
                    Aggregator::starting_at(config(), 1_000_000),
                    Aggregator::starting_at(config(), 1_000_000),
                );
                let (mut w, mut mw) = (agg.writer(), model.writer());
                for (i, req) in requests.iter().enumerate() {
                    // Each request twice: the second finds its series cached.
                    for pass in 0..2 {
                        let got = apply_export(req, &mut w);
                        let want = model_apply(req, &mut mw);
                        prop_assert_eq!(&got, &want, "request {} pass {}", i, pass);
                        prop_assert_eq!(got.accepted + got.rejected, data_points(req));
                    }
                    if i % 2 == 1 {
                        prop_assert_eq!(rows(&agg), rows(&model));
                    }
                }
                prop_assert_eq!(rows(&agg), rows(&model));
            }
        }
    }

    /// The borrowed walk ([`walk`]) against prost's decoding, through
    /// [`crate::testing::fuzz::check_otlp_walk`]: same errors, reports and flushes.
    mod walk_vs_prost {
        use proptest::prelude::*;
        use weir_proto::common::{ArrayValue, InstrumentationScope, KeyValueList};
        use weir_proto::encoding::{WireType, encode_key, encode_varint};
        use weir_proto::metrics::{Exemplar, exemplar};

        use super::cached_path::request_strategy;
        use super::*;
        use crate::testing::fuzz::{check_otlp_walk, otlp_request_from_bytes};

        fn value(v: any_value::Value) -> Option<AnyValue> {
            Some(AnyValue { value: Some(v) })
        }

        fn array() -> Option<AnyValue> {
            value(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(any_value::Value::StringValue("a".into())),
                    },
                    AnyValue {
                        value: Some(any_value::Value::KvlistValue(KeyValueList {
                            values: vec![kv("k", "v")],
                        })),
                    },
                ],
            }))
        }

        /// What the walk reads and ignores, or reads in every form: arrays in scope,
        /// resource and exemplar attributes and metric metadata, exemplars, profiles
        /// string indexes, empty values, keys without a value, integer points.
        fn decorate(
            mut req: ExportMetricsServiceRequest,
            seed: u64,
        ) -> ExportMetricsServiceRequest {
            let bit = |i: u32| seed >> i & 1 == 1;
            for rm in &mut req.resource_metrics {
                if bit(0) {
                    let r = rm.resource.get_or_insert_default();
                    r.attributes.push(KeyValue {
                        key: "process.command_args".into(),
                        value: array(),
                        ..Default::default()
                    });
                    r.attributes.push(KeyValue {
                        key: "service.instance.id".into(),
                        value: if bit(6) {
                            None
                        } else {
                            Some(AnyValue::default())
                        },
                        ..Default::default()
                    });
                    r.dropped_attributes_count = 2;
                }
                for sm in &mut rm.scope_metrics {
                    if bit(1) {
                        sm.scope = Some(InstrumentationScope {
                            name: "lib".into(),
                            version: "1.0".into(),
                            attributes: vec![KeyValue {
                                key: "a".into(),
                                value: array(),
                                ..Default::default()
                            }],
                            dropped_attributes_count: 1,
                        });
                        sm.schema_url = "https://opentelemetry.io/schemas/1.21.0".into();
                    }
                    for m in &mut sm.metrics {
                        if bit(2) {
                            m.description = "d".into();
                            m.unit = "s".into();
                            m.metadata = vec![KeyValue {
                                key: "m".into(),
                                value: array(),
                                ..Default::default()
                            }];
                        }
                        let points = match &mut m.data {
                            Some(Data::Sum(s)) => &mut s.data_points,
                            Some(Data::Gauge(g)) => &mut g.data_points,
                            _ => continue,
                        };
                        for (i, p) in points.iter_mut().enumerate() {
                            if bit(3) {
                                p.exemplars.push(Exemplar {
                                    filtered_attributes: vec![KeyValue {
                                        key: "trace".into(),
                                        value: array(),
                                        ..Default::default()
                                    }],
                                    time_unix_nano: 5,
                                    span_id: vec![1; 8],
                                    trace_id: vec![2; 16],
                                    value: Some(exemplar::Value::AsInt(3)),
                                });
                            }
                            if bit(4) && i % 2 == 0 {
                                p.attributes.push(KeyValue {
                                    key: "idx".into(),
                                    value: value(any_value::Value::StringValueStrindex(3)),
                                    ..Default::default()
                                });
                            }
                            if bit(5) {
                                p.attributes.push(KeyValue {
                                    key: "none".into(),
                                    value: None,
                                    key_strindex: 0,
                                });
                            }
                        }
                    }
                }
            }
            req
        }

        /// A length-delimited field.
        fn field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(payload.len() as u64, out);
            out.extend_from_slice(payload);
        }

        /// `bytes` edited once at `at` (scaled to its length): truncated, a byte
        /// flipped, a byte inserted, or a field appended.
        fn edit(mut bytes: Vec<u8>, edit: u8, at: usize, byte: u8) -> Vec<u8> {
            let at = if bytes.is_empty() {
                0
            } else {
                at % bytes.len()
            };
            match edit % 4 {
                0 => bytes.truncate(at),
                1 if !bytes.is_empty() => bytes[at] ^= byte | 1,
                2 => bytes.insert(at, byte),
                _ => bytes.extend_from_slice(&[byte, byte, 1, 0]),
            }
            bytes
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_borrowed_walk_gives_prost_s_batches_and_reports(
                req in request_strategy(),
                seed in any::<u64>(),
            ) {
                let body = decorate(req, seed).encode_to_vec();
                prop_assert!(walks(&body), "the walk declines a Sum/Gauge request");
                prop_assert_eq!(check_otlp_walk(&body), Ok(()));
            }

            #[test]
            fn the_borrowed_walk_fails_and_declines_where_prost_would(
                req in request_strategy(),
                seed in any::<u64>(),
                (kind, at, byte) in (any::<u8>(), any::<usize>(), any::<u8>()),
            ) {
                let body = edit(decorate(req, seed).encode_to_vec(), kind, at, byte);
                prop_assert_eq!(check_otlp_walk(&body), Ok(()));
            }

            #[test]
            fn requests_with_every_kind_of_metric_give_the_same_either_way(
                recipe in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let body = otlp_request_from_bytes(&recipe).encode_to_vec();
                prop_assert_eq!(check_otlp_walk(&body), Ok(()));
            }
        }

        fn gauge_request() -> ExportMetricsServiceRequest {
            request(vec![metric(
                "g",
                Data::Gauge(Gauge {
                    data_points: vec![num(1.0, vec![kv("a", "b")])],
                }),
            )])
        }

        /// The request's one `ResourceMetrics`, encoded, and the request around
        /// `rm` bytes.
        fn wrap(rm: &[u8]) -> Vec<u8> {
            let mut body = Vec::new();
            field(1, rm, &mut body);
            body
        }

        #[test]
        fn a_resource_after_its_metrics_still_gives_the_points_their_job() {
            let req = gauge_request();
            let rm = &req.resource_metrics[0];
            let mut bytes = ResourceMetrics {
                resource: None,
                ..rm.clone()
            }
            .encode_to_vec();
            field(1, &rm.resource.clone().unwrap().encode_to_vec(), &mut bytes);
            let body = wrap(&bytes);
            assert!(walks(&body));
            assert_eq!(check_otlp_walk(&body), Ok(()));
            let agg = Aggregator::default();
            let r = apply_export_protobuf(&body, &mut agg.writer()).unwrap();
            assert_eq!((r.accepted, r.rejected), (1, 0));
            let key = agg.flush().series[0].key.to_string();
            assert!(key.contains("job=\"shop/api\""), "{key}");
        }

        #[test]
        fn fields_prost_would_merge_are_left_to_prost_whole_or_per_metric() {
            let req = gauge_request();
            let rm = req.resource_metrics[0].encode_to_vec();
            // A second resource: prost merges the two resources' attributes.
            let mut two_resources = rm.clone();
            let other = Resource {
                attributes: vec![kv("service.name", "other")],
                ..Default::default()
            };
            field(1, &other.encode_to_vec(), &mut two_resources);
            // A second data field in a metric: prost merges two Gauges.
            let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
            let mut two_gauges = m.encode_to_vec();
            let Some(Data::Gauge(g)) = &m.data else {
                unreachable!()
            };
            field(5, &g.encode_to_vec(), &mut two_gauges);
            let mut sm = Vec::new();
            field(2, &two_gauges, &mut sm);
            let mut rm_two_gauges = Vec::new();
            field(2, &sm, &mut rm_two_gauges);
            // A second value in a point attribute: prost merges the two AnyValues.
            let mut attr = kv("a", "b").encode_to_vec();
            field(2, &AnyValue::default().encode_to_vec(), &mut attr);
            let mut point = Vec::new();
            field(7, &attr, &mut point);
            let mut gauge = Vec::new();
            field(1, &point, &mut gauge);
            let mut metric = Vec::new();
            field(5, &gauge, &mut metric);
            let mut sm = Vec::new();
            field(2, &metric, &mut sm);
            let mut rm_two_values = Vec::new();
            field(2, &sm, &mut rm_two_values);
            // The resource's merge is left to prost for the whole request, a metric's
            // for that metric.
            for (rm, walked) in [
                (two_resources, false),
                (rm_two_gauges, true),
                (rm_two_values, true),
            ] {
                let body = wrap(&rm);
                assert_eq!(walks(&body), walked);
                assert_eq!(check_otlp_walk(&body), Ok(()));
                let agg = Aggregator::default();
                assert!(apply_export_protobuf(&body, &mut agg.writer()).is_ok());
            }
        }

        #[test]
        fn histograms_and_nested_point_attributes_are_decoded_by_prost_beside_walked_metrics() {
            let nested = request(vec![metric(
                "g",
                Data::Gauge(Gauge {
                    data_points: vec![num(
                        1.0,
                        vec![KeyValue {
                            key: "list".into(),
                            value: array(),
                            ..Default::default()
                        }],
                    )],
                }),
            )]);
            let histogram = request(vec![metric(
                "h",
                Data::Histogram(Histogram {
                    data_points: vec![explicit_point(2)],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                }),
            )]);
            for mut req in [nested, histogram] {
                // Beside a walked gauge, before and after it.
                let gauge = gauge_request().resource_metrics[0].scope_metrics[0].metrics[0].clone();
                let metrics = &mut req.resource_metrics[0].scope_metrics[0].metrics;
                metrics.insert(0, gauge.clone());
                metrics.push(Metric {
                    name: "g2".into(),
                    ..gauge
                });
                let body = req.encode_to_vec();
                assert!(walks(&body));
                assert_eq!(check_otlp_walk(&body), Ok(()));
                let agg = Aggregator::default();
                let r = apply_export_protobuf(&body, &mut agg.writer()).unwrap();
                assert_eq!((r.accepted, r.rejected), (3, 0));
                assert_eq!(agg.flush().series.len(), 3);
            }
        }

        #[test]
        fn a_malformed_body_gives_prost_s_error_and_applies_nothing() {
            let mut body = gauge_request().encode_to_vec();
            // A valid request, then a string field cut short.
            body.extend_from_slice(&[0x0a, 0x05, b'x']);
            let agg = Aggregator::default();
            let err = apply_export_protobuf(&body, &mut agg.writer()).unwrap_err();
            let want = ExportMetricsServiceRequest::decode(&body[..]).unwrap_err();
            assert_eq!(err.to_string(), want.to_string());
            assert!(agg.flush().series.is_empty());
            assert_eq!(check_otlp_walk(&body), Ok(()));
        }

        #[test]
        fn a_metric_left_to_prost_counts_its_depth_in_the_request_as_prost_does() {
            // A histogram whose point attribute nests `n` arrays: for some `n` prost
            // decodes the metric alone but refuses it three messages deeper, inside
            // the request. The walk must refuse that request too.
            let request_with = |n: usize| {
                let mut v = AnyValue {
                    value: Some(any_value::Value::StringValue("x".into())),
                };
                for _ in 0..n {
                    v = AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
                    };
                }
                let point = HistogramDataPoint {
                    attributes: vec![KeyValue {
                        key: "deep".into(),
                        value: Some(v),
                        ..Default::default()
                    }],
                    ..explicit_point(1)
                };
                request(vec![metric(
                    "h",
                    Data::Histogram(Histogram {
                        data_points: vec![point],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                    }),
                )])
            };
            let n = (30..60)
                .find(|n| {
                    let req = request_with(*n);
                    let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
                    Metric::decode(&m.encode_to_vec()[..]).is_ok()
                        && ExportMetricsServiceRequest::decode(&req.encode_to_vec()[..]).is_err()
                })
                .expect("a depth prost accepts alone and refuses in the request");
            let body = request_with(n).encode_to_vec();
            let agg = Aggregator::default();
            assert!(apply_export_protobuf(&body, &mut agg.writer()).is_err());
            assert!(agg.flush().series.is_empty());
            assert_eq!(check_otlp_walk(&body), Ok(()));
        }

        #[test]
        fn deep_nesting_is_left_to_prost_which_refuses_past_its_recursion_limit() {
            let mut v = AnyValue {
                value: Some(any_value::Value::StringValue("x".into())),
            };
            for _ in 0..60 {
                v = AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
                };
            }
            let mut req = gauge_request();
            req.resource_metrics[0]
                .resource
                .as_mut()
                .unwrap()
                .attributes
                .push(KeyValue {
                    key: "deep".into(),
                    value: Some(v),
                    ..Default::default()
                });
            let body = req.encode_to_vec();
            assert!(!walks(&body));
            assert!(ExportMetricsServiceRequest::decode(&body[..]).is_err());
            assert_eq!(check_otlp_walk(&body), Ok(()));
        }
    }
}
