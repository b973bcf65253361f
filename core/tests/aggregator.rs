//! Behaviour of the aggregation engine through its public API: identity, rules,
//! temporality, limits, TTL eviction and handles.

use std::sync::Arc;
use std::time::Duration;

use weir_core::point::{HistogramValue, Quantile, SummaryValue};
use weir_core::{
    Aggregator, AggregatorConfig, FlushBatch, FlushedValue, MetricKind, Sample, SeriesKey,
    Temporality, Writer,
};

const DELTA: Temporality = Temporality::Delta;
const CUMULATIVE: Temporality = Temporality::Cumulative;

/// Two label values whose canonical keys share a 64-bit FNV-1a fingerprint. Found with
/// a rho search on the top 56 bits of the state and a final byte that cancels the low
/// 8 bits (xor only touches the low byte before the multiply).
const COLLIDING: [&str; 2] = ["(IBN48a1c5b40f4d9a!", "(IBN4d7f7f24893ab5E"];

fn value_of(batch: &FlushBatch, key: &SeriesKey) -> FlushedValue {
    let mut it = batch.find(key);
    let v = it
        .next()
        .unwrap_or_else(|| panic!("{key} not in batch"))
        .value
        .clone();
    assert!(it.next().is_none(), "{key} twice in batch");
    v
}

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(name, labels).unwrap()
}

#[test]
fn fingerprint_collision_keeps_two_series() {
    let a = key("weir_collision_test", &[("k", COLLIDING[0])]);
    let b = key("weir_collision_test", &[("k", COLLIDING[1])]);
    assert_ne!(a, b);
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "the constructed collision"
    );
    assert_eq!(a.fingerprint(), 0x7775_9f84_f010_a7e4);

    let agg = Aggregator::default();
    let mut w = agg.writer();
    for _ in 0..3 {
        w.record(
            "weir_collision_test",
            &[("k", COLLIDING[0])],
            Sample::Counter(1.0, DELTA),
            0,
        )
        .unwrap();
    }
    w.record(
        "weir_collision_test",
        &[("k", COLLIDING[1])],
        Sample::Counter(10.0, DELTA),
        0,
    )
    .unwrap();
    agg.record(
        "weir_collision_test",
        &[("k", COLLIDING[1])],
        Sample::Counter(10.0, DELTA),
        0,
    )
    .unwrap();
    let batch = agg.flush();
    assert_eq!(batch.series.len(), 2);
    assert_eq!(
        value_of(&batch, &a),
        FlushedValue::Counter {
            delta: 3.0,
            total: 3.0
        }
    );
    assert_eq!(
        value_of(&batch, &b),
        FlushedValue::Counter {
            delta: 20.0,
            total: 20.0
        }
    );
    assert_eq!(agg.stats().active_series, 2);
}

#[test]
fn label_order_does_not_change_identity() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    w.record(
        "m",
        &[("a", "1"), ("b", "2")],
        Sample::Counter(1.0, DELTA),
        0,
    )
    .unwrap();
    w.record(
        "m",
        &[("b", "2"), ("a", "1")],
        Sample::Counter(2.0, DELTA),
        0,
    )
    .unwrap();
    agg.record(
        "m",
        &[("b", "2"), ("a", "1")],
        Sample::Counter(4.0, DELTA),
        0,
    )
    .unwrap();
    let batch = agg.flush();
    assert_eq!(batch.series.len(), 1);
    assert_eq!(batch.counter_delta_sum(), 7.0);
    assert_eq!(w.cached(), 2, "one cache entry per raw label order");
}

#[test]
fn counters_report_delta_and_running_total() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let k = key("c_total", &[]);
    w.record("c_total", &[], Sample::Counter(2.0, DELTA), 0)
        .unwrap();
    w.record("c_total", &[], Sample::Counter(0.5, DELTA), 0)
        .unwrap();
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 2.5,
            total: 2.5
        }
    );
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 0.0,
            total: 2.5
        }
    );
    w.record("c_total", &[], Sample::Counter(1.0, DELTA), 0)
        .unwrap();
    let b = agg.flush();
    assert_eq!(
        value_of(&b, &k),
        FlushedValue::Counter {
            delta: 1.0,
            total: 3.5
        }
    );
    let s = b.find(&k).next().unwrap();
    assert!(s.start_ms > 0 && s.start_ms <= b.end_ms);
}

#[test]
fn a_recycled_batch_allocation_is_refilled_with_only_the_next_interval() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let names: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    for n in &names {
        w.record("c_total", &[("n", n)], Sample::Counter(1.0, DELTA), 0)
            .unwrap();
    }
    let first = agg.flush();
    assert_eq!(first.counter_delta_sum(), 100.0);
    let allocation = first.series.as_ptr();
    agg.recycle(first);
    w.record("c_total", &[("n", "7")], Sample::Counter(2.0, DELTA), 0)
        .unwrap();
    let second = agg.flush();
    assert_eq!(
        second.series.as_ptr(),
        allocation,
        "the allocation was reused"
    );
    assert_eq!(second.series.len(), 100);
    assert_eq!(second.counter_delta_sum(), 2.0);
    assert_eq!(
        value_of(&second, &key("c_total", &[("n", "7")])),
        FlushedValue::Counter {
            delta: 2.0,
            total: 3.0
        }
    );
    agg.recycle(second);
    let third = agg.flush();
    assert_eq!(third.series.as_ptr(), allocation);
    assert_eq!(third.series.len(), 100);
    assert_eq!(third.counter_delta_sum(), 0.0);
}

#[test]
fn cumulative_counters_become_deltas_with_reset_detection() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let k = key("scraped_total", &[("instance", "a")]);
    let mut cum = |v: f64| {
        w.record(
            "scraped_total",
            &[("instance", "a")],
            Sample::Counter(v, CUMULATIVE),
            0,
        )
        .unwrap()
    };
    cum(100.0); // baseline: the total starts at the source's value
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 0.0,
            total: 100.0
        }
    );
    cum(110.0);
    cum(125.0);
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 25.0,
            total: 125.0
        }
    );
    cum(5.0); // the source restarted: as Prometheus increase(), the new value is the delta
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 5.0,
            total: 130.0
        }
    );
    cum(5.0);
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Counter {
            delta: 0.0,
            total: 130.0
        }
    );
}

#[test]
fn gauges_keep_the_last_value_and_apply_relative_changes() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let k = key("temp", &[]);
    w.record("temp", &[], Sample::Gauge(10.0), 1_000).unwrap();
    w.record("temp", &[], Sample::Gauge(12.0), 2_000).unwrap();
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Gauge {
            value: 12.0,
            timestamp_ms: 2_000
        }
    );
    // Unchanged gauges are still reported.
    assert!(matches!(
        value_of(&agg.flush(), &k),
        FlushedValue::Gauge { value: 12.0, .. }
    ));
    w.record("temp", &[], Sample::GaugeDelta(3.0), 3_000)
        .unwrap();
    w.record("temp", &[], Sample::GaugeDelta(-5.5), 4_000)
        .unwrap();
    assert_eq!(
        value_of(&agg.flush(), &k),
        FlushedValue::Gauge {
            value: 9.5,
            timestamp_ms: 4_000
        }
    );
    // A relative change on a new gauge starts from zero.
    w.record("fresh", &[], Sample::GaugeDelta(-2.0), 0).unwrap();
    assert!(matches!(
        value_of(&agg.flush(), &key("fresh", &[])),
        FlushedValue::Gauge { value: -2.0, .. }
    ));
}

fn bounds() -> Arc<[f64]> {
    Arc::from(vec![0.1, 1.0])
}

#[test]
fn histograms_merge_observations_and_whole_histograms() {
    let agg = Aggregator::new(AggregatorConfig {
        histogram_bounds: bounds(),
        ..Default::default()
    });
    let mut w = agg.writer();
    let k = key("latency_seconds", &[]);
    w.record(
        "latency_seconds",
        &[],
        Sample::Observe {
            value: 0.05,
            count: 1,
        },
        0,
    )
    .unwrap();
    w.record(
        "latency_seconds",
        &[],
        Sample::Observe {
            value: 0.5,
            count: 4,
        },
        0,
    )
    .unwrap();
    let h = HistogramValue {
        bounds: bounds(),
        counts: vec![1, 0, 2],
        sum: 7.0,
        count: 3,
        min: 0.01,
        max: 4.0,
    };
    w.record("latency_seconds", &[], Sample::Histogram(&h, DELTA), 0)
        .unwrap();
    let FlushedValue::Histogram { delta, total } = value_of(&agg.flush(), &k) else {
        panic!("not a histogram")
    };
    assert_eq!(delta.counts, vec![2, 4, 2]);
    assert_eq!(delta.count, 8);
    assert!((delta.sum - (0.05 + 2.0 + 7.0)).abs() < 1e-9);
    assert_eq!((delta.min, delta.max), (0.01, 4.0));
    assert_eq!(total, delta);
    w.record(
        "latency_seconds",
        &[],
        Sample::Observe {
            value: 2.0,
            count: 1,
        },
        0,
    )
    .unwrap();
    let FlushedValue::Histogram { delta, total } = value_of(&agg.flush(), &k) else {
        panic!("not a histogram")
    };
    assert_eq!((delta.counts, delta.count), (vec![0, 0, 1], 1));
    assert_eq!(
        (total.counts, total.count, total.max),
        (vec![2, 4, 3], 9, 4.0)
    );
}

#[test]
fn cumulative_histograms_start_from_a_baseline() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let k = key("rpc_seconds", &[]);
    let mk = |counts: Vec<u64>, sum: f64| HistogramValue {
        bounds: bounds(),
        count: counts.iter().sum(),
        counts,
        sum,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };
    w.record(
        "rpc_seconds",
        &[],
        Sample::Histogram(&mk(vec![1, 2, 3], 10.0), CUMULATIVE),
        0,
    )
    .unwrap();
    let FlushedValue::Histogram { delta, total } = value_of(&agg.flush(), &k) else {
        panic!()
    };
    assert_eq!(
        (delta.count, total.count, total.counts),
        (0, 6, vec![1, 2, 3])
    );
    w.record(
        "rpc_seconds",
        &[],
        Sample::Histogram(&mk(vec![2, 2, 4], 13.0), CUMULATIVE),
        0,
    )
    .unwrap();
    let FlushedValue::Histogram { delta, total } = value_of(&agg.flush(), &k) else {
        panic!()
    };
    assert_eq!((delta.counts, delta.sum), (vec![1, 0, 1], 3.0));
    assert_eq!((total.counts, total.count), (vec![2, 2, 4], 8));
}

#[test]
fn summaries_keep_the_latest_quantiles() {
    let agg = Aggregator::default();
    let k = key("rt", &[]);
    for n in 1..=2u64 {
        let s = SummaryValue {
            quantiles: vec![Quantile {
                quantile: 0.5,
                value: n as f64,
            }],
            sum: 10.0 * n as f64,
            count: n,
        };
        agg.record("rt", &[], Sample::Summary(&s), 0).unwrap();
    }
    let FlushedValue::Summary(s) = value_of(&agg.flush(), &k) else {
        panic!()
    };
    assert_eq!((s.count, s.sum, s.quantiles[0].value), (2, 20.0, 2.0));
}

#[test]
fn bad_points_are_rejected_and_counted_by_reason() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let bad_hist = HistogramValue {
        bounds: bounds(),
        counts: vec![1],
        sum: 1.0,
        count: 1,
        min: 0.0,
        max: 0.0,
    };
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Sample<'a>, &'a str);
    let cases: Vec<Case> = vec![
        ("1bad", vec![], Sample::Gauge(1.0), "invalid_metric_name"),
        (
            "ok",
            vec![("a-b", "1")],
            Sample::Gauge(1.0),
            "invalid_label_name",
        ),
        (
            "ok",
            vec![("a", "1"), ("a", "2")],
            Sample::Gauge(1.0),
            "duplicate_label",
        ),
        ("ok", vec![], Sample::Counter(-1.0, DELTA), "invalid_value"),
        (
            "ok",
            vec![],
            Sample::Counter(f64::NAN, DELTA),
            "invalid_value",
        ),
        (
            "ok",
            vec![],
            Sample::Counter(f64::INFINITY, CUMULATIVE),
            "invalid_value",
        ),
        (
            "ok",
            vec![],
            Sample::Observe {
                value: f64::NAN,
                count: 1,
            },
            "invalid_value",
        ),
        (
            "ok",
            vec![],
            Sample::Histogram(&bad_hist, DELTA),
            "invalid_value",
        ),
    ];
    for (name, labels, sample, reason) in &cases {
        let err = w.record(name, labels, *sample, 0).unwrap_err();
        assert_eq!(err.as_str(), *reason, "{name} {labels:?} {sample:?}");
    }
    // A kind conflict: the first kind wins.
    w.record("typed", &[], Sample::Counter(1.0, DELTA), 0)
        .unwrap();
    assert_eq!(
        w.record("typed", &[], Sample::Gauge(1.0), 0)
            .unwrap_err()
            .as_str(),
        "type_conflict"
    );
    let stats = agg.stats();
    assert_eq!(stats.rejected("invalid_value"), 5);
    assert_eq!(stats.rejected("invalid_metric_name"), 1);
    assert_eq!(stats.rejected("invalid_label_name"), 1);
    assert_eq!(stats.rejected("duplicate_label"), 1);
    assert_eq!(stats.rejected("type_conflict"), 1);
    assert_eq!(stats.active_series, 1);
    assert_eq!(agg.flush().counter_delta_sum(), 1.0);
}

#[test]
fn per_metric_limit_drops_new_series_but_keeps_existing_ones() {
    let agg = Aggregator::new(AggregatorConfig {
        max_series_per_metric: 3,
        max_tracked_metric_names: 1,
        ..Default::default()
    });
    let mut w = agg.writer();
    let ids: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    for id in &ids {
        let r = w.record("req_total", &[("user", id)], Sample::Counter(1.0, DELTA), 0);
        assert_eq!(r.is_ok(), id.as_str() < "3", "{id}");
    }
    // Existing series keep aggregating; other names are unaffected.
    w.record(
        "req_total",
        &[("user", "0")],
        Sample::Counter(1.0, DELTA),
        0,
    )
    .unwrap();
    w.record(
        "other_total",
        &[("user", "9")],
        Sample::Counter(1.0, DELTA),
        0,
    )
    .unwrap();
    for id in ["7", "8"] {
        assert!(
            w.record(
                "other_total",
                &[("user", id)],
                Sample::Counter(1.0, DELTA),
                0
            )
            .is_ok()
        );
    }
    assert!(
        w.record(
            "other_total",
            &[("user", "x")],
            Sample::Counter(1.0, DELTA),
            0
        )
        .is_err()
    );
    let stats = agg.stats();
    assert_eq!(stats.rejected("cardinality_limit_exceeded"), 3);
    assert_eq!(stats.active_series, 6);
    assert!(!stats.ceiling_reached);
    // Tracked names are bounded: the second name's drops are counted as "other".
    assert_eq!(
        agg.cardinality_limit_exceeded(),
        vec![("other".to_string(), 1), ("req_total".to_string(), 2)]
    );
    assert_eq!(agg.top_metrics(1), vec![("other_total".to_string(), 3)]);
    assert_eq!(agg.flush().counter_delta_sum(), 7.0);
}

#[test]
fn global_ceiling_drops_new_series_and_says_so() {
    let agg = Aggregator::new(AggregatorConfig {
        max_series: 4,
        ..Default::default()
    });
    let mut w = agg.writer();
    for i in 0..6 {
        let name = format!("m{i}");
        let r = w.record(&name, &[], Sample::Gauge(1.0), 0);
        assert_eq!(r.is_ok(), i < 4, "{name}");
    }
    w.record("m0", &[], Sample::Gauge(2.0), 0).unwrap();
    let stats = agg.stats();
    assert_eq!(stats.rejected("series_limit_reached"), 2);
    assert!(stats.ceiling_reached);
    assert_eq!(stats.active_series, 4);
    // Handles are refused at the ceiling too.
    assert!(agg.handle("m9", &[], MetricKind::Gauge).is_err());
}

const MINUTE: i64 = 60_000;

#[test]
fn idle_series_are_evicted_after_the_ttl_with_a_final_entry() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(300),
        ..Default::default()
    });
    let mut w = agg.writer();
    let t0 = 1_000_000_000_000;
    agg.flush_at(t0);
    w.record("idle_total", &[], Sample::Counter(1.0, DELTA), 0)
        .unwrap();
    w.record("busy_total", &[], Sample::Counter(1.0, DELTA), 0)
        .unwrap();
    agg.flush_at(t0 + MINUTE); // activity noticed here
    for m in 2..=5 {
        w.record("busy_total", &[], Sample::Counter(1.0, DELTA), 0)
            .unwrap();
        agg.flush_at(t0 + m * MINUTE);
        assert_eq!(agg.stats().active_series, 2, "minute {m}");
    }
    // A write racing with the retirement is never lost: here `busy_total` was written
    // in the last interval, `idle_total` has been idle for 5 minutes.
    let b = agg.flush_at(t0 + 6 * MINUTE);
    let idle_key = key("idle_total", &[]);
    let idle: Vec<_> = b.find(&idle_key).collect();
    assert_eq!(idle.len(), 1);
    assert!(b.is_evicted(idle[0]), "its last entry says so");
    assert!(
        std::ptr::eq(idle[0], &b.series[b.series.len() - 1]) && b.evicted == 1,
        "after every live series"
    );
    assert_eq!(
        idle[0].value,
        FlushedValue::Counter {
            delta: 0.0,
            total: 1.0
        }
    );
    assert!(!b.is_evicted(b.find(&key("busy_total", &[])).next().unwrap()));
    let stats = agg.stats();
    assert_eq!((stats.active_series, stats.evicted_series), (1, 1));
    assert!(
        agg.flush_at(t0 + 7 * MINUTE)
            .find(&key("idle_total", &[]))
            .next()
            .is_none()
    );
    // The writer still caches the evicted series: its next point finds the cell sealed
    // and goes to a successor.
    // The same key comes back as a new series that resumes the kept total.
    w.record("idle_total", &[], Sample::Counter(2.0, DELTA), 0)
        .unwrap();
    let b = agg.flush_at(t0 + 200 * MINUTE);
    assert_eq!(
        value_of(&b, &key("idle_total", &[])),
        FlushedValue::Counter {
            delta: 2.0,
            total: 3.0
        }
    );
    assert!(agg.top_metrics(10).iter().all(|(_, n)| *n == 1));
}

#[test]
fn evicted_series_give_their_room_back_to_their_metric() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(300),
        max_series_per_metric: 2,
        ..Default::default()
    });
    let t0 = 1_000_000_000_000;
    agg.flush_at(t0);
    let record = |id: &str| agg.record("req_total", &[("id", id)], Sample::Gauge(1.0), 0);
    record("a").unwrap();
    record("b").unwrap();
    assert!(record("c").is_err(), "the metric is full");
    // One of them stays busy: the metric's family stays, with one series counted.
    for m in 1..=6 {
        record("a").unwrap();
        agg.flush_at(t0 + m * MINUTE);
    }
    assert_eq!(agg.stats().evicted_series, 1);
    assert_eq!(agg.top_metrics(10), vec![("req_total".to_string(), 1)]);
    record("c").unwrap();
    assert!(record("d").is_err(), "full again");
    // All idle: every count is given back, and the family goes.
    agg.flush_at(t0 + 20 * MINUTE);
    agg.flush_at(t0 + 30 * MINUTE);
    assert_eq!(agg.stats().active_series, 0);
    assert!(agg.top_metrics(10).is_empty());
    record("d").unwrap();
    record("e").unwrap();
    assert!(record("f").is_err());
    assert_eq!(agg.top_metrics(10), vec![("req_total".to_string(), 2)]);
}

#[test]
fn zero_ttl_never_evicts() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        ..Default::default()
    });
    agg.record("g", &[], Sample::Gauge(1.0), 0).unwrap();
    for m in 0..10 {
        agg.flush_at(m * 1_000 * MINUTE);
    }
    assert_eq!(agg.stats().active_series, 1);
}

#[test]
fn handles_update_directly_and_keep_their_series_alive() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let t0 = 1_000_000_000_000;
    agg.flush_at(t0);
    let c = agg
        .handle("h_total", &[("x", "1")], MetricKind::Counter)
        .unwrap();
    let g = agg.handle("h_gauge", &[], MetricKind::Gauge).unwrap();
    let h = agg.handle("h_seconds", &[], MetricKind::Histogram).unwrap();
    c.add(1.0).unwrap();
    c.add(2.5).unwrap();
    g.set(7.0).unwrap();
    h.observe(0.2).unwrap();
    assert_eq!(c.add(-1.0).unwrap_err().as_str(), "invalid_value");
    assert_eq!(g.observe(1.0).unwrap_err().as_str(), "type_conflict");
    assert_eq!(
        agg.handle("h_total", &[("x", "1")], MetricKind::Gauge)
            .err()
            .unwrap()
            .as_str(),
        "type_conflict"
    );
    let b = agg.flush_at(t0 + MINUTE);
    assert_eq!(b.counter_delta_sum(), 3.5);
    // Idle far past the TTL: still alive while the handles exist.
    for m in 2..10 {
        agg.flush_at(t0 + m * MINUTE);
    }
    assert_eq!(agg.stats().active_series, 3);
    c.add(1.0).unwrap();
    drop((c, g, h));
    let last = agg.flush_at(t0 + 10 * MINUTE);
    assert_eq!(
        last.counter_delta_sum(),
        1.0,
        "the add made just before the drop"
    );
    let b = agg.flush_at(t0 + 12 * MINUTE);
    assert_eq!(b.evicted_series().len(), 3);
    assert_eq!(agg.stats().active_series, 0);
}

#[test]
fn writer_cache_is_bounded_and_refills_once_per_flush() {
    let agg = Aggregator::new(AggregatorConfig {
        writer_cache_capacity: 8,
        ..Default::default()
    });
    let mut w = agg.writer();
    let record = |w: &mut weir_core::Writer, i: usize| {
        let v = i.to_string();
        w.record("m", &[("b", "1"), ("a", &v)], Sample::Gauge(1.0), 0)
            .unwrap();
    };
    for i in 0..100 {
        record(&mut w, i);
        assert!(w.cached() <= 8);
    }
    // Full: later label sets went through the index uncached, the first eight stayed.
    assert_eq!(w.cached(), 8);
    assert_eq!(agg.stats().writer_cache_evictions, 0);
    assert_eq!(agg.stats().active_series, 100);
    // After a flush a full cache is cleared once and refills with what is in use.
    agg.flush();
    for i in 50..60 {
        record(&mut w, i);
    }
    assert_eq!(w.cached(), 8);
    assert_eq!(agg.stats().writer_cache_evictions, 8);
    let before = agg.stats().created_series;
    for i in 50..58 {
        record(&mut w, i); // hits
    }
    assert_eq!(agg.stats().created_series, before);
    assert_eq!(agg.stats().writer_cache_evictions, 8);
}

#[test]
fn flush_batches_are_numbered_and_cover_their_interval() {
    let agg = Aggregator::default();
    let a = agg.flush_at(1_000);
    let b = agg.flush_at(2_000);
    assert_eq!((a.sequence, b.sequence), (1, 2));
    assert_eq!((b.start_ms, b.end_ms), (1_000, 2_000));
    assert_eq!(agg.stats().flushes, 2);
}

#[test]
fn raw_identity_path_hits_misses_and_follows_evictions() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let mut w = agg.writer();
    let one = Sample::Counter(1.0, DELTA);
    let raw = b"jobs.done|#queue:mail";
    let labels = [("queue", "mail")];
    assert!(!w.record_cached(raw, one, 0).unwrap(), "cold cache");
    w.record_with_raw(raw, "jobs_done", &labels, one, 0)
        .unwrap();
    assert!(w.record_cached(raw, one, 0).unwrap());
    // A kind conflict on a hit is refused and counted, not a miss.
    assert_eq!(
        w.record_cached(raw, Sample::Gauge(1.0), 0)
            .unwrap_err()
            .as_str(),
        "type_conflict"
    );
    let t0 = 1_000_000_000_000;
    assert_eq!(agg.flush_at(t0).counter_delta_sum(), 2.0);
    // Idle for the whole TTL since the flush at t0.
    let b = agg.flush_at(t0 + MINUTE);
    assert_eq!(b.evicted_series().len(), 1);
    // The cached series is sealed now: a miss, and the point goes to a successor.
    assert!(!w.record_cached(raw, one, 0).unwrap());
    w.record_with_raw(raw, "jobs_done", &labels, one, 0)
        .unwrap();
    assert!(w.record_cached(raw, one, 0).unwrap());
    let b = agg.flush_at(t0 + 3 * MINUTE);
    assert_eq!(
        value_of(&b, &key("jobs_done", &labels)),
        FlushedValue::Counter {
            delta: 2.0,
            total: 4.0 // the successor resumes the evicted series' total
        }
    );
}

/// An evicted series stays in a writer's cache (and in memory) until its label set
/// comes again, which it may never do: [`Writer::tidy`] empties the cache once the
/// series evicted since it was last emptied are half its entries or more.
#[test]
fn a_writer_lets_go_of_evicted_series_once_they_are_half_its_cache() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let one = Sample::Counter(1.0, DELTA);
    let touch = |w: &mut Writer, series: std::ops::Range<usize>| {
        for i in series {
            let (raw, value) = (format!("c|#i:{i}"), i.to_string());
            if !w.record_cached(raw.as_bytes(), one, 0).unwrap() {
                w.record_with_raw(raw.as_bytes(), "c", &[("i", &value)], one, 0)
                    .unwrap();
            }
        }
    };
    let t0 = 1_000_000_000_000;
    let s = 1_000;
    agg.flush_at(t0);
    let mut w = agg.writer();
    touch(&mut w, 0..100);
    agg.flush_at(t0 + 10 * s);
    // Keeps series 0..live busy (seen by the flush at `seen` s), lets the others idle
    // past the TTL (evicted by the flush at `evict` s), tidies: (evicted, cached).
    let stage = |w: &mut Writer, live: usize, seen: i64, evict: i64| {
        touch(w, 0..live);
        agg.flush_at(t0 + seen * s);
        agg.flush_at(t0 + evict * s);
        w.tidy();
        (agg.stats().evicted_series, w.cached())
    };
    // 70..100 idle since 10 s: 30 of 100 entries evicted, kept.
    assert_eq!(stage(&mut w, 70, 40, 75), (30, 100));
    // 40..70 idle since 40 s: 60 of 100 entries evicted, emptied.
    assert_eq!(stage(&mut w, 40, 90, 105), (60, 0));
    assert_eq!(agg.stats().writer_cache_evictions, 100);
    // The live series miss once and go on.
    touch(&mut w, 0..40);
    assert_eq!(w.cached(), 40);
    touch(&mut w, 0..40);
    assert_eq!(agg.flush_at(t0 + 110 * s).counter_delta_sum(), 80.0);
    assert_eq!(agg.stats().active_series, 40);
}

/// [`Writer::release_cache`] empties both caches (the raw table and the sequence of
/// the last body); the points after it miss once and go on to the same series.
#[test]
fn a_released_writer_cache_misses_once_and_keeps_the_series() {
    let agg = Aggregator::default();
    let mut w = agg.writer();
    let one = Sample::Counter(1.0, DELTA);
    let raw = b"jobs.done|#queue:mail";
    let labels = [("queue", "mail")];
    w.record_with_raw(raw, "jobs_done", &labels, one, 0)
        .unwrap();
    w.begin_sequence();
    w.record_sequenced_new_since(b"up", "up", &[], Sample::Gauge(1.0), 0, 0)
        .unwrap();
    w.end_sequence();
    assert_eq!(w.cached(), 2);
    w.release_cache();
    assert_eq!((w.cached(), w.cache_misses()), (0, 0));
    assert!(!w.record_cached(raw, one, 0).unwrap(), "released: a miss");
    assert_eq!(w.cache_misses(), 1);
    w.record_with_raw(raw, "jobs_done", &labels, one, 0)
        .unwrap();
    assert!(w.record_cached(raw, one, 0).unwrap(), "cached again");
    w.begin_sequence();
    assert!(
        !w.record_sequenced_since(b"up", Sample::Gauge(2.0), 0, 0)
            .unwrap()
    );
    w.end_sequence();
    let b = agg.flush();
    assert_eq!(b.counter_delta_sum(), 3.0);
    assert_eq!(b.series.len(), 2, "the same two series");
}

/// [`Writer::begin_sequence`]'s path: a body like the last is found sample by sample,
/// a refusal keeps the sample's place, and an evicted series is found again through
/// the index (its successor resumes its total).
#[test]
fn sequenced_path_hits_misses_and_follows_evictions() {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let mut w = agg.writer();
    let one = Sample::Counter(1.0, DELTA);
    let lines = [
        (&b"jobs_total{q=\"a\"}"[..], [("q", "a")]),
        (&b"jobs_total{q=\"b\"}"[..], [("q", "b")]),
    ];
    // Records one body; returns how many samples were found without the index.
    let body = |w: &mut Writer, sample: Sample<'_>| {
        w.begin_sequence();
        let mut found = 0;
        for (ident, labels) in &lines {
            match w.record_sequenced_since(ident, sample, 0, 0) {
                Ok(true) => found += 1,
                Ok(false) => w
                    .record_sequenced_new_since(ident, "jobs_total", labels, sample, 0, 0)
                    .unwrap(),
                Err(e) => assert_eq!(e.as_str(), "type_conflict"),
            }
        }
        w.end_sequence();
        found
    };
    assert_eq!(body(&mut w, one), 0, "first body");
    assert_eq!(body(&mut w, one), 2);
    // A kind conflict is refused and counted; the series keep their places.
    assert_eq!(body(&mut w, Sample::Gauge(1.0)), 0);
    assert_eq!(agg.stats().rejected("type_conflict"), 2);
    assert_eq!(body(&mut w, one), 2);
    let t0 = 1_000_000_000_000;
    assert_eq!(agg.flush_at(t0).counter_delta_sum(), 6.0);
    let b = agg.flush_at(t0 + MINUTE);
    assert_eq!(b.evicted_series().len(), 2);
    // Both sequenced series are sealed now: misses, and the points go to successors.
    assert_eq!(body(&mut w, one), 0);
    assert_eq!(body(&mut w, one), 2);
    assert_eq!(w.cached(), 2);
    let b = agg.flush_at(t0 + 3 * MINUTE);
    assert_eq!(
        value_of(&b, &key("jobs_total", &[("q", "a")])),
        FlushedValue::Counter {
            delta: 2.0,
            total: 5.0 // the successor resumes the evicted series' total
        }
    );
}

#[test]
fn handle_increments_are_integral_adds() {
    let agg = Aggregator::default();
    let c = agg.handle("inc_total", &[], MetricKind::Counter).unwrap();
    c.increment(2).unwrap();
    c.increment(1 << 40).unwrap(); // past the integer word: the float word takes it
    c.add(0.5).unwrap();
    assert_eq!(
        agg.flush().counter_delta_sum(),
        2.0 + (1u64 << 40) as f64 + 0.5
    );
    let g = agg.handle("inc_gauge", &[], MetricKind::Gauge).unwrap();
    assert_eq!(g.increment(1).unwrap_err().as_str(), "type_conflict");
}

#[test]
fn peek_shows_pending_values_and_takes_nothing_from_the_next_flush() {
    let agg = Aggregator::default();
    let c = agg
        .handle("jobs_total", &[("q", "a")], MetricKind::Counter)
        .unwrap();
    let g = agg.handle("depth", &[], MetricKind::Gauge).unwrap();
    let h = agg
        .histogram_handle("latency", &[], Arc::from(&[1.0, 10.0][..]))
        .unwrap();
    c.increment(3).unwrap();
    g.set(7.5).unwrap();
    h.observe(0.5).unwrap();
    h.observe(5.0).unwrap();
    agg.flush();
    c.increment(2).unwrap();
    h.observe(50.0).unwrap();

    let peeked = agg.peek();
    let second = agg.peek();
    let flushed = agg.flush();
    for batch in [&peeked, &second, &flushed] {
        assert_eq!(
            value_of(batch, &key("jobs_total", &[("q", "a")])),
            FlushedValue::Counter {
                delta: 2.0,
                total: 5.0
            }
        );
        let FlushedValue::Histogram { delta, total } = value_of(batch, &key("latency", &[])) else {
            panic!("not a histogram");
        };
        assert_eq!((delta.count, delta.counts.clone()), (1, vec![0, 0, 1]));
        assert_eq!((total.count, total.counts.clone()), (3, vec![1, 1, 1]));
        assert_eq!(total.sum, 55.5);
        let FlushedValue::Gauge { value, .. } = value_of(batch, &key("depth", &[])) else {
            panic!("not a gauge");
        };
        assert_eq!(value, 7.5);
    }
    assert_eq!(peeked.sequence, 1, "a peek is not a flush");
    assert_eq!(flushed.sequence, 2);
    assert_eq!(agg.flush().counter_delta_sum(), 0.0);
}

#[test]
fn peek_sees_series_created_since_the_last_flush() {
    let agg = Aggregator::default();
    agg.record("new_total", &[], Sample::Counter(4.0, DELTA), 0)
        .unwrap();
    assert_eq!(agg.peek().counter_delta_sum(), 4.0);
    assert_eq!(agg.flush().counter_delta_sum(), 4.0);
}

#[test]
fn histogram_handle_uses_its_own_bounds_and_refuses_unusable_ones() {
    let agg = Aggregator::default();
    let h = agg
        .histogram_handle("size", &[], Arc::from(&[] as &[f64]))
        .unwrap();
    h.observe(-3.0).unwrap();
    let FlushedValue::Histogram { total, .. } = value_of(&agg.flush(), &key("size", &[])) else {
        panic!("not a histogram");
    };
    assert_eq!((total.counts.clone(), total.sum), (vec![1], -3.0));
    for bad in [
        &[2.0, 1.0][..],
        &[1.0, 1.0][..],
        &[f64::NAN][..],
        &[f64::INFINITY][..],
    ] {
        let err = agg
            .histogram_handle("bad", &[], Arc::from(bad))
            .err()
            .unwrap();
        assert_eq!(err.as_str(), "invalid_value");
    }
    assert_eq!(agg.stats().rejected("invalid_value"), 4);
}

#[test]
fn handle_observations_land_in_their_buckets_and_nan_is_refused_and_counted() {
    let agg = Aggregator::default();
    let h = agg
        .histogram_handle("lat_seconds", &[], Arc::from(&[0.1, 1.0][..]))
        .unwrap();
    for v in [0.05, 0.5, 0.5, 5.0, f64::INFINITY] {
        h.observe(v).unwrap();
    }
    assert_eq!(h.observe(f64::NAN).unwrap_err().as_str(), "invalid_value");
    assert_eq!(agg.stats().rejected("invalid_value"), 1);
    let batch = agg.flush();
    let FlushedValue::Histogram { delta, .. } = &batch.series[0].value else {
        panic!("{batch:?}");
    };
    assert_eq!(delta.counts, vec![1, 2, 2]);
    assert_eq!(delta.count, 5);
    assert_eq!(delta.min, 0.05);
    assert_eq!(delta.max, f64::INFINITY);
}

/// A flush in chunks hands over the entries a whole flush returns, in the same order:
/// chunks of `chunk_len` live entries with the flush's sequence and interval, the
/// last one (given even when empty) ending with the evicted series' final shares.
#[test]
fn a_chunked_flush_gives_the_whole_flush_in_order() {
    let config = AggregatorConfig {
        series_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    for chunk_len in [1, 2, 3, 7, 64] {
        let (whole, chunked) = (
            Aggregator::starting_at(config.clone(), 1_000),
            Aggregator::starting_at(config.clone(), 1_000),
        );
        // 10 counters and 3 gauges; the gauges go idle and are evicted at t0 + 1 min.
        let feed = |agg: &Aggregator, round: u32| {
            let mut w = agg.writer();
            for i in 0..10 {
                let q = i.to_string();
                w.record(
                    "jobs_total",
                    &[("q", &q)],
                    Sample::Counter(f64::from(round + i), DELTA),
                    0,
                )
                .unwrap();
            }
            if round == 0 {
                for i in 0..3 {
                    w.record("temp", &[("i", &i.to_string())], Sample::Gauge(1.0), 0)
                        .unwrap();
                }
            }
        };
        let t0 = 1_000_000_000_000;
        for (round, now) in [(0, t0), (1, t0 + MINUTE), (2, t0 + 2 * MINUTE)] {
            feed(&whole, round);
            feed(&chunked, round);
            let want = whole.flush_at(now);
            let mut chunks: Vec<FlushBatch> = Vec::new();
            chunked.flush_chunked_at(now, chunk_len, |c| chunks.push(c.clone()));
            let (last, full) = chunks.split_last().unwrap();
            assert!(
                full.iter()
                    .all(|c| c.series.len() == chunk_len && c.evicted == 0)
            );
            assert!(last.series.len() - last.evicted <= chunk_len);
            for c in &chunks {
                assert_eq!(
                    (c.sequence, c.start_ms, c.end_ms),
                    (want.sequence, want.start_ms, want.end_ms)
                );
            }
            // Series start at the wall clock's time of creation: compared by key and value.
            let entries = |s: &[weir_core::FlushedSeries]| -> Vec<_> {
                s.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
            };
            let got: Vec<_> = chunks.iter().flat_map(|c| entries(&c.series)).collect();
            assert_eq!(
                got,
                entries(&want.series),
                "chunks of {chunk_len}, round {round}"
            );
            assert_eq!(last.evicted, want.evicted);
            assert_eq!(last.evicted, if round == 1 { 3 } else { 0 });
        }
        // Nothing to flush: one empty chunk still says which flush it was.
        let mut chunks = Vec::new();
        Aggregator::default().flush_chunked_at(5, chunk_len, |c| chunks.push(c.clone()));
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].sequence, chunks[0].series.len()), (1, 0));
    }
}
