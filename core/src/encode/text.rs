//! The Prometheus text exposition format (0.0.4) of a batch, as the exposition
//! endpoint serves it.
//!
//! Owns: [`prometheus_text`]. Counters and histograms are written as their running totals
//! (cumulative, as Prometheus expects), gauges as their last value, summaries as
//! reported. Must never: emit a name or label Prometheus would reject (keys were
//! validated on the way in) or two `# TYPE` lines for one name. Series marked
//! `evicted` are left out: they are gone. `le` and `quantile` values are spelled as
//! remote write spells them (`0.1`, `1`, `1e+06`, `+Inf`), so both name a bucket alike.

use std::fmt::Write as _;

use crate::flush::{FlushBatch, FlushedValue};
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
/// `# TYPE` line each) and sorted by key.
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
    // The order as (entry index, name length): each name found once, not twice per
    // comparison (the sort makes ~20 comparisons per series, and finding a name scans
    // the key's bytes), in 8 bytes per series where a (name, entry) pair took 24: 16 MB
    // less while a page of 1M series is encoded.
    let mut order: Vec<(u32, u32)> = Vec::with_capacity(live.len());
    for (i, s) in live.iter().enumerate() {
        // A batch is bounded by `max_series` and a key by its receiver's input, both
        // far below 2^32.
        order.push((i as u32, s.key.name().len() as u32));
    }
    let name_of = |&(i, len): &(u32, u32)| (&live[i as usize].key, len as usize);
    // Unstable (no scratch buffer): live entries have distinct keys, so no ties.
    order.sort_unstable_by(|a, b| {
        let ((ka, la), (kb, lb)) = (name_of(a), name_of(b));
        ka.as_bytes()[..la]
            .cmp(&kb.as_bytes()[..lb])
            .then_with(|| ka.cmp(kb))
    });
    let mut out = String::with_capacity(live.len() * 64);
    let mut current: Option<&str> = None;
    for (i, _) in order {
        let s = &live[i as usize];
        let name = s.key.name();
        if current != Some(name) {
            let _ = writeln!(out, "# TYPE {name} {}", type_name(&s.value));
            current = Some(name);
        }
        match &s.value {
            FlushedValue::Counter { total, .. } => line(&mut out, name, "", &s.key, None, *total),
            FlushedValue::Gauge { value, .. } => line(&mut out, name, "", &s.key, None, *value),
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
                        &mut out,
                        name,
                        "_bucket",
                        &s.key,
                        Some(("le", &le)),
                        cumulative as f64,
                    );
                }
                line(&mut out, name, "_sum", &s.key, None, total.sum);
                line(&mut out, name, "_count", &s.key, None, total.count as f64);
            }
            FlushedValue::Summary(sv) => {
                let mut q = String::new();
                for quantile in &sv.quantiles {
                    q.clear();
                    super::float::prometheus(&mut q, quantile.quantile);
                    line(
                        &mut out,
                        name,
                        "",
                        &s.key,
                        Some(("quantile", &q)),
                        quantile.value,
                    );
                }
                line(&mut out, name, "_sum", &s.key, None, sv.sum);
                line(&mut out, name, "_count", &s.key, None, sv.count as f64);
            }
        }
    }
    out
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
        // What weir writes, weir (and so Prometheus) reads.
        let mut n = 0;
        let r = parse_text(text.as_bytes(), &mut |_, _, _, _, _| n += 1);
        assert_eq!(r.errors.iter().sum::<u64>(), 0);
        assert_eq!(n, 4);
    }
}
