//! Scenario 1: the highest StatsD rate each daemon takes with 0 % loss, at 10k, 100k
//! and 1M series (quick: 1k), and the loss at every offered rate tried.
//!
//! Per daemon and series count: start it, send every series once (so they all
//! exist), then probe rates: double from the start rate until a probe loses a line,
//! then bisect between the best loss-free rate and the first lossy one. A probe sends
//! for a fixed time, then reads the daemon's running totals once they have settled:
//! the lines it aggregated, against the lines sent, is the loss.
//!
//! Every wait is bounded ([`Probing`]): a daemon whose totals have not settled within
//! the settle limit after a probe is charged what it has not shown as loss (the probe
//! is marked "not settled"), and a daemon still digesting the previous probe when the
//! next one is due is probed no further (the notes say so), since its next reading
//! would mix two probes. So a daemon that cannot keep up ends its probing early
//! instead of holding the run. After a probe whose totals settled, the next probe
//! starts at once from them; only after one that did not settle does the harness wait
//! for the daemon to go quiet (with a 10 s flush that wait alone is 21 s).
//!
//! Every daemon runs with the same [`DaemonOptions`]: flush interval and memory cap. A
//! daemon whose RSS passes the cap is killed there; its row keeps the probes it
//! finished and says "stopped at cap".

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::peers::{DaemonOptions, SettleEnd, StatsdPeer, StatsdPeerKind};
use crate::harness::report::{Line, Plot, Section, mib, thousands};
use crate::harness::statsd::{Load, Shape, datagrams, send_rounds};

/// The rate every series is first sent at, slow enough for every daemon.
const PRELOAD_RATE: f64 = 50_000.0;

/// How long and how often to probe.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Probing {
    /// How long each probe sends.
    pub probe_time: Duration,
    /// The first offered rate, lines/s.
    pub start_rate: f64,
    /// Probes per daemon and series count, at most.
    pub max_probes: usize,
    /// How long to wait for the totals to settle after a probe (and for the daemon to
    /// go quiet before the next one).
    pub settle_limit: Duration,
}

impl Probing {
    /// The defaults: 5 s probes from 100k lines/s, at most 9, 30 s to settle (quick:
    /// 1 s probes from 20k lines/s, at most 2, 10 s to settle).
    pub fn defaults(quick: bool) -> Probing {
        if quick {
            Probing {
                probe_time: Duration::from_secs(1),
                start_rate: 20_000.0,
                max_probes: 2,
                settle_limit: Duration::from_secs(10),
            }
        } else {
            Probing {
                probe_time: Duration::from_secs(5),
                start_rate: 100_000.0,
                max_probes: 9,
                settle_limit: Duration::from_secs(30),
            }
        }
    }
}

/// One probe's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    /// Offered lines/s.
    pub offered: f64,
    /// Lines/s the senders reached.
    pub sent_rate: f64,
    /// Lines sent.
    pub sent: u64,
    /// Lines the daemon aggregated.
    pub received: f64,
    /// 1 - received / sent.
    pub loss: f64,
    /// CPU seconds the daemon used during the probe and its settling.
    pub cpu_seconds: f64,
    /// How the wait for its totals ended (`TimedOut`: not settled; the lines not
    /// shown yet count as lost).
    pub settle: SettleEnd,
    /// Seconds from the end of sending until the totals settled (or the limit).
    pub settle_seconds: f64,
}

impl Probe {
    /// Nothing lost, the totals settled in time, and they grew by no more than was
    /// sent (more means lines of an earlier probe arrived late, inside this one).
    pub fn lossless(&self) -> bool {
        self.received == self.sent as f64 && self.settle != SettleEnd::TimedOut
    }

    /// The totals grew by more than this probe sent: the daemon was still showing an
    /// earlier probe's lines (its flush takes longer than the wait for quiet), so this
    /// reading and the one before mix two probes.
    pub fn mixed(&self) -> bool {
        self.received > self.sent as f64
    }
}

/// Runs the scenario for `series_counts` (default: 10k, 100k, 1M; quick: 1k) and
/// `peers` (default: all installed), probing as `probing` says, every daemon started
/// with `daemons`.
pub fn run(
    s: &Settings,
    series_counts: &[usize],
    peers: &[StatsdPeerKind],
    probing: &Probing,
    daemons: &DaemonOptions,
) -> Result<Section> {
    let Probing {
        probe_time,
        start_rate,
        max_probes,
        settle_limit,
    } = *probing;
    let mut sec = Section {
        scenario: "statsd-rate".into(),
        title: "StatsD: highest rate at 0 % loss".into(),
        columns: [
            "daemon",
            "series",
            "highest 0 % loss rate (lines/s)",
            "first lossy rate: loss",
            "CPU s per M lines",
            "peak RSS",
            "receive buffer (ss rb)",
            "kernel drops",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    sec.notes.push(format!(
        "Plain StatsD counters `bench.requests.s<i>:1|c` (one name per series: the shape every daemon reads), \
         ~{} lines per 1400-byte datagram, {} sender thread(s), {:?} per probe; rates double from {} lines/s \
         until a probe loses a line, then bisect (at most {max_probes} probes); after each probe the totals \
         get {:?} to settle, else what is not shown counts as lost (\"not settled\"). Every daemon flushes \
         every {:?}; a daemon whose RSS passes {} MiB is stopped there (\"stopped at cap\").",
        1000 / datagrams(1000, Shape::Names).len().max(1),
        s.threads,
        probe_time,
        thousands(start_rate),
        settle_limit,
        daemons.flush_interval,
        daemons.rss_cap_bytes >> 20,
    ));
    let mut data = Vec::new();
    let mut lines_by_series: Vec<Line> = Vec::new();
    for &n in series_counts {
        let payloads = Arc::new(datagrams(n, Shape::Names));
        for &kind in peers {
            if !kind.installed(&s.benches_dir) {
                sec.notes.push(format!(
                    "{} skipped: not installed (benches/setup-peers.sh)",
                    kind.label()
                ));
                continue;
            }
            let peer = StatsdPeer::start(kind, &s.weir_bin, &s.benches_dir, daemons)?;
            let pb = s.bar(
                max_probes as u64,
                format!("{} @ {} series", kind.label(), thousands(n as f64)),
            );
            let mut probes: Vec<Probe> = Vec::new();
            let mut held = None;
            let mut stopped = None;
            let probed = probe_daemon(
                s,
                &peer,
                n,
                &payloads,
                probing,
                &pb,
                &mut held,
                &mut probes,
                &mut stopped,
            );
            let capped = peer.stopped_at_cap();
            match (probed, capped) {
                (Ok(()), _) => {}
                (Err(_), Some((cap, rss))) => {
                    let during = probes.last().map_or(
                        format!(
                            "before its first probe (while every series was sent once at {} lines/s, or waiting for it to show them)",
                            thousands(PRELOAD_RATE)
                        ),
                        |p| format!("after the probe at {} lines/s", thousands(p.offered)),
                    );
                    stopped = Some(format!(
                        "{} @ {} series: stopped at the memory cap ({} MiB; RSS {} MiB) {during}.",
                        kind.label(),
                        thousands(n as f64),
                        cap >> 20,
                        rss >> 20
                    ));
                }
                (Err(e), None) => return Err(e),
            }
            pb.finish_and_clear();
            sec.notes.extend(stopped);
            let mut stats = peer.proc().stats();
            if let Some((_, rss)) = capped {
                stats.peak_rss_bytes = stats.peak_rss_bytes.max(rss);
            }
            // A killed daemon's socket is gone.
            let mem = capped.is_none().then(|| peer.socket_memory()).flatten();
            let gone = if capped.is_some() { "-" } else { "?" };
            let ok_probes: Vec<&Probe> = probes.iter().filter(|p| p.lossless()).collect();
            let cpu_per_m = {
                let (c, l) = probes
                    .iter()
                    .fold((0.0, 0.0), |(c, l), p| (c + p.cpu_seconds, l + p.received));
                c / (l / 1e6).max(1e-9)
            };
            let best = ok_probes
                .iter()
                .map(|p| p.sent_rate)
                .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
            let first_bad = probes
                .iter()
                .filter(|p| !p.lossless())
                .min_by(|a, b| a.offered.total_cmp(&b.offered));
            sec.rows.push(vec![
                kind.label().into(),
                thousands(n as f64),
                best.map_or("none".into(), thousands),
                first_bad.map_or(
                    if capped.is_some() {
                        "stopped at cap".into()
                    } else {
                        "none tried".into()
                    },
                    |p| {
                        let late = if p.settle == SettleEnd::TimedOut {
                            " (not settled)"
                        } else {
                            ""
                        };
                        format!("{}: {:.2} %{late}", thousands(p.sent_rate), p.loss * 100.0)
                    },
                ),
                format!("{cpu_per_m:.2}"),
                mib(stats.peak_rss_bytes),
                mem.map_or(gone.into(), |(rb, _)| format!("{} B", thousands(rb as f64))),
                mem.map_or(gone.into(), |(_, d)| thousands(d as f64)),
            ]);
            let mut pts: Vec<(f64, f64)> = probes
                .iter()
                .map(|p| (p.sent_rate, p.loss * 100.0))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            lines_by_series.push(Line {
                label: format!("{} @ {} series", kind.label(), thousands(n as f64)),
                points: pts,
            });
            data.push(json!({
                "daemon": kind.label(), "series": n, "series_held_after_preload": held,
                "highest_zero_loss_rate": best, "probes": probes, "cpu_seconds_per_million_lines": cpu_per_m,
                "peak_rss_bytes": stats.peak_rss_bytes, "receive_buffer_bytes": mem.map(|m| m.0),
                "kernel_drops": mem.map(|m| m.1),
            }));
        }
    }
    sec.notes.push(
        "The receive buffer is what `ss -m` shows for each daemon's socket (`rb`): weir asks for 8 MiB \
         (granted to root through SO_RCVBUFFORCE; the kernel doubles it); collectd and etsy StatsD cannot \
         configure theirs and get `net.core.rmem_default`; \"weir (default rcvbuf)\" asks for the same."
            .into(),
    );
    sec.data = json!(data);
    sec.plots.push(Plot {
        name: "statsd_loss".into(),
        title: "StatsD: loss vs sent rate".into(),
        x: "lines/s sent".into(),
        y: "loss %".into(),
        log_x: true,
        lines: lines_by_series,
    });
    Ok(sec)
}

/// Creates every series on `peer` (sets `held` to the series it then shows), then
/// probes as `probing` says, pushing each probe; sets `stopped` when a daemon still
/// digesting one probe is probed no further.
///
/// # Errors
/// When the daemon cannot be reached or read (also when the memory cap stopped it:
/// what was probed until then stays in `probes`).
#[allow(clippy::too_many_arguments)]
fn probe_daemon(
    s: &Settings,
    peer: &StatsdPeer,
    n: usize,
    payloads: &Arc<Vec<(Vec<u8>, u64)>>,
    probing: &Probing,
    pb: &indicatif::ProgressBar,
    held: &mut Option<u64>,
    probes: &mut Vec<Probe>,
    stopped: &mut Option<String>,
) -> Result<()> {
    let Probing {
        probe_time,
        start_rate,
        max_probes,
        settle_limit,
    } = *probing;
    let label = peer.kind.label();
    // Create every series first, slowly enough for every daemon.
    let preload = send_rounds(peer.port, payloads, 1, PRELOAD_RATE)?;
    let created = peer.settled_total(preload as f64, settle_limit * 2)?;
    *held = Some(created.series);
    let mut last = created;
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start_rate;
    for _ in 0..max_probes {
        // The baseline: the totals once the daemon has gone quiet. If the last wait
        // settled, they are quiet already; otherwise wait, and a daemon still digesting
        // the previous probe is probed no further.
        let before = if last.end == SettleEnd::TimedOut {
            let quiet = peer.settled_total(f64::INFINITY, settle_limit)?;
            if quiet.end == SettleEnd::TimedOut {
                let after = probes.last().map_or(
                    format!(
                        "sending every series once at {} lines/s",
                        thousands(PRELOAD_RATE)
                    ),
                    |p| format!("the probe at {} lines/s", thousands(p.offered)),
                );
                *stopped = Some(format!(
                    "{label} @ {} series: totals still moving {:.0} s after {after}; probing stopped there.",
                    thousands(n as f64),
                    (last.waited + quiet.waited).as_secs_f64(),
                ));
                break;
            }
            quiet.sum
        } else {
            peer.total()?.1
        };
        let cpu0 = peer.proc().stats().cpu_seconds;
        let load = Load::start(peer.port, payloads.clone(), rate, s.threads, probe_time)?;
        while load.running() {
            std::thread::sleep(Duration::from_millis(200));
            pb.set_message(format!(
                "{label} @ {} series: offering {} lines/s, {} sent",
                thousands(n as f64),
                thousands(rate),
                thousands(load.sent() as f64)
            ));
        }
        let sent = load.finish();
        let after = peer.settled_total(before + sent as f64, settle_limit)?;
        last = after;
        let received = after.sum - before;
        let p = Probe {
            offered: rate,
            sent_rate: sent as f64 / probe_time.as_secs_f64(),
            sent,
            received,
            loss: 1.0 - received / sent.max(1) as f64,
            cpu_seconds: peer.proc().stats().cpu_seconds - cpu0,
            settle: after.end,
            settle_seconds: after.waited.as_secs_f64(),
        };
        pb.inc(1);
        pb.set_message(format!(
            "{} lines/s: loss {:.3} %",
            thousands(rate),
            p.loss * 100.0
        ));
        if p.mixed() {
            *stopped = Some(format!(
                "{label} @ {} series: the probe at {} lines/s showed {} lines more than it sent: \
                 the previous probe's were still arriving; probing stopped there (earlier readings may mix probes too).",
                thousands(n as f64),
                thousands(rate),
                thousands(p.received - p.sent as f64),
            ));
            probes.push(p);
            break;
        }
        if p.lossless() {
            good = Some(good.map_or(rate, |g: f64| g.max(rate)));
        } else {
            bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
        }
        probes.push(p);
        rate = match (good, bad) {
            (Some(g), None) => g * 2.0,
            (None, Some(b)) => b / 2.0,
            (Some(g), Some(b)) => (g + b) / 2.0,
            (None, None) => rate,
        };
        if let (Some(g), Some(b)) = (good, bad)
            && b - g < g * 0.1
        {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(sent: u64, received: f64) -> Probe {
        Probe {
            offered: 1.0,
            sent_rate: 1.0,
            sent,
            received,
            loss: 1.0 - received / sent as f64,
            cpu_seconds: 0.0,
            settle: SettleEnd::Reached,
            settle_seconds: 0.0,
        }
    }

    #[test]
    fn a_probe_that_shows_more_than_it_sent_is_mixed_not_lossless() {
        // etsy StatsD at 1M series: a flush longer than the quiet wait put the previous
        // probe's lines into this one's reading (-46 % "loss").
        let p = probe(100, 146.0);
        assert!(p.mixed());
        assert!(!p.lossless());
    }

    #[test]
    fn a_probe_that_shows_exactly_what_it_sent_is_lossless() {
        let p = probe(100, 100.0);
        assert!(p.lossless() && !p.mixed());
        assert!(!probe(100, 99.0).lossless());
    }
}
