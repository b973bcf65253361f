//! Flush-to-acknowledged time of a 100k-series flush through a remote write pipeline
//! (encode, WAL append + fsync, send, acknowledgement) into a real local Prometheus,
//! in-process (the pipeline and the aggregator of weir-collector, no daemon), and the
//! client-side latency of OTLP exports to weir's receiver meanwhile, against a no-op
//! server and against weir idle. (Was `src/bin/pipeline_latency.rs`.)
//!
//! Needs the `prometheus` binary (Debian's `prometheus` package); it is started on a
//! free 127.0.0.1 port with its own data directory and stopped at the end.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::Settings;
use crate::harness::otlp::{harness, measure, noop_server, pct, request};
use crate::harness::process::{Proc, WorkDir, free_port, http_get};
use crate::harness::report::Section;
use weir_collector::config::{Config, OtlpReceiverConfig};
use weir_collector::pipeline::Pipeline;
use weir_collector::sources::otlp::OtlpReceiver;
use weir_core::{Sample, Temporality};

const SERIES: usize = 100_000;

/// A Prometheus with the remote-write receiver (stopped on drop).
struct Prometheus {
    _proc: Proc,
    addr: SocketAddr,
    _dir: WorkDir,
}

impl Prometheus {
    fn start() -> Result<Prometheus> {
        let dir = WorkDir::new("prometheus")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = dir.write("prometheus.yml", "global:\n  scrape_interval: 1m\n")?;
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver");
        let mut proc = Proc::spawn("prometheus", c, &dir)?;
        let a = addr.to_string();
        proc.wait_ready(Duration::from_secs(60), || {
            http_get(&a, "/-/ready").is_some()
        })?;
        Ok(Prometheus {
            _proc: proc,
            addr,
            _dir: dir,
        })
    }
}

/// Timings of one round, milliseconds.
struct Round {
    flush: f64,
    encode_and_wal: f64,
    to_acknowledged: f64,
}

/// Runs `rounds` rounds (default 5; quick 2).
pub fn run(s: &Settings, rounds: Option<usize>) -> Result<Section> {
    let rounds = rounds.unwrap_or(if s.quick { 2 } else { 5 }).max(1);
    let n_otlp = if s.quick { 50 } else { 2_000 };
    let dir = WorkDir::new("pipeline")?;
    let prometheus = Prometheus::start()?;
    let (rt, agg) = harness()?;
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
            dir.path().join("weir").display(),
            prometheus.addr
        ),
        "pipeline_latency",
    )
    .context("config")?;
    let req = request();
    let pb = s.bar(
        rounds as u64 + 1,
        "pipeline: 100k-series flushes to Prometheus",
    );
    rt.block_on(async {
        let pipeline = Arc::new(
            Pipeline::start(&config.pipelines[0], &config.data_dir)
                .await
                .context("pipeline")?,
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
        .context("otlp receiver")?;
        let weir_addr = otlp.grpc_addr.context("grpc address")?;
        let base = measure(noop_server().await?, n_otlp, 100, &req).await?;
        let idle = measure(weir_addr, n_otlp, 100, &req).await?;

        // Warm-up round: creates the 100k series in Prometheus' head block.
        let warm = tokio::task::spawn_blocking({
            let (agg, pipeline, bump) = (agg.clone(), pipeline.clone(), bump.clone());
            move || {
                bump();
                pipeline.accept(&agg.flush())
            }
        })
        .await
        .context("warm-up")?;
        anyhow::ensure!(
            pipeline
                .wait_delivered(warm, Duration::from_secs(60))
                .await
                .delivered,
            "the warm-up flush was not delivered"
        );
        pb.inc(1);

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
                    if !outcome.delivered {
                        done.store(true, Ordering::Relaxed);
                        anyhow::bail!("a flush was not delivered: {outcome:?}");
                    }
                    out.push(Round {
                        flush: flush.as_secs_f64() * 1e3,
                        encode_and_wal: (written - flush).as_secs_f64() * 1e3,
                        to_acknowledged: started.elapsed().as_secs_f64() * 1e3,
                    });
                }
                done.store(true, Ordering::Relaxed);
                Ok(out)
            })
        };
        let mut during = Vec::new();
        while !done.load(Ordering::Relaxed) {
            during.extend(measure(weir_addr, 200, 0, &req).await?);
        }
        during.sort();
        let results = runner.await.context("rounds")??;
        pb.finish_and_clear();

        let query = http_get(
            &prometheus.addr.to_string(),
            "/api/v1/query?query=count(bench_requests_total)",
        )
        .unwrap_or_default();
        let held = query
            .split("\"value\":[")
            .nth(1)
            .and_then(|v| v.split('"').nth(1))
            .unwrap_or("?")
            .to_owned();
        let mut sec = Section {
            scenario: "pipeline".into(),
            title: "Pipeline: a 100k-series flush to acknowledged by Prometheus, in-process".into(),
            columns: ["round", "flush ms", "encode + WAL append + fsync ms", "flush to acknowledged ms"]
                .map(String::from)
                .to_vec(),
            ..Section::default()
        };
        for (i, r) in results.iter().enumerate() {
            sec.rows.push(vec![
                (i + 1).to_string(),
                format!("{:.1}", r.flush),
                format!("{:.1}", r.encode_and_wal),
                format!("{:.1}", r.to_acknowledged),
            ]);
        }
        let us = |l: &[Duration]| format!("{:.0} / {:.0} / {:.0}", pct(l, 0.5), pct(l, 0.99), pct(l, 0.999));
        sec.notes.push(format!(
            "{SERIES} series per flush, remote write to Prometheus 2.42 on 127.0.0.1 (request bodies <= 1 MiB, \
             WAL fsync per flush); Prometheus holds {held} series at the end."
        ));
        sec.notes.push(format!(
            "OTLP exports of 1,000 points, p50 / p99 / p99.9 µs at the client: no-op server {}, weir idle {}, \
             weir during the rounds {} ({} exports)",
            us(&base),
            us(&idle),
            us(&during),
            during.len()
        ));
        sec.data = json!({
            "rounds": results.iter().map(|r| json!({"flush_ms": r.flush, "encode_and_wal_ms": r.encode_and_wal,
                "to_acknowledged_ms": r.to_acknowledged})).collect::<Vec<_>>(),
            "prometheus_series": held,
            "otlp_us": {
                "noop": [pct(&base, 0.5), pct(&base, 0.99), pct(&base, 0.999)],
                "idle": [pct(&idle, 0.5), pct(&idle, 0.99), pct(&idle, 0.999)],
                "during": [pct(&during, 0.5), pct(&during, 0.99), pct(&during, 0.999)],
            },
        });
        otlp.stop();
        drop(dir);
        Ok(sec)
    })
}
