//! The Prometheus text exposition format (0.0.4) of a batch, as the exposition
//! endpoint serves it.
//!
//! Owns: [`prometheus_text`] and [`prometheus_page`]. Counters and histograms are
//! written as their running totals (cumulative, as Prometheus expects), gauges as
//! their last value, summaries as reported. Must never: emit a name or label
//! Prometheus would reject (keys were validated on the way in) or two `# TYPE` lines
//! for one name. Series marked `evicted` are left out: they are gone. `le` and
//! `quantile` values are spelled as remote write spells them (`0.1`, `1`, `1e+06`,
//! `+Inf`), so both name a bucket alike.

use std::fmt::Write as _;

use crate::Aggregator;
use crate::flush::{FlushBatch, FlushedSeries, FlushedValue};
use crate::key::SeriesKey;

/// Writes a float as the format spells it.
fn float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        super::float::positional(out, v);
    }
}

/// Writes `{k="v",...}` for `key`'s labels plus `extra` (appended last), escaping
/// values; nothing when there are no labels at all.
fn labels(out: &mut String, key: &SeriesKey, extra: Option<(&str, &str)>) {
    // Writing to a `String` cannot fail.
    let _ = crate::key::write_labels(out, key.labels().chain(extra));
}

fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    key: &SeriesKey,
    extra: Option<(&str, &str)>,
    v: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    labels(out, key, extra);
    out.push(' ');
    float(out, v);
    out.push('\n');
}

fn type_name(v: &FlushedValue) -> &'static str {
    match v {
        FlushedValue::Counter { .. } => "counter",
        FlushedValue::Gauge { .. } => "gauge",
        FlushedValue::Histogram { .. } => "histogram",
        FlushedValue::Summary(_) => "summary",
    }
}

/// The batch in the Prometheus text format, series grouped by metric name (one
/// `# TYPE` line each) and sorted by key ([`SeriesKey::cmp_by_name`]).
///
/// ```
/// use weir_core::{Aggregator, Sample, Temporality};
/// let agg = Aggregator::default();
/// agg.record("jobs_total", &[("queue", "mail")], Sample::Counter(3.0, Temporality::Delta), 0).unwrap();
/// let text = weir_core::encode::prometheus_text(&agg.flush());
/// assert_eq!(text, "# TYPE jobs_total counter\njobs_total{queue=\"mail\"} 3\n");
/// ```
pub fn prometheus_text(batch: &FlushBatch) -> String {
    let live = batch.live();
    // A batch is bounded by `max_series`, far below 2^32: 4 bytes per series.
    let mut order: Vec<u32> = (0..live.len() as u32).collect();
    // Unstable (no scratch buffer): live entries have distinct keys, so no ties.
    order.sort_unstable_by(|&a, &b| live[a as usize].key.cmp_by_name(&live[b as usize].key));
    let mut page = PageWriter::with_capacity(live.len());
    for i in order {
        page.series(&live[i as usize]);
    }
    page.out
}

/// The current values of `aggregator`'s series in the Prometheus text format, as
/// [`prometheus_text`] renders a [`peek`](Aggregator::peek) (counters and
/// histograms as running totals), and the sequence of the last flush before it
/// (see [`Aggregator::peek_in_order`]). Renders the series chunk by chunk in page
/// order, so that besides the text it holds 8 bytes per series rather than a whole
/// peeked batch (40 bytes per series, 40 MB at 1M series).
///
/// ```
/// use weir_core::{Aggregator, MetricKind};
/// let agg = Aggregator::default();
/// agg.handle("jobs_total", &[], MetricKind::Counter).unwrap().increment(3).unwrap();
/// let (sequence, text) = weir_core::encode::prometheus_page(&agg);
/// assert_eq!((sequence, text.as_str()), (0, "# TYPE jobs_total counter\njobs_total 3\n"));
/// ```
pub fn prometheus_page(aggregator: &Aggregator) -> (u64, String) {
    /// Entries peeked per hold of the flush lock.
    const CHUNK: usize = 4096;
    let mut page = PageWriter::with_capacity(aggregator.stats().active_series);
    let sequence = aggregator.peek_in_order(CHUNK, |chunk| {
        for s in chunk.live() {
            page.series(s);
        }
    });
    (sequence, page.out)
}

/// A page being written: series come in page order, and a run of one name gets one
/// `# TYPE` line.
struct PageWriter {
    out: String,
    /// The name of the last `# TYPE` line.
    family: String,
}

impl PageWriter {
    fn with_capacity(series: usize) -> PageWriter {
        PageWriter {
            out: String::with_capacity(series.saturating_mul(64)),
            family: String::new(),
        }
    }

    fn series(&mut self, s: &FlushedSeries) {
        let out = &mut self.out;
        let name = s.key.name();
        if self.family != name {
            let _ = writeln!(out, "# TYPE {name} {}", type_name(&s.value));
            self.family.clear();
            self.family.push_str(name);
        }
        match &s.value {
            FlushedValue::Counter { total, .. } => line(out, name, "", &s.key, None, *total),
            FlushedValue::Gauge { value, .. } => line(out, name, "", &s.key, None, *value),
            FlushedValue::Histogram { total, .. } => {
                let mut cumulative = 0u64;
                let mut le = String::new();
                for (i, c) in total.counts.iter().enumerate() {
                    cumulative += c;
                    le.clear();
                    super::float::prometheus(
                        &mut le,
                        total.bounds.get(i).copied().unwrap_or(f64::INFINITY),
                    );
                    line(
                        out,
                        name,
                        "_bucket",
                        &s.key,
                        Some(("le", &le)),
                        cumulative as f64,
                    );
                }
                line(out, name, "_sum", &s.key, None, total.sum);
                line(out, name, "_count", &s.key, None, total.count as f64);
            }
            FlushedValue::Summary(sv) => {
                let mut q = String::new();
                for quantile in &sv.quantiles {
                    q.clear();
                    super::float::prometheus(&mut q, quantile.quantile);
                    line(
                        out,
                        name,
                        "",
                        &s.key,
                        Some(("quantile", &q)),
                        quantile.value,
                    );
                }
                line(out, name, "_sum", &s.key, None, sv.sum);
                line(out, name, "_count", &s.key, None, sv.count as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::exposition::parse_text;
    use crate::point::{Sample, Temporality};
    use crate::{Aggregator, AggregatorConfig};

    #[test]
    fn every_kind_is_written_and_parses_back() {
        let agg = Aggregator::new(AggregatorConfig {
            histogram_bounds: vec![0.1, 1.0].into(),
            ..Default::default()
        });
        let mut w = agg.writer();
        w.record(
            "req_total",
            &[("path", "/a\"b\\c\n")],
            Sample::Counter(2.0, Temporality::Delta),
            0,
        )
        .unwrap();
        w.record(
            "req_total",
            &[("path", "/x")],
            Sample::Counter(1.0, Temporality::Delta),
            0,
        )
        .unwrap();
        w.record("temp", &[], Sample::Gauge(f64::NAN), 0).unwrap();
        for v in [0.05, 0.5, 5.0] {
            w.record("lat", &[], Sample::Observe { value: v, count: 1 }, 0)
                .unwrap();
        }
        agg.flush();
        w.record(
            "req_total",
            &[("path", "/x")],
            Sample::Counter(1.0, Temporality::Delta),
            0,
        )
        .unwrap();
        let text = prometheus_text(&agg.flush());
        assert_eq!(
            text,
            "# TYPE lat histogram\n\
             lat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"1\"} 2\nlat_bucket{le=\"+Inf\"} 3\n\
             lat_sum 5.55\nlat_count 3\n\
             # TYPE req_total counter\n\
             req_total{path=\"/a\\\"b\\\\c\\n\"} 2\nreq_total{path=\"/x\"} 2\n\
             # TYPE temp gauge\ntemp NaN\n"
        );
        // An aggregator's page is the text of a peek at it.
        w.record(
            "req_total",
            &[],
            Sample::Counter(1.0, Temporality::Delta),
            0,
        )
        .unwrap();
        w.record("req", &[], Sample::Gauge(1.0), 0).unwrap();
        let (sequence, page) = prometheus_page(&agg);
        assert_eq!(sequence, 2);
        assert_eq!(page, prometheus_text(&agg.peek()));
        assert!(page.contains("# TYPE req gauge\nreq 1\n# TYPE req_total counter\nreq_total 1\n"));
        // What weir writes, weir (and so Prometheus) reads.
        let mut n = 0;
        let r = parse_text(text.as_bytes(), &mut |_, _, _, _, _| n += 1);
        assert_eq!(r.errors.iter().sum::<u64>(), 0);
        assert_eq!(n, 4);
    }
}
