//! `weir-bench memory-core` (was `src/bin/memory.rs`): memory per series of
//! weir-core's aggregator, measured with a counting allocator (the binary's global
//! allocator; it adds a few relaxed atomic adds per allocation to every subcommand).
//!
//! Creates N counter series (`http_requests_total` + 4 labels given unsorted, canonical
//! key ~80 bytes) through one `Writer`, flushes once (so the flusher holds its dense
//! list, the steady state), and reports live heap bytes per series: with the writer
//! (whose cache holds raw unsorted keys, default capacity 65,536) and after dropping
//! it (index + series + flusher list only).
//!
//! "requested" counts the bytes asked of the allocator; "glibc est." adds glibc
//! malloc's per-block overhead (8-byte header, 16-byte rounding, 32-byte minimum).
//!
//! Also times one steady-state flush per N (every series updated once since the
//! previous flush; one sample, so a rough figure next to the criterion `flush` group).
//!
//! Run: `weir-bench memory-core [N ...]` (default 100000 1000000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use weir_benches::{LABEL_NAMES, METRIC, labels_of};
use weir_core::point::{Sample, Temporality};
use weir_core::{Aggregator, AggregatorConfig};

/// Wraps [`System`], tracking live requested bytes, live blocks and an estimate of
/// glibc's real footprint. Relaxed: independent counters read at quiet points.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_CHUNK: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

/// glibc malloc chunk size for a request of `size` bytes (alignment <= 16).
fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

fn on_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as isize, Ordering::Relaxed);
    LIVE_CHUNK.fetch_add(chunk(size), Ordering::Relaxed);
    LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
}

fn on_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as isize, Ordering::Relaxed);
    LIVE_CHUNK.fetch_sub(chunk(size), Ordering::Relaxed);
    LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only adds bookkeeping on the side, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        on_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            on_dealloc(layout.size());
            on_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Live {
    bytes: isize,
    chunk: isize,
    blocks: isize,
}

fn live() -> Live {
    Live {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        chunk: LIVE_CHUNK.load(Ordering::Relaxed),
        blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
    }
}

fn per_series(now: Live, base: Live, n: usize) -> (f64, f64, f64) {
    let n = n as f64;
    (
        (now.bytes - base.bytes) as f64 / n,
        (now.chunk - base.chunk) as f64 / n,
        (now.blocks - base.blocks) as f64 / n,
    )
}

fn row(what: &str, n: usize, (bytes, chunk, blocks): (f64, f64, f64)) {
    println!("| {n:>9} | {what:<50} | {bytes:>18.1} | {chunk:>19.1} | {blocks:>13.2} |");
}

fn measure(n: usize, flush_times: &mut Vec<(usize, usize, Duration)>) {
    let mut parts: [String; 4] = Default::default();
    let base = live();
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: Duration::ZERO,
        max_series: n.max(1),
        max_series_per_metric: n.max(1),
        ..AggregatorConfig::default()
    });
    let mut w = agg.writer();
    for i in 0..n {
        labels_of(i, &mut parts);
        let labels: [(&str, &str); 4] =
            std::array::from_fn(|j| (LABEL_NAMES[j], parts[j].as_str()));
        w.record(METRIC, &labels, Sample::Counter(1.0, Temporality::Delta), 0)
            .expect("series admitted");
    }
    assert_eq!(agg.stats().active_series, n);
    // `parts` keeps its capacity throughout: its few bytes are in `base` and `now` alike.
    row(
        "writer + index, before the first flush",
        n,
        per_series(live(), base, n),
    );
    drop(agg.flush());
    row(
        &format!("writer ({} cached) + index + flusher list", w.cached()),
        n,
        per_series(live(), base, n),
    );
    // A steady-state flush: every series updated once since the previous one.
    for i in 0..n {
        labels_of(i, &mut parts);
        let labels: [(&str, &str); 4] =
            std::array::from_fn(|j| (LABEL_NAMES[j], parts[j].as_str()));
        w.record(METRIC, &labels, Sample::Counter(1.0, Temporality::Delta), 0)
            .expect("series admitted");
    }
    let started = std::time::Instant::now();
    let batch = agg.flush();
    let took = started.elapsed();
    let flushed = batch.series.len();
    drop(batch);
    flush_times.push((n, flushed, took));
    drop(w);
    row(
        "index + series + flusher list (writer dropped)",
        n,
        per_series(live(), base, n),
    );
    drop(agg);
    let left = live().bytes - base.bytes;
    println!(
        "| {n:>9} | {:<50} | {:>18} | {:>19} | {:>13} |",
        "aggregator dropped: bytes still live", left, "", ""
    );
}

/// Sizes of the public types the per-series structures embed (the private `Series`
/// and `Cell` are sized by their largest variants: 88 bytes for every series, its
/// counter total included; the flusher's list holds an 8-byte address per series).
fn layout() {
    use std::mem::size_of;
    use weir_core::cell::{CounterCell, GaugeCell, HistogramCell, SummaryCell};
    use weir_core::point::HistogramValue;
    println!(
        "inline sizes: CounterCell {} B, GaugeCell {} B, HistogramCell {} B, SummaryCell {} B, \
         HistogramValue {} B, SeriesKey {} B, FlushedSeries {} B",
        size_of::<CounterCell>(),
        size_of::<GaugeCell>(),
        size_of::<HistogramCell>(),
        size_of::<SummaryCell>(),
        size_of::<HistogramValue>(),
        size_of::<weir_core::SeriesKey>(),
        size_of::<weir_core::FlushedSeries>(),
    );
}

/// Prints the table for each series count in `ns` (default 100k and 1M).
pub fn run(ns: &[usize]) {
    let ns = if ns.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        ns.to_vec()
    };
    let mut parts: [String; 4] = Default::default();
    labels_of(0, &mut parts);
    let labels: [(&str, &str); 4] = std::array::from_fn(|j| (LABEL_NAMES[j], parts[j].as_str()));
    let key = weir_core::SeriesKey::new(METRIC, &labels).expect("key");
    println!("series 0: {key} ({} canonical bytes)", key.as_bytes().len());
    layout();
    println!();
    println!(
        "| series N  | {:<50} | requested B/series | glibc est. B/series | blocks/series |",
        "state"
    );
    println!(
        "|{:-<11}|{:-<52}|{:-<20}|{:-<21}|{:-<15}|",
        "", "", "", "", ""
    );
    let mut flush_times = Vec::new();
    for n in ns {
        measure(n, &mut flush_times);
    }
    println!();
    for (n, flushed, took) in flush_times {
        println!(
            "flush of {n} series, each updated once since the previous flush: {:.1} ms \
             ({flushed} series in the batch)",
            took.as_secs_f64() * 1e3
        );
    }
}
