//! Invariant 1 under real concurrency: every point lands in exactly one flush, while
//! flushes, TTL evictions and re-creations run alongside the writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use weir_core::{
    Aggregator, AggregatorConfig, FlushBatch, FlushedValue, MetricKind, Sample, Temporality,
};

const WRITERS: usize = 4;
const POINTS_PER_WRITER: u64 = 40_000;
const SERIES: u64 = 64;

#[derive(Default, Debug, PartialEq)]
struct Totals {
    counter: f64,
    observations: u64,
    observation_sum: f64,
}

fn absorb(t: &mut Totals, batch: &FlushBatch) {
    for s in &batch.series {
        match &s.value {
            FlushedValue::Counter { delta, .. } => t.counter += delta,
            FlushedValue::Histogram { delta, .. } => {
                // One consistent snapshot: buckets and count come from the same writes.
                assert_eq!(
                    delta.counts.iter().sum::<u64>(),
                    delta.count,
                    "torn histogram"
                );
                t.observations += delta.count;
                t.observation_sum += delta.sum;
            }
            _ => {}
        }
    }
}

#[test]
fn concurrent_adds_land_in_exactly_one_flush() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_millis(1),
        ..Default::default()
    });
    let done = Arc::new(AtomicBool::new(false));
    let mut expected = Totals::default();
    let mut writers = Vec::new();
    for t in 0..WRITERS {
        let agg = agg.clone();
        writers.push(thread::spawn(move || {
            let mut w = agg.writer();
            let handle = agg
                .handle(
                    "stress_handle_total",
                    &[("t", &t.to_string())],
                    MetricKind::Counter,
                )
                .unwrap();
            let mut sent = Totals::default();
            for i in 0..POINTS_PER_WRITER {
                let id = ((i * 7 + t as u64) % SERIES).to_string();
                // Two label orders per series exercise both cache entry kinds.
                let labels: [(&str, &str); 2] = if i % 2 == 0 {
                    [("id", &id), ("kind", "x")]
                } else {
                    [("kind", "x"), ("id", &id)]
                };
                // Dyadic values keep every f64 sum exact.
                let v = if i % 3 == 0 { 0.25 } else { (i % 5) as f64 };
                w.record(
                    "stress_total",
                    &labels,
                    Sample::Counter(v, Temporality::Delta),
                    0,
                )
                .unwrap();
                sent.counter += v;
                if i % 4 == 0 {
                    handle.add(0.5).unwrap();
                    sent.counter += 0.5;
                }
                if i % 2 == 1 {
                    let o = (i % 16) as f64 / 8.0;
                    w.record(
                        "stress_seconds",
                        &labels,
                        Sample::Observe { value: o, count: 1 },
                        0,
                    )
                    .unwrap();
                    sent.observations += 1;
                    sent.observation_sum += o;
                }
            }
            sent
        }));
    }
    let flusher = {
        let agg = agg.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut got = Totals::default();
            // A fake clock that jumps past the TTL every flush: idle series are retired
            // all the time while writers may still hold them in their caches.
            let mut now = 1_000_000_000_000i64;
            let mut flushes = 0u64;
            while !done.load(Ordering::Acquire) && flushes < 1_000_000 {
                now += 10;
                // Every other flush chunked, as the daemon flushes: its chunks lend the
                // series' own keys, uncounted, while evictions and writers race it.
                if flushes.is_multiple_of(2) {
                    absorb(&mut got, &agg.flush_at(now));
                } else {
                    agg.flush_chunked_at(now, 7, |chunk| absorb(&mut got, chunk));
                }
                flushes += 1;
            }
            (got, now, flushes)
        })
    };
    for w in writers {
        let sent = w.join().unwrap();
        expected.counter += sent.counter;
        expected.observations += sent.observations;
        expected.observation_sum += sent.observation_sum;
    }
    done.store(true, Ordering::Release);
    let (mut got, now, flushes) = flusher.join().unwrap();
    absorb(&mut got, &agg.flush_at(now + 10));
    assert_eq!(got, expected);
    assert!(
        flushes > 10,
        "flushes ran concurrently with the writers: {flushes}"
    );
    assert!(
        agg.stats().evicted_series > 0,
        "evictions ran during the test"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Random per-thread workloads (series, values, label orders) on two writer threads
    /// racing a flusher whose clock evicts idle series: the flushed sums always equal
    /// what the threads sent.
    #[test]
    fn random_concurrent_workloads_add_up(
        work in proptest::collection::vec(
            proptest::collection::vec((0u8..16, 0u16..1000, proptest::bool::ANY), 1..400),
            2,
        ),
        ttl_ms in 0u64..3,
    ) {
        let agg = Aggregator::new(AggregatorConfig {
            series_ttl: Duration::from_millis(ttl_ms),
            ..Default::default()
        });
        let done = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (agg, done) = (agg.clone(), done.clone());
            thread::spawn(move || {
                let (mut sum, mut now) = (0.0, 1_000_000_000_000i64);
                while !done.load(Ordering::Acquire) {
                    now += 1;
                    if now & 1 == 0 {
                        sum += agg.flush_at(now).counter_delta_sum();
                    } else {
                        agg.flush_chunked_at(now, 5, |c| sum += c.counter_delta_sum());
                    }
                }
                (sum, now)
            })
        };
        let writers: Vec<_> = work
            .into_iter()
            .map(|ops| {
                let agg = agg.clone();
                thread::spawn(move || {
                    let mut w = agg.writer();
                    let mut sent = 0.0;
                    for (series, value, swap) in ops {
                        let id = series.to_string();
                        let labels = if swap {
                            [("b", "x"), ("a", id.as_str())]
                        } else {
                            [("a", id.as_str()), ("b", "x")]
                        };
                        let v = f64::from(value) / 4.0; // exact in f64
                        w.record("prop_total", &labels, Sample::Counter(v, Temporality::Delta), 0)
                            .unwrap();
                        sent += v;
                    }
                    sent
                })
            })
            .collect();
        let sent: f64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        done.store(true, Ordering::Release);
        let (mut got, now) = flusher.join().unwrap();
        got += agg.flush_at(now + 1).counter_delta_sum();
        proptest::prop_assert_eq!(got, sent);
    }
}
