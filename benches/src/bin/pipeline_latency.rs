//! Load harness: flush-to-acknowledged time of a 100k-series flush through a remote
//! write pipeline (encode, WAL append + fsync, send, acknowledgement) into a real
//! local Prometheus, and the client-side latency of OTLP exports to weir's receiver
//! meanwhile, against a no-op server and against weir idle, side by side.
//!
//! Run: `cargo run --release -p weir-benches --bin pipeline_latency [rounds]`
//! (default 5 rounds). Needs the `prometheus` binary (Debian's `prometheus` package;
//! `scripts/test` installs it); it is started on a free 127.0.0.1 port with its own
//! data directory and stopped at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_benches::http;
use weir_benches::otlp_load::{harness, measure, noop_server, request, row};
use weir_collector::config::{Config, OtlpReceiverConfig};
use weir_collector::pipeline::Pipeline;
use weir_collector::sources::otlp::OtlpReceiver;
use weir_core::{Sample, Temporality};

const SERIES: usize = 100_000;

/// A Prometheus with the remote-write receiver, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: PathBuf) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (install Debian's `prometheus` package)");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(&p.addr.to_string(), "GET", "/-/ready").is_empty() {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Timings of one round, milliseconds.
struct Round {
    flush: f64,
    encode_and_wal: f64,
    to_acknowledged: f64,
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("weir-pipeline-latency-{}", std::process::id()));
    let prometheus = Prometheus::start(dir.join("prometheus"));
    let (rt, agg) = harness();
    let ids: Vec<String> = (0..SERIES).map(|i| i.to_string()).collect();
    let bump = {
        let agg = agg.clone();
        move || {
            let mut w = agg.writer();
            for id in &ids {
                w.record(
                    "bench_requests_total",
                    &[("id", id), ("service", "checkout")],
                    Sample::Counter(1.0, Temporality::Delta),
                    0,
                )
                .expect("series");
            }
        }
    };
    let config = Config::from_toml(
        &format!(
            "data_dir = \"{}\"\n[[pipelines]]\nname = \"prom\"\ntype = \"prometheus_remote_write\"\n\
             endpoint = \"http://{}/api/v1/write\"\n",
            dir.join("weir").display(),
            prometheus.addr
        ),
        "pipeline_latency",
    )
    .expect("config");
    let req = request();
    rt.block_on(async {
        let pipeline = Arc::new(
            Pipeline::start(&config.pipelines[0], &config.data_dir)
                .await
                .expect("pipeline"),
        );
        let otlp = OtlpReceiver::start(
            &OtlpReceiverConfig {
                grpc_address: "127.0.0.1:0".parse().expect("addr"),
                http_address: "127.0.0.1:0".parse().expect("addr"),
                ..OtlpReceiverConfig::default()
            },
            &agg,
        )
        .await
        .expect("otlp receiver");
        let weir_addr = otlp.grpc_addr.expect("grpc");
        let base = measure(noop_server().await, 2_000, &req).await;
        let idle = measure(weir_addr, 2_000, &req).await;

        // Warm-up round: creates the 100k series in Prometheus' head block.
        let warm = tokio::task::spawn_blocking({
            let (agg, pipeline, bump) = (agg.clone(), pipeline.clone(), bump.clone());
            move || {
                bump();
                pipeline.accept(&agg.flush())
            }
        })
        .await
        .expect("warm-up");
        assert!(
            pipeline
                .wait_delivered(warm, Duration::from_secs(60))
                .await
                .delivered
        );

        let done = Arc::new(AtomicBool::new(false));
        let runner = {
            let (agg, pipeline, done) = (agg.clone(), pipeline.clone(), done.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..rounds {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let (agg2, p2, bump2) = (agg.clone(), pipeline.clone(), bump.clone());
                    tokio::task::spawn_blocking(bump2).await.expect("bump");
                    let started = Instant::now();
                    let (head, flush, written) = tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        let batch = agg2.flush();
                        let flush = t.elapsed();
                        let head = p2.accept(&batch);
                        (head, flush, t.elapsed())
                    })
                    .await
                    .expect("flush");
                    let outcome = pipeline.wait_delivered(head, Duration::from_secs(60)).await;
                    assert!(outcome.delivered, "{outcome:?}");
                    out.push(Round {
                        flush: flush.as_secs_f64() * 1e3,
                        encode_and_wal: (written - flush).as_secs_f64() * 1e3,
                        to_acknowledged: started.elapsed().as_secs_f64() * 1e3,
                    });
                }
                done.store(true, Ordering::Relaxed);
                out
            })
        };
        let mut during = Vec::new();
        while !done.load(Ordering::Relaxed) {
            during.extend(measure(weir_addr, 200, &req).await);
        }
        during.sort();
        let results = runner.await.expect("rounds");

        let query = http(
            &prometheus.addr.to_string(),
            "GET",
            "/api/v1/query?query=count(bench_requests_total)",
        );
        println!(
            "{SERIES} series per flush, remote write to Prometheus 2.42 on 127.0.0.1 \
             (request bodies <= 1 MiB, WAL fsync per flush); milliseconds"
        );
        println!();
        println!("| round | flush | encode + WAL append + fsync | flush to acknowledged |");
        println!("|---|---|---|---|");
        for (i, r) in results.iter().enumerate() {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} |",
                i + 1,
                r.flush,
                r.encode_and_wal,
                r.to_acknowledged
            );
        }
        let mut total: Vec<f64> = results.iter().map(|r| r.to_acknowledged).collect();
        total.sort_by(f64::total_cmp);
        println!();
        println!(
            "flush to acknowledged: median {:.0} ms, worst {:.0} ms (target <= 1000 ms)",
            total[total.len() / 2],
            total[total.len() - 1]
        );
        println!(
            "Prometheus holds {} series",
            query
                .split("\"value\":[")
                .nth(1)
                .and_then(|v| v.split('"').nth(1))
                .unwrap_or("?")
        );
        println!();
        println!(
            "OTLP exports of 1,000 points, latency at the client, microseconds ({} exports during the rounds)",
            during.len()
        );
        println!();
        println!("| scenario | p50 | p99 | p99.9 | added vs no-op (p50 / p99 / p99.9) |");
        println!("|---|---|---|---|---|");
        row("no-op gRPC server (same tonic stack)", &base, None);
        row("weir, idle", &idle, Some(&base));
        row("weir, during 100k-series pipeline flushes", &during, Some(&base));
        otlp.stop();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
