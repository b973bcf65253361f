//! Scenario 3: OTLP gRPC Export latency at the client (1,000 points per request, one
//! request at a time), to weir's release binary while it holds 100k other series
//! and flushes them every second, against a no-op server of the same tonic stack
//! (in the harness' process) side by side: the difference is what weir adds.
//! (Was `src/bin/otlp_latency.rs`, which ran weir's receiver in-process.)

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::otlp::{measure, noop_server, pct, request, request_named};
use crate::harness::peers::Weir;
use crate::harness::report::{Line, Plot, Section, mib, thousands};

/// Runs the scenario with `exports` requests per server (default 2,000; quick 50).
pub fn run(s: &Settings, exports: Option<usize>) -> Result<Section> {
    let n = exports.unwrap_or(if s.quick { 50 } else { 2_000 });
    let background = if s.quick { 2_000 } else { 100_000 };
    let warm_up = if s.quick { 5 } else { 100 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let weir = Weir::start(&s.weir_bin, "1s", "", "", "")?;
    let weir_addr = weir.otlp_grpc.parse()?;
    let pb = s.bar(3, "otlp: background series");
    let req = request();
    let (base, during, flush_cpu) = rt.block_on(async {
        // The background series, 1,000 per request.
        let bg: Vec<_> = (0..background / 1000)
            .map(|i| request_named(&format!("bg{i}")))
            .collect();
        for r in &bg {
            measure(weir_addr, 1, 0, r).await?;
        }
        pb.inc(1);
        pb.set_message("otlp: no-op server");
        let noop = noop_server().await?;
        let base = measure(noop, n, warm_up, &req).await?;
        pb.inc(1);
        pb.set_message("otlp: weir, flushing every second");
        let cpu0 = weir.proc.stats().cpu_seconds;
        let during = measure(weir_addr, n, warm_up, &req).await?;
        pb.inc(1);
        Ok::<_, anyhow::Error>((base, during, weir.proc.stats().cpu_seconds - cpu0))
    })?;
    pb.finish_and_clear();
    let st = weir.proc.stats();
    let held = weir.self_metric("weir_active_series").unwrap_or(f64::NAN);
    let mut sec = Section {
        scenario: "otlp".into(),
        title: "OTLP Export latency while 100k series flush".into(),
        columns: [
            "server",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "added p50 / p99 / p99.9 µs",
            "CPU s",
            "peak RSS",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    sec.notes.push(format!(
        "{n} exports of 1,000 delta counter points per server after {warm_up} warm-up ones, over loopback, one \
         at a time; weir holds {} more series ({} active by its own count) and flushes every second. The \
         no-op server runs in the harness' process (tonic, same stack as weir's receiver).",
        thousands(background as f64),
        thousands(held)
    ));
    let p = |l: &[Duration]| (pct(l, 0.5), pct(l, 0.99), pct(l, 0.999));
    let (b50, b99, b999) = p(&base);
    let (w50, w99, w999) = p(&during);
    sec.rows.push(vec![
        "no-op (same tonic stack)".into(),
        format!("{b50:.0}"),
        format!("{b99:.0}"),
        format!("{b999:.0}"),
        "(baseline)".into(),
        "-".into(),
        "-".into(),
    ]);
    sec.rows.push(vec![
        format!(
            "weir, {} series flushing every 1 s",
            thousands(background as f64)
        ),
        format!("{w50:.0}"),
        format!("{w99:.0}"),
        format!("{w999:.0}"),
        format!(
            "{:+.0} / {:+.0} / {:+.0}",
            w50 - b50,
            w99 - b99,
            w999 - b999
        ),
        format!("{flush_cpu:.2}"),
        mib(st.peak_rss_bytes),
    ]);
    let qs = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999];
    let curve = |l: &[Duration]| {
        qs.iter()
            .map(|&q| (q * 100.0, pct(l, q)))
            .collect::<Vec<_>>()
    };
    sec.plots.push(Plot {
        name: "otlp_latency".into(),
        title: "OTLP Export latency at the client".into(),
        x: "percentile".into(),
        y: "µs".into(),
        log_x: false,
        lines: vec![
            Line {
                label: "no-op server".into(),
                points: curve(&base),
            },
            Line {
                label: "weir, flushing 100k series".into(),
                points: curve(&during),
            },
        ],
    });
    sec.data = json!({
        "exports": n, "background_series": background, "weir_active_series": held,
        "noop_us": {"p50": b50, "p99": b99, "p999": b999},
        "weir_us": {"p50": w50, "p99": w99, "p999": w999},
        "weir_cpu_seconds": flush_cpu, "weir": st,
    });
    drop(weir);
    rt.shutdown_background();
    Ok(sec)
}
