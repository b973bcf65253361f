//! Scrape body parser throughput (issue "Receivers", Prometheus scraper): text 0.0.4,
//! OpenMetrics and protobuf on one node_exporter-like body with the same content in
//! each format, in Prometheus samples/s (one per text sample line) and bytes/s, the
//! parse alone and parse + aggregation (series cached). Run with the `parse` bench.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use weir_core::parse::exposition::Format;
use weir_core::{Aggregator, AggregatorConfig};
use weir_proto::Message;
use weir_proto::client_model as pb;

/// One scrape body, as text and as protobuf, built together so both hold the same.
#[derive(Default)]
struct Bodies {
    text: String,
    families: Vec<pb::MetricFamily>,
    /// Prometheus samples (text sample lines).
    samples: u64,
    /// What the parsers emit: one per counter or gauge, one per histogram or summary.
    points: u64,
}

fn labels(pairs: &[(&str, String)]) -> Vec<pb::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| pb::LabelPair {
            name: Some((*k).to_owned()),
            value: Some(v.clone()),
        })
        .collect()
}

fn label_text(pairs: &[(&str, String)]) -> String {
    let l: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.join(",")
}

impl Bodies {
    fn family(&mut self, name: &str, kind: pb::MetricType, metric: Vec<pb::Metric>) {
        let t = match kind {
            pb::MetricType::Counter => "counter",
            pb::MetricType::Gauge => "gauge",
            pb::MetricType::Histogram => "histogram",
            _ => "summary",
        };
        self.text = std::mem::take(&mut self.text).replace(
            &format!("@{name}@"),
            &format!("# HELP {name} Help text.\n# TYPE {name} {t}\n"),
        );
        self.families.push(pb::MetricFamily {
            name: Some(name.to_owned()),
            help: Some("Help text.".into()),
            r#type: Some(kind as i32),
            metric,
        });
    }

    /// A counter or gauge family: `series` label sets from `label_set(k)`.
    fn numbers(
        &mut self,
        name: &str,
        kind: pb::MetricType,
        series: u32,
        label_set: impl Fn(u32) -> Vec<(&'static str, String)>,
    ) {
        self.text.push_str(&format!("@{name}@"));
        let mut metric = Vec::new();
        for k in 0..series {
            let l = label_set(k);
            let v = 1.2345678e9 + f64::from(k) * 4096.0;
            self.text
                .push_str(&format!("{name}{{{}}} {v}\n", label_text(&l)));
            let value = Some(v);
            metric.push(pb::Metric {
                label: labels(&l),
                counter: (kind == pb::MetricType::Counter).then(|| pb::Counter {
                    value,
                    ..Default::default()
                }),
                gauge: (kind == pb::MetricType::Gauge).then_some(pb::Gauge { value }),
                ..Default::default()
            });
            self.samples += 1;
            self.points += 1;
        }
        self.family(name, kind, metric);
    }
}

/// node_exporter-like: 128 CPU counters (2 labels), 128 network counters, 200
/// filesystem gauges (3 labels), 20 histograms of 11 buckets, 10 summaries of 5
/// quantiles. Returns `(text, openmetrics, protobuf, samples, points)`.
fn scrape_bodies() -> (String, String, Vec<u8>, u64, u64) {
    let mut b = Bodies::default();
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    b.numbers(
        "node_cpu_seconds_total",
        pb::MetricType::Counter,
        128,
        |k| {
            vec![
                ("cpu", (k / 8).to_string()),
                ("mode", modes[k as usize % 8].to_owned()),
            ]
        },
    );
    for dir in ["receive", "transmit"] {
        b.numbers(
            &format!("node_network_{dir}_bytes_total"),
            pb::MetricType::Counter,
            64,
            |k| vec![("device", format!("veth{k:04x}"))],
        );
    }
    b.numbers(
        "node_filesystem_avail_bytes",
        pb::MetricType::Gauge,
        200,
        |k| {
            vec![
                ("device", format!("/dev/mapper/vg-lv{k}")),
                ("fstype", "ext4".to_owned()),
                ("mountpoint", format!("/srv/data/{k}")),
            ]
        },
    );
    let name = "http_request_duration_seconds";
    b.text.push_str(&format!("@{name}@"));
    let bounds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let mut metric = Vec::new();
    for h in 0..20u64 {
        let l = [("handler", format!("/api/v1/items/{h}"))];
        let mut bucket = Vec::new();
        for (k, le) in bounds.iter().enumerate() {
            let c = (k as u64 + 1) * 100 + h;
            b.text.push_str(&format!(
                "{name}_bucket{{{},le=\"{le}\"}} {c}\n",
                label_text(&l)
            ));
            bucket.push(pb::Bucket {
                cumulative_count: Some(c),
                upper_bound: Some(*le),
                ..Default::default()
            });
        }
        let count = 1200 + h;
        b.text.push_str(&format!(
            "{name}_bucket{{{0},le=\"+Inf\"}} {count}\n{name}_sum{{{0}}} 345.5\n{name}_count{{{0}}} {count}\n",
            label_text(&l)
        ));
        b.samples += bounds.len() as u64 + 3;
        b.points += 1;
        metric.push(pb::Metric {
            label: labels(&l),
            histogram: Some(pb::Histogram {
                sample_count: Some(count),
                sample_sum: Some(345.5),
                bucket,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    b.family(name, pb::MetricType::Histogram, metric);
    let name = "rpc_duration_seconds";
    b.text.push_str(&format!("@{name}@"));
    let mut metric = Vec::new();
    for r in 0..10u64 {
        let l = [("method", format!("Service.Method{r}"))];
        let mut quantile = Vec::new();
        for q in [0.01, 0.25, 0.5, 0.9, 0.99] {
            b.text.push_str(&format!(
                "{name}{{{},quantile=\"{q}\"}} {}\n",
                label_text(&l),
                q * 2.0
            ));
            quantile.push(pb::Quantile {
                quantile: Some(q),
                value: Some(q * 2.0),
            });
        }
        b.text.push_str(&format!(
            "{name}_sum{{{0}}} 17.5\n{name}_count{{{0}}} {1}\n",
            label_text(&l),
            500 + r
        ));
        b.samples += 7;
        b.points += 1;
        metric.push(pb::Metric {
            label: labels(&l),
            summary: Some(pb::Summary {
                sample_count: Some(500 + r),
                sample_sum: Some(17.5),
                quantile,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    b.family(name, pb::MetricType::Summary, metric);
    let proto: Vec<u8> = b
        .families
        .iter()
        .flat_map(|f| f.encode_length_delimited_to_vec())
        .collect();
    // OpenMetrics declares counters without `_total` and ends with `# EOF`.
    let openmetrics = b
        .text
        .replace("_total counter\n", " counter\n")
        .replace("_total Help text.\n", " Help text.\n")
        + "# EOF\n";
    (b.text, openmetrics, proto, b.samples, b.points)
}

/// The `exposition` group: `{text,openmetrics,protobuf}_{parse_samples,
/// ingest_samples,parse_bytes}`.
pub fn exposition(c: &mut Criterion) {
    let (text, openmetrics, proto, samples, points) = scrape_bodies();
    let bodies: [(Format, &[u8]); 3] = [
        (Format::Text, text.as_bytes()),
        (Format::OpenMetrics, openmetrics.as_bytes()),
        (Format::Protobuf, &proto),
    ];
    let mut g = c.benchmark_group("exposition");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (format, body) in bodies {
        // Each body yields every point without a skipped line.
        let mut emitted = 0u64;
        let r = format.parse(body, &mut |_, _, _, _, _| emitted += 1);
        assert_eq!(r.total_errors(), 0, "{format:?}: {r:?}");
        assert_eq!(emitted, points, "{format:?}");
        g.throughput(Throughput::Elements(samples));
        g.bench_function(format!("{}_parse_samples", format.as_str()), |b| {
            b.iter(|| {
                let mut n = 0u64;
                format.parse(black_box(body), &mut |_, _, _, _, _| n += 1);
                n
            })
        });
        let agg = Aggregator::new(AggregatorConfig {
            series_ttl: Duration::ZERO,
            ..AggregatorConfig::default()
        });
        let mut w = agg.writer();
        g.bench_function(format!("{}_ingest_samples", format.as_str()), |b| {
            b.iter(|| {
                format.parse(black_box(body), &mut |n, l, s, ts, start| {
                    let _ = w.record_since(n, l, s, ts, start);
                })
            })
        });
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{}_parse_bytes", format.as_str()), |b| {
            b.iter(|| format.parse(black_box(body), &mut |_, _, _, _, _| {}))
        });
        eprintln!(
            "exposition {}: {} bytes, {samples} samples, {points} points, {} series",
            format.as_str(),
            body.len(),
            agg.stats().active_series
        );
    }
    g.finish();
}
