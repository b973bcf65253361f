//! Scenario 2: resident memory of each StatsD daemon holding 10k, 100k and 1M active
//! series (quick: 1k), and what that is per series.
//!
//! Per daemon and series count: start it, read its RSS idle, send every series twice
//! at a rate every daemon takes, wait until its totals have settled, read RSS and
//! peak RSS (`VmRSS`, `VmHWM`). The series it holds are counted from its output, so
//! a daemon that lost lines is charged for the series it really holds.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::peers::{SettleEnd, StatsdPeer, StatsdPeerKind};
use crate::harness::report::{Line, Plot, Section, mib, thousands};
use crate::harness::statsd::{Shape, datagrams, send_rounds};

/// Runs the scenario.
pub fn run(s: &Settings, series_counts: &[usize], peers: &[StatsdPeerKind]) -> Result<Section> {
    let rate = if s.quick { 50_000.0 } else { 100_000.0 };
    let mut sec = Section {
        scenario: "memory".into(),
        title: "Memory at N active StatsD series".into(),
        columns: [
            "daemon",
            "series sent",
            "series held",
            "RSS idle",
            "RSS",
            "peak RSS",
            "bytes per series",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    sec.notes.push(format!(
        "Counters `bench.requests.s<i>:1|c`, every series sent twice at {} lines/s; RSS from /proc \
         (`VmRSS`, `VmHWM`) after the daemon's totals settled; bytes per series = (RSS - idle RSS) / series held.",
        thousands(rate)
    ));
    let mut lines: Vec<Line> = Vec::new();
    let mut data = Vec::new();
    for &kind in peers {
        if !kind.installed(&s.benches_dir) {
            sec.notes.push(format!(
                "{} skipped: not installed (benches/setup-peers.sh)",
                kind.label()
            ));
            continue;
        }
        let mut pts = Vec::new();
        for &n in series_counts {
            let pb = s.bar(
                1,
                format!("memory: {} @ {} series", kind.label(), thousands(n as f64)),
            );
            let payloads = datagrams(n, Shape::Names);
            let peer = StatsdPeer::start(kind, &s.weir_bin, &s.benches_dir)?;
            std::thread::sleep(Duration::from_millis(500));
            let idle = peer.proc().stats();
            let sent = send_rounds(peer.port, &payloads, 2, rate)?;
            let settled = peer.settled_total(sent as f64, Duration::from_secs(120))?;
            let (held, total) = (settled.series, settled.sum);
            if settled.end == SettleEnd::TimedOut {
                sec.notes.push(format!(
                    "{} @ {} series: its totals were still moving after {:.0} s; RSS read then.",
                    kind.label(),
                    thousands(n as f64),
                    settled.waited.as_secs_f64()
                ));
            }
            let st = peer.proc().stats();
            let per = st.rss_bytes.saturating_sub(idle.rss_bytes) as f64 / held.max(1) as f64;
            pb.finish_and_clear();
            sec.rows.push(vec![
                kind.label().into(),
                thousands(n as f64),
                thousands(held as f64),
                mib(idle.rss_bytes),
                mib(st.rss_bytes),
                mib(st.peak_rss_bytes),
                format!("{per:.0}"),
            ]);
            pts.push((n as f64, st.rss_bytes as f64 / 1048576.0));
            data.push(json!({
                "daemon": kind.label(), "series": n, "series_held": held, "lines_sent": sent,
                "lines_aggregated": total, "idle": idle, "loaded": st, "bytes_per_series": per,
            }));
        }
        lines.push(Line {
            label: kind.label().into(),
            points: pts,
        });
    }
    sec.data = json!(data);
    sec.plots.push(Plot {
        name: "memory".into(),
        title: "RSS vs active series".into(),
        x: "series".into(),
        y: "RSS (MiB)".into(),
        log_x: true,
        lines,
    });
    Ok(sec)
}
