//! Write-ahead log throughput (`weir_core::wal`): appends of 64 KiB and 1 MiB request
//! bodies with an fdatasync after every append and without one, replay (reading every
//! record back, page cache warm), and recovery (`Wal::open` scanning every record).
//!
//! The WAL lives under `std::env::temp_dir()` (set `TMPDIR` to measure another disk).
//! Run: `cargo bench -p weir-benches --bench wal`; see `benches/README.md`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_core::wal::{Wal, WalConfig};

/// A fresh directory under the temp dir, removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn new(name: &str) -> BenchDir {
        let dir =
            std::env::temp_dir().join(format!("weir-bench-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        BenchDir(dir)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A request body of `len` bytes that does not compress to nothing (not that the WAL
/// compresses; it keeps the page cache honest).
fn body(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const SIZES: [(&str, usize); 2] = [("64KiB", 64 << 10), ("1MiB", 1 << 20)];

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, len) in SIZES {
        let payload = body(len);
        g.throughput(Throughput::Bytes(len as u64));
        for sync in [false, true] {
            let mode = if sync { "sync_each" } else { "no_sync" };
            let dir = BenchDir::new(&format!("append-{name}-{mode}"));
            // The default segment size; a 256 MiB cap keeps the disk use bounded (the
            // cap deletes the oldest segments, as with a dead backend).
            let config = WalConfig {
                cap_bytes: 256 << 20,
                ..WalConfig::default()
            };
            let mut wal = Wal::open(&dir.0, config).expect("open");
            g.bench_function(BenchmarkId::new(mode, name), |b| {
                b.iter(|| {
                    let at = wal.append(black_box(&payload)).expect("append");
                    if sync {
                        wal.sync().expect("sync");
                    }
                    at
                })
            });
            drop(wal);
        }
    }
    g.finish();
}

/// Fills a WAL in `dir` with `total` bytes of `len`-byte records, synced.
fn fill(dir: &Path, len: usize, total: usize) {
    let payload = body(len);
    let mut wal = Wal::open(dir, WalConfig::default()).expect("open");
    for _ in 0..total / len {
        wal.append(&payload).expect("append");
    }
    wal.sync().expect("sync");
}

fn replay(c: &mut Criterion) {
    const TOTAL: usize = 128 << 20;
    let mut g = c.benchmark_group("wal_replay");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(TOTAL as u64));
    for (name, len) in SIZES {
        let dir = BenchDir::new(&format!("replay-{name}"));
        fill(&dir.0, len, TOTAL);
        let wal = Wal::open(&dir.0, WalConfig::default()).expect("open");
        g.bench_function(BenchmarkId::new("read_all", name), |b| {
            b.iter(|| {
                let mut at = wal.acked();
                let mut bytes = 0usize;
                while let Some(r) = wal.read(at).expect("read") {
                    bytes += r.payload.len();
                    at = r.next;
                }
                assert_eq!(bytes, TOTAL / len * len);
                bytes
            })
        });
        // Recovery: open scans and checksums every record (page cache warm).
        g.bench_function(BenchmarkId::new("open_scan", name), |b| {
            b.iter(|| {
                let wal = Wal::open(&dir.0, WalConfig::default()).expect("open");
                wal.stats().unacked_records
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
