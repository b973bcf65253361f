//! Prometheus remote write 1.0: a batch as snappy-compressed `WriteRequest`s.
//!
//! Owns: the mapping of weir's series onto remote write series and the protobuf
//! encoding of `WriteRequest` (written straight into the body buffer, field numbers
//! as in `weir_proto::prometheus`, whose types the tests decode with). Must never: send
//! unsorted or duplicate label names, empty label values, or a bare NaN that could be
//! read as a staleness marker.
//!
//! # Rules
//! - **Body**: a `WriteRequest` protobuf, compressed in the snappy *block* format (no
//!   framing), as `Content-Encoding: snappy` requires. Every series carries one
//!   sample.
//! - **Values are running totals** whatever [`EncodeOptions::temporality`] says:
//!   counters send `total`; gauges their value; histograms `<name>_bucket{le="..."}`
//!   with cumulative counts built from the per-bucket `total` counts (`le` spelled as
//!   Prometheus spells it: `0.1`, `1`, `1e+06`, last `+Inf`), then `<name>_sum` and
//!   `<name>_count`; summaries `<name>{quantile="0.5"}` per quantile, then
//!   `<name>_sum` and `<name>_count`.
//! - **Labels**: `__name__` plus the series' labels plus the external labels (the
//!   series' own value wins), sorted by name in byte order as the spec requires. That
//!   puts `__name__` first for every lower-case label name; a label name starting with
//!   an upper-case letter sorts before it. Labels with an empty value are left out
//!   (Prometheus reads an empty value as no label). A series label named `le` (on a
//!   histogram) or `quantile` (on a summary) gives way to the one weir sets.
//! - **Timestamps**: `batch.end_ms` on every sample, `batch.end_ms - 1` for evicted
//!   entries (see the parent module).
//! - **NaN**: sent as Prometheus' normal NaN (`0x7ff8000000000001`), never with the
//!   bits of the staleness marker.
//! - **Splitting**: by the uncompressed protobuf size; a histogram's or summary's
//!   series stay in one request.
//! - **Points**: one per sample: 1 per counter or gauge, `buckets + 2` per histogram
//!   (`bounds + 1` buckets), `quantiles + 2` per summary.

use super::body::{Bodies, Seal};
use super::wire::{field_len, put_fixed64, put_len, put_str, put_varint, varint_len};
use super::{EncodeOptions, EncodedRequest, float, labels, sample_ms};
use crate::flush::{FlushBatch, FlushedValue};
use crate::key::SeriesKey;

/// Prometheus' "normal" NaN (`value.NormalNaN`); its staleness marker is
/// `0x7ff0000000000002`.
pub const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// The batch as remote write requests (see the module doc).
///
/// ```
/// use weir_core::{Aggregator, Sample, Temporality};
/// use weir_core::encode::{EncodeOptions, remote_write};
/// use weir_proto::{Message, prometheus::WriteRequest};
///
/// let agg = Aggregator::default();
/// agg.record("jobs_total", &[("queue", "mail")], Sample::Counter(3.0, Temporality::Delta), 0).unwrap();
/// let batch = agg.flush();
/// let reqs = remote_write::encode(&batch, &EncodeOptions::default());
/// assert_eq!(reqs.len(), 1);
/// let raw = snap::raw::Decoder::new().decompress_vec(&reqs[0].body).unwrap();
/// let wr = WriteRequest::decode(&raw[..]).unwrap();
/// assert_eq!(wr.timeseries[0].labels[0].value, "jobs_total");
/// assert_eq!(wr.timeseries[0].samples[0].value, 3.0);
/// assert_eq!(wr.timeseries[0].samples[0].timestamp, batch.end_ms);
/// ```
pub fn encode(batch: &FlushBatch, opts: &EncodeOptions) -> Vec<EncodedRequest> {
    let external = opts.external();
    let every_name = opts.filter.is_all();
    let mut bodies = Bodies::new(opts.limit(), Seal::snappy());
    let mut base = BaseLabels::default();
    let mut buckets = float::BucketNames::default();
    let mut quantile = String::new();
    for s in super::prefetched(batch.series.iter()) {
        let name = s.key.name();
        if !every_name && !opts.filter.matches(name) {
            continue;
        }
        let ts = sample_ms(batch, s);
        let mark = bodies.mark();
        let out = bodies.buf();
        let points = match &s.value {
            FlushedValue::Counter { total: v, .. } | FlushedValue::Gauge { value: v, .. } => {
                base.set(&s.key, &external, None);
                series(out, &base, name, "", None, *v, ts);
                1
            }
            FlushedValue::Histogram { total, .. } => {
                base.set(&s.key, &external, Some("le"));
                let les = buckets.get(&total.bounds);
                let mut cumulative = 0u64;
                for (i, le) in les.iter().enumerate() {
                    let c = total.counts.get(i).copied().unwrap_or(0);
                    cumulative = cumulative.saturating_add(c);
                    let extra = Some(("le", le.as_str()));
                    series(out, &base, name, "_bucket", extra, cumulative as f64, ts);
                }
                series(out, &base, name, "_sum", None, total.sum, ts);
                series(out, &base, name, "_count", None, total.count as f64, ts);
                les.len() as u64 + 2
            }
            FlushedValue::Summary(sv) => {
                base.set(&s.key, &external, Some("quantile"));
                for q in &sv.quantiles {
                    quantile.clear();
                    float::prometheus(&mut quantile, q.quantile);
                    let extra = Some(("quantile", quantile.as_str()));
                    series(out, &base, name, "", extra, q.value, ts);
                }
                series(out, &base, name, "_sum", None, sv.sum, ts);
                series(out, &base, name, "_count", None, sv.count as f64, ts);
                sv.quantiles.len() as u64 + 2
            }
        };
        bodies.commit(mark, points);
    }
    bodies.finish()
}

// `WriteRequest` field keys (see the module doc of `weir_proto::prometheus`).
/// `WriteRequest.timeseries`, `TimeSeries.labels`, `Label.name` (field 1, length-delimited).
const KEY_1_LEN: u8 = 0x0a;
/// `TimeSeries.samples`, `Label.value` (field 2, length-delimited).
const KEY_2_LEN: u8 = 0x12;
/// `Sample.value` (field 1, 64-bit).
const KEY_1_FIXED64: u8 = 0x09;
/// `Sample.timestamp` (field 2, varint).
const KEY_2_VARINT: u8 = 0x10;

/// A series' labels without `__name__` (and the bucket's or quantile's label), shared
/// by all its samples, encoded once as `TimeSeries.labels` fields; each sample copies
/// them in (at most three runs) around the labels it adds.
#[derive(Default)]
struct BaseLabels<'a> {
    /// Sorted by name.
    labels: Vec<(&'a str, &'a str)>,
    /// The encoded fields of `labels`, in order.
    bytes: Vec<u8>,
    /// Where `__name__` sorts in (a byte offset into `bytes`).
    name_at: usize,
    /// Where the added label (`le`, `quantile`) sorts in; `bytes.len()` without one.
    extra_at: usize,
}

impl<'a> BaseLabels<'a> {
    /// The labels of `key` and `external` for a series whose samples add `__name__`
    /// and, for histograms and summaries, `extra` (both left out of the base).
    fn set(&mut self, key: &'a SeriesKey, external: &'a [(String, String)], extra: Option<&str>) {
        let skip = ["__name__", extra.unwrap_or("__name__")];
        labels::merge(key, external, &skip, &mut self.labels);
        self.bytes.clear();
        self.name_at = usize::MAX;
        self.extra_at = usize::MAX;
        for &(k, v) in &self.labels {
            if self.name_at == usize::MAX && k > "__name__" {
                self.name_at = self.bytes.len();
            }
            if self.extra_at == usize::MAX && extra.is_some_and(|e| k > e) {
                self.extra_at = self.bytes.len();
            }
            put_label(&mut self.bytes, k, [v, ""]);
        }
        self.name_at = self.name_at.min(self.bytes.len());
        self.extra_at = self.extra_at.min(self.bytes.len());
    }
}

fn label_len(name: &str, value: [&str; 2]) -> usize {
    field_len(name.len()) + field_len(value[0].len() + value[1].len())
}

/// Appends one `TimeSeries.labels` field.
fn put_label(out: &mut Vec<u8>, name: &str, value: [&str; 2]) {
    put_len(out, KEY_1_LEN, label_len(name, value));
    put_str(out, KEY_1_LEN, [name, ""]);
    put_str(out, KEY_2_LEN, value);
}

/// Appends one `TimeSeries` entry of `WriteRequest` with one sample. Its labels are
/// `base` plus `__name__` (the metric name followed by `suffix`) plus `extra` (`le` or
/// `quantile`, which sorts after `__name__`), in name order.
fn series(
    out: &mut Vec<u8>,
    base: &BaseLabels<'_>,
    name: &str,
    suffix: &str,
    extra: Option<(&str, &str)>,
    value: f64,
    ts: i64,
) {
    let name_value = [name, suffix];
    let (name_at, extra_at) = (base.name_at, base.extra_at.max(base.name_at));
    let mut labels_len = base.bytes.len() + field_len(label_len("__name__", name_value));
    if let Some((k, v)) = extra {
        labels_len += field_len(label_len(k, [v, ""]));
    }
    let sample_len = 1 + 8 + 1 + varint_len(ts as u64);
    let series_len = labels_len + field_len(sample_len);
    out.reserve(field_len(series_len));
    put_len(out, KEY_1_LEN, series_len);
    out.extend_from_slice(&base.bytes[..name_at]);
    put_label(out, "__name__", name_value);
    out.extend_from_slice(&base.bytes[name_at..extra_at]);
    if let Some((k, v)) = extra {
        put_label(out, k, [v, ""]);
    }
    out.extend_from_slice(&base.bytes[extra_at..]);
    let value = if value.is_nan() {
        f64::from_bits(NORMAL_NAN_BITS)
    } else {
        value
    };
    put_len(out, KEY_2_LEN, sample_len);
    put_fixed64(out, KEY_1_FIXED64, value.to_bits());
    out.push(KEY_2_VARINT);
    // int64 is encoded as the two's complement u64 (10 bytes when negative).
    put_varint(out, ts as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::Message;

    #[test]
    fn added_labels_are_spliced_into_order() {
        let key =
            SeriesKey::new("x", &[("Zone", "1"), ("a", "2"), ("m", "3"), ("z", "4")]).unwrap();
        let mut base = BaseLabels::default();
        base.set(&key, &[], Some("le"));
        let mut out = Vec::new();
        series(&mut out, &base, "x", "_bucket", Some(("le", "0.5")), 1.0, 7);
        let ts = weir_proto::prometheus::TimeSeries::decode(&out[2..]).unwrap();
        let labels: Vec<(&str, &str)> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("Zone", "1"),
                ("__name__", "x_bucket"),
                ("a", "2"),
                ("le", "0.5"),
                ("m", "3"),
                ("z", "4")
            ]
        );
        assert_eq!(out.len(), 2 + ts.encoded_len());
        assert_eq!((ts.samples[0].value, ts.samples[0].timestamp), (1.0, 7));
    }
}
