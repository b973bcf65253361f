//! Parser throughput (issue "Receivers"): the StatsD decoder on realistic datagrams,
//! lines/s and bytes/s, with the series already cached (the steady state) and with
//! the parse alone (no aggregation); each beside the parser it replaced
//! (`*_before`, from `statsd_baseline/`) and a minimal parse + hash + add loop.
//!
//! Run: `cargo bench -p weir-benches --bench parse`; see `benches/README.md`.

mod exposition_bench;
mod statsd_baseline;

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_core::parse::statsd::{Decoder, lines, parse_line};
use weir_core::{Aggregator, AggregatorConfig};

/// ~88 lines per datagram (the DESIGN's loopback measurement), 1,000 series in all:
/// counters with tags, gauges, timers with a sample rate.
fn datagrams() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut line_no = 0u32;
    for _ in 0..64 {
        let mut d = String::new();
        for _ in 0..88 {
            let s = line_no % 1000;
            match line_no % 3 {
                0 => d.push_str(&format!(
                    "app.http.requests:1|c|#route:/api/v1/items/{s},method:GET,status:200\n"
                )),
                1 => d.push_str(&format!("app.queue.depth:{s}|g|#queue:q{s}\n")),
                _ => d.push_str(&format!("app.db.latency:{}|ms|@0.5|#table:t{s}\n", s % 97)),
            }
            line_no += 1;
        }
        out.push(d.into_bytes());
    }
    out
}

fn statsd(c: &mut Criterion) {
    let grams = datagrams();
    let bytes: usize = grams.iter().map(Vec::len).sum();
    let nlines: usize = grams.iter().map(|g| lines(g).count()).sum();
    let mut g = c.benchmark_group("statsd");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.throughput(Throughput::Elements(nlines as u64));
    g.bench_function("parse_only_lines", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for d in &grams {
                for l in lines(d) {
                    ok += usize::from(parse_line(black_box(l)).is_ok());
                }
            }
            ok
        })
    });
    g.bench_function("parse_only_lines_before", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for d in &grams {
                for l in statsd_baseline::lines(d) {
                    ok += usize::from(statsd_baseline::parse_line(black_box(l)).is_ok());
                }
            }
            ok
        })
    });
    let aggregator = || {
        Aggregator::new(AggregatorConfig {
            series_ttl: Duration::ZERO,
            ..AggregatorConfig::default()
        })
    };
    let agg = aggregator();
    let mut w = agg.writer();
    let mut decoder = Decoder::default();
    for d in &grams {
        decoder.ingest(d, &mut w); // create and cache every series
    }
    g.bench_function("ingest_cached_lines", |b| {
        b.iter(|| {
            let mut samples = 0;
            for d in &grams {
                samples += decoder.ingest(black_box(d), &mut w).samples;
            }
            samples
        })
    });
    let before_agg = aggregator();
    let mut before_w = before_agg.writer();
    let mut before = statsd_baseline::Decoder::default();
    for d in &grams {
        before.ingest(d, &mut before_w);
    }
    g.bench_function("ingest_cached_lines_before", |b| {
        b.iter(|| {
            let mut samples = 0;
            for d in &grams {
                samples += before.ingest(black_box(d), &mut before_w).samples;
            }
            samples
        })
    });
    // The DESIGN's "minimal parse + hash + add loop", on the same datagrams: split
    // lines, cut out the value, hash the rest with foldhash, add the integer part
    // into a pre-filled map. No validation, no sanitising, no sample kinds: the
    // ceiling a real decoder is quoted against.
    let mut minimal: HashMap<u64, f64, foldhash::fast::FixedState> = HashMap::default();
    let minimal_pass = |map: &mut HashMap<u64, f64, foldhash::fast::FixedState>, d: &[u8]| {
        let mut n = 0u64;
        for l in d.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Some(colon) = l.iter().position(|&b| b == b':') else {
                continue;
            };
            let pipe = l[colon..]
                .iter()
                .position(|&b| b == b'|')
                .map_or(l.len(), |p| colon + p);
            let value = l[colon + 1..pipe]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
            let key = map.hasher().hash_one((&l[..colon], &l[pipe..]));
            *map.entry(key).or_default() += value as f64;
            n += 1;
        }
        n
    };
    for d in &grams {
        minimal_pass(&mut minimal, d);
    }
    g.bench_function("minimal_loop_lines", |b| {
        b.iter(|| {
            let mut n = 0;
            for d in &grams {
                n += minimal_pass(&mut minimal, black_box(d));
            }
            n
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ingest_cached_bytes", |b| {
        b.iter(|| {
            for d in &grams {
                decoder.ingest(black_box(d), &mut w);
            }
        })
    });
    g.finish();
    eprintln!(
        "statsd: {} datagrams, {nlines} lines, {bytes} bytes, {} series ({} in the minimal loop's map)",
        grams.len(),
        agg.stats().active_series,
        minimal.len()
    );
}

/// `n` series of the `statsd_load` harness's shape (`load.requests:1|c|#series:sN`),
/// every series once, 42 lines per datagram.
fn scale_datagrams(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for i in 0..n {
        let line = format!("load.requests:1|c|#series:s{i}\n");
        if cur.len() + line.len() > 1400 {
            out.push(std::mem::take(&mut cur).into_bytes());
        }
        cur.push_str(&line);
    }
    out.push(cur.into_bytes());
    out
}

/// Issue 13: the decoder with every series already created, at 10k, 100k and 1M
/// series, lines/s on one thread. `cache_all` rows size the writer cache to hold every
/// series (so a change shows the cost of a hit alone); the `default_cache` row keeps
/// the default `writer_cache_capacity`, whatever it is at the commit measured.
fn statsd_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("statsd_scale");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let rows: [(&str, usize, bool); 4] = [
        ("cache_all_10k", 10_000, true),
        ("cache_all_100k", 100_000, true),
        ("default_cache_100k", 100_000, false),
        ("cache_all_1m", 1_000_000, true),
    ];
    for (name, n, cache_all) in rows {
        let grams = scale_datagrams(n);
        let defaults = AggregatorConfig::default();
        let agg = Aggregator::new(AggregatorConfig {
            series_ttl: Duration::ZERO,
            max_series: n,
            max_series_per_metric: n,
            writer_cache_capacity: if cache_all {
                n
            } else {
                defaults.writer_cache_capacity
            },
            ..defaults
        });
        let mut w = agg.writer();
        let mut decoder = Decoder::default();
        for d in &grams {
            decoder.ingest(d, &mut w); // create every series
        }
        drop(agg.flush()); // a full cache refills after a flush, as in the daemon
        for d in &grams {
            decoder.ingest(d, &mut w);
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut samples = 0;
                for d in &grams {
                    samples += decoder.ingest(black_box(d), &mut w).samples;
                }
                samples
            })
        });
    }
    g.finish();
}

criterion_group!(benches, statsd, statsd_scale, exposition_bench::exposition);
criterion_main!(benches);
