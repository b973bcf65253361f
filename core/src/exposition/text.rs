//! The Prometheus text exposition format (version 0.0.4): scrape bodies in, samples out.
//!
//! Owns: parsing `# TYPE` lines and sample lines (`name{label="value",...} value
//! [timestamp]`, with `\\`, `\"` and `\n` escapes, `NaN`, `+Inf`, `-Inf`), and
//! regrouping histogram (`_bucket{le}`, `_sum`, `_count`) and summary (`{quantile}`,
//! `_sum`, `_count`) families into whole values. Must never: panic or stop at a bad
//! line (it is skipped and counted by a stable reason), or trust a body's size or
//! shape (a histogram missing its `+Inf` bucket or with decreasing buckets is
//! refused).
//!
//! # Mapping
//! | `# TYPE` | sample |
//! |---|---|
//! | `counter` | cumulative counter (`foo` or `foo_total` under `# TYPE foo counter`) |
//! | `gauge`, `untyped`, none | gauge |
//! | `histogram` | one cumulative histogram per label set (without `le`) |
//! | `summary` | one summary per label set (without `quantile`) |
//!
//! Scraped counters and histograms are cumulative: the aggregator's reset detection
//! turns them into deltas. Label sets are allocated per line (scrapes are parsed once
//! per interval, not per point).

use std::borrow::Cow;
use std::sync::Arc;

use crate::point::{HistogramValue, Quantile, Sample, SummaryValue, Temporality};

/// Why a line (or a histogram or summary group) was skipped. Stable names for
/// `weir_scrape_parse_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpositionError {
    /// The body is not valid UTF-8 (the whole body is refused).
    InvalidUtf8,
    /// A sample line without a name, or with text where the value should be.
    MalformedLine,
    /// A label set that does not parse (`{a="1"`, `{a=1}`, a bad escape).
    MalformedLabels,
    /// A value that is not a float, `NaN`, `+Inf` or `-Inf`.
    MalformedValue,
    /// A timestamp that is not an integer of milliseconds.
    MalformedTimestamp,
    /// A `# TYPE` line with an unknown type or no name.
    MalformedType,
    /// A histogram group without `+Inf`, with an unparsable `le`, or with buckets that
    /// decrease; a summary sample with an unparsable `quantile`.
    MalformedGroup,
}

impl ExpositionError {
    /// All reasons, in a stable order.
    pub const ALL: [ExpositionError; 7] = [
        ExpositionError::InvalidUtf8,
        ExpositionError::MalformedLine,
        ExpositionError::MalformedLabels,
        ExpositionError::MalformedValue,
        ExpositionError::MalformedTimestamp,
        ExpositionError::MalformedType,
        ExpositionError::MalformedGroup,
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
    /// Samples emitted (a histogram or summary group counts once).
    pub samples: u64,
    /// Lines or groups skipped, by reason (indexed like [`ExpositionError::ALL`]).
    pub errors: [u64; ExpositionError::ALL.len()],
}

impl ParseReport {
    /// The count for one reason.
    pub fn errors(&self, reason: ExpositionError) -> u64 {
        self.errors[reason.index()]
    }

    fn count(&mut self, e: ExpositionError) {
        self.errors[e.index()] += 1;
    }
}

/// The declared type of the family being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// One sample line, parsed.
struct SampleLine<'a> {
    name: &'a str,
    labels: Vec<(&'a str, Cow<'a, str>)>,
    value: f64,
    timestamp_ms: i64,
}

/// A histogram or summary being assembled from its lines.
struct Group {
    labels: Vec<(String, String)>,
    /// `(le, cumulative count)` or `(quantile, value)`.
    points: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
    timestamp_ms: i64,
    malformed: bool,
}

/// Sink for parsed samples: `(name, labels, sample, timestamp_ms)`; 0 means "now".
pub type Emit<'e> = dyn FnMut(&str, &[(&str, &str)], Sample<'_>, i64) + 'e;

/// Parses a scrape body, calling `emit` for every sample (histograms and summaries
/// once per label set, when their family ends).
///
/// ```
/// use weir_core::exposition::parse_text;
/// use weir_core::point::{Sample, Temporality};
/// let body = b"# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1027 1395066363000\n";
/// let mut got = Vec::new();
/// let report = parse_text(body, &mut |name, labels, sample, ts| {
///     got.push((name.to_owned(), labels.len(), sample == Sample::Counter(1027.0, Temporality::Cumulative), ts));
/// });
/// assert_eq!(report.samples, 1);
/// assert_eq!(got, vec![("http_requests_total".to_owned(), 1, true, 1395066363000)]);
/// ```
pub fn parse_text(body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
    let mut report = ParseReport::default();
    let Ok(body) = std::str::from_utf8(body) else {
        report.count(ExpositionError::InvalidUtf8);
        return report;
    };
    let mut family: Option<(&str, Family)> = None;
    let mut groups: Vec<Group> = Vec::new();
    for line in body.lines() {
        let line = line.trim_start();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                finish(family, &mut groups, emit, &mut report);
                family = match (words.next(), words.next()) {
                    (Some(name), Some(t)) => match t {
                        "counter" => Some((name, Family::Counter)),
                        "gauge" | "untyped" => Some((name, Family::Gauge)),
                        "histogram" => Some((name, Family::Histogram)),
                        "summary" => Some((name, Family::Summary)),
                        _ => {
                            report.count(ExpositionError::MalformedType);
                            None
                        }
                    },
                    _ => {
                        report.count(ExpositionError::MalformedType);
                        None
                    }
                };
            }
            continue;
        }
        let s = match parse_sample(line) {
            Ok(s) => s,
            Err(e) => {
                report.count(e);
                continue;
            }
        };
        match family {
            Some((fam, kind @ (Family::Histogram | Family::Summary))) if belongs(s.name, fam) => {
                add_to_group(&mut groups, kind, fam, s);
            }
            Some((fam, Family::Counter))
                if s.name == fam || s.name.strip_suffix("_total") == Some(fam) =>
            {
                emit_line(
                    &s,
                    Sample::Counter(s.value, Temporality::Cumulative),
                    emit,
                    &mut report,
                );
            }
            _ => {
                if family.is_some_and(|(fam, _)| !belongs(s.name, fam)) {
                    // A sample of another family without a TYPE line: the typed family
                    // ended.
                    finish(family, &mut groups, emit, &mut report);
                    family = None;
                }
                emit_line(&s, Sample::Gauge(s.value), emit, &mut report);
            }
        }
    }
    finish(family, &mut groups, emit, &mut report);
    report
}

/// True if `name` is `family` or one of its histogram/summary/counter series.
fn belongs(name: &str, family: &str) -> bool {
    matches!(
        name.strip_prefix(family),
        Some("" | "_bucket" | "_sum" | "_count" | "_total")
    )
}

fn emit_line(
    s: &SampleLine<'_>,
    sample: Sample<'_>,
    emit: &mut Emit<'_>,
    report: &mut ParseReport,
) {
    let labels: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    emit(s.name, &labels, sample, s.timestamp_ms);
    report.samples += 1;
}

fn add_to_group(groups: &mut Vec<Group>, kind: Family, family: &str, s: SampleLine<'_>) {
    let special = if kind == Family::Histogram {
        "le"
    } else {
        "quantile"
    };
    let mut key: Vec<(String, String)> = s
        .labels
        .iter()
        .filter(|(k, _)| *k != special)
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect();
    key.sort();
    let idx = match groups.iter().position(|g| g.labels == key) {
        Some(i) => i,
        None => {
            groups.push(Group {
                labels: key,
                points: Vec::new(),
                sum: None,
                count: None,
                timestamp_ms: s.timestamp_ms,
                malformed: false,
            });
            groups.len() - 1
        }
    };
    let g = &mut groups[idx];
    let suffix = &s.name[family.len()..];
    match suffix {
        "_sum" => g.sum = Some(s.value),
        "_count" => g.count = Some(s.value),
        _ => {
            let at = s
                .labels
                .iter()
                .find(|(k, _)| *k == special)
                .and_then(|(_, v)| parse_float(v));
            match at {
                Some(at) if (kind == Family::Histogram) == (suffix == "_bucket") => {
                    g.points.push((at, s.value))
                }
                _ => g.malformed = true,
            }
        }
    }
}

/// Emits every group of the family that just ended.
fn finish(
    family: Option<(&str, Family)>,
    groups: &mut Vec<Group>,
    emit: &mut Emit<'_>,
    report: &mut ParseReport,
) {
    let Some((name, kind)) = family else {
        groups.clear();
        return;
    };
    for g in groups.drain(..) {
        let labels: Vec<(&str, &str)> = g
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let value = match kind {
            Family::Histogram => histogram(&g).map(|h| (Some(h), None)),
            _ => summary(&g).map(|s| (None, Some(s))),
        };
        match value {
            Some((Some(h), _)) => {
                emit(
                    name,
                    &labels,
                    Sample::Histogram(&h, Temporality::Cumulative),
                    g.timestamp_ms,
                );
                report.samples += 1;
            }
            Some((_, Some(s))) => {
                emit(name, &labels, Sample::Summary(&s), g.timestamp_ms);
                report.samples += 1;
            }
            _ => report.count(ExpositionError::MalformedGroup),
        }
    }
}

/// Cumulative `le` buckets to weir's per-bucket histogram; `None` when malformed.
fn histogram(g: &Group) -> Option<HistogramValue> {
    if g.malformed {
        return None;
    }
    let mut points = g.points.clone();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (&(last_le, total), finite) = points.split_last()?;
    if last_le != f64::INFINITY
        || points
            .windows(2)
            .any(|w| w[0].0 == w[1].0 || w[1].1 < w[0].1)
    {
        return None;
    }
    let as_count = |v: f64| (v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63)).then_some(v as u64);
    let mut counts = Vec::with_capacity(points.len());
    let mut prev = 0u64;
    for &(_, cum) in &points {
        let c = as_count(cum)?;
        counts.push(c - prev);
        prev = c;
    }
    let count = as_count(total)?;
    Some(HistogramValue {
        bounds: Arc::from(finite.iter().map(|p| p.0).collect::<Vec<_>>()),
        counts,
        sum: g.sum.unwrap_or(0.0),
        count,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    })
}

fn summary(g: &Group) -> Option<SummaryValue> {
    if g.malformed || g.points.iter().any(|(q, _)| !(0.0..=1.0).contains(q)) {
        return None;
    }
    let count = g.count.unwrap_or(0.0);
    Some(SummaryValue {
        quantiles: g
            .points
            .iter()
            .map(|&(quantile, value)| Quantile { quantile, value })
            .collect(),
        sum: g.sum.unwrap_or(0.0),
        count: if count >= 0.0 && count < 2f64.powi(63) {
            count as u64
        } else {
            0
        },
    })
}

/// A float as the format spells it: Go's `ParseFloat` forms plus `NaN`, `+Inf`, `-Inf`.
fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn parse_sample(line: &str) -> Result<SampleLine<'_>, ExpositionError> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err(ExpositionError::MalformedLine);
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or(ExpositionError::MalformedLine)?;
    let value = parse_float(value).ok_or(ExpositionError::MalformedValue)?;
    let timestamp_ms = match fields.next() {
        None => 0,
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| ExpositionError::MalformedTimestamp)?,
    };
    if fields.next().is_some() {
        return Err(ExpositionError::MalformedLine);
    }
    Ok(SampleLine {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `a="1",b="x\"y"}` (after the `{`) into `out`; returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, ExpositionError> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or(ExpositionError::MalformedLabels)?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return Err(ExpositionError::MalformedLabels);
        }
        let after = s[eq + 1..].trim_start();
        let body = after
            .strip_prefix('"')
            .ok_or(ExpositionError::MalformedLabels)?;
        let (value, rest) = unescape(body)?;
        out.push((key, value));
        s = rest.trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(ExpositionError::MalformedLabels);
        }
    }
}

/// Reads a quoted label value up to its closing quote (the opening one is consumed).
fn unescape(s: &str) -> Result<(Cow<'_, str>, &str), ExpositionError> {
    let end = s
        .find(['"', '\\'])
        .ok_or(ExpositionError::MalformedLabels)?;
    if s.as_bytes()[end] == b'"' {
        return Ok((Cow::Borrowed(&s[..end]), &s[end + 1..]));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(out), &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                _ => return Err(ExpositionError::MalformedLabels),
            },
            c => out.push(c),
        }
    }
    Err(ExpositionError::MalformedLabels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a body emits, owned.
    #[derive(Debug, Clone, PartialEq)]
    struct Got {
        name: String,
        labels: Vec<(String, String)>,
        sample: String,
        ts: i64,
    }

    fn parse(body: &str) -> (Vec<Got>, ParseReport) {
        let mut got = Vec::new();
        let r = parse_text(body.as_bytes(), &mut |name, labels, sample, ts| {
            got.push(Got {
                name: name.to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                sample: format!("{sample:?}"),
                ts,
            })
        });
        (got, r)
    }

    const BODY: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

    #[test]
    fn the_reference_example_parses_completely() {
        let (got, r) = parse(BODY);
        assert_eq!(r.errors.iter().sum::<u64>(), 0, "{r:?}");
        assert_eq!(r.samples, 7);
        assert_eq!(got[0].name, "http_requests_total");
        assert_eq!(got[0].sample, "Counter(1027.0, Cumulative)");
        assert_eq!(got[0].ts, 1_395_066_363_000);
        assert_eq!(
            got[0].labels,
            vec![
                ("method".into(), "post".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(got[2].labels[0].1, r"C:\DIR\FILE.TXT");
        assert_eq!(got[2].labels[1].1, "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(got[2].sample, "Gauge(1458255915.0)");
        assert_eq!((got[3].sample.as_str(), got[3].ts), ("Gauge(12.47)", 0));
        assert_eq!(
            (got[4].sample.as_str(), got[4].ts),
            ("Gauge(inf)", -3_982_045)
        );
        let h = &got[5];
        assert_eq!(h.name, "http_request_duration_seconds");
        assert!(
            h.sample
                .contains("counts: [24054, 9390, 66948, 28997, 4599, 10332]"),
            "{}",
            h.sample
        );
        assert!(
            h.sample.contains("count: 144320") && h.sample.contains("sum: 53423.0"),
            "{}",
            h.sample
        );
        assert!(
            h.sample.contains("bounds: [0.05, 0.1, 0.2, 0.5, 1.0]"),
            "{}",
            h.sample
        );
        let s = &got[6];
        assert_eq!(s.name, "rpc_duration_seconds");
        assert!(
            s.sample.contains("quantile: 0.99, value: 76656.0"),
            "{}",
            s.sample
        );
        assert!(s.sample.contains("count: 2693"), "{}", s.sample);
    }

    #[test]
    fn histograms_group_by_labels_without_le() {
        let body = "# TYPE lat histogram\n\
            lat_bucket{path=\"/a\",le=\"1\"} 1\nlat_bucket{path=\"/b\",le=\"1\"} 5\n\
            lat_bucket{path=\"/a\",le=\"+Inf\"} 2\nlat_bucket{path=\"/b\",le=\"+Inf\"} 5\n\
            lat_sum{path=\"/a\"} 3\nlat_count{path=\"/a\"} 2\nlat_sum{path=\"/b\"} 1\nlat_count{path=\"/b\"} 5\n\
            other 1\n";
        let (got, r) = parse(body);
        assert_eq!(r.samples, 3, "{got:?}");
        assert_eq!(got[0].labels, vec![("path".into(), "/a".into())]);
        assert!(
            got[0].sample.contains("counts: [1, 1]"),
            "{}",
            got[0].sample
        );
        assert!(
            got[1].sample.contains("counts: [5, 0]"),
            "{}",
            got[1].sample
        );
        assert_eq!(got[2].name, "other");
    }

    #[test]
    fn openmetrics_style_counter_names_are_counters() {
        let (got, _) = parse("# TYPE jobs counter\njobs_total 5\n");
        assert_eq!(got[0].sample, "Counter(5.0, Cumulative)");
        let (got, _) = parse("untyped_thing 5\n");
        assert_eq!(got[0].sample, "Gauge(5.0)");
    }

    #[test]
    fn bad_lines_are_skipped_and_counted() {
        let cases: &[(&str, ExpositionError)] = &[
            ("{a=\"1\"} 1", ExpositionError::MalformedLine),
            ("m", ExpositionError::MalformedLine),
            ("m 1 2 3", ExpositionError::MalformedLine),
            ("m{a=\"1\" 1", ExpositionError::MalformedLabels),
            ("m{a=1} 1", ExpositionError::MalformedLabels),
            ("m{=\"1\"} 1", ExpositionError::MalformedLabels),
            ("m{a=\"\\x\"} 1", ExpositionError::MalformedLabels),
            ("m{a=\"1\"b=\"2\"} 1", ExpositionError::MalformedLabels),
            ("m{a=\"unterminated} 1", ExpositionError::MalformedLabels),
            ("m one", ExpositionError::MalformedValue),
            ("m 1 soon", ExpositionError::MalformedTimestamp),
            ("# TYPE m sparkline", ExpositionError::MalformedType),
            ("# TYPE", ExpositionError::MalformedType),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1",
                ExpositionError::MalformedGroup,
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1",
                ExpositionError::MalformedGroup,
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 3",
                ExpositionError::MalformedGroup,
            ),
            (
                "# TYPE s summary\ns{quantile=\"2\"} 1",
                ExpositionError::MalformedGroup,
            ),
        ];
        for (body, reason) in cases {
            let body = format!("good 1\n{body}\nalso_good{{a=\"b\"}} 2\n");
            let (got, r) = parse(&body);
            assert_eq!(r.errors(*reason), 1, "{body:?}: {r:?}");
            assert_eq!(r.errors.iter().sum::<u64>(), 1, "{body:?}: {r:?}");
            assert!(
                got.iter().any(|g| g.name == "good") && got.iter().any(|g| g.name == "also_good"),
                "{body:?}"
            );
        }
        let r = parse_text(&[0xff, b'\n'], &mut |_, _, _, _| {});
        assert_eq!(r.errors(ExpositionError::InvalidUtf8), 1);
    }

    #[test]
    fn scraped_counters_become_deltas_in_the_aggregator() {
        let agg = crate::Aggregator::default();
        let mut w = agg.writer();
        for body in [
            "# TYPE c counter\nc_total 100\n",
            "# TYPE c counter\nc_total 130\n",
            "# TYPE c counter\nc_total 4\n",
        ] {
            parse_text(body.as_bytes(), &mut |name, labels, sample, ts| {
                w.record(name, labels, sample, ts).unwrap();
            });
        }
        let b = agg.flush();
        assert_eq!(
            b.series[0].value,
            crate::FlushedValue::Counter {
                delta: 34.0,
                total: 134.0
            },
            "baseline 100, +30, then a reset to 4"
        );
    }
}
