//! A scrape body into the aggregator: every sample with its target's labels merged
//! in, found by the bytes its line spells.
//!
//! Owns: a target's labels and Prometheus' rule for merging them into scraped ones
//! ([`TargetLabels`]), and the recording of a parsed body ([`parse_into`]). Must
//! never: allocate per sample once a target's series are known, or let one identity
//! (below) stand for two label sets.
//!
//! # The steady state is one comparison per sample
//! A target serves the same lines scrape after scrape; only the values change. So each
//! text sample line, and each protobuf counter, gauge or untyped sample, is checked
//! against the series its target's [`Writer`] expects next in the body
//! ([`Writer::begin_sequence`]), by its name and label set as the body spells them
//! ([`Format::parse_identified`]): a hit applies the value without merging the
//! target's labels, sorting or encoding anything. Only a miss merges the labels into a
//! reused buffer and goes through the shared index, and the writer remembers the
//! series at that place in the body.
//!
//! That is sound because the merged label set follows from the identity and the
//! target's labels alone, and each target has its own writer for as long as its labels
//! stay the same (a target whose labels change is a new target with a new writer, see
//! `Scraper::reconcile`). The series the scraper records itself (`up`, ...) and
//! histograms and summaries, which have no identity of their own, go through the
//! writer's table under the aggregator's raw label encoding.

use weir_core::Writer;
use weir_core::key::LabelBuf;
use weir_core::parse::exposition::{Format, ParseReport};

/// A target's labels (`job`, `instance`, its extra labels) and whether scraped labels
/// win a clash (`honor_labels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TargetLabels {
    /// Sorted by name, names distinct.
    labels: Vec<(String, String)>,
    /// `exported_<name>` for each of `labels`, in the same order: what a clashing
    /// scraped label is renamed to without `honor_labels`.
    exported: Vec<String>,
    honor: bool,
}

impl TargetLabels {
    /// `labels` sorted by name with distinct names; `honor` is the target's
    /// `honor_labels`.
    pub(super) fn new(labels: Vec<(String, String)>, honor: bool) -> TargetLabels {
        let exported = labels
            .iter()
            .map(|(k, _)| format!("exported_{k}"))
            .collect();
        TargetLabels {
            labels,
            exported,
            honor,
        }
    }

    /// The target's labels as pairs, for the series the scraper records itself.
    pub(super) fn pairs(&self) -> Vec<(&str, &str)> {
        self.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Appends the label set of a sample scraped with `scraped` to `out`, by
    /// Prometheus' rule: with `honor_labels` the scraped value wins a clash; without,
    /// the target's does and the scraped one is kept as `exported_<name>`. Target
    /// labels come after the scraped ones. Allocates nothing beyond `out`'s growth.
    pub(super) fn merge<'a>(
        &'a self,
        scraped: &[(&'a str, &'a str)],
        out: &mut Vec<(&'a str, &'a str)>,
    ) {
        for &(k, v) in scraped {
            match self.labels.iter().position(|(tk, _)| tk == k) {
                Some(i) if !self.honor => out.push((self.exported[i].as_str(), v)),
                _ => out.push((k, v)),
            }
        }
        for (k, v) in &self.labels {
            if !out.iter().any(|(ok, _)| *ok == k) {
                out.push((k.as_str(), v.as_str()));
            }
        }
    }
}

/// Parses a body in `format` into `writer` (the target's own, see the module doc) with
/// the target's labels applied. Refusals are counted by the aggregator by reason.
/// Blocking (CPU-bound): called on the blocking pool.
pub(super) fn parse_into(
    writer: &mut Writer,
    target: &TargetLabels,
    format: Format,
    body: &[u8],
) -> ParseReport {
    let mut merged = LabelBuf::default();
    writer.begin_sequence();
    // The start time (OpenMetrics `_created`, protobuf `created_timestamp`) lets a
    // counter that started after weir count its first value, and tells a restart by a
    // new start.
    let report = format.parse_identified(body, &mut |ident, name, labels, sample, ts, start| {
        let Some(ident) = ident else {
            merged.with(|m| {
                target.merge(labels, m);
                let _ = writer.record_since(name, m, sample, ts, start);
            });
            return;
        };
        if !matches!(
            writer.record_sequenced_since(ident, sample, ts, start),
            Ok(false)
        ) {
            return; // applied, or refused (counted)
        }
        merged.with(|m| {
            target.merge(labels, m);
            let _ = writer.record_sequenced_new_since(ident, name, m, sample, ts, start);
        });
    });
    writer.end_sequence();
    report
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use weir_core::{Aggregator, AggregatorConfig, FlushedValue};

    use super::*;

    /// The merge as it was before it borrowed: owned strings per label, `exported_`
    /// formatted per clash. The model the borrowing merge is checked against.
    fn merge_owned(
        target: &[(String, String)],
        scraped: &[(&str, &str)],
        honor: bool,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in scraped {
            let clash = target.iter().any(|(tk, _)| tk == k);
            if clash && !honor {
                out.push((format!("exported_{k}"), (*v).to_owned()));
            } else {
                out.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        for (k, v) in target {
            if !out.iter().any(|(ok, _)| ok == k) {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn clashing_labels_follow_honor_labels() {
        let target = owned(&[("instance", "h:1"), ("job", "node")]);
        let scraped = [("job", "app"), ("path", "/")];
        for (honor, want) in [
            (
                false,
                vec![
                    ("exported_job", "app"),
                    ("instance", "h:1"),
                    ("job", "node"),
                    ("path", "/"),
                ],
            ),
            (
                true,
                vec![("instance", "h:1"), ("job", "app"), ("path", "/")],
            ),
        ] {
            let t = TargetLabels::new(target.clone(), honor);
            let mut out = Vec::new();
            t.merge(&scraped, &mut out);
            out.sort();
            assert_eq!(out, want, "honor_labels = {honor}");
        }
    }

    /// Label names from a small alphabet, so that clashes (with the target, with an
    /// `exported_` name, within the scraped set) are common.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("job".to_owned()),
            Just("instance".to_owned()),
            Just("exported_job".to_owned()),
            Just("env".to_owned()),
            "[a-c]{1,2}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The borrowing merge gives the owned merge's labels, in its order.
        #[test]
        fn the_borrowing_merge_equals_the_owned_merge(
            target in proptest::collection::btree_map(name(), "[a-z0-9:]{0,4}", 0..4),
            scraped in proptest::collection::vec((name(), "[a-z0-9]{0,3}"), 0..6),
            honor in any::<bool>(),
        ) {
            let target: Vec<(String, String)> = target.into_iter().collect();
            let scraped: Vec<(&str, &str)> =
                scraped.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let t = TargetLabels::new(target.clone(), honor);
            let mut buf = LabelBuf::default();
            let got = buf.with(|out| {
                t.merge(&scraped, out);
                owned(out)
            });
            prop_assert_eq!(got, merge_owned(&target, &scraped, honor));
        }
    }

    fn totals(agg: &Aggregator) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = agg
            .peek()
            .series
            .iter()
            .map(|s| {
                let value = match &s.value {
                    FlushedValue::Counter { total, .. } => *total,
                    FlushedValue::Gauge { value, .. } => *value,
                    other => panic!("{other:?}"),
                };
                (s.key.to_string(), value)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A protobuf body: a counter `pc_total{job, a}` (its `job` clashes with the
    /// target's), a gauge `pg{p}` with a label given twice, an untyped `pu`, all at `v`.
    fn protobuf_body(v: f64) -> Vec<u8> {
        use weir_proto::Message;
        use weir_proto::client_model::{
            Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Untyped,
        };
        let pair = |k: &str, val: &str| LabelPair {
            name: Some(k.into()),
            value: Some(val.into()),
        };
        let fam = |name: &str, t: MetricType, metric: Metric| MetricFamily {
            name: Some(name.into()),
            help: None,
            r#type: Some(t as i32),
            metric: vec![metric],
        };
        [
            fam(
                "pc_total",
                MetricType::Counter,
                Metric {
                    label: vec![pair("job", "x"), pair("a", "1")],
                    counter: Some(Counter {
                        value: Some(v),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            fam(
                "pg",
                MetricType::Gauge,
                Metric {
                    label: vec![pair("p", "q\"r"), pair("p", "s")],
                    gauge: Some(Gauge { value: Some(v) }),
                    ..Default::default()
                },
            ),
            fam(
                "pu",
                MetricType::Untyped,
                Metric {
                    untyped: Some(Untyped { value: Some(v) }),
                    ..Default::default()
                },
            ),
        ]
        .iter()
        .flat_map(|f| f.encode_length_delimited_to_vec())
        .collect()
    }

    /// Each body recorded by the identity path, beside the same body recorded through
    /// `record_since` with the owned merge: the series and values must agree after
    /// every body, whatever the label order, escapes, clashes and format.
    #[test]
    fn lines_found_by_their_bytes_land_where_their_labels_do() {
        let bodies: [(Format, Vec<u8>); 7] = [
            (Format::Text, b"# TYPE c counter\nc_total{a=\"1\",job=\"x\"} 1\nc_total{job=\"x\",a=\"1\"} 2\ng{p=\"q\\\"r\"} 3\ng 4\nup 1\n".to_vec()),
            (Format::Text, b"# TYPE c counter\nc_total{a=\"1\",job=\"x\"} 5\nc_total{job=\"x\",a=\"1\"} 6\ng{p=\"q\\\"r\"} 7\ng 8\nup 0\n".to_vec()),
            // A line gone, one new, two swapped: the sequence is rewritten.
            (Format::Text, b"g 9\n# TYPE c counter\nc_total{job=\"x\",a=\"1\"} 10\nc_total{a=\"1\",job=\"x\"} 11\nup 1\n".to_vec()),
            (Format::Text, b"g 12\n# TYPE c counter\nc_total{job=\"x\",a=\"1\"} 13\nc_total{a=\"1\",job=\"x\"} 14\nup 1\n".to_vec()),
            (Format::OpenMetrics, b"# TYPE c counter\nc_total{a=\"1\",job=\"x\"} 9\n# EOF\n".to_vec()),
            (Format::Protobuf, protobuf_body(10.0)),
            (Format::Protobuf, protobuf_body(11.0)),
        ];
        for honor in [false, true] {
            let target = owned(&[("instance", "h:1"), ("job", "node")]);
            let t = TargetLabels::new(target.clone(), honor);
            let new = Aggregator::new(AggregatorConfig::default());
            let old = Aggregator::new(AggregatorConfig::default());
            let (mut wn, mut wo) = (new.writer(), old.writer());
            let mut misses = 0;
            for (i, (format, body)) in bodies.iter().enumerate() {
                let r = parse_into(&mut wn, &t, *format, body);
                format.parse(body, &mut |name, labels, sample, ts, start| {
                    let m = merge_owned(&target, labels, honor);
                    let m: Vec<(&str, &str)> =
                        m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let _ = wo.record_since(name, &m, sample, ts, start);
                });
                assert_eq!(totals(&new), totals(&old), "body {i}, honor {honor}");
                assert!(r.samples > 0);
                if i == 3 {
                    // The same lines as body 2, in its order: found without a miss.
                    assert_eq!(wn.cache_misses(), misses, "honor {honor}");
                }
                misses = wn.cache_misses();
            }
            assert!(wn.cached() > 0);
        }
    }
}
