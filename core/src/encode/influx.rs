//! InfluxDB line protocol: a batch as text, one line per series, timestamps in
//! milliseconds (the forwarder writes with `precision=ms`).
//!
//! Owns: the mapping of weir's series onto measurements, tags and fields, and the
//! escaping. Must never: write an unescaped separator, an empty tag value, a
//! non-finite field value, or a line without fields.
//!
//! # Rules
//! - **Line**: `measurement[,tag=value...] field=value[,field=value...] timestamp_ms`.
//! - **Measurement**: the metric name (for histograms and summaries, the base name).
//! - **Tags**: the series' labels plus the external labels (the series' own value
//!   wins), sorted by key in byte order (what InfluxDB recommends). Tags with an empty
//!   value are left out: line protocol has no empty tag values.
//! - **Fields**: all floats (bare numbers, never the `i` suffix), so a field never
//!   changes type between writes:
//!   - counter: `value` = running total (`Cumulative`) or the interval's increase
//!     (`Delta`), per [`EncodeOptions::temporality`];
//!   - gauge: `value`;
//!   - histogram (running totals or the interval's share, per temporality): `count`,
//!     `sum`, `min` and `max` when `count > 0`, then one field per bucket named by its
//!     upper bound as Prometheus spells it (`0.1`, `1`, `1e+06`, `+Inf`) holding the
//!     *cumulative* count up to that bound (as Prometheus' `le` buckets);
//!   - summary: `count`, `sum`, one field per quantile named by the quantile (`0.5`,
//!     `0.99`).
//! - **Non-finite values** (NaN, ±Inf) cannot be written in line protocol: that field
//!   is left out and not counted; a line left without fields is left out.
//! - **Timestamp**: `batch.end_ms` (evicted entries: `batch.end_ms - 1`), in ms.
//! - **Escaping** (backslash before the character): measurement: comma, space; tag
//!   keys, tag values and field keys: comma, equals sign, space. Line breaks and tabs
//!   inside names and values are written as `\n`, `\r`, `\t` (two characters; line
//!   protocol cannot carry them). Double quotes need no escaping outside string field
//!   values, which weir never writes.
//! - **Backslashes** are written as they are (every InfluxDB version stores `C:\dir`
//!   as written; 1.x would store a doubled one doubled), except right before a
//!   character that gets escaped, where one is doubled so that it cannot escape the
//!   escape (`a\ b` becomes `a\\\ b`). Trailing backslashes are left out: InfluxDB
//!   1.x refuses a tag value ending in one whatever its escaping, which would fail the
//!   whole request (Telegraf does the same).
//! - **Points**: one per field value written.

use std::fmt::Write as _;

use super::body::{Bodies, Seal};
use super::{EncodeOptions, EncodedRequest, float, labels, sample_ms};
use crate::flush::{FlushBatch, FlushedValue};
use crate::point::Temporality;

/// The batch as line protocol requests (see the module doc).
///
/// ```
/// use weir_core::{Aggregator, Sample, Temporality};
/// use weir_core::encode::{EncodeOptions, influx};
///
/// let agg = Aggregator::default();
/// agg.record("jobs_total", &[("queue", "mail in")], Sample::Counter(3.0, Temporality::Delta), 0).unwrap();
/// let batch = agg.flush();
/// let reqs = influx::encode(&batch, &EncodeOptions::default());
/// let text = String::from_utf8(reqs[0].body.clone()).unwrap();
/// assert_eq!(text, format!("jobs_total,queue=mail\\ in value=3 {}\n", batch.end_ms));
/// ```
pub fn encode(batch: &FlushBatch, opts: &EncodeOptions) -> Vec<EncodedRequest> {
    let external = opts.external();
    let every_name = opts.filter.is_all();
    let cumulative = opts.temporality == Temporality::Cumulative;
    let mut bodies = Bodies::new(opts.limit(), Seal::Plain);
    let mut tags: Vec<(&str, &str)> = Vec::new();
    let mut line = String::new();
    let mut bucket_keys = float::BucketNames::default();
    let mut quantile_key = String::new();
    for s in super::prefetched(batch.series.iter()) {
        let name = s.key.name();
        if !every_name && !opts.filter.matches(name) {
            continue;
        }
        labels::merge(&s.key, &external, &[], &mut tags);
        line.clear();
        escape(&mut line, name, Part::Measurement);
        for &(k, v) in &tags {
            if v.trim_end_matches('\\').is_empty() {
                continue; // nothing left once trailing backslashes go: no empty tags
            }
            line.push(',');
            escape(&mut line, k, Part::Key);
            line.push('=');
            escape(&mut line, v, Part::Key);
        }
        line.push(' ');
        let mut fields = Fields {
            line: &mut line,
            written: 0,
        };
        match &s.value {
            FlushedValue::Counter { delta, total } => {
                fields.add("value", if cumulative { *total } else { *delta });
            }
            FlushedValue::Gauge { value, .. } => fields.add("value", *value),
            FlushedValue::Histogram { delta, total } => {
                let h = if cumulative { total } else { delta };
                fields.add("count", h.count as f64);
                fields.add("sum", h.sum);
                if h.count > 0 {
                    fields.add("min", h.min);
                    fields.add("max", h.max);
                }
                let mut running = 0u64;
                for (i, key) in bucket_keys.get(&h.bounds).iter().enumerate() {
                    running = running.saturating_add(h.counts.get(i).copied().unwrap_or(0));
                    fields.add(key, running as f64);
                }
            }
            FlushedValue::Summary(sv) => {
                fields.add("count", sv.count as f64);
                fields.add("sum", sv.sum);
                for q in &sv.quantiles {
                    quantile_key.clear();
                    float::prometheus(&mut quantile_key, q.quantile);
                    fields.add(&quantile_key, q.value);
                }
            }
        }
        let written = fields.written;
        if written == 0 {
            continue;
        }
        let _ = writeln!(line, " {}", sample_ms(batch, s));
        let mark = bodies.mark();
        bodies.buf().extend_from_slice(line.as_bytes());
        bodies.commit(mark, written);
    }
    bodies.finish()
}

/// The field set of the line being written.
struct Fields<'a> {
    line: &'a mut String,
    /// Field values written so far.
    written: u64,
}

impl Fields<'_> {
    /// Writes `key=value` unless `value` is not finite.
    fn add(&mut self, key: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.written > 0 {
            self.line.push(',');
        }
        escape(self.line, key, Part::Key);
        self.line.push('=');
        float::line_protocol(self.line, value);
        self.written += 1;
    }
}

/// Which part of a line a string is written into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The measurement: comma and space are special.
    Measurement,
    /// A tag key, tag value or field key: comma, equals sign and space are special.
    Key,
}

/// Bytes that need a backslash (or a spelled-out form) in a measurement (bit 0) and in
/// a tag key, tag value or field key (bit 1).
const SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    let both = [b',', b' ', b'\\', b'\n', b'\r', b'\t'];
    while i < both.len() {
        t[both[i] as usize] = 0b11;
        i += 1;
    }
    t[b'=' as usize] = 0b10;
    t
};

/// Appends `s` escaped for `part` (see the module doc).
fn escape(out: &mut String, s: &str, part: Part) {
    let mask = match part {
        Part::Measurement => 0b01,
        Part::Key => 0b10,
    };
    // Every special character is ASCII, so a byte scan finds them and the runs between
    // them are whole UTF-8 sequences.
    // Trailing backslashes are left out (see the module doc).
    let s = s.trim_end_matches('\\');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if SPECIAL[usize::from(b)] & mask == 0 {
            continue;
        }
        if b == b'\\' {
            // Written as it is unless the next character gets escaped.
            let next_escaped = bytes
                .get(i + 1)
                .is_some_and(|&n| n != b'\\' && SPECIAL[usize::from(n)] & mask != 0);
            if !next_escaped {
                continue;
            }
        }
        out.push_str(&s[run..i]);
        out.push_str(match b {
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b',' => "\\,",
            b' ' => "\\ ",
            b'=' => "\\=",
            _ => "\\\\",
        });
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str, part: Part) -> String {
        let mut out = String::new();
        escape(&mut out, s, part);
        out
    }

    /// The escaping table of the module doc, character by character.
    #[test]
    fn escaping_table() {
        let cases: &[(&str, &str, &str)] = &[
            // input, as a measurement, as a tag key / tag value / field key
            ("plain", "plain", "plain"),
            ("a b", r"a\ b", r"a\ b"),
            ("a,b", r"a\,b", r"a\,b"),
            ("a=b", "a=b", r"a\=b"),
            (r"a\b", r"a\b", r"a\b"),
            (r"C:\dir\\x", r"C:\dir\\x", r"C:\dir\\x"),
            (r"ends\", "ends", "ends"),
            (r"ends\\\", "ends", "ends"),
            (r"\", "", ""),
            (r"\ x", r"\\\ x", r"\\\ x"),
            (r"a\=b", r"a\=b", r"a\\\=b"),
            ("say \"hi\"", "say\\ \"hi\"", "say\\ \"hi\""),
            ("'q'", "'q'", "'q'"),
            ("l1\nl2", r"l1\nl2", r"l1\nl2"),
            ("a\tb\rc", r"a\tb\rc", r"a\tb\rc"),
            ("ünï cödé", r"ünï\ cödé", r"ünï\ cödé"),
            (" ,= ", r"\ \,=\ ", r"\ \,\=\ "),
        ];
        for &(input, measurement, key) in cases {
            assert_eq!(esc(input, Part::Measurement), measurement, "{input:?}");
            assert_eq!(esc(input, Part::Key), key, "{input:?}");
        }
    }
}
