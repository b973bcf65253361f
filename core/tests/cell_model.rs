//! Model test of the cell protocols (`weir_core::cell`) under shuttle's scheduler:
//! writers race with collections, and every interleaving shuttle explores must keep
//! each update in exactly one collection and every histogram collection consistent.
//!
//! Run with `cargo test -p weir-core --features shuttle --test cell_model`; the
//! feature swaps the cells' atomics for shuttle's, so only this test is meaningful
//! with it on.
#![cfg(feature = "shuttle")]

use std::sync::Arc;

use shuttle::sync::Mutex;
use shuttle::thread;
use weir_core::cell::{CounterCell, GaugeCell, HistogramCell, Sealed, SetCell};

const ITERATIONS: usize = 2_000;

fn counter_scenario() {
    let cell = Arc::new(CounterCell::default());
    let collected = Arc::new(Mutex::new(0.0));
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.add(1.0).unwrap(); // integer word
                cell.add(0.5 + t as f64).unwrap(); // float word
            })
        })
        .chain(std::iter::once({
            // A first cumulative value: the baseline word.
            let cell = cell.clone();
            thread::spawn(move || cell.add_cumulative(7.0).unwrap())
        }))
        .collect();
    let collector = {
        let (cell, collected) = (cell.clone(), collected.clone());
        thread::spawn(move || {
            for _ in 0..2 {
                let take = cell.collect();
                *collected.lock().unwrap() += take.delta + take.baseline;
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    collector.join().unwrap();
    let last = cell.collect();
    let total = *collected.lock().unwrap() + last.delta + last.baseline;
    assert_eq!(total, 1.0 + 0.5 + 1.0 + 1.5 + 7.0);
}

fn histogram_scenario() {
    let cell = Arc::new(HistogramCell::new(Arc::from(vec![1.0])));
    let seen = Arc::new(Mutex::new((0u64, 0.0f64)));
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.observe(0.5, 1).unwrap();
                cell.observe(2.0 + t as f64, 2).unwrap();
            })
        })
        .collect();
    let collector = {
        let (cell, seen) = (cell.clone(), seen.clone());
        thread::spawn(move || {
            for _ in 0..3 {
                let (v, _) = cell.collect();
                assert_eq!(v.counts.iter().sum::<u64>(), v.count, "torn collection");
                let mut s = seen.lock().unwrap();
                s.0 += v.count;
                s.1 += v.sum;
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    collector.join().unwrap();
    let (last, _) = cell.collect();
    let (count, sum) = *seen.lock().unwrap();
    assert_eq!(count + last.count, 6);
    assert_eq!(sum + last.sum, 0.5 + 4.0 + 0.5 + 6.0);
}

/// Writers race with a collection and then a seal: every add is either collected or
/// handed back as `Sealed` (for the successor series), never both, never neither.
fn seal_scenario() {
    let counter = Arc::new(CounterCell::default());
    let hist = Arc::new(HistogramCell::new(Arc::from(vec![1.0])));
    let gauge = Arc::new(GaugeCell::default());
    let refused = Arc::new(Mutex::new((0.0f64, 0u64, 0u32)));
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (counter, hist, gauge, refused) = (
                counter.clone(),
                hist.clone(),
                gauge.clone(),
                refused.clone(),
            );
            thread::spawn(move || {
                for v in [1.0, 0.5] {
                    if counter.add(v + t as f64) == Err(Sealed) {
                        refused.lock().unwrap().0 += v + t as f64;
                    }
                }
                if hist.observe(2.0, 1) == Err(Sealed) {
                    refused.lock().unwrap().1 += 1;
                }
                if gauge.set(t as f64, 1) == Err(Sealed) {
                    refused.lock().unwrap().2 += 1;
                }
            })
        })
        .collect();
    let first = counter.collect().delta;
    let first_hist = hist.collect().0.count;
    let last = counter.seal().delta;
    let last_hist = hist.seal().0.count;
    gauge.seal();
    for w in writers {
        w.join().unwrap();
    }
    let (counter_refused, hist_refused, _) = *refused.lock().unwrap();
    assert_eq!(first + last + counter_refused, 1.0 + 0.5 + 2.0 + 1.5);
    assert_eq!(first_hist + last_hist + hist_refused, 2);
    // After the seal every write is refused, the seal stays.
    assert_eq!(counter.add(1.0), Err(Sealed));
    assert_eq!(gauge.set(1.0, 2), Err(Sealed));
    assert_eq!(hist.observe(0.5, 1), Err(Sealed));
}

/// Distinct members inserted while collections run: each insert is counted in exactly
/// one collection (members are unique, so the counts add up to the inserts).
fn set_scenario() {
    let cell = Arc::new(SetCell::default());
    let seen = Arc::new(Mutex::new(0u64));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.insert(t * 10).unwrap();
                cell.insert(t * 10 + 1).unwrap();
            })
        })
        .collect();
    let collector = {
        let (cell, seen) = (cell.clone(), seen.clone());
        thread::spawn(move || {
            for _ in 0..2 {
                *seen.lock().unwrap() += cell.collect();
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    collector.join().unwrap();
    assert_eq!(*seen.lock().unwrap() + cell.collect(), 4);
}

#[test]
fn set_members_land_in_exactly_one_collection_pct() {
    shuttle::check_pct(set_scenario, ITERATIONS, 3);
}

#[test]
fn sealing_hands_back_every_later_write_random() {
    shuttle::check_random(seal_scenario, ITERATIONS);
}

#[test]
fn sealing_hands_back_every_later_write_pct() {
    shuttle::check_pct(seal_scenario, ITERATIONS, 3);
}

#[test]
fn counter_adds_land_in_exactly_one_collection_random() {
    shuttle::check_random(counter_scenario, ITERATIONS);
}

#[test]
fn counter_adds_land_in_exactly_one_collection_pct() {
    shuttle::check_pct(counter_scenario, ITERATIONS, 3);
}

#[test]
fn histogram_collections_are_whole_and_exactly_once_random() {
    shuttle::check_random(histogram_scenario, ITERATIONS);
}

#[test]
fn histogram_collections_are_whole_and_exactly_once_pct() {
    shuttle::check_pct(histogram_scenario, ITERATIONS, 3);
}
