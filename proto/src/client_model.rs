//! The Prometheus protobuf exposition format (`io.prometheus.client` of
//! prometheus/client_model's `metrics.proto`, proto2), written by hand with prost's
//! derive (no `protoc` needed).
//!
//! A scrape body in this format (content type `application/vnd.google.protobuf;
//! proto=io.prometheus.client.MetricFamily; encoding=delimited`) is a sequence of
//! [`MetricFamily`] messages, each preceded by its length as a varint. weir-core's
//! `exposition` module reads that framing and decodes each message with these types.
//!
//! Field numbers are those of the upstream file (current version, with the native
//! histogram fields):
//!
//! ```text
//! message LabelPair    { optional string name = 1; optional string value = 2; }
//! enum MetricType      { COUNTER = 0; GAUGE = 1; SUMMARY = 2; UNTYPED = 3;
//!                        HISTOGRAM = 4; GAUGE_HISTOGRAM = 5; }
//! message Gauge        { optional double value = 1; }
//! message Counter      { optional double value = 1; optional Exemplar exemplar = 2;
//!                        optional google.protobuf.Timestamp created_timestamp = 3; }
//! message Quantile     { optional double quantile = 1; optional double value = 2; }
//! message Summary      { optional uint64 sample_count = 1; optional double sample_sum = 2;
//!                        repeated Quantile quantile = 3;
//!                        optional google.protobuf.Timestamp created_timestamp = 4; }
//! message Untyped      { optional double value = 1; }
//! message Histogram    { optional uint64 sample_count = 1; optional double sample_count_float = 4;
//!                        optional double sample_sum = 2; repeated Bucket bucket = 3;
//!                        optional google.protobuf.Timestamp created_timestamp = 15;
//!                        // native histograms:
//!                        optional sint32 schema = 5; optional double zero_threshold = 6;
//!                        optional uint64 zero_count = 7; optional double zero_count_float = 8;
//!                        repeated BucketSpan negative_span = 9; repeated sint64 negative_delta = 10;
//!                        repeated double negative_count = 11; repeated BucketSpan positive_span = 12;
//!                        repeated sint64 positive_delta = 13; repeated double positive_count = 14;
//!                        repeated Exemplar exemplars = 16; }
//! message Bucket       { optional uint64 cumulative_count = 1; optional double cumulative_count_float = 4;
//!                        optional double upper_bound = 2; optional Exemplar exemplar = 3; }
//! message BucketSpan   { optional sint32 offset = 1; optional uint32 length = 2; }
//! message Exemplar     { repeated LabelPair label = 1; optional double value = 2;
//!                        optional google.protobuf.Timestamp timestamp = 3; }
//! message Metric       { repeated LabelPair label = 1; optional Gauge gauge = 2;
//!                        optional Counter counter = 3; optional Summary summary = 4;
//!                        optional Untyped untyped = 5; optional Histogram histogram = 7;
//!                        optional int64 timestamp_ms = 6; }
//! message MetricFamily { optional string name = 1; optional string help = 2;
//!                        optional MetricType type = 3; repeated Metric metric = 4; }
//! ```
//!
//! Fields declared here but not used by weir (help, exemplars, created timestamps)
//! are decoded so that a wrong wire type in them is noticed like anywhere else; fields
//! not declared (later additions such as a family's unit) are skipped by prost.
//! Repeated scalars are written unpacked, as proto2 does; prost reads both forms.

/// A label name and value.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LabelPair {
    /// The label name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// The label value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// The type of a metric family: which field of [`Metric`] carries the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    /// [`Metric::counter`].
    Counter = 0,
    /// [`Metric::gauge`].
    Gauge = 1,
    /// [`Metric::summary`].
    Summary = 2,
    /// [`Metric::untyped`].
    Untyped = 3,
    /// [`Metric::histogram`].
    Histogram = 4,
    /// [`Metric::histogram`], as a gauge histogram (no counter semantics).
    GaugeHistogram = 5,
}

/// A gauge value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    /// The value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// A counter value (cumulative).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    /// The value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
    /// An exemplar (ignored by weir).
    #[prost(message, optional, tag = "2")]
    pub exemplar: Option<Exemplar>,
    /// When the counter started (ignored by weir).
    #[prost(message, optional, tag = "3")]
    pub created_timestamp: Option<Timestamp>,
}

/// One quantile of a summary.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quantile {
    /// The quantile, in `[0, 1]`.
    #[prost(double, optional, tag = "1")]
    pub quantile: Option<f64>,
    /// Its value.
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
}

/// A summary value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// Observations so far.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Sum of the observations.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// The quantiles.
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
    /// When the summary started (ignored by weir).
    #[prost(message, optional, tag = "4")]
    pub created_timestamp: Option<Timestamp>,
}

/// An untyped value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Untyped {
    /// The value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// A histogram: classic buckets and/or a native (sparse) histogram.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// Observations so far.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Overrides `sample_count` if > 0 (float histograms).
    #[prost(double, optional, tag = "4")]
    pub sample_count_float: Option<f64>,
    /// Sum of the observations.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets, in increasing order of `upper_bound`; the `+Inf` bucket is
    /// optional.
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    /// When the histogram started (ignored by weir).
    #[prost(message, optional, tag = "15")]
    pub created_timestamp: Option<Timestamp>,
    /// Native histogram: the bucket schema (base `2^(2^-schema)`).
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    /// Native histogram: the width of the zero bucket.
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    /// Native histogram: observations in the zero bucket.
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    /// Native histogram: overrides `zero_count` if > 0.
    #[prost(double, optional, tag = "8")]
    pub zero_count_float: Option<f64>,
    /// Native histogram: spans of the negative buckets.
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    /// Native histogram: negative bucket counts, each as a delta to the previous one.
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    /// Native histogram: negative bucket counts, absolute (float histograms).
    #[prost(double, repeated, packed = "false", tag = "11")]
    pub negative_count: Vec<f64>,
    /// Native histogram: spans of the positive buckets.
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Native histogram: positive bucket counts, each as a delta to the previous one.
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
    /// Native histogram: positive bucket counts, absolute (float histograms).
    #[prost(double, repeated, packed = "false", tag = "14")]
    pub positive_count: Vec<f64>,
    /// Native histogram exemplars (ignored by weir).
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<Exemplar>,
}

/// One classic histogram bucket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    /// Observations at or below `upper_bound` (cumulative).
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    /// Overrides `cumulative_count` if > 0 (float histograms).
    #[prost(double, optional, tag = "4")]
    pub cumulative_count_float: Option<f64>,
    /// The inclusive upper bound.
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
    /// An exemplar (ignored by weir).
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<Exemplar>,
}

/// A run of consecutive native histogram buckets.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BucketSpan {
    /// Gap to the previous span, or the index of the first bucket for the first span.
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    /// Number of consecutive buckets.
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

/// An exemplar: a traced observation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    /// Its labels (a trace id, usually).
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// The observed value.
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
    /// When it was observed.
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second, `0..1e9`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// One series of a family: its labels and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// The labels (the metric name is the family's).
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// Set for a `GAUGE` family.
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    /// Set for a `COUNTER` family.
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    /// Set for a `SUMMARY` family.
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    /// Set for an `UNTYPED` family.
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    /// Set for a `HISTOGRAM` or `GAUGE_HISTOGRAM` family.
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    /// Milliseconds since the Unix epoch; absent means "at scrape time".
    #[prost(int64, optional, tag = "6")]
    pub timestamp_ms: Option<i64>,
}

/// A metric family: a name, a type and its series. One delimited message of a
/// scrape body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    /// The family name (for counters usually ending in `_total`).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// The help text (ignored by weir).
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    /// The type; absent means `COUNTER` (the enum's default).
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    /// The series.
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The bytes follow from the field numbers in the module doc, worked out by hand:
    /// key = (field << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
    #[test]
    fn field_numbers_give_the_spec_wire_bytes() {
        let family = MetricFamily {
            name: Some("a".into()),
            help: None,
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: Some("k".into()),
                    value: Some("v".into()),
                }],
                gauge: Some(Gauge { value: Some(1.0) }),
                timestamp_ms: Some(5),
                ..Default::default()
            }],
        };
        let one = 1.0f64.to_le_bytes();
        #[rustfmt::skip]
        let mut want = vec![
            0x0a, 1, b'a',          // name = 1, LEN
            0x18, 1,                // type = 3, VARINT: GAUGE
            0x22, 21,               // metric = 4, LEN
            0x0a, 6,                //   label = 1, LEN
            0x0a, 1, b'k', 0x12, 1, b'v',
            0x12, 9, 0x09,          //   gauge = 2, LEN; value = 1, I64
        ];
        want.extend_from_slice(&one);
        want.extend_from_slice(&[0x30, 5]); // timestamp_ms = 6, VARINT
        assert_eq!(family.encode_to_vec(), want);
        assert_eq!(MetricFamily::decode(&want[..]).unwrap(), family);
    }

    #[test]
    fn histogram_fields_use_their_spec_numbers() {
        let h = Histogram {
            sample_count: Some(3),
            sample_sum: Some(0.5),
            bucket: vec![Bucket {
                cumulative_count: Some(2),
                upper_bound: Some(1.0),
                ..Default::default()
            }],
            schema: Some(-1),
            positive_span: vec![BucketSpan {
                offset: Some(-2),
                length: Some(1),
            }],
            positive_delta: vec![-1],
            ..Default::default()
        };
        let bytes = h.encode_to_vec();
        // sample_count (1, VARINT), sample_sum (2, I64), bucket (3, LEN),
        // schema (5, VARINT, zigzag -1 = 1), positive_span (12, LEN: offset zigzag
        // -2 = 3), positive_delta (13, VARINT unpacked, zigzag -1 = 1).
        let bucket = [0x08, 2, 0x11];
        let schema = [0x28, 1];
        let span = [0x62, 4, 0x08, 3, 0x10, 1];
        let delta = [0x68, 1];
        for part in [&bucket[..], &schema, &span, &delta] {
            assert!(
                bytes.windows(part.len()).any(|w| w == part),
                "{part:x?} in {bytes:x?}"
            );
        }
        assert_eq!(&bytes[..2], &[0x08, 3]);
        assert_eq!(Histogram::decode(&bytes[..]).unwrap(), h);
    }
}
