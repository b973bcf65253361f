//! StatsD / DogStatsD line protocol: datagram bytes in, aggregator updates out.
//!
//! Owns: splitting a datagram into lines, parsing each line
//! (`name:value[:value...]|type[|@rate][|#tag:val,tag2][|c:container][|T<unix_seconds>]`),
//! the mapping of StatsD types onto weir's kinds, and name sanitising for StatsD input.
//! Must never: panic or stop at a bad line (it is skipped and counted by a stable
//! reason, the rest of the datagram still counts), or allocate for a line whose series
//! the writer has already cached.
//!
//! # Mapping
//! | type | weir sample |
//! |---|---|
//! | `c` | counter delta, value ÷ sample rate; a negative one (`decr`) is refused as `invalid_value`, as statsd_exporter does, since weir's counters are monotonic |
//! | `g` | gauge set; `+N` / `-N` adjust the current value |
//! | `ms` | one observation in seconds (value ÷ 1000) into a histogram, weighted 1 ÷ rate |
//! | `h`, `d` | one observation as is into a histogram, weighted 1 ÷ rate |
//! | `s` | set: the whole value is one member; the series reports, per flush, the number of distinct members as a gauge |
//!
//! Metric names are sanitised to Prometheus rules (every character outside
//! `[a-zA-Z0-9_:]` becomes `_`, a leading digit gets a `_` prefix), tag names likewise
//! with `[a-zA-Z0-9_]`; tag values are kept as sent. A tag without a value (`#canary`)
//! becomes a label with an empty value. A DogStatsD container field (`|c:abc`) becomes
//! the label `container_id`; a timestamp field (`|T1700000000`) timestamps gauges.

use crate::aggregator::{Rejected, Writer};
use crate::point::{Sample, Temporality};

/// Why a line was skipped. Stable names for `weir_statsd_parse_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineError {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// No `:` between name and value.
    MissingValue,
    /// Nothing before the `:`.
    EmptyName,
    /// No `|type` after the value.
    MissingType,
    /// A type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    UnknownType,
    /// A value that is not a finite number (or a relative value on a non-gauge).
    MalformedValue,
    /// `@rate` that is not a number in (0, 1].
    MalformedSampleRate,
    /// A tag with an empty name.
    MalformedTag,
    /// `T` followed by something other than whole Unix seconds.
    MalformedTimestamp,
    /// A `|` section this parser does not know.
    UnknownField,
}

impl LineError {
    /// All reasons, in a stable order (for exporting zeros).
    pub const ALL: [LineError; 10] = [
        LineError::InvalidUtf8,
        LineError::MissingValue,
        LineError::EmptyName,
        LineError::MissingType,
        LineError::UnknownType,
        LineError::MalformedValue,
        LineError::MalformedSampleRate,
        LineError::MalformedTag,
        LineError::MalformedTimestamp,
        LineError::UnknownField,
    ];

    /// Short, stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            LineError::InvalidUtf8 => "invalid_utf8",
            LineError::MissingValue => "missing_value",
            LineError::EmptyName => "empty_name",
            LineError::MissingType => "missing_type",
            LineError::UnknownType => "unknown_type",
            LineError::MalformedValue => "malformed_value",
            LineError::MalformedSampleRate => "malformed_sample_rate",
            LineError::MalformedTag => "malformed_tag",
            LineError::MalformedTimestamp => "malformed_timestamp",
            LineError::UnknownField => "unknown_field",
        }
    }
}

/// A StatsD metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsdType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`
    Timer,
    /// `h`
    Histogram,
    /// `d` (DogStatsD distribution)
    Distribution,
    /// `s`
    Set,
}

/// One parsed line, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric name as sent (not sanitised).
    pub name: &'a str,
    /// The value section: one value, or several separated by `:`. Checked by
    /// [`parse_line`]; read them with [`Line::values`].
    values: &'a str,
    /// The type.
    pub kind: StatsdType,
    /// `@rate`, 1.0 when absent.
    pub sample_rate: f64,
    /// The tag section without its `#`, as sent (empty when absent).
    pub tags: &'a str,
    /// The DogStatsD container field, if any.
    pub container: Option<&'a str>,
    /// The DogStatsD timestamp field in Unix seconds, if any.
    pub timestamp_s: Option<i64>,
}

/// One value of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A plain number.
    Number(f64),
    /// A gauge adjustment (`+N` or `-N`).
    Relative(f64),
}

impl<'a> Line<'a> {
    /// The line's values (several for DogStatsD multi-value lines like `x:1:2:3|c`).
    pub fn values(&self) -> impl Iterator<Item = Value> + 'a {
        let gauge = self.kind == StatsdType::Gauge;
        // Every value was checked by `parse_line`, so `parse_value` cannot fail here;
        // `filter_map` keeps this free of panics all the same.
        Fields::new(self.values, b':').filter_map(move |v| parse_value(v, gauge).ok())
    }
}

/// Splits a datagram into its non-empty lines (`\n` separated, a trailing `\r` dropped).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    datagram.split(|&b| b == b'\n').filter_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        (!l.is_empty()).then_some(l)
    })
}

fn parse_value(v: &str, gauge: bool) -> Result<Value, LineError> {
    let relative = gauge && (v.starts_with('+') || v.starts_with('-'));
    let n: f64 = v.parse().map_err(|_| LineError::MalformedValue)?;
    if !n.is_finite() {
        return Err(LineError::MalformedValue);
    }
    Ok(if relative {
        Value::Relative(n)
    } else {
        Value::Number(n)
    })
}

/// Parses one line.
///
/// # Errors
/// The [`LineError`] naming what is wrong.
///
/// ```
/// use weir_core::statsd::{parse_line, StatsdType, Value};
/// let l = parse_line(b"api.latency:12|ms|@0.5|#route:/users,canary").unwrap();
/// assert_eq!((l.name, l.kind, l.sample_rate, l.tags), ("api.latency", StatsdType::Timer, 0.5, "route:/users,canary"));
/// assert_eq!(l.values().collect::<Vec<_>>(), vec![Value::Number(12.0)]);
/// ```
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    let line = std::str::from_utf8(line).map_err(|_| LineError::InvalidUtf8)?;
    let mut sections = Fields::new(line, b'|');
    let head = sections.next().unwrap_or("");
    let mut head_parts = Fields::new(head, b':');
    let name = head_parts.next().unwrap_or("");
    let values = head_parts.rest().ok_or(LineError::MissingValue)?;
    if name.is_empty() {
        return Err(LineError::EmptyName);
    }
    if values.is_empty() {
        return Err(LineError::MissingValue);
    }
    let kind = match sections.next().ok_or(LineError::MissingType)? {
        "c" => StatsdType::Counter,
        "g" => StatsdType::Gauge,
        "ms" => StatsdType::Timer,
        "h" => StatsdType::Histogram,
        "d" => StatsdType::Distribution,
        "s" => StatsdType::Set,
        "" => return Err(LineError::MissingType),
        _ => return Err(LineError::UnknownType),
    };
    let mut parsed = Line {
        name,
        values,
        kind,
        sample_rate: 1.0,
        tags: "",
        container: None,
        timestamp_s: None,
    };
    for section in sections {
        if let Some(rate) = section.strip_prefix('@') {
            let r: f64 = rate.parse().map_err(|_| LineError::MalformedSampleRate)?;
            if !(r > 0.0 && r <= 1.0) {
                return Err(LineError::MalformedSampleRate);
            }
            parsed.sample_rate = r;
        } else if let Some(tags) = section.strip_prefix('#') {
            if Fields::new(tags, b',').any(|t| t.starts_with(':')) {
                return Err(LineError::MalformedTag);
            }
            parsed.tags = tags;
        } else if let Some(c) = section.strip_prefix("c:") {
            parsed.container = Some(c);
        } else if let Some(ts) = section.strip_prefix('T') {
            let ts: i64 = ts.parse().map_err(|_| LineError::MalformedTimestamp)?;
            if !(0..=i64::MAX / 1000).contains(&ts) {
                return Err(LineError::MalformedTimestamp);
            }
            parsed.timestamp_s = Some(ts);
        } else {
            return Err(LineError::UnknownField);
        }
    }
    if kind == StatsdType::Set {
        return Ok(parsed); // any text is a member
    }
    let gauge = kind == StatsdType::Gauge;
    for v in Fields::new(values, b':') {
        parse_value(v, gauge)?;
    }
    Ok(parsed)
}

/// Splits text at an ASCII separator byte with an inline byte scan. The fields of a
/// StatsD line are a few bytes each; against `str::split` this took a bare `x:1|c`
/// from 67 to 54 ns here (tagged lines, dominated by scanning, barely moved).
struct Fields<'a> {
    /// What is left; `None` once the last field was returned.
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Fields<'a> {
    fn new(s: &'a str, sep: u8) -> Self {
        Fields { rest: Some(s), sep }
    }

    /// Everything after the fields returned so far, if anything is left.
    fn rest(self) -> Option<&'a str> {
        self.rest
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.bytes().position(|b| b == self.sep) {
            // `i` indexes an ASCII byte, so both slices fall on char boundaries.
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// The tags of a tag section as `(name, value)` pairs, as sent; a tag without `:` has
/// an empty value. Empty entries (`a:1,,b:2`) are skipped.
pub fn tags(section: &str) -> impl Iterator<Item = (&str, &str)> {
    Fields::new(section, b',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let mut kv = Fields::new(t, b':');
            let k = kv.next().unwrap_or("");
            (k, kv.rest().unwrap_or(""))
        })
}

/// Writes `raw` sanitised to a Prometheus metric name into `out` (cleared first).
pub fn sanitize_metric_name(raw: &str, out: &mut String) {
    sanitize(raw, out, true);
}

/// Writes `raw` sanitised to a Prometheus label name into `out` (cleared first).
pub fn sanitize_label_name(raw: &str, out: &mut String) {
    sanitize(raw, out, false);
}

/// The one place StatsD names become Prometheus names.
fn sanitize(raw: &str, out: &mut String, colon_ok: bool) {
    out.clear();
    if raw.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(raw.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon_ok && c == ':') {
            c
        } else {
            '_'
        }
    }));
    if out.is_empty() {
        out.push('_');
    }
}

/// What one datagram did: lines applied, and lines skipped per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatagramReport {
    /// Lines that parsed (each gives one sample per value).
    pub lines: u64,
    /// Samples the aggregator took.
    pub samples: u64,
    /// Lines skipped by the parser, by reason (indexed like [`LineError::ALL`]).
    pub parse_errors: [u64; LineError::ALL.len()],
    /// Samples the aggregator refused (its own counters say why).
    pub rejected: u64,
}

impl DatagramReport {
    /// The count for one parse error reason.
    pub fn parse_errors(&self, reason: LineError) -> u64 {
        let i = LineError::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.parse_errors[i]
    }
}

/// Applies StatsD datagrams to a [`Writer`], reusing its buffers across lines so a
/// line of an already cached series allocates nothing. One per receiving thread.
#[derive(Default)]
pub struct Decoder {
    /// `name|tags|container` as sent: the series' identity for the writer's cache.
    identity: Vec<u8>,
    /// The sanitised metric name (on a cache miss).
    name: String,
    /// Sanitised tag names, concatenated (on a cache miss).
    keys: String,
    /// Byte ranges of each tag name in `keys`.
    key_ends: Vec<usize>,
}

impl Decoder {
    /// Parses `datagram` and applies every good line through `writer`.
    pub fn ingest(&mut self, datagram: &[u8], writer: &mut Writer) -> DatagramReport {
        let mut report = DatagramReport::default();
        for raw in lines(datagram) {
            match parse_line(raw) {
                Ok(line) => {
                    report.lines += 1;
                    self.apply(&line, writer, &mut report);
                }
                Err(e) => {
                    let i = LineError::ALL.iter().position(|r| *r == e).unwrap_or(0);
                    report.parse_errors[i] += 1;
                }
            }
        }
        report
    }

    fn apply(&mut self, line: &Line<'_>, writer: &mut Writer, report: &mut DatagramReport) {
        self.identity.clear();
        self.identity.extend_from_slice(line.name.as_bytes());
        self.identity.push(b'|');
        self.identity.extend_from_slice(line.tags.as_bytes());
        if let Some(c) = line.container {
            self.identity.push(b'|');
            self.identity.extend_from_slice(c.as_bytes());
        }
        let ts = line.timestamp_s.map_or(0, |s| s * 1000);
        if line.kind == StatsdType::Set {
            match self.record(line, Sample::SetMember(line.values), ts, writer) {
                Ok(()) => report.samples += 1,
                Err(_) => report.rejected += 1,
            }
            return;
        }
        // Sampled observations count 1/rate times; rounding keeps counts integral.
        let weight = (1.0 / line.sample_rate).round().max(1.0) as u64;
        for v in line.values() {
            let sample = match (line.kind, v) {
                (StatsdType::Counter, Value::Number(n)) => {
                    Sample::Counter(n / line.sample_rate, Temporality::Delta)
                }
                (StatsdType::Gauge, Value::Number(n)) => Sample::Gauge(n),
                (StatsdType::Gauge, Value::Relative(d)) => Sample::GaugeDelta(d),
                (StatsdType::Timer, Value::Number(n)) => Sample::Observe {
                    value: n / 1000.0,
                    count: weight,
                },
                (StatsdType::Histogram | StatsdType::Distribution, Value::Number(n)) => {
                    Sample::Observe {
                        value: n,
                        count: weight,
                    }
                }
                // Relative values only parse for gauges; sets returned above.
                _ => continue,
            };
            match self.record(line, sample, ts, writer) {
                Ok(()) => report.samples += 1,
                Err(_) => report.rejected += 1,
            }
        }
    }

    fn record(
        &mut self,
        line: &Line<'_>,
        sample: Sample<'_>,
        ts: i64,
        writer: &mut Writer,
    ) -> Result<(), Rejected> {
        if writer.record_cached(&self.identity, sample, ts)? {
            return Ok(());
        }
        // A miss: sanitise the name and tags and resolve through the index.
        sanitize_metric_name(line.name, &mut self.name);
        self.keys.clear();
        self.key_ends.clear();
        let mut key = String::new();
        for (k, _) in tags(line.tags) {
            sanitize_label_name(k, &mut key);
            self.keys.push_str(&key);
            self.key_ends.push(self.keys.len());
        }
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(self.key_ends.len() + 1);
        let mut start = 0;
        for ((_, v), &end) in tags(line.tags).zip(&self.key_ends) {
            labels.push((&self.keys[start..end], v));
            start = end;
        }
        if let Some(c) = line.container {
            labels.push(("container_id", c));
        }
        writer.record_with_raw(&self.identity, &self.name, &labels, sample, ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregator::Aggregator;
    use crate::flush::FlushedValue;
    use crate::key::SeriesKey;

    #[test]
    fn good_lines_parse_into_their_parts() {
        let l = parse_line(b"a.b:1.5|c|@0.25|#env:prod,canary|c:abc123|T1700000000").unwrap();
        assert_eq!(l.name, "a.b");
        assert_eq!(l.kind, StatsdType::Counter);
        assert_eq!(l.sample_rate, 0.25);
        assert_eq!(l.tags, "env:prod,canary");
        assert_eq!(l.container, Some("abc123"));
        assert_eq!(l.timestamp_s, Some(1_700_000_000));
        assert_eq!(l.values().collect::<Vec<_>>(), vec![Value::Number(1.5)]);
        let cases: &[(&[u8], StatsdType, &[Value])] = &[
            (b"x:1|c", StatsdType::Counter, &[Value::Number(1.0)]),
            (
                b"x:1:2:3|c",
                StatsdType::Counter,
                &[Value::Number(1.0), Value::Number(2.0), Value::Number(3.0)],
            ),
            (b"x:-5|g", StatsdType::Gauge, &[Value::Relative(-5.0)]),
            (b"x:+5|g", StatsdType::Gauge, &[Value::Relative(5.0)]),
            (b"x:5|g", StatsdType::Gauge, &[Value::Number(5.0)]),
            (b"x:320|ms", StatsdType::Timer, &[Value::Number(320.0)]),
            (b"x:1e3|h", StatsdType::Histogram, &[Value::Number(1000.0)]),
            (b"x:0.5|d", StatsdType::Distribution, &[Value::Number(0.5)]),
            (b"x:-1|c", StatsdType::Counter, &[Value::Number(-1.0)]),
            (b"x:+1|c", StatsdType::Counter, &[Value::Number(1.0)]),
        ];
        for (line, kind, values) in cases {
            let l = parse_line(line).unwrap();
            assert_eq!(l.kind, *kind, "{}", String::from_utf8_lossy(line));
            assert_eq!(l.values().collect::<Vec<_>>(), values.to_vec());
        }
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        let cases: &[(&[u8], LineError)] = &[
            (b"\xff\xfe:1|c", LineError::InvalidUtf8),
            (b"novalue", LineError::MissingValue),
            (b"x:|c", LineError::MissingValue),
            (b":1|c", LineError::EmptyName),
            (b"x:1", LineError::MissingType),
            (b"x:1|", LineError::MissingType),
            (b"x:1|q", LineError::UnknownType),
            (b"x:1|C", LineError::UnknownType),
            (b"x:abc|c", LineError::MalformedValue),
            (b"x:1::2|c", LineError::MalformedValue),
            (b"x:nan|g", LineError::MalformedValue),
            (b"x:inf|c", LineError::MalformedValue),
            (b"x:1|c|@0", LineError::MalformedSampleRate),
            (b"x:1|c|@1.5", LineError::MalformedSampleRate),
            (b"x:1|c|@x", LineError::MalformedSampleRate),
            (b"x:1|c|#:v", LineError::MalformedTag),
            (b"x:1|c|Tsoon", LineError::MalformedTimestamp),
            (b"x:1|c|T-5", LineError::MalformedTimestamp),
            (b"x:1|c|zzz", LineError::UnknownField),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_line(line),
                Err(*want),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            parse_line(&[0xff, b':', b'1', b'|', b'c']),
            Err(LineError::InvalidUtf8)
        );
    }

    #[test]
    fn tags_without_values_are_empty_labels() {
        let got: Vec<_> = tags("a:1,,canary,b:x:y").collect();
        assert_eq!(got, vec![("a", "1"), ("canary", ""), ("b", "x:y")]);
    }

    #[test]
    fn names_are_sanitised_in_one_place() {
        let mut out = String::new();
        for (raw, metric, label) in [
            ("api.req-count", "api_req_count", "api_req_count"),
            ("9lives", "_9lives", "_9lives"),
            ("a:b", "a:b", "a_b"),
            ("héllo", "h_llo", "h_llo"),
        ] {
            sanitize_metric_name(raw, &mut out);
            assert_eq!(out, metric);
            sanitize_label_name(raw, &mut out);
            assert_eq!(out, label);
        }
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(name, labels).unwrap()
    }

    fn only(batch: &crate::flush::FlushBatch, k: &SeriesKey) -> FlushedValue {
        batch
            .find(k)
            .next()
            .unwrap_or_else(|| panic!("{k} missing"))
            .value
            .clone()
    }

    #[test]
    fn a_datagram_aggregates_line_by_line_and_skips_bad_lines() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        let datagram =
            b"hits:1|c|#route:/a\nhits:2|c|#route:/a\r\nbogus\n\nhits:1|c|@0.1|#route:/a\n\
temp:20|g\ntemp:-5|g\ntemp:+1|g\nlat:250|ms|@0.5\nsize:3:4|h\nhits:x|c\nu:ann|s\nu:bob|s\nu:ann|s\n";
        let r = d.ingest(datagram, &mut w);
        assert_eq!(r.samples, 12);
        assert_eq!(r.rejected, 0);
        assert_eq!(r.parse_errors(LineError::MissingValue), 1);
        assert_eq!(r.parse_errors(LineError::MalformedValue), 1);
        let b = agg.flush();
        assert_eq!(
            only(&b, &key("hits", &[("route", "/a")])),
            FlushedValue::Counter {
                delta: 13.0,
                total: 13.0
            }
        );
        assert!(matches!(
            only(&b, &key("temp", &[])),
            FlushedValue::Gauge { value: 16.0, .. }
        ));
        let FlushedValue::Histogram { delta, .. } = only(&b, &key("lat", &[])) else {
            panic!()
        };
        assert_eq!(
            (delta.count, delta.sum),
            (2, 0.5),
            "250 ms at rate 0.5 = 2 x 0.25 s"
        );
        assert!(
            matches!(
                only(&b, &key("u", &[])),
                FlushedValue::Gauge { value: 2.0, .. }
            ),
            "two distinct members"
        );
        let FlushedValue::Histogram { delta, .. } = only(&b, &key("size", &[])) else {
            panic!()
        };
        assert_eq!((delta.count, delta.sum), (2, 7.0));
    }

    #[test]
    fn dogstatsd_fields_become_labels_and_timestamps() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        let r = d.ingest(b"my.gauge:3|g|#host:h1,canary|c:ctr1|T1700000000", &mut w);
        assert_eq!(r.samples, 1);
        let b = agg.flush();
        let k = key(
            "my_gauge",
            &[("host", "h1"), ("canary", ""), ("container_id", "ctr1")],
        );
        assert_eq!(
            only(&b, &k),
            FlushedValue::Gauge {
                value: 3.0,
                timestamp_ms: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn aggregator_refusals_are_reported_not_parse_errors() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        // A negative counter parses but the aggregator refuses it; so does a type
        // conflict and a duplicate tag.
        let r = d.ingest(b"c:-1|c\nc:1|c\nc:1|g\nt:1|c|#a:1,a:2", &mut w);
        assert_eq!((r.samples, r.rejected), (1, 3));
        assert_eq!(r.parse_errors.iter().sum::<u64>(), 0);
        let stats = agg.stats();
        assert_eq!(stats.rejected("invalid_value"), 1);
        assert_eq!(stats.rejected("type_conflict"), 1);
        assert_eq!(stats.rejected("duplicate_label"), 1);
    }

    #[test]
    fn cached_lines_reuse_the_series() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        for _ in 0..10 {
            d.ingest(b"x.y:1|c|#b:2,a:1", &mut w);
        }
        assert_eq!(w.cache_misses(), 1);
        assert_eq!(agg.flush().counter_delta_sum(), 10.0);
    }
}
