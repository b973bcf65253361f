//! `weir-bench statsd-load`: the real `weir` daemon under StatsD load at fixed rates,
//! end to end, one binary or several side by side (the issue 13 scale tables).
//!
//! For each rate, starts the weir binary (`--weir`, or each of `--bins`) with default receive buffer settings, StatsD on a free
//! 127.0.0.1 port and a 1 s flush; one sender thread sends 10k counter series (many
//! lines per datagram) at that rate for the duration; then weir is flushed through its
//! admin API and the samples it aggregated are compared with the lines sent. Reports
//! the loss, the kernel's drop count, the share of datagrams the StatsD socket's thread
//! handed to its workers (`–` for a binary without them) and weir's CPU time per line
//! (from `/proc/<pid>/stat`). The sender shares the 2 cores with weir.
//!
//! Run: `weir-bench statsd-load [--rates R,..] [--seconds S] [--series N] [--bins A,B]
//! [--warmup] [--statsd-workers N] [--gauges PCT] [--churn TTL]`; the defaults are
//! 500000,1000000,2000000,4000000 lines/s, 10 s and 10,000 series. Each series is one
//! tag value (`load.requests:1|c|#series:sN`; `|g` for `--gauges` percent of them),
//! sent in turn; the daemon's `max_series_per_metric` is raised to the series count, every other
//! setting is the default.
//!
//! `--bins /tmp/weir-baseline,target/release/weir` runs every rate against each
//! binary in turn (one row each, side by side in one run). The RSS column is the daemon's `VmRSS` at the end of the
//! sending (before the final flush). `--warmup` first sends every series once at
//! ~200k lines/s and leaves those lines out of the counts and the CPU time, so the run
//! measures the steady state (at 1M series, creating the series is otherwise most of
//! the work of the first seconds). `--churn TTL` sends a new series on every line
//! instead and sets `series_ttl` to TTL seconds: the RSS then shows whether memory
//! follows the live series or every series seen.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_benches::harness::process::{ProcStats, free_port, free_udp_port, http_request};

/// One admin API request; the body as text (empty when the request failed).
fn http(addr: &str, method: &str, path: &str) -> String {
    http_request(addr, method, path, b"")
        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default()
}

/// Datagram payload budget (fits a 1500-byte MTU with headers).
const DATAGRAM: usize = 1400;

/// Every series once (a counter, or a gauge for `gauges` in 100 of them), packed into
/// datagrams of many lines; and the line count of each.
fn datagrams(series: usize, gauges: u8) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(DATAGRAM);
    let mut lines = 0u64;
    for i in 0..series {
        let kind = if i % 100 < usize::from(gauges) {
            "g"
        } else {
            "c"
        };
        let line = format!("load.requests:1|{kind}|#series:s{i}\n");
        if cur.len() + line.len() > DATAGRAM {
            out.push((std::mem::take(&mut cur), lines));
            lines = 0;
        }
        cur.extend_from_slice(line.as_bytes());
        lines += 1;
    }
    out.push((cur, lines));
    out
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    ProcStats::of(pid).cpu_seconds
}

/// Sends every series once at ~200k lines/s, so that the measured run finds them all
/// created, waits for the receiver to drain, and returns weir's totals then.
fn warm_up(sock: &UdpSocket, payloads: &[(Vec<u8>, u64)], admin: &str) -> Totals {
    let started = Instant::now();
    let mut sent = 0u64;
    for (d, n) in payloads {
        while (started.elapsed().as_secs_f64() * 200_000.0) < sent as f64 {
            std::thread::sleep(Duration::from_micros(200));
        }
        if sock.send(d).is_ok() {
            sent += n;
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    Totals::of(&http(admin, "GET", "/metrics"))
}

/// weir's StatsD totals on its self-metrics page.
#[derive(Default)]
struct Totals {
    samples: f64,
    datagrams: f64,
    /// `None` for a binary without StatsD workers.
    worker_datagrams: Option<f64>,
}

impl Totals {
    fn of(page: &str) -> Totals {
        Totals {
            samples: metric(page, "weir_statsd_samples_total").unwrap_or(0.0),
            datagrams: metric(page, "weir_statsd_datagrams_total").unwrap_or(0.0),
            worker_datagrams: metric(page, "weir_statsd_worker_datagrams_total"),
        }
    }
}

/// Resident set size of process `pid` in MiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_mib(pid: u32) -> f64 {
    ProcStats::of(pid).rss_bytes as f64 / (1024.0 * 1024.0)
}

/// The value of an unlabelled metric in a text exposition page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

struct Outcome {
    rate: u64,
    sent_lines: u64,
    achieved: f64,
    aggregated: f64,
    kernel_drops: f64,
    /// Share of the datagrams read that the socket's thread handed to a worker.
    to_workers: Option<f64>,
    cpu_ns_per_line: f64,
    rss_mib: f64,
}

/// What every rate of a run shares.
pub struct Run {
    /// Seconds per rate.
    pub seconds: u64,
    /// Distinct series.
    pub series: usize,
    /// Send every series once first, left out of the counts.
    pub warmup: bool,
    /// `receivers.statsd.workers`, when set.
    pub workers: Option<usize>,
    /// Percent of the series sent as gauges instead of counters.
    pub gauges: u8,
    /// Every line a new series, evicted after this many idle seconds (see `--churn`).
    pub churn_ttl: Option<u64>,
}

/// What the sender sends: the same series over and over, or new ones all the time.
enum Payloads<'a> {
    Fixed(&'a [(Vec<u8>, u64)]),
    /// The next series' number.
    Churn(usize),
}

impl Payloads<'_> {
    /// The next datagram to send and its line count.
    fn next(&mut self, k: usize) -> (std::borrow::Cow<'_, [u8]>, u64) {
        match self {
            Payloads::Fixed(p) => {
                let (d, n) = &p[k % p.len()];
                (std::borrow::Cow::Borrowed(d), *n)
            }
            Payloads::Churn(next) => {
                let mut d = Vec::with_capacity(DATAGRAM);
                let mut lines = 0;
                loop {
                    let line = format!("load.requests:1|c|#series:s{next}\n");
                    if d.len() + line.len() > DATAGRAM {
                        break;
                    }
                    d.extend_from_slice(line.as_bytes());
                    *next += 1;
                    lines += 1;
                }
                (std::borrow::Cow::Owned(d), lines)
            }
        }
    }
}

fn run_one(weir: &PathBuf, rate: u64, run: &Run, payloads: &[(Vec<u8>, u64)]) -> Outcome {
    let Run {
        seconds,
        series,
        warmup,
        workers,
        churn_ttl,
        ..
    } = *run;
    let statsd_port = free_udp_port().expect("free UDP port");
    let admin = format!("127.0.0.1:{}", free_port().expect("free port"));
    let dir = std::env::temp_dir().join(format!("weir-statsd-load-{}-{rate}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("weir.toml");
    // Every series has the one metric name: lift the per-metric limit (default 10,000)
    // so it admits them all. Every other setting is the default.
    // With churn, as many as `max_series`.
    let per_metric = if churn_ttl.is_some() {
        1_000_000
    } else {
        series.max(10_000)
    };
    let ttl = churn_ttl.map_or(String::new(), |s| format!("series_ttl = \"{s}s\"\n"));
    let workers = workers.map_or(String::new(), |n| format!("workers = {n}\n"));
    std::fs::write(
        &config,
        format!(
            "[aggregation]\nflush_interval = \"1s\"\nmax_series_per_metric = {per_metric}\n{ttl}[receivers.statsd]\naddress = \"127.0.0.1:{statsd_port}\"\n{workers}\
             [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n\
             [admin]\naddress = \"{admin}\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .expect("config");
    let mut child = Command::new(weir)
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http(&admin, "GET", "/health").contains("ok") {
        assert!(Instant::now() < deadline, "weir did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sock = UdpSocket::bind("127.0.0.1:0").expect("sender");
    sock.connect(("127.0.0.1", statsd_port)).expect("connect");
    let warm = if warmup && churn_ttl.is_none() {
        warm_up(&sock, payloads, &admin)
    } else {
        Totals::default()
    };
    let cpu_before = cpu_seconds(child.id());
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut sent_lines = 0u64;
    let mut k = 0usize;
    let mut payloads = match churn_ttl {
        Some(_) => Payloads::Churn(0),
        None => Payloads::Fixed(payloads),
    };
    while Instant::now() < end {
        // Send until the line count catches up with rate x elapsed, then yield.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent_lines < due {
            let (d, n) = payloads.next(k);
            if sock.send(&d).is_ok() {
                sent_lines += n;
            }
            k += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss = rss_mib(child.id());
    // Let the socket drain, then take everything out in one more flush.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = cpu_seconds(child.id()) - cpu_before;
    http(&admin, "POST", "/flush");
    let page = http(&admin, "GET", "/metrics");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let end = Totals::of(&page);
    Outcome {
        rate,
        sent_lines,
        achieved: sent_lines as f64 / elapsed,
        aggregated: end.samples - warm.samples,
        kernel_drops: metric(&page, "weir_statsd_kernel_drops_total").unwrap_or(f64::NAN),
        to_workers: end.worker_datagrams.map(|w| {
            (w - warm.worker_datagrams.unwrap_or(0.0)) / (end.datagrams - warm.datagrams).max(1.0)
        }),
        cpu_ns_per_line: cpu * 1e9 / sent_lines.max(1) as f64,
        rss_mib: rss,
    }
}

/// Runs every rate against every binary in `bins` and prints the table.
pub fn run(rates: &[u64], run: &Run, bins: &[PathBuf]) {
    let (seconds, series) = (run.seconds, run.series);
    for weir in bins {
        assert!(
            weir.exists(),
            "{}: build the daemon first: cargo build --release -p weir-collector",
            weir.display()
        );
    }
    let payloads = datagrams(series, run.gauges);
    let per_datagram = series as f64 / payloads.len() as f64;
    match run.churn_ttl {
        Some(ttl) => println!(
            "every line a new series (counters), evicted after {ttl} s idle, {seconds} s \
             per rate, default receive buffer settings"
        ),
        None => println!(
            "{series} series ({} % gauges, the rest counters), {per_datagram:.0} lines per \
             datagram, {seconds} s per rate, default receive buffer settings",
            run.gauges
        ),
    }
    println!();
    println!(
        "| binary | target lines/s | sent lines/s | lines sent | aggregated | loss | kernel drops (datagrams) | datagrams to workers | weir CPU per line | RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &rate in rates {
        for weir in bins {
            let o = run_one(weir, rate, run, &payloads);
            let loss = 1.0 - o.aggregated / o.sent_lines as f64;
            println!(
                "| {} | {} | {:.0} | {} | {} | {:.3} % | {} | {} | {:.0} ns | {:.1} MiB |",
                weir.display(),
                o.rate,
                o.achieved,
                o.sent_lines,
                o.aggregated,
                loss * 100.0,
                o.kernel_drops,
                o.to_workers
                    .map_or("–".to_owned(), |w| format!("{:.1} %", w * 100.0)),
                o.cpu_ns_per_line,
                o.rss_mib
            );
        }
    }
}
