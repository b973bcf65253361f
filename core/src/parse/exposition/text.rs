//! The text formats: Prometheus text exposition 0.0.4 and OpenMetrics text 1.0, one
//! line parser with a [`Dialect`] for where they differ.
//!
//! Owns: `# TYPE` lines and sample lines (`name{label="value",...} value
//! [timestamp]`, with `\\`, `\"` and `\n` escapes, `NaN`, `+Inf`, `-Inf`), and the
//! grouping of histogram (`_bucket{le}`, `_sum`, `_count`) and summary (`{quantile}`,
//! `_sum`, `_count`) lines into whole values. Must never: panic or stop at a bad line
//! (it is skipped and counted by a stable reason), or keep more than
//! [`MAX_HISTOGRAM_BUCKETS`] finite buckets of a histogram (the group is refused as
//! `too_many_buckets`).
//!
//! # Where OpenMetrics differs
//! - The body ends with `# EOF`; without it `missing_eof` is counted (the samples
//!   read are kept: they were emitted as read); text after it counts one
//!   `malformed_line` and is not read.
//! - Timestamps are seconds (a float), not milliseconds.
//! - A sample may end with an exemplar (` # {trace_id="..."} 1.0 [ts]`): stripped.
//! - Counters are declared without `_total` (`# TYPE foo counter`) and their sample is
//!   `foo_total` (0.0.4 bodies written by OpenMetrics-aware clients do the same, so
//!   both dialects accept it).
//! - `foo_created` of a counter, histogram or summary is not a series but the start
//!   time (a float of seconds) of the samples of the same label set in its family:
//!   it is passed to [`Emit`] as their `start_ms`. One that is not a finite number
//!   counts `malformed_timestamp` (the samples go on without a start). In 0.0.4 a
//!   `foo_created` line is a gauge, as Prometheus reads it.
//!
//! # Created times arrive after their samples
//! OpenMetrics writes `foo_created` after `foo_total` (and after a histogram's
//! buckets, sum and count). Histograms and summaries are grouped until their family
//! ends anyway, so their `_created` joins their group. A counter's samples are held
//! only while its *Metric* lasts: the run of lines with one label set, which the
//! format keeps together (`metric = *sample` in its grammar). The next line of
//! another label set, type or family, or the body's end, emits them with the run's
//! `_created` time, if it had one (before or after the `_total` line). The run's lines
//! are the parsed lines themselves, moved into a buffer reused for the whole body, so
//! holding them allocates nothing per sample; a `_created` line outside the run of
//! its label set gives no start (its samples were already emitted).
//! - Types `unknown`, `info`, `stateset` and `gaugehistogram` are gauges per sample
//!   (as Prometheus stores them); `# UNIT` and `# HELP` lines are ignored.

use std::borrow::Cow;

use super::{
    Emit, EmitIdentified, ExpositionError, ParseReport, cumulative_histogram, summary_value,
};
use crate::key::LabelBuf;
use crate::parse::MAX_HISTOGRAM_BUCKETS;
use crate::point::{Sample, Temporality};

/// Which text format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Prometheus text 0.0.4.
    Prometheus,
    /// OpenMetrics text 1.0.
    OpenMetrics,
}

/// The declared type of the family being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Family {
    /// The family type a `# TYPE` line names, in `dialect`.
    fn from_type(word: &str, dialect: Dialect) -> Option<Family> {
        match (word, dialect) {
            ("counter", _) => Some(Family::Counter),
            ("gauge" | "untyped", _) => Some(Family::Gauge),
            ("histogram", _) => Some(Family::Histogram),
            ("summary", _) => Some(Family::Summary),
            ("unknown" | "info" | "stateset" | "gaugehistogram", Dialect::OpenMetrics) => {
                Some(Family::Gauge)
            }
            _ => None,
        }
    }
}

/// The labels of one line as parsed: names and values borrowed from the body (values
/// with escapes unescaped into their own string).
type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Label vectors of lines already used, for the next lines of the body: once the first
/// lines have sized them, a line allocates nothing (unless a value has escapes).
type Spare<'a> = Vec<Labels<'a>>;

/// Gives `labels`, emptied, back to `spare`.
fn recycle<'a>(spare: &mut Spare<'a>, mut labels: Labels<'a>) {
    labels.clear();
    spare.push(labels);
}

/// One sample line, parsed.
struct SampleLine<'a> {
    /// The name and label set as the line spells them (`name{a="1"}`): what
    /// [`EmitIdentified`] passes as the identity.
    ident: &'a str,
    name: &'a str,
    labels: Labels<'a>,
    value: f64,
    timestamp_ms: i64,
}

/// The lines of one counter Metric (one label set, consecutive lines), held until it
/// ends so that its `_created` line, which comes after `_total`, can give them their
/// start time (see the module doc).
#[derive(Default)]
struct CounterRun<'a> {
    /// Its `_total` (or bare) sample lines, in arrival order.
    totals: Vec<SampleLine<'a>>,
    /// The label set of a `_created` line read before any of `totals`; `None` when
    /// `totals` has the run's labels, or the run is empty.
    created_labels: Option<Labels<'a>>,
    /// The run's start time in milliseconds since the epoch; 0 until a `_created` line
    /// is read.
    start_ms: i64,
}

impl<'a> CounterRun<'a> {
    /// The run's label set; `None` when the run is empty.
    fn labels(&self) -> Option<&[(&'a str, Cow<'a, str>)]> {
        match self.totals.first() {
            Some(first) => Some(&first.labels),
            None => self.created_labels.as_deref(),
        }
    }

    /// True if a line with `labels` continues the run (labels in any order).
    fn continues(&self, labels: &[(&str, Cow<'_, str>)]) -> bool {
        self.labels()
            .is_some_and(|run| run.len() == labels.len() && labels.iter().all(|l| run.contains(l)))
    }

    /// Takes one line of a counter family: a `_created` line's start time (`created`),
    /// or a sample. A line of another label set first emits the run it ends.
    fn push(&mut self, s: SampleLine<'a>, created: Option<i64>, out: &mut Out<'a, '_, '_>) {
        if !self.continues(&s.labels) {
            self.emit(out);
        }
        match created {
            Some(start_ms) => {
                self.start_ms = start_ms;
                if self.totals.is_empty() && self.created_labels.is_none() {
                    self.created_labels = Some(s.labels);
                } else {
                    recycle(&mut out.spare, s.labels);
                }
            }
            None => self.totals.push(s),
        }
    }

    /// Emits the run's samples with its start time and empties it.
    fn emit(&mut self, out: &mut Out<'a, '_, '_>) {
        let start_ms = self.start_ms;
        for s in self.totals.drain(..) {
            let sample = Sample::Counter(s.value, Temporality::Cumulative);
            out.line(s, sample, start_ms);
        }
        if let Some(labels) = self.created_labels.take() {
            recycle(&mut out.spare, labels);
        }
        self.start_ms = 0;
    }
}

/// A histogram or summary being assembled from its lines.
struct Group {
    labels: Vec<(String, String)>,
    /// `(le, cumulative count)` or `(quantile, value)`.
    points: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
    timestamp_ms: i64,
    /// From the group's `_created` line (milliseconds since the epoch); 0 without one.
    start_ms: i64,
    malformed: bool,
    /// More buckets than [`MAX_HISTOGRAM_BUCKETS`]: later ones are not kept.
    too_many: bool,
}

impl Group {
    /// True while no sample line (only a `_created` line) went into the group.
    fn has_no_samples(&self) -> bool {
        self.points.is_empty()
            && self.sum.is_none()
            && self.count.is_none()
            && !self.malformed
            && !self.too_many
    }
}

/// Parses a Prometheus text format (0.0.4) body, calling `emit` for every sample
/// (histograms and summaries once per label set, when their family ends).
///
/// ```
/// use weir_core::parse::exposition::parse_text;
/// use weir_core::point::{Sample, Temporality};
/// let body = b"# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1027 1395066363000\n";
/// let mut got = Vec::new();
/// let report = parse_text(body, &mut |name, labels, sample, ts, _start| {
///     got.push((name.to_owned(), labels.len(), sample == Sample::Counter(1027.0, Temporality::Cumulative), ts));
/// });
/// assert_eq!(report.samples, 1);
/// assert_eq!(got, vec![("http_requests_total".to_owned(), 1, true, 1395066363000)]);
/// ```
pub fn parse_text(body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
    parse(body, Dialect::Prometheus, &mut |_, n, l, s, t, st| {
        emit(n, l, s, t, st)
    })
}

/// Parses an OpenMetrics text 1.0 body (see the module doc for how it differs from
/// [`parse_text`]).
///
/// ```
/// use weir_core::parse::exposition::parse_openmetrics;
/// use weir_core::point::{Sample, Temporality};
/// let body = b"# TYPE jobs counter\n# UNIT jobs jobs\njobs_total{q=\"a\"} 7 1700000000.5 # {trace_id=\"ab\"} 1\njobs_created{q=\"a\"} 1699999000.25\n# EOF\n";
/// let mut got = Vec::new();
/// let report = parse_openmetrics(body, &mut |name, _, sample, ts, start| {
///     got.push((name.to_owned(), sample == Sample::Counter(7.0, Temporality::Cumulative), ts, start))
/// });
/// assert_eq!((report.samples, report.total_errors()), (1, 0));
/// assert_eq!(got, vec![("jobs_total".to_owned(), true, 1_700_000_000_500, 1_699_999_000_250)]);
/// ```
pub fn parse_openmetrics(body: &[u8], emit: &mut Emit<'_>) -> ParseReport {
    parse(body, Dialect::OpenMetrics, &mut |_, n, l, s, t, st| {
        emit(n, l, s, t, st)
    })
}

/// [`parse_text`], passing each sample line's identity as the body spells it (see
/// [`EmitIdentified`]).
pub(super) fn parse_text_identified(body: &[u8], emit: &mut EmitIdentified<'_>) -> ParseReport {
    parse(body, Dialect::Prometheus, emit)
}

/// [`parse_openmetrics`], passing each sample line's identity as the body spells it
/// (see [`EmitIdentified`]).
pub(super) fn parse_openmetrics_identified(
    body: &[u8],
    emit: &mut EmitIdentified<'_>,
) -> ParseReport {
    parse(body, Dialect::OpenMetrics, emit)
}

/// Where the samples of a body go, with the buffers its lines reuse.
struct Out<'a, 'e, 'x> {
    emit: &'e mut EmitIdentified<'x>,
    report: ParseReport,
    spare: Spare<'a>,
    /// The labels of the line being emitted as `&str` pairs.
    view: LabelBuf,
}

impl<'a> Out<'a, '_, '_> {
    /// Emits one sample line as `sample` and keeps its label vector for the next line.
    fn line(&mut self, s: SampleLine<'a>, sample: Sample<'_>, start_ms: i64) {
        let emit = &mut *self.emit;
        self.view.with(|view| {
            view.extend(s.labels.iter().map(|(k, v)| (*k, v.as_ref())));
            emit(
                Some(s.ident.as_bytes()),
                s.name,
                view,
                sample,
                s.timestamp_ms,
                start_ms,
            );
        });
        self.report.samples += 1;
        recycle(&mut self.spare, s.labels);
    }
}

fn parse(body: &[u8], dialect: Dialect, emit: &mut EmitIdentified<'_>) -> ParseReport {
    let mut out = Out {
        emit,
        report: ParseReport::default(),
        spare: Vec::new(),
        view: LabelBuf::default(),
    };
    let Ok(body) = std::str::from_utf8(body) else {
        out.report.count(ExpositionError::InvalidUtf8);
        return out.report;
    };
    let mut family: Option<(&str, Family)> = None;
    let mut groups: Vec<Group> = Vec::new();
    let mut run = CounterRun::default();
    let mut eof = false;
    for line in body.lines() {
        let line = line.trim_ascii_start();
        if line.is_empty() {
            continue;
        }
        if eof {
            out.report.count(ExpositionError::MalformedLine);
            break;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_ascii_whitespace();
            match words.next() {
                Some("TYPE") => {
                    run.emit(&mut out);
                    finish(family, &mut groups, &mut out);
                    family = match (words.next(), words.next()) {
                        (Some(name), Some(t)) => Family::from_type(t, dialect).map(|f| (name, f)),
                        _ => None,
                    };
                    if family.is_none() {
                        out.report.count(ExpositionError::MalformedType);
                    }
                }
                Some("EOF") if dialect == Dialect::OpenMetrics && words.next().is_none() => {
                    eof = true;
                }
                _ => {}
            }
            continue;
        }
        let labels = out.spare.pop().unwrap_or_default();
        let s = match parse_sample(line, dialect, labels) {
            Ok(s) => s,
            Err(e) => {
                out.report.count(e);
                continue;
            }
        };
        let created = match family {
            Some((fam, Family::Counter | Family::Histogram | Family::Summary))
                if dialect == Dialect::OpenMetrics
                    && s.name.strip_prefix(fam) == Some("_created") =>
            {
                match seconds_to_ms(s.value) {
                    Some(start_ms) => Some(start_ms),
                    None => {
                        out.report.count(ExpositionError::MalformedTimestamp);
                        recycle(&mut out.spare, s.labels);
                        continue;
                    }
                }
            }
            _ => None,
        };
        let counter_line = matches!(family, Some((fam, Family::Counter))
            if created.is_some() || s.name == fam || s.name.strip_suffix("_total") == Some(fam));
        if !counter_line {
            run.emit(&mut out);
        }
        match family {
            Some((fam, kind @ (Family::Histogram | Family::Summary)))
                if created.is_some() || belongs(s.name, fam) =>
            {
                add_to_group(&mut groups, kind, fam, &s, created);
                recycle(&mut out.spare, s.labels);
            }
            Some(_) if counter_line => run.push(s, created, &mut out),
            _ => {
                if family.is_some_and(|(fam, _)| !belongs(s.name, fam)) {
                    // A sample of another family without a TYPE line: the typed family
                    // ended.
                    finish(family, &mut groups, &mut out);
                    family = None;
                }
                let value = s.value;
                out.line(s, Sample::Gauge(value), 0);
            }
        }
    }
    run.emit(&mut out);
    finish(family, &mut groups, &mut out);
    if dialect == Dialect::OpenMetrics && !eof {
        out.report.count(ExpositionError::MissingEof);
    }
    out.report
}

/// True if `name` is `family` or one of its histogram/summary/counter series.
fn belongs(name: &str, family: &str) -> bool {
    matches!(
        name.strip_prefix(family),
        Some("" | "_bucket" | "_sum" | "_count" | "_total")
    )
}

/// Adds a line of a histogram or summary family to its group: a sample, or the
/// group's start time (`created`, from its `_created` line).
fn add_to_group(
    groups: &mut Vec<Group>,
    kind: Family,
    family: &str,
    s: &SampleLine<'_>,
    created: Option<i64>,
) {
    let special = if kind == Family::Histogram {
        "le"
    } else {
        "quantile"
    };
    // Newest first: a group's lines come together in every client library's output,
    // so the line's group is nearly always the last one (and a family of many label
    // sets costs one comparison per line, not one per group).
    let idx = match groups
        .iter()
        .rposition(|g| same_labels(&g.labels, &s.labels, special))
    {
        Some(i) => i,
        None => {
            let mut key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != special)
                .map(|(k, v)| ((*k).to_owned(), v.to_string()))
                .collect();
            key.sort();
            groups.push(Group {
                labels: key,
                points: Vec::new(),
                sum: None,
                count: None,
                timestamp_ms: 0,
                start_ms: 0,
                malformed: false,
                too_many: false,
            });
            groups.len() - 1
        }
    };
    let g = &mut groups[idx];
    if let Some(start_ms) = created {
        g.start_ms = start_ms;
        return;
    }
    if g.has_no_samples() {
        // The group's first sample line (a `_created` line may have come first).
        g.timestamp_ms = s.timestamp_ms;
    }
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
                // At most MAX_HISTOGRAM_BUCKETS finite buckets and +Inf are kept: a
                // group's memory does not grow with what a body repeats.
                Some(_) if kind == Family::Histogram && g.points.len() > MAX_HISTOGRAM_BUCKETS => {
                    g.too_many = true
                }
                Some(at) if (kind == Family::Histogram) == (suffix == "_bucket") => {
                    g.points.push((at, s.value))
                }
                _ => g.malformed = true,
            }
        }
    }
}

/// True if `group` holds the labels of `line` other than `special`, as multisets
/// (equal to comparing both sorted), without allocating.
fn same_labels(group: &[(String, String)], line: &[(&str, Cow<'_, str>)], special: &str) -> bool {
    let rest = || line.iter().filter(|(k, _)| *k != special);
    rest().count() == group.len()
        && rest().all(|(k, v)| {
            let in_line = rest().filter(|(k2, v2)| k2 == k && v2 == v).count();
            let in_group = group.iter().filter(|(gk, gv)| gk == k && gv == v).count();
            in_line == in_group
        })
}

/// Emits every group of the family that just ended.
fn finish(family: Option<(&str, Family)>, groups: &mut Vec<Group>, out: &mut Out<'_, '_, '_>) {
    let (emit, report) = (&mut *out.emit, &mut out.report);
    let Some((name, kind)) = family else {
        groups.clear();
        return;
    };
    for mut g in groups.drain(..) {
        let labels: Vec<(&str, &str)> = g
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sum = g.sum.unwrap_or(0.0);
        if g.too_many {
            report.count(ExpositionError::TooManyBuckets);
            continue;
        }
        if g.has_no_samples() {
            // Only a `_created` line: a start time without samples, nothing to emit.
            continue;
        }
        let emitted = match kind {
            _ if g.malformed => false,
            Family::Histogram => match cumulative_histogram(&mut g.points, sum) {
                Some(h) => {
                    emit(
                        None,
                        name,
                        &labels,
                        Sample::Histogram(&h, Temporality::Cumulative),
                        g.timestamp_ms,
                        g.start_ms,
                    );
                    true
                }
                None => false,
            },
            _ => match summary_value(&g.points, sum, g.count.unwrap_or(0.0)) {
                Some(s) => {
                    emit(
                        None,
                        name,
                        &labels,
                        Sample::Summary(&s),
                        g.timestamp_ms,
                        g.start_ms,
                    );
                    true
                }
                None => false,
            },
        };
        if emitted {
            report.samples += 1;
        } else {
            report.count(ExpositionError::MalformedGroup);
        }
    }
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

/// A timestamp as `dialect` spells it, in milliseconds since the epoch.
fn parse_timestamp(t: &str, dialect: Dialect) -> Option<i64> {
    match dialect {
        Dialect::Prometheus => t.parse::<i64>().ok(),
        Dialect::OpenMetrics => seconds_to_ms(t.parse().ok()?),
    }
}

/// A float of seconds since the epoch (an OpenMetrics timestamp or `_created` value)
/// in whole milliseconds; `None` when not finite or out of range.
fn seconds_to_ms(seconds: f64) -> Option<i64> {
    let ms = (seconds * 1000.0).round();
    // i64::MAX as f64 rounds up to 2^63, itself out of range.
    (ms.is_finite() && ms >= i64::MIN as f64 && ms < i64::MAX as f64).then_some(ms as i64)
}

/// Parses one sample line into `labels` (empty), which the line then holds.
fn parse_sample<'a>(
    line: &'a str,
    dialect: Dialect,
    mut labels: Labels<'a>,
) -> Result<SampleLine<'a>, ExpositionError> {
    // Bytes, not chars: every delimiter of the format is ASCII, and a multi-byte
    // character never contains an ASCII byte.
    let name_end = line
        .bytes()
        .position(|b| b == b'{' || b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err(ExpositionError::MalformedLine);
    }
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let ident = &line[..line.len() - rest.len()];
    if dialect == Dialect::OpenMetrics {
        // An exemplar follows ` # `; label values (where a `#` may appear) are behind.
        if let Some(hash) = rest.find('#') {
            rest = &rest[..hash];
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or(ExpositionError::MalformedLine)?;
    let value = parse_float(value).ok_or(ExpositionError::MalformedValue)?;
    let timestamp_ms = match fields.next() {
        None => 0,
        Some(t) => parse_timestamp(t, dialect).ok_or(ExpositionError::MalformedTimestamp)?,
    };
    if fields.next().is_some() {
        return Err(ExpositionError::MalformedLine);
    }
    Ok(SampleLine {
        ident,
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `a="1",b="x\"y"}` (after the `{`) into `out`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Labels<'a>) -> Result<&'a str, ExpositionError> {
    loop {
        s = s.trim_ascii_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or(ExpositionError::MalformedLabels)?;
        let key = s[..eq].trim_ascii();
        if key.is_empty() {
            return Err(ExpositionError::MalformedLabels);
        }
        let after = s[eq + 1..].trim_ascii_start();
        let body = after
            .strip_prefix('"')
            .ok_or(ExpositionError::MalformedLabels)?;
        let (value, rest) = unescape(body)?;
        out.push((key, value));
        s = rest.trim_ascii_start();
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
        .bytes()
        .position(|b| b == b'"' || b == b'\\')
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
    use super::super::{Format, WEIR_START_MS, scrape_each};
    use super::*;

    /// Everything a body emits, owned.
    #[derive(Debug, Clone, PartialEq)]
    struct Got {
        name: String,
        labels: Vec<(String, String)>,
        sample: String,
        ts: i64,
        /// The start time passed with the sample.
        start: i64,
    }

    fn parse(body: &str) -> (Vec<Got>, ParseReport) {
        parse_as(body, Dialect::Prometheus)
    }

    fn parse_om(body: &str) -> (Vec<Got>, ParseReport) {
        parse_as(body, Dialect::OpenMetrics)
    }

    fn parse_as(body: &str, dialect: Dialect) -> (Vec<Got>, ParseReport) {
        let mut got = Vec::new();
        let r = super::parse(
            body.as_bytes(),
            dialect,
            &mut |_, name, labels, sample, ts, start| {
                got.push(Got {
                    name: name.to_owned(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    sample: format!("{sample:?}"),
                    ts,
                    start,
                })
            },
        );
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
    fn blanks_and_tabs_separate_tokens_and_multibyte_text_stays_whole() {
        let body = "  \t# TYPE  t\tgauge\n\t t{ a = \"été\\\"\" ,\tb=\"日本\"}\t 3 \t 1000\t\n\
                    \tplain\t\t4\r\n";
        let (got, r) = parse(body);
        assert_eq!(r.total_errors(), 0, "{r:?}");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "t");
        assert_eq!(
            got[0].labels,
            [
                ("a".to_owned(), "été\"".to_owned()),
                ("b".to_owned(), "日本".to_owned())
            ]
        );
        assert_eq!((got[0].sample.as_str(), got[0].ts), ("Gauge(3.0)", 1000));
        assert_eq!(
            (got[1].name.as_str(), got[1].sample.as_str()),
            ("plain", "Gauge(4.0)")
        );
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
        let r = parse_text(&[0xff, b'\n'], &mut |_, _, _, _, _| {});
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
            parse_text(body.as_bytes(), &mut |name, labels, sample, ts, start| {
                w.record_since(name, labels, sample, ts, start).unwrap();
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

    /// An OpenMetrics counter body: `jobs_total` at `value`, with `jobs_created` at
    /// `created` seconds when given.
    fn om_counter(value: f64, created: Option<f64>) -> Vec<u8> {
        let created = created.map_or(String::new(), |c| format!("jobs_created {c}\n"));
        format!("# TYPE jobs counter\njobs_total {value}\n{created}# EOF\n").into_bytes()
    }

    /// An OpenMetrics histogram body of `count` observations (one under 1, the rest
    /// above), with `lat_created` at `created` seconds when given.
    fn om_histogram(count: u64, created: Option<f64>) -> Vec<u8> {
        let created = created.map_or(String::new(), |c| format!("lat_created {c}\n"));
        format!(
            "# TYPE lat histogram\nlat_bucket{{le=\"1\"}} 1\nlat_bucket{{le=\"+Inf\"}} {count}\n\
             lat_count {count}\nlat_sum 9\n{created}# EOF\n"
        )
        .into_bytes()
    }

    /// `_created` times, in seconds, after and before weir started.
    const AFTER: f64 = (WEIR_START_MS / 1000) as f64 + 10.5;
    const BEFORE: f64 = (WEIR_START_MS / 1000) as f64 - 10_000.0;

    #[test]
    fn an_openmetrics_counter_created_after_weir_started_counts_its_first_value() {
        let got = scrape_each(
            Format::OpenMetrics,
            &[om_counter(7.0, Some(AFTER)), om_counter(10.0, Some(AFTER))],
        );
        assert_eq!(got, vec![(7.0, 7.0), (3.0, 10.0)]);
    }

    #[test]
    fn an_openmetrics_counter_created_before_weir_started_or_without_created_gives_a_baseline() {
        for created in [Some(BEFORE), None] {
            let got = scrape_each(
                Format::OpenMetrics,
                &[om_counter(7.0, created), om_counter(10.0, created)],
            );
            assert_eq!(got, vec![(0.0, 7.0), (3.0, 10.0)], "created {created:?}");
        }
    }

    #[test]
    fn an_openmetrics_counter_with_a_new_created_time_is_a_reset_even_when_it_grew() {
        let got = scrape_each(
            Format::OpenMetrics,
            &[
                om_counter(7.0, Some(BEFORE)),
                om_counter(8.0, Some(BEFORE)),
                // Restarted at AFTER and counted 9 since: all of it is new.
                om_counter(9.0, Some(AFTER)),
                om_counter(12.0, Some(AFTER)),
            ],
        );
        assert_eq!(got, vec![(0.0, 7.0), (1.0, 8.0), (9.0, 17.0), (3.0, 20.0)]);
    }

    #[test]
    fn an_openmetrics_histogram_created_after_weir_started_counts_its_first_observations() {
        let got = scrape_each(
            Format::OpenMetrics,
            &[om_histogram(3, Some(AFTER)), om_histogram(5, Some(AFTER))],
        );
        assert_eq!(got, vec![(3.0, 3.0), (2.0, 5.0)]);
        for created in [Some(BEFORE), None] {
            let got = scrape_each(
                Format::OpenMetrics,
                &[om_histogram(3, created), om_histogram(5, created)],
            );
            assert_eq!(got, vec![(0.0, 3.0), (2.0, 5.0)], "created {created:?}");
        }
        let got = scrape_each(
            Format::OpenMetrics,
            &[om_histogram(3, Some(BEFORE)), om_histogram(4, Some(AFTER))],
        );
        assert_eq!(
            got,
            vec![(0.0, 3.0), (4.0, 7.0)],
            "a new created time is a reset"
        );
    }

    #[test]
    fn created_times_go_to_the_samples_of_their_own_label_set() {
        let body = "# TYPE jobs counter\n\
            jobs_total{q=\"a\",r=\"1\"} 1\njobs_created{r=\"1\",q=\"a\"} 1700000001\n\
            jobs_total{q=\"b\"} 2\n\
            jobs_created{q=\"c\"} 1700000003.25\njobs_total{q=\"c\"} 3\n\
            jobs_total{q=\"d\"} 4 1700000009\njobs_total{q=\"d\"} 5 1700000010\njobs_created{q=\"d\"} 1700000004\n\
            jobs_created{q=\"e\"} 1700000005\n\
            # TYPE lat histogram\n\
            lat_bucket{p=\"x\",le=\"+Inf\"} 1\nlat_count{p=\"x\"} 1\nlat_created{p=\"x\"} 1700000006\n\
            lat_bucket{p=\"y\",le=\"+Inf\"} 1\nlat_count{p=\"y\"} 1\n\
            lat_created{p=\"z\"} 1700000007\n\
            # TYPE rpc summary\nrpc{quantile=\"0.5\"} 1\nrpc_count 1\nrpc_sum 1\nrpc_created 1700000008\n\
            # TYPE temp gauge\ntemp 1\n# EOF\n";
        let (got, r) = parse_om(body);
        assert_eq!(r.total_errors(), 0, "{r:?}");
        let starts: Vec<(&str, &str, i64)> = got
            .iter()
            .map(|g| {
                let first = g.labels.first().map_or("", |(_, v)| v.as_str());
                (g.name.as_str(), first, g.start)
            })
            .collect();
        assert_eq!(
            starts,
            vec![
                ("jobs_total", "a", 1_700_000_001_000), // labels in another order
                ("jobs_total", "b", 0),                 // none
                ("jobs_total", "c", 1_700_000_003_250), // before its sample
                ("jobs_total", "d", 1_700_000_004_000), // both points of the Metric
                ("jobs_total", "d", 1_700_000_004_000),
                ("lat", "x", 1_700_000_006_000),
                ("lat", "y", 0),
                ("rpc", "", 1_700_000_008_000),
                ("temp", "", 0),
            ],
            "{got:?}"
        );
        // A `_created` alone (`e`, `z`) is a start time for nothing: no sample, no error.
        assert_eq!(r.samples, 9);
    }

    #[test]
    fn a_histogram_created_line_before_its_buckets_gives_the_start_not_the_timestamp() {
        let body = "# TYPE lat histogram\nlat_created 1700000006\n\
            lat_bucket{le=\"+Inf\"} 1 1700000007\nlat_count 1 1700000007\n# EOF\n";
        let (got, r) = parse_om(body);
        assert_eq!((r.samples, r.total_errors()), (1, 0), "{r:?}");
        assert_eq!(
            (got[0].ts, got[0].start),
            (1_700_000_007_000, 1_700_000_006_000)
        );
    }

    #[test]
    fn a_created_time_that_is_not_a_number_is_counted_and_its_samples_go_on_without_it() {
        for created in ["NaN", "+Inf", "1e400", "soon"] {
            let body =
                format!("# TYPE jobs counter\njobs_total 7\njobs_created {created}\n# EOF\n");
            let (got, r) = parse_om(&body);
            let reason = if created == "soon" {
                ExpositionError::MalformedValue
            } else {
                ExpositionError::MalformedTimestamp
            };
            assert_eq!(
                (r.errors(reason), r.total_errors()),
                (1, 1),
                "{created}: {r:?}"
            );
            assert_eq!((got.len(), got[0].start), (1, 0), "{created}");
        }
    }

    /// What `prometheus_client` (Python) serves as OpenMetrics, plus every other
    /// OpenMetrics family type, a unit, exemplars and timestamps in seconds.
    const OPENMETRICS: &str = r#"# HELP jobs Jobs done.
# TYPE jobs counter
# UNIT jobs jobs
jobs_total{queue="mail"} 107.0 # {trace_id="a#b"} 1.0 1700000000.001
jobs_created{queue="mail"} 1.7000000e+09
# HELP job_seconds Job latency.
# TYPE job_seconds histogram
job_seconds_bucket{le="0.1"} 1.0
job_seconds_bucket{le="1.0"} 2.0 # {trace_id="c"} 0.5
job_seconds_bucket{le="+Inf"} 3.0
job_seconds_count 3.0
job_seconds_sum 5.55
job_seconds_created 1.7e+09
# TYPE rpc summary
rpc{quantile="0.5"} 4.0
rpc_sum 9.0
rpc_count 2
rpc_created 1.7e+09
# TYPE temp gauge
temp 21.5 1700000000.25
# TYPE build info
build_info{version="1.2"} 1
# TYPE state stateset
state{state="on"} 1
state{state="off"} 0
# TYPE wait gaugehistogram
wait_bucket{le="1"} 2
wait_bucket{le="+Inf"} 3
wait_gcount 3
wait_gsum 4.5
# TYPE thing unknown
thing 9
# EOF
"#;

    #[test]
    fn openmetrics_bodies_parse_completely() {
        let (got, r) = parse_om(OPENMETRICS);
        assert_eq!(r.total_errors(), 0, "{r:?}");
        let short: Vec<(&str, &str, i64)> = got
            .iter()
            .map(|g| (g.name.as_str(), g.sample.as_str(), g.ts))
            .collect();
        assert_eq!(
            short[0],
            ("jobs_total", "Counter(107.0, Cumulative)", 0),
            "named as its sample, exemplar stripped, _created not a sample"
        );
        let starts: Vec<i64> = got.iter().map(|g| g.start).collect();
        assert_eq!(
            &starts[..3],
            &[1_700_000_000_000; 3],
            "from the `_created` lines"
        );
        assert!(starts[3..].iter().all(|s| *s == 0), "{starts:?}");
        assert_eq!(got[0].labels, vec![("queue".into(), "mail".into())]);
        assert_eq!(short[1].0, "job_seconds");
        assert!(
            short[1]
                .1
                .contains("bounds: [0.1, 1.0], counts: [1, 1, 1], sum: 5.55, count: 3"),
            "{}",
            short[1].1
        );
        assert_eq!(short[2].0, "rpc");
        assert!(short[2].1.contains("sum: 9.0, count: 2"), "{}", short[2].1);
        assert_eq!(
            &short[3..],
            &[
                ("temp", "Gauge(21.5)", 1_700_000_000_250),
                ("build_info", "Gauge(1.0)", 0),
                ("state", "Gauge(1.0)", 0),
                ("state", "Gauge(0.0)", 0),
                ("wait_bucket", "Gauge(2.0)", 0),
                ("wait_bucket", "Gauge(3.0)", 0),
                ("wait_gcount", "Gauge(3.0)", 0),
                ("wait_gsum", "Gauge(4.5)", 0),
                ("thing", "Gauge(9.0)", 0),
            ]
        );
        assert_eq!(r.samples, 12);
        // The same body as text 0.0.4: the OpenMetrics-only types are malformed, the
        // exemplars make their lines malformed, the `_created` lines are gauges.
        let (_, r) = parse(OPENMETRICS);
        assert_eq!(r.errors(ExpositionError::MalformedType), 4, "{r:?}");
        assert_eq!(r.errors(ExpositionError::MissingEof), 0, "{r:?}");
    }

    #[test]
    fn openmetrics_rules_are_enforced_and_counted() {
        // (body, samples, reason, count)
        let cases: &[(&str, u64, ExpositionError, u64)] = &[
            ("a 1\n", 1, ExpositionError::MissingEof, 1),
            ("", 0, ExpositionError::MissingEof, 1),
            ("a 1\n# EOF\nb 2\n", 1, ExpositionError::MalformedLine, 1),
            ("a 1\n# EOF\n\n", 1, ExpositionError::MalformedLine, 0),
            (
                "a 1 soon\n# EOF\n",
                0,
                ExpositionError::MalformedTimestamp,
                1,
            ),
            (
                "a 1 1e400\n# EOF\n",
                0,
                ExpositionError::MalformedTimestamp,
                1,
            ),
            (
                "a 1 NaN\n# EOF\n",
                0,
                ExpositionError::MalformedTimestamp,
                1,
            ),
            ("a 1 1 1\n# EOF\n", 0, ExpositionError::MalformedLine, 1),
            (
                "# TYPE a sparkline\na 1\n# EOF\n",
                1,
                ExpositionError::MalformedType,
                1,
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_created 5\n# EOF\n",
                0,
                ExpositionError::MalformedGroup,
                1,
            ),
            (
                "a{b=\"#\"} 3 # {x=\"y\"} 1\n# EOF\n",
                1,
                ExpositionError::MalformedLine,
                0,
            ),
        ];
        for (body, samples, reason, count) in cases {
            let (got, r) = parse_om(body);
            assert_eq!(r.samples, *samples, "{body:?}: {r:?}");
            assert_eq!(r.errors(*reason), *count, "{body:?}: {r:?}");
            assert_eq!(r.total_errors(), *count, "{body:?}: {r:?}");
            assert_eq!(got.len() as u64, *samples);
        }
        let (got, _) = parse_om("a{b=\"#\"} 3 # {x=\"y\"} 1\n# EOF\n");
        assert_eq!(got[0].labels, vec![("b".into(), "#".into())]);
        // Text 0.0.4 has no `# EOF` and no second-based timestamps.
        let (got, r) = parse("a 1 1700000000\n");
        assert_eq!((got[0].ts, r.total_errors()), (1_700_000_000, 0));
        let (_, r) = parse("a 1 1.5\n");
        assert_eq!(r.errors(ExpositionError::MalformedTimestamp), 1);
        let (got, _) = parse("# TYPE c counter\nc_total 1\nc_created 5\n");
        assert_eq!(
            got.len(),
            2,
            "a `_created` line is a gauge in 0.0.4: {got:?}"
        );
        assert_eq!((got[0].start, got[1].sample.as_str()), (0, "Gauge(5.0)"));
    }

    /// A histogram family of `n` finite buckets and `+Inf`, with a second, small
    /// series after it.
    fn histogram_body(n: usize, eof: bool) -> String {
        let mut b = String::from("# TYPE h histogram\n");
        for i in 0..n {
            b.push_str(&format!("h_bucket{{s=\"big\",le=\"{i}\"}} {i}\n"));
        }
        b.push_str(&format!("h_bucket{{s=\"big\",le=\"+Inf\"}} {n}\nh_count{{s=\"big\"}} {n}\nh_sum{{s=\"big\"}} 1\n"));
        b.push_str("h_bucket{s=\"small\",le=\"1\"} 1\nh_bucket{s=\"small\",le=\"+Inf\"} 1\nh_count{s=\"small\"} 1\n");
        if eof {
            b.push_str("# EOF\n");
        }
        b
    }

    #[test]
    fn histograms_past_the_bucket_cap_are_refused_as_too_many_buckets() {
        for (dialect, eof) in [(Dialect::Prometheus, false), (Dialect::OpenMetrics, true)] {
            let (got, r) = parse_as(&histogram_body(100_000, eof), dialect);
            assert_eq!(r.samples, 1, "{dialect:?}: {r:?}");
            assert_eq!(r.errors(ExpositionError::TooManyBuckets), 1, "{dialect:?}");
            assert_eq!(r.total_errors(), 1, "{dialect:?}: {r:?}");
            assert_eq!(got[0].labels, vec![("s".into(), "small".into())]);
            // At the cap: taken.
            let (got, r) = parse_as(&histogram_body(MAX_HISTOGRAM_BUCKETS, eof), dialect);
            assert_eq!((r.samples, r.total_errors()), (2, 0), "{dialect:?}: {r:?}");
            assert_eq!(got.len(), 2);
            let (_, r) = parse_as(&histogram_body(MAX_HISTOGRAM_BUCKETS + 1, eof), dialect);
            assert_eq!(
                (r.samples, r.errors(ExpositionError::TooManyBuckets)),
                (1, 1)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The allocation-free group match equals comparing the sorted label sets, with
        /// repeated names and pairs and the special label anywhere.
        #[test]
        fn a_line_joins_the_group_of_its_sorted_labels(
            group in proptest::collection::vec(("[abl]", "[xy]"), 0..4),
            line in proptest::collection::vec(("[abl]", "[xy]"), 0..5),
        ) {
            let special = "l";
            let mut sorted: Vec<(String, String)> = group;
            sorted.sort();
            let borrowed: Vec<(&str, Cow<'_, str>)> = line
                .iter()
                .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str())))
                .collect();
            let mut key: Vec<(String, String)> =
                line.iter().filter(|(k, _)| k != special).cloned().collect();
            key.sort();
            proptest::prop_assert_eq!(same_labels(&sorted, &borrowed, special), key == sorted);
        }
    }
}
