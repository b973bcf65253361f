//! Properties of the StatsD decoder on arbitrary input (the CI stand-in for the
//! `statsd` fuzz target, with its check, `weir_core::testing::fuzz::check_statsd`):
//! never a panic, every line accounted for exactly once, every value of a parsed line
//! taken or refused exactly once, and well-formed lines round-trip.

use proptest::prelude::*;
use weir_core::parse::statsd::{Decoder, StatsdType, Value, parse_line};
use weir_core::testing::fuzz::check_statsd;
use weir_core::{Aggregator, AggregatorConfig, FlushBatch, FlushedValue, SeriesKey};

/// Applies `datagrams` through one decoder (batching lines from the first if
/// `batched`) and one writer (whose cache holds `cache`
/// label sets) and flushes at a fixed time, for comparisons.
fn apply(datagrams: &[Vec<u8>], cache: usize, batched: bool) -> FlushBatch {
    let config = AggregatorConfig {
        writer_cache_capacity: cache,
        ..AggregatorConfig::default()
    };
    let agg = Aggregator::starting_at(config, 1_000);
    let mut w = agg.writer();
    let mut d = if batched {
        Decoder::default().batching_from(0)
    } else {
        Decoder::default()
    };
    for g in datagrams {
        d.ingest(g, &mut w);
    }
    let mut batch = agg.flush_at(2_000);
    batch.series.sort_by(|a, b| a.key.cmp(&b.key));
    batch
}

/// One line per `(series, type, sign, value)`: `m<type>:<value>|<type>|#s:<series>`,
/// the sign kept for gauges only (an adjustment).
fn line_texts(lines: &[(usize, &str, &str, u32)]) -> Vec<String> {
    lines
        .iter()
        .map(|(series, kind, sign, v)| {
            let sign = if *kind == "g" { *sign } else { "" };
            format!("m{kind}:{sign}{v}|{kind}|#s:{series}")
        })
        .collect()
}

/// A flush's keys and values (start times come from the wall clock), for comparisons.
fn view(b: &FlushBatch) -> Vec<(SeriesKey, FlushedValue)> {
    b.series
        .iter()
        .map(|s| (s.key.clone(), s.value.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_line_is_applied_or_counted_once(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_statsd(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn statsd_looking_text_never_panics(
        text in "([a-z.]{0,6}(:[-+0-9.e]{0,4}){0,3}(\\|(c|g|ms|h|d|s|@[0-9.]{0,3}|#[a-z:,]{0,8}|T[0-9]{0,3}|c:[a-z]{0,3}|x)){0,4}\n?){0,6}"
    ) {
        check_statsd(text.as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn well_formed_lines_round_trip(
        name in "[a-z][a-z0-9._-]{0,10}",
        values in proptest::collection::vec(0u32..100_000, 1..4),
        kind in prop_oneof![Just("c"), Just("g"), Just("ms"), Just("h"), Just("d")],
        rate in prop_oneof![Just(None), Just(Some(0.5)), Just(Some(0.1))],
        tags in proptest::collection::vec(("[a-z]{1,5}", "[a-z0-9/]{0,5}"), 0..3),
    ) {
        let mut line = format!("{name}:{}|{kind}", values.iter().map(u32::to_string).collect::<Vec<_>>().join(":"));
        if let Some(r) = rate {
            line.push_str(&format!("|@{r}"));
        }
        if !tags.is_empty() {
            let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            line.push_str(&format!("|#{}", t.join(",")));
        }
        let l = parse_line(line.as_bytes()).unwrap();
        prop_assert_eq!(l.name, name.as_str());
        prop_assert_eq!(l.sample_rate, rate.unwrap_or(1.0));
        let want_kind = match kind {
            "c" => StatsdType::Counter,
            "g" => StatsdType::Gauge,
            "ms" => StatsdType::Timer,
            "h" => StatsdType::Histogram,
            _ => StatsdType::Distribution,
        };
        prop_assert_eq!(l.kind, want_kind);
        let got: Vec<Value> = l.values().collect();
        let want: Vec<Value> = values.iter().map(|v| Value::Number(f64::from(*v))).collect();
        prop_assert_eq!(got, want);
    }

    /// The decoder applies a datagram's lines in batches (parse and prefetch ahead,
    /// then apply): the result must be that of applying the lines one by one, in
    /// order (a gauge keeps the last value; adjustments and sets land on the state
    /// the earlier lines left), with a writer cache that holds everything or almost
    /// nothing (misses and inserts in the middle of a batch).
    #[test]
    fn a_datagram_aggregates_like_its_lines_one_at_a_time(
        lines in proptest::collection::vec(
            (0usize..5, prop_oneof![Just("c"), Just("g"), Just("s"), Just("ms")], prop_oneof![Just(""), Just("+"), Just("-")], 0u32..100),
            1..80,
        ),
        cache in prop_oneof![Just(1usize), Just(2), Just(1_000)],
    ) {
        let text = line_texts(&lines);
        let whole = apply(&[text.join("\n").into_bytes()], cache, true);
        let single: Vec<Vec<u8>> = text.iter().map(|l| l.clone().into_bytes()).collect();
        let one_by_one = apply(&single, cache, false);
        prop_assert_eq!(view(&whole), view(&one_by_one));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Batches of datagrams applied by several threads at once: each applies all but
    /// the gauge lines of its batch whenever it gets to them (here in reverse batch
    /// order, each with a writer of its own), and the gauge lines in batch order. The
    /// result is that of one thread applying every line in order: counters,
    /// histograms and sets do not depend on the order (integer values keep the sums
    /// exact), and gauges, sets and adjustments alike, keep theirs.
    #[test]
    fn batches_applied_out_of_order_with_gauges_in_order_aggregate_like_one_thread(
        lines in proptest::collection::vec(
            (
                0usize..4,
                prop_oneof![Just("c"), Just("g"), Just("s"), Just("h")],
                prop_oneof![Just(""), Just("+"), Just("-")],
                0u32..100,
            ),
            1..120,
        ),
        per_datagram in 1usize..10,
        per_batch in 1usize..5,
        batched in any::<bool>(),
    ) {
        let text = line_texts(&lines);
        let datagrams: Vec<Vec<u8>> =
            text.chunks(per_datagram).map(|c| c.join("\n").into_bytes()).collect();
        let agg = Aggregator::starting_at(AggregatorConfig::default(), 1_000);
        let decoder = || {
            if batched {
                Decoder::default().batching_from(0)
            } else {
                Decoder::default()
            }
        };
        let mut gauges: Vec<Vec<u8>> = Vec::new();
        let mut lines_applied = 0;
        for batch in datagrams.chunks(per_batch).rev() {
            let (mut w, mut d, mut g) = (agg.writer(), decoder(), Vec::new());
            for datagram in batch {
                lines_applied += d.ingest_except_gauges(datagram, &mut w, &mut g).lines;
            }
            gauges.push(g);
        }
        for g in gauges.iter().rev() {
            lines_applied += decoder().ingest(g, &mut agg.writer()).lines;
        }
        prop_assert_eq!(lines_applied, lines.len() as u64);
        let mut shared = agg.flush_at(2_000);
        shared.series.sort_by(|a, b| a.key.cmp(&b.key));
        let single: Vec<Vec<u8>> = text.iter().map(|l| l.clone().into_bytes()).collect();
        let one_by_one = apply(&single, 1_000, false);
        prop_assert_eq!(view(&shared), view(&one_by_one));
    }
}
