//! Scenario 5: the remote-write backend (the harness' receiver) refuses every write
//! for a while in the middle of a StatsD run; weir must lose no point, and the
//! backlog it kept in its WAL must drain once the backend is back.
//!
//! Load: counters over a fixed set of series at a fixed rate, before, during and
//! after the outage. weir's remote write sends running totals, so once the load has
//! stopped and the last flush is delivered, the sum of the latest value of every
//! series must equal the lines sent: the difference is the points lost. Drain time:
//! from the end of the outage until the receiver holds a sample stamped after it
//! (the pipeline sends in order, so by then every batch of the outage was delivered).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::http_server::RemoteWriteReceiver;
use crate::harness::peers::Weir;
use crate::harness::report::{Section, mib, thousands};
use crate::harness::statsd::{Load, Shape, datagrams};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the scenario with an outage of `outage` (default 60 s; quick 3 s).
pub fn run(s: &Settings, outage: Option<Duration>) -> Result<Section> {
    let outage = outage.unwrap_or(if s.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    });
    let (before, after) = if s.quick {
        (Duration::from_secs(2), Duration::from_secs(2))
    } else {
        (Duration::from_secs(10), Duration::from_secs(10))
    };
    let (series, rate) = if s.quick {
        (1_000, 10_000.0)
    } else {
        (10_000, 100_000.0)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rx = RemoteWriteReceiver::start(rt.handle())?;
    let weir = Weir::start(
        &s.weir_bin,
        "1s",
        "",
        "",
        &format!(
            "[[pipelines]]\nname = \"rw\"\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\n\
             [pipelines.retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\n",
            rx.url()
        ),
    )?;
    let payloads = Arc::new(datagrams(series, Shape::Tags));
    let total = before + outage + after;
    let pb = s.bar(total.as_secs(), "outage: load running");
    let cpu0 = weir.proc.stats().cpu_seconds;
    let load = Load::start(weir.statsd_port, payloads, rate, 1, total)?;
    let t0 = Instant::now();
    let mut refusing = false;
    let mut outage_end_ms = 0;
    let mut outage_ended: Option<Instant> = None;
    // Drain: from the outage's end to the first sample stamped after it. Watched while
    // the load still runs too, so the drain time is not floored at the load's tail.
    let mut drained = None;
    while load.running() {
        if let Some(ended) = outage_ended
            && drained.is_none()
            && rx.with(|r| r.max_timestamp_ms) > outage_end_ms
        {
            drained = Some(ended.elapsed());
        }
        let el = t0.elapsed();
        if !refusing && el >= before && el < before + outage {
            rx.set_refusing(true);
            refusing = true;
            pb.set_message("backend refusing writes");
        } else if refusing && el >= before + outage {
            rx.set_refusing(false);
            refusing = false;
            outage_end_ms = now_ms();
            outage_ended = Some(Instant::now());
            pb.set_message("backend back: draining");
        }
        pb.set_position(el.as_secs());
        std::thread::sleep(Duration::from_millis(50));
    }
    rx.set_refusing(false);
    if outage_ended.is_none() {
        outage_end_ms = now_ms();
        outage_ended = Some(Instant::now());
    }
    let sent = load.finish();
    // Not drained while the load ran: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(300);
    let ended = outage_ended.unwrap_or_else(Instant::now);
    while drained.is_none() && Instant::now() < deadline {
        if rx.with(|r| r.max_timestamp_ms) > outage_end_ms {
            drained = Some(ended.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Totals: flush what is left, wait until the receiver's sum stops short of nothing.
    let sum = || {
        rx.with(|r| {
            r.series
                .iter()
                .filter(|(k, _)| k.contains("__name__=bench_requests"))
                .map(|(_, v)| v.value)
                .sum::<f64>()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = sum();
    while got < sent as f64 && Instant::now() < deadline {
        weir.flush();
        std::thread::sleep(Duration::from_millis(500));
        got = sum();
    }
    pb.finish_and_clear();
    let st = weir.proc.stats();
    let udp = crate::harness::process::udp_socket_memory(weir.statsd_port);
    let received_by_weir = weir
        .self_metric("weir_statsd_samples_total")
        .unwrap_or(f64::NAN);
    let lost = sent as f64 - got;
    let mut sec = Section {
        scenario: "outage".into(),
        title: "Remote-write outage: points lost and time to drain".into(),
        columns: [
            "collector",
            "outage",
            "lines sent",
            "lines in the backend",
            "points lost",
            "refused requests",
            "time to drain",
            "peak RSS",
            "CPU s",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    sec.notes.push(format!(
        "{} DogStatsD counter series at {} lines/s for {:?} before, {:?} during and {:?} after the outage; \
         1 s flush; remote write retry backoff 100 ms to 1 s; the receiver answers 503 during the outage.",
        thousands(series as f64), thousands(rate), before, outage, after
    ));
    sec.rows.push(vec![
        "weir".into(),
        format!("{outage:?}"),
        thousands(sent as f64),
        thousands(got),
        thousands(lost),
        thousands(rx.refused() as f64),
        drained.map_or("not drained in 300 s".into(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        }),
        mib(st.peak_rss_bytes),
        format!("{:.2}", st.cpu_seconds - cpu0),
    ]);
    if lost != 0.0 {
        sec.failures.push(format!(
            "weir lost {lost} of {sent} points across the outage (it aggregated {received_by_weir}; kernel drops {:?})",
            udp.map(|u| u.1)
        ));
    }
    sec.data = json!({
        "series": series, "rate": rate, "outage_seconds": outage.as_secs_f64(), "lines_sent": sent,
        "backend_total": got, "points_lost": lost, "refused_requests": rx.refused(),
        "drain_seconds": drained.map(|d| d.as_secs_f64()), "weir_statsd_samples_total": received_by_weir,
        "stats": st, "cpu_seconds": st.cpu_seconds - cpu0,
    });
    drop(weir);
    rt.shutdown_background();
    Ok(sec)
}
