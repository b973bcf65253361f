//! The StatsD parser and decoder as they were before the single-pass parser (weir at
//! commit 0a99e6f, `core/src/statsd.rs`), kept verbatim apart from paths so that
//! `benches/parse.rs` measures before and after side by side in one run.
//!
//! Not used outside the benchmark; behaviour is held equal to the current parser by
//! the differential tests in `weir_core::parse::statsd`.

#![allow(dead_code, missing_docs)]

use weir_core::aggregator::{Rejected, Writer};
use weir_core::parse::statsd::{
    DatagramReport, LineError, StatsdType, sanitize_label_name, sanitize_metric_name, tags,
};
use weir_core::point::{Sample, Temporality};

/// One parsed line, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric name as sent (not sanitised).
    pub name: &'a str,
    /// The value section.
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
