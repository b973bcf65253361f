//! Criterion benchmarks of weir-core's aggregation engine (issue "Foundation").
//!
//! Every series is `http_requests_total` with four labels handed over unsorted
//! (`status, method, service, instance`), canonical key ~80 bytes (checked at start).
//! Label arrays are built once per process, outside every timed loop. Throughput is
//! set so criterion reports points (or keys, or flushed series) per second.
//!
//! Groups: `update_1t_10k`, `update_2t_10k`, `update_1t_1M` (Writer::record on existing
//! series vs a `Mutex<HashMap>` and a 256-stripe map), `handle` (SeriesHandle::add),
//! `create` (new series), `key` (fingerprint and key construction vs a cache hit),
//! `flush` (100k and 1M counters).
//!
//! Run: `cargo bench -p weir-benches --bench aggregation`; see `benches/README.md`.

use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use weir_benches::{
    CounterMap, Labels, METRIC, MapWriter, MutexMap, StripedMap, encode_raw, label_sets,
    mean_key_len,
};
use weir_core::key::fnv1a64;
use weir_core::point::{MetricKind, Sample, Temporality};
use weir_core::{Aggregator, AggregatorConfig, FlushedSeries, SeriesHandle, SeriesKey, Writer};

const SMALL: usize = 10_000;
const LARGE: usize = 1_000_000;
const FLUSH_SMALL: usize = 100_000;
/// New series per fresh aggregator in the creation benchmark (bounds its memory).
const CREATE_CHUNK: usize = 100_000;
const ONE: Sample<'static> = Sample::Counter(1.0, Temporality::Delta);

/// The label sets of series `0..LARGE`, built once.
fn sets() -> &'static [Labels] {
    static SETS: OnceLock<Vec<Labels>> = OnceLock::new();
    SETS.get_or_init(|| {
        let s = label_sets(LARGE);
        let mean = mean_key_len(&s[..SMALL]);
        assert!((79.0..=81.0).contains(&mean), "mean key length {mean}");
        eprintln!("series shape: {METRIC} + 4 unsorted labels, mean canonical key {mean:.1} bytes");
        s
    })
}

/// Room for every benchmark's series under one metric name; no TTL eviction while
/// benchmarks run.
fn config(writer_cache_capacity: usize) -> AggregatorConfig {
    AggregatorConfig {
        series_ttl: Duration::ZERO,
        max_series: 4 * LARGE,
        max_series_per_metric: 4 * LARGE,
        writer_cache_capacity,
        ..AggregatorConfig::default()
    }
}

/// Core's default writer cache capacity (65,536 label sets).
fn default_cache() -> usize {
    AggregatorConfig::default().writer_cache_capacity
}

/// Records one point per label set through `w` (creating the series, filling its cache).
fn fill(w: &mut Writer, sets: &[Labels]) {
    for l in sets {
        w.record(METRIC, l, ONE, 0).expect("series admitted");
    }
}

/// Round-robin cursor over `n` series.
#[inline]
fn next(i: &mut usize, n: usize) -> usize {
    let cur = *i;
    *i = if cur + 1 == n { 0 } else { cur + 1 };
    cur
}

fn modest(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

const GROUP_10K: &str = "update_1t_10k";
const GROUP_1M: &str = "update_1t_1M";

/// 1 (update through Writer::record) and 7 (baselines), one thread, 10k series. Runs
/// first, on a fresh heap, like `update_2t_10k` right after it; the 1M groups come later.
fn update_1t_10k(c: &mut Criterion) {
    let sets = &sets()[..SMALL];
    let mut g = c.benchmark_group(GROUP_10K);
    modest(&mut g);
    g.throughput(Throughput::Elements(1));
    // Default cache (65,536 label sets): the 10k working set fits, all hits; the hit
    // rate is printed before each writer benchmark.
    bench_writer_1t(&mut g, GROUP_10K, "writer", default_cache(), sets);
    // The hit path's compute floor: 100 series, all hits, everything in L1/L2.
    bench_writer_1t(
        &mut g,
        GROUP_10K,
        "writer_100_series",
        default_cache(),
        &sets[..100],
    );
    bench_map_1t(&mut g, "mutex_map", &MutexMap::new(), sets);
    bench_map_1t(&mut g, "striped_256", &StripedMap::new(), sets);
    g.finish();
}

/// 1 and 7 at 1M series, one thread.
fn update_1t_1m(c: &mut Criterion) {
    let sets = sets();
    let mut g = c.benchmark_group(GROUP_1M);
    modest(&mut g);
    g.throughput(Throughput::Elements(1));
    // Default cache: 65,536 of the 1M label sets stay cached (94% of points miss:
    // each validates, sorts and encodes its labels and looks the key up in the shared
    // index). With a cache of 2^21 every label set is cached.
    bench_writer_1t(&mut g, GROUP_1M, "writer", default_cache(), sets);
    bench_writer_1t(&mut g, GROUP_1M, "writer_2Mi_cache", 1 << 21, sets);
    bench_map_1t(&mut g, "mutex_map", &MutexMap::new(), sets);
    bench_map_1t(&mut g, "striped_256", &StripedMap::new(), sets);
    g.finish();
}

/// Fills a fresh aggregator with `sets` through one writer whose cache has
/// capacity `cache_slots`, reports the cache hit rate of round-robin updates, then
/// benchmarks them, through `Writer::record` and through the raw-identity API.
fn bench_writer_1t(
    g: &mut BenchmarkGroup<'_, WallTime>,
    group: &str,
    id: &str,
    cache_slots: usize,
    sets: &[Labels],
) {
    let agg = Aggregator::new(config(cache_slots));
    let mut w = agg.writer();
    fill(&mut w, sets);
    let hits = hit_rate(&mut w, sets);
    eprintln!(
        "{group}/{id}: {} series, cache capacity {cache_slots}, {} label sets cached, hit rate {:.1}%",
        sets.len(),
        w.cached(),
        hits * 100.0
    );
    let n = sets.len();
    let mut i = 0;
    g.bench_function(id, |b| {
        b.iter(|| {
            let l = &sets[next(&mut i, n)];
            black_box(w.record(METRIC, black_box(l), ONE, 0))
        })
    });
    // The same updates through the raw-identity API: the receiver hands over the
    // series' identity as the contiguous bytes it received (a StatsD line's name and
    // tags), so nothing is encoded on a hit.
    let raws = raw_identities(sets);
    let mut i = 0;
    g.bench_function(format!("{id}_raw"), |b| {
        b.iter(|| {
            let k = next(&mut i, n);
            record_raw(&mut w, black_box(&raws[k]), &sets[k])
        })
    });
}

/// StatsD-style identity bytes of each label set: `name|#k:v,k:v` in arrival order.
fn raw_identities(sets: &[Labels]) -> Vec<Vec<u8>> {
    sets.iter()
        .map(|l| {
            let tags: Vec<String> = l.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{METRIC}|#{}", tags.join(",")).into_bytes()
        })
        .collect()
}

/// A receiver's update: the cache by raw bytes, the labels only on a miss.
#[inline]
fn record_raw(w: &mut Writer, raw: &[u8], labels: &Labels) -> bool {
    match w.record_cached(raw, ONE, 0) {
        Ok(true) => true,
        _ => w.record_with_raw(raw, METRIC, labels, ONE, 0).is_ok(),
    }
}

/// Fraction of round-robin updates over `sets` that hit `w`'s cache (after a warm
/// round), from the writer's own miss count.
fn hit_rate(w: &mut Writer, sets: &[Labels]) -> f64 {
    let rounds = (200_000 / sets.len()).max(2);
    let before = w.cache_misses();
    for _ in 0..rounds {
        fill(w, sets);
    }
    let misses = w.cache_misses() - before;
    1.0 - misses as f64 / (rounds * sets.len()) as f64
}

fn bench_map_1t<M: CounterMap>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    map: &M,
    sets: &[Labels],
) {
    let mut w = MapWriter::new(map);
    for l in sets {
        w.insert(METRIC, l);
    }
    assert_eq!(map.len(), sets.len());
    let n = sets.len();
    let mut i = 0;
    g.bench_function(id, |b| {
        b.iter(|| {
            let l = &sets[next(&mut i, n)];
            black_box(w.add(METRIC, black_box(l), 1.0))
        })
    });
}

/// Runs `f(state, thread, series index)` `iters` times on each of two threads (thread
/// 0 and 1), each starting
/// half-way round the other's position (so they do not write the same cell at the same
/// instant), released together by a barrier. Returns the slower thread's time.
fn two_threads<S: Send>(
    iters: u64,
    states: &mut [S; 2],
    n: usize,
    f: impl Fn(&mut S, usize, usize) + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        let handles: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(t, st)| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    let mut i = t * n / 2;
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        f(st, t, next(&mut i, n));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

/// 2 and 7: the same updates from two threads; one "element" is one point on each
/// thread, so the reported rate is the total over both threads.
fn update_2t_10k(c: &mut Criterion) {
    let sets = &sets()[..SMALL];
    let mut g = c.benchmark_group("update_2t_10k");
    modest(&mut g);
    g.throughput(Throughput::Elements(2));

    let agg = Aggregator::new(config(default_cache()));
    let mut writers = [agg.writer(), agg.writer()];
    for w in &mut writers {
        fill(w, sets);
    }
    g.bench_function("writer", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &mut writers, SMALL, |w, _, i| {
                black_box(w.record(METRIC, black_box(&sets[i]), ONE, 0)).ok();
            })
        })
    });
    let raws = raw_identities(sets);
    g.bench_function("writer_raw", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &mut writers, SMALL, |w, _, i| {
                black_box(record_raw(w, black_box(&raws[i]), &sets[i]));
            })
        })
    });
    // Diagnostic: each thread on its own half of the series (no shared cells), to
    // separate cache-line transfer from everything else.
    g.bench_function("writer_disjoint_halves", |b| {
        b.iter_custom(|iters| {
            let half = SMALL / 2;
            two_threads(iters, &mut writers, half, |w, t, i| {
                let l = &sets[t * half + i];
                black_box(w.record(METRIC, black_box(l), ONE, 0)).ok();
            })
        })
    });
    drop(writers);
    drop(agg);

    let mutex = MutexMap::new();
    bench_map_2t(&mut g, "mutex_map", &mutex, sets);
    let striped = StripedMap::new();
    bench_map_2t(&mut g, "striped_256", &striped, sets);
    g.finish();
}

fn bench_map_2t<M: CounterMap>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    map: &M,
    sets: &[Labels],
) {
    let mut ws = [MapWriter::new(map), MapWriter::new(map)];
    for l in sets {
        ws[0].insert(METRIC, l);
    }
    let n = sets.len();
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &mut ws, n, |w, _, i| {
                black_box(w.add(METRIC, black_box(&sets[i]), 1.0));
            })
        })
    });
}

/// 3: update through a pre-resolved handle.
fn handle(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle");
    modest(&mut g);
    g.throughput(Throughput::Elements(1));
    let agg = Aggregator::new(config(default_cache()));
    let h = agg
        .handle(METRIC, &sets()[0], MetricKind::Counter)
        .expect("handle");
    g.bench_function("add_integer", |b| {
        b.iter(|| black_box(h.add(black_box(1.0))))
    });
    g.bench_function("add_float", |b| b.iter(|| black_box(h.add(black_box(0.5)))));
    g.bench_function("increment", |b| {
        b.iter(|| black_box(h.increment(black_box(1))))
    });
    // Ceiling: a bare relaxed integer fetch_add on one hot word.
    let word = std::sync::atomic::AtomicI64::new(0);
    g.bench_function("ceiling_fetch_add", |b| {
        b.iter(|| black_box(&word).fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    });
    g.finish();
}

/// 4: creation of new series through a Writer (labels unsorted, default cache). Each
/// fresh aggregator takes up to `CREATE_CHUNK` new series, then is dropped untimed.
fn create(c: &mut Criterion) {
    let sets = &sets()[..CREATE_CHUNK];
    let mut g = c.benchmark_group("create");
    modest(&mut g);
    g.throughput(Throughput::Elements(1));
    g.bench_function("writer/new_series", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(CREATE_CHUNK as u64) as usize;
                let agg = Aggregator::new(config(default_cache()));
                let mut w = agg.writer();
                let start = Instant::now();
                for l in &sets[..chunk] {
                    black_box(w.record(METRIC, black_box(l), ONE, 0)).ok();
                }
                total += start.elapsed();
                assert_eq!(agg.stats().created_series, chunk as u64);
                left -= chunk as u64;
            }
            total
        })
    });
    g.finish();
}

/// 5: fingerprint and key construction vs a cache-hit lookup.
fn key(c: &mut Criterion) {
    let sets = &sets()[..SMALL];
    let mut g = c.benchmark_group("key");
    modest(&mut g);
    g.throughput(Throughput::Elements(1));
    // Series 8 (method POST) has a canonical key of exactly 80 bytes.
    let canonical = SeriesKey::new(METRIC, &sets[8]).expect("key");
    let bytes = canonical.as_bytes().to_vec();
    assert_eq!(bytes.len(), 80, "{canonical}");
    g.bench_function("fnv1a64_80B", |b| b.iter(|| fnv1a64(black_box(&bytes))));
    let fold = foldhash::fast::FixedState::default();
    g.bench_function("foldhash_80B", |b| {
        b.iter(|| fold.hash_one(black_box(&bytes[..])))
    });
    // The benches' copy of the arrival-order encoding a Writer does before its cache
    // lookup (core's `encode_raw` is crate-private; this one skips its sortedness check).
    let mut raw = Vec::with_capacity(256);
    g.bench_function("encode_raw_copy", |b| {
        b.iter(|| {
            encode_raw(&mut raw, METRIC, black_box(&sets[8]));
            black_box(raw.len())
        })
    });
    let mut i = 0;
    g.bench_function("series_key_new_unsorted", |b| {
        b.iter(|| SeriesKey::new(METRIC, black_box(&sets[next(&mut i, SMALL)])))
    });
    // A whole cache-hit update, cache-resident (100 series), for comparison.
    let sets = &sets[..100];
    let agg = Aggregator::new(config(default_cache()));
    let mut w = agg.writer();
    fill(&mut w, sets);
    assert!(hit_rate(&mut w, sets) > 0.99);
    let mut i = 0;
    g.bench_function("writer_cache_hit_100_series", |b| {
        b.iter(|| {
            let l = &sets[next(&mut i, 100)];
            black_box(w.record(METRIC, black_box(l), ONE, 0))
        })
    });
    g.finish();
}

/// 6: flush of N counter series, each updated once since the previous flush. Updates
/// go through pre-resolved handles, untimed; only `flush()` is timed (the returned
/// batch is dropped, or in `counters_recycled` handed back for reuse, untimed), and in
/// `counters_chunked` the daemon's chunked flush (`flush_chunked`).
fn flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("flush");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    for (n, label) in [(FLUSH_SMALL, "100k"), (LARGE, "1M")] {
        let agg = Aggregator::new(config(default_cache()));
        let handles: Vec<SeriesHandle> = sets()[..n]
            .iter()
            .map(|l| agg.handle(METRIC, l, MetricKind::Counter).expect("handle"))
            .collect();
        drop(agg.flush()); // the flusher takes in the new series
        g.throughput(Throughput::Elements(n as u64));
        // `counters_recycled` hands each batch back (`Aggregator::recycle`, untimed, as
        // the daemon's flush loop does), so the flush fills the previous allocation.
        for (row, recycle) in [("counters", false), ("counters_recycled", true)] {
            g.bench_function(format!("{row}/{label}"), |b| {
                b.iter_custom(|iters| {
                    after_updates(iters, &handles, || {
                        let start = Instant::now();
                        let batch = agg.flush();
                        let took = start.elapsed();
                        assert_eq!(batch.series.len(), n);
                        if recycle {
                            agg.recycle(black_box(batch));
                        } else {
                            drop(black_box(batch));
                        }
                        took
                    })
                })
            });
        }
        // The daemon's flush: the same walk handed over in chunks of 8,192 entries
        // (its `FLUSH_CHUNK`), each lent to the consumer here where the daemon encodes
        // it and emptied inside the timing, so one chunk's allocation (~330 KB, within
        // a core's cache) serves the whole flush.
        g.bench_function(format!("counters_chunked/{label}"), |b| {
            b.iter_custom(|iters| {
                after_updates(iters, &handles, || {
                    let mut flushed = 0;
                    let start = Instant::now();
                    agg.flush_chunked(1 << 13, |chunk| flushed += black_box(chunk).series.len());
                    let took = start.elapsed();
                    assert_eq!(flushed, n);
                    took
                })
            })
        });
        // Reference: only allocating and filling a fresh `Vec<FlushedSeries>` of `n`
        // entries (what every flush builds), without touching any series.
        let template = agg.flush().series.swap_remove(0);
        g.bench_function(format!("batch_vec_only/{label}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut v: Vec<FlushedSeries> = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(black_box(&template).clone());
                    }
                    total += start.elapsed();
                    drop(black_box(v));
                }
                total
            })
        });
    }
    g.finish();
}

/// `iters` rounds of one update to every handle (untimed), then `flush`, which returns
/// the time of its own timed part; the sum of those times.
fn after_updates(
    iters: u64,
    handles: &[SeriesHandle],
    mut flush: impl FnMut() -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        for h in handles {
            h.add(1.0).expect("counter");
        }
        total += flush();
    }
    total
}

criterion_group!(
    benches,
    update_1t_10k,
    update_2t_10k,
    update_1t_1m,
    handle,
    create,
    key,
    flush
);
criterion_main!(benches);
