//! A counter or histogram evicted by `series_ttl` keeps its running total and start
//! time for its return, so cumulative outputs never go back to a value a backend has
//! already seen.

use std::sync::Arc;
use std::time::Duration;

use weir_core::point::HistogramValue;
use weir_core::{
    Aggregator, AggregatorConfig, FlushBatch, FlushedSeries, FlushedValue, Sample, SeriesKey,
    Temporality,
};

const TTL_MS: i64 = 1_000;
/// Far ahead of the wall clock, so series start times follow the test's clock.
const T0: i64 = 4_000_000_000_000;

fn agg(kept_totals_capacity: usize) -> Aggregator {
    let config = AggregatorConfig {
        series_ttl: Duration::from_millis(TTL_MS as u64),
        kept_totals_capacity,
        ..Default::default()
    };
    Aggregator::starting_at(config, T0)
}

fn live<'a>(b: &'a FlushBatch, name: &str) -> Option<&'a FlushedSeries> {
    let key = SeriesKey::new(name, &[]).unwrap();
    b.live().iter().find(|s| s.key == key)
}

fn counter(s: &FlushedSeries) -> (f64, f64) {
    match s.value {
        FlushedValue::Counter { delta, total } => (delta, total),
        ref v => panic!("{v:?}"),
    }
}

/// One increment, then silence long enough to be evicted, three times over.
#[test]
fn sparse_counter_keeps_its_total_across_ttl() {
    let agg = agg(100);
    let mut w = agg.writer();
    let mut t = T0;
    let mut start = None;
    for n in 1..=3 {
        w.record(
            "jobs_total",
            &[],
            Sample::Counter(1.0, Temporality::Delta),
            0,
        )
        .unwrap();
        t += 10;
        let b = agg.flush_at(t);
        let s = live(&b, "jobs_total").expect("the series is back");
        assert_eq!(counter(s), (1.0, n as f64), "increment {n}");
        assert_eq!(*start.get_or_insert(s.start_ms), s.start_ms, "same start");
        // Idle past the TTL: evicted with its final entry, total kept.
        t += 2 * TTL_MS;
        let b = agg.flush_at(t);
        assert_eq!(b.evicted, b.series.len());
        assert_eq!(agg.stats().active_series, 0);
        assert_eq!(agg.stats().kept_totals, 1);
    }
    assert_eq!(agg.stats().kept_totals_dropped, 0);
}

#[test]
fn a_scraped_counter_that_comes_back_counts_only_its_increase() {
    let agg = agg(100);
    let mut w = agg.writer();
    let cum = |v| Sample::Counter(v, Temporality::Cumulative);
    w.record("c_total", &[], cum(100.0), 0).unwrap();
    let b = agg.flush_at(T0 + 10);
    assert_eq!(counter(live(&b, "c_total").unwrap()), (0.0, 100.0));
    agg.flush_at(T0 + 10 + 2 * TTL_MS); // evicted
    w.record("c_total", &[], cum(105.0), 0).unwrap();
    let b = agg.flush_at(T0 + 20 + 2 * TTL_MS);
    assert_eq!(counter(live(&b, "c_total").unwrap()), (5.0, 105.0));
}

#[test]
fn sparse_histogram_keeps_its_total_across_ttl() {
    let agg = agg(100);
    let mut w = agg.writer();
    let mut t = T0;
    for n in 1..=3u64 {
        w.record(
            "lat",
            &[],
            Sample::Observe {
                value: 0.2,
                count: 1,
            },
            0,
        )
        .unwrap();
        t += 10;
        let b = agg.flush_at(t);
        let FlushedValue::Histogram { delta, total } = &live(&b, "lat").unwrap().value else {
            panic!()
        };
        assert_eq!((delta.count, total.count), (1, n));
        t += 2 * TTL_MS;
        agg.flush_at(t);
    }
    // And a cumulative one comes back as a difference, not a second baseline.
    let bounds: Arc<[f64]> = Arc::from(vec![1.0]);
    let h = |count| HistogramValue {
        bounds: bounds.clone(),
        counts: vec![count, 0],
        sum: count as f64,
        count,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };
    let v = h(10);
    w.record("h", &[], Sample::Histogram(&v, Temporality::Cumulative), 0)
        .unwrap();
    t += 10;
    agg.flush_at(t);
    t += 2 * TTL_MS;
    agg.flush_at(t);
    let v = h(12);
    w.record("h", &[], Sample::Histogram(&v, Temporality::Cumulative), 0)
        .unwrap();
    let b = agg.flush_at(t + 10);
    let FlushedValue::Histogram { delta, total } = &live(&b, "h").unwrap().value else {
        panic!()
    };
    assert_eq!((delta.count, total.count), (2, 12));
}

#[test]
fn a_full_table_drops_its_oldest_total_counts_it_and_the_series_restarts_later() {
    let agg = agg(1);
    let mut w = agg.writer();
    let one = Sample::Counter(1.0, Temporality::Delta);
    w.record("a_total", &[], one, 0).unwrap();
    let first = agg.flush_at(T0 + 10);
    let a_start = live(&first, "a_total").unwrap().start_ms;
    agg.flush_at(T0 + 10 + 2 * TTL_MS); // a evicted and kept
    w.record("b_total", &[], one, 0).unwrap();
    agg.flush_at(T0 + 20 + 2 * TTL_MS);
    agg.flush_at(T0 + 20 + 4 * TTL_MS); // b evicted: a's total dropped
    let stats = agg.stats();
    assert_eq!((stats.kept_totals, stats.kept_totals_dropped), (1, 1));
    w.record("a_total", &[], one, 0).unwrap();
    let b = agg.flush_at(T0 + 30 + 4 * TTL_MS);
    let a = live(&b, "a_total").unwrap();
    assert_eq!(counter(a), (1.0, 1.0), "restarted at 0");
    assert!(
        a.start_ms > a_start,
        "with a new start time, so OTLP cumulative shows the reset"
    );
}

#[test]
fn kept_totals_expire_after_their_ttl() {
    let config = AggregatorConfig {
        series_ttl: Duration::from_millis(TTL_MS as u64),
        kept_totals_ttl: Duration::from_millis(5 * TTL_MS as u64),
        ..Default::default()
    };
    let agg = Aggregator::starting_at(config, T0);
    let mut w = agg.writer();
    w.record("a_total", &[], Sample::Counter(1.0, Temporality::Delta), 0)
        .unwrap();
    agg.flush_at(T0 + 10);
    agg.flush_at(T0 + 10 + 2 * TTL_MS);
    assert_eq!(agg.stats().kept_totals, 1);
    agg.flush_at(T0 + 10 + 8 * TTL_MS);
    assert_eq!(agg.stats().kept_totals, 0);
    assert_eq!(agg.stats().kept_totals_dropped, 0, "expiry is not a drop");
}

/// Writers keep incrementing sparse counters while the flusher evicts them at every
/// flush (a TTL of one flush): every increment shows up once in the deltas, and each
/// series' running total never goes down.
#[test]
fn evictions_racing_updates_lose_nothing_and_totals_never_go_back() {
    const THREADS: usize = 2;
    const ROUNDS: usize = 2_000;
    const SERIES: usize = 8;
    // The flusher's clock moves 2 TTLs per flush, and it may flush tens of thousands
    // of times while a writer thread is descheduled: with the default expiry (24 h of
    // that clock) a kept total would expire and its series restart, as designed, with a
    // new start time. This test is about the race, not expiry: totals never expire.
    let agg = Aggregator::starting_at(
        AggregatorConfig {
            series_ttl: Duration::from_millis(TTL_MS as u64),
            kept_totals_capacity: 1_000,
            kept_totals_ttl: Duration::from_secs(1_000 * 365 * 24 * 3600),
            ..Default::default()
        },
        T0,
    );
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..THREADS)
        .map(|_| {
            let agg = agg.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut w = agg.writer();
                for i in 0..ROUNDS {
                    let name = format!("s{}_total", i % SERIES);
                    w.record(&name, &[], Sample::Counter(1.0, Temporality::Delta), 0)
                        .unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let mut deltas = 0.0;
    let mut last_total = std::collections::HashMap::new();
    let mut t = T0;
    let mut check = |b: &FlushBatch, deltas: &mut f64| {
        for s in &b.series {
            let (d, total) = counter(s);
            *deltas += d;
            let prev = last_total.insert(s.key.clone(), total).unwrap_or(0.0);
            assert!(total >= prev, "{} went back from {prev} to {total}", s.key);
        }
    };
    // Bounded: the writers finish after ROUNDS points each whatever the flusher does.
    for _ in 0..1_000_000 {
        if done.load(std::sync::atomic::Ordering::SeqCst) == THREADS {
            break;
        }
        t += 2 * TTL_MS;
        let b = agg.flush_at(t);
        check(&b, &mut deltas);
    }
    for h in writers {
        h.join().unwrap();
    }
    for _ in 0..3 {
        t += 2 * TTL_MS;
        let b = agg.flush_at(t);
        check(&b, &mut deltas);
    }
    assert_eq!(deltas, (THREADS * ROUNDS) as f64);
    let totals: f64 = last_total.values().sum();
    assert_eq!(totals, (THREADS * ROUNDS) as f64);
}
