//! Scenario 2: resident memory of each StatsD daemon holding 10k, 100k and 1M active
//! series (quick: 1k), and what that is per series.
//!
//! Per daemon and series count: start it, read its RSS idle, send every series twice
//! at a rate every daemon takes, wait until its totals have settled, read RSS and
//! peak RSS (`VmRSS`, `VmHWM`). The series it holds are counted from its output, so
//! a daemon that lost lines is charged for the series it really holds. Every daemon
//! runs with the same [`DaemonOptions`] (flush interval, memory cap); one whose RSS
//! passes the cap is killed there and its row says "stopped at cap".

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::peers::{DaemonOptions, SettleEnd, StatsdPeer, StatsdPeerKind};
use crate::harness::report::{Line, Plot, Section, mib, thousands};
use crate::harness::statsd::{Shape, datagrams, send_rounds};

/// How long a daemon's totals get to settle: 120 s, or twelve flush intervals if longer.
fn settle_limit(daemons: &DaemonOptions) -> Duration {
    Duration::from_secs(120).max(daemons.flush_interval * 12)
}

/// Runs the scenario, every daemon started with `daemons`.
pub fn run(
    s: &Settings,
    series_counts: &[usize],
    peers: &[StatsdPeerKind],
    daemons: &DaemonOptions,
) -> Result<Section> {
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
         (`VmRSS`, `VmHWM`) after the daemon's totals settled (at most {:?}); bytes per series = (RSS - idle RSS) \
         / series held. Every daemon flushes every {:?}; a daemon whose RSS passes {} MiB is stopped there \
         (\"stopped at cap\").",
        thousands(rate),
        settle_limit(daemons),
        daemons.flush_interval,
        daemons.rss_cap_bytes >> 20,
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
            let peer = StatsdPeer::start(kind, &s.weir_bin, &s.benches_dir, daemons)?;
            std::thread::sleep(Duration::from_millis(500));
            let idle = peer.proc().stats();
            let sent = send_rounds(peer.port, &payloads, 2, rate)?;
            let settled = match peer.settled_total(sent as f64, settle_limit(daemons)) {
                Ok(t) => t,
                Err(e) => {
                    let Some((cap, rss)) = peer.stopped_at_cap() else {
                        return Err(e);
                    };
                    pb.finish_and_clear();
                    sec.notes.push(format!(
                        "{} @ {} series: stopped at the memory cap ({} MiB; RSS {} MiB) before its totals settled.",
                        kind.label(),
                        thousands(n as f64),
                        cap >> 20,
                        rss >> 20
                    ));
                    sec.rows.push(vec![
                        kind.label().into(),
                        thousands(n as f64),
                        "stopped at cap".into(),
                        mib(idle.rss_bytes),
                        format!("> {}", mib(cap)),
                        mib(rss),
                        "-".into(),
                    ]);
                    data.push(json!({
                        "daemon": kind.label(), "series": n, "lines_sent": sent, "idle": idle,
                        "stopped_at_cap": {"cap_bytes": cap, "rss_bytes": rss},
                    }));
                    continue;
                }
            };
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
