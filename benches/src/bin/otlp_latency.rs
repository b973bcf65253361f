//! Load harness: client-side latency of OTLP gRPC exports of 1,000-point requests to
//! weir's receiver, against a no-op server of the same stack side by side (the
//! difference is what weir adds), idle and while a flush of 100k series runs every
//! 100 ms in the same process.
//!
//! Run: `cargo run --release -p weir-benches --bin otlp_latency [requests]`
//! (default 2,000 per scenario). Everything is on 127.0.0.1 ports chosen by the OS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_benches::otlp_load::{harness, measure, noop_server, request, row};
use weir_collector::config::OtlpReceiverConfig;
use weir_collector::sources::otlp::OtlpReceiver;
use weir_core::{Sample, Temporality};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let (rt, agg) = harness();
    // 100k more series so that the flush scenario flushes a realistic map.
    {
        let mut w = agg.writer();
        for i in 0..100_000 {
            let id = i.to_string();
            w.record(
                "background_total",
                &[("id", &id)],
                Sample::Counter(1.0, Temporality::Delta),
                0,
            )
            .expect("series");
        }
    }
    let req = request();
    rt.block_on(async {
        let config = OtlpReceiverConfig {
            grpc_address: "127.0.0.1:0".parse().expect("addr"),
            http_address: "127.0.0.1:0".parse().expect("addr"),
            ..OtlpReceiverConfig::default()
        };
        let weir = OtlpReceiver::start(&config, &agg)
            .await
            .expect("start weir");
        let weir_addr = weir.grpc_addr.expect("grpc");
        let noop_addr = noop_server().await;
        let base = measure(noop_addr, n, &req).await;
        let idle = measure(weir_addr, n, &req).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (agg, stop) = (agg.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut flushes = 0u32;
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    agg.flush();
                    worst = worst.max(t.elapsed());
                    flushes += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                (flushes, worst)
            })
        };
        let flushing = measure(weir_addr, n, &req).await;
        stop.store(true, Ordering::Relaxed);
        let (flushes, worst) = flusher.join().expect("flusher");
        println!("{n} exports of 1,000 points per scenario; latency at the client, microseconds");
        println!();
        println!("| scenario | p50 | p99 | p99.9 | added vs no-op (p50 / p99 / p99.9) |");
        println!("|---|---|---|---|---|");
        row("no-op gRPC server (same tonic stack)", &base, None);
        row("weir, idle", &idle, Some(&base));
        row(
            &format!(
                "weir, {flushes} flushes of ~101k series meanwhile (slowest {:.1} ms)",
                worst.as_secs_f64() * 1e3
            ),
            &flushing,
            Some(&base),
        );
        weir.stop();
    });
}
