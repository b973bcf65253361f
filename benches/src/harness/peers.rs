//! The StatsD daemons weir-bench compares: weir's release binary, collectd 5.12
//! (`statsd` + `write_prometheus` plugins) and the etsy StatsD daemon (its graphite
//! backend pointed at a listener of the harness), each started on free 127.0.0.1
//! ports with a config generated into its own temporary directory.
//!
//! Every daemon of one run gets the same flush interval and memory cap
//! ([`DaemonOptions`]): the interval goes into each one's own config (weir's
//! `flush_interval`, collectd's `Interval`, etsy StatsD's `flushInterval`), and a daemon
//! whose RSS passes the cap is killed and reported as stopped there
//! ([`StatsdPeer::stopped_at_cap`]).
//!
//! Owns: the peers' configs, how to read back what each one aggregated (as a running
//! total per series, whatever the peer's own output temporality), and which kernel
//! receive buffer each got. Must never: read a total the peer has not finished
//! flushing as final ([`StatsdPeer::settled_total`] waits until it stops moving, and
//! says so when it had to give up first), wait without a bound, or read from a daemon
//! the cap stopped ([`StatsdPeer::total`] fails at once).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::{Proc, WorkDir, free_port, free_udp_port, http_get, http_request};
use super::prom_text::count_and_sum;
use super::statsd::PREFIX;

/// How long a process may take to become ready.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// The weir daemon, started from a binary with a generated config.
pub struct Weir {
    /// The process (killed on drop).
    pub proc: Proc,
    /// The StatsD UDP port.
    pub statsd_port: u16,
    /// The OTLP gRPC address.
    pub otlp_grpc: String,
    /// The exposition address (`GET /metrics`: the aggregated series).
    pub exposition: String,
    /// The admin address (`POST /flush`, weir's own metrics).
    pub admin: String,
    _dir: WorkDir,
}

impl Weir {
    /// Starts `bin` with StatsD, OTLP, exposition and admin on free ports, the given
    /// flush interval (e.g. `"1s"`), no series eviction, limits raised to 4M series, log level warn, and
    /// `extra` appended to the config (e.g. a `[[pipelines]]` table; it may not repeat
    /// a table this writes, except through `statsd_extra` / `aggregation_extra`, which
    /// go into `[receivers.statsd]` / `[aggregation]`).
    pub fn start(
        bin: &Path,
        flush_interval: &str,
        statsd_extra: &str,
        aggregation_extra: &str,
        extra: &str,
    ) -> Result<Weir> {
        let dir = WorkDir::new("weir")?;
        let statsd_port = free_udp_port()?;
        let otlp_grpc = format!("127.0.0.1:{}", free_port()?);
        let otlp_http = format!("127.0.0.1:{}", free_port()?);
        let exposition = format!("127.0.0.1:{}", free_port()?);
        let admin = format!("127.0.0.1:{}", free_port()?);
        let config = format!(
            "data_dir = \"{data}\"\n\
             [aggregation]\nflush_interval = \"{flush_interval}\"\nseries_ttl = \"0s\"\nmax_series = 4000000\n\
             max_series_per_metric = 4000000\n{aggregation_extra}\n\
             [receivers.statsd]\naddress = \"127.0.0.1:{statsd_port}\"\n{statsd_extra}\n\
             [receivers.otlp]\ngrpc_address = \"{otlp_grpc}\"\nhttp_address = \"{otlp_http}\"\n\
             [exposition]\naddress = \"{exposition}\"\n[admin]\naddress = \"{admin}\"\n\
             [log]\nlevel = \"warn\"\n{extra}\n",
            data = dir.path().join("data").display(),
        );
        let path = dir.write("weir.toml", &config)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&path);
        let mut proc = Proc::spawn("weir", cmd, &dir)?;
        let a = admin.clone();
        proc.wait_ready(START_LIMIT, || {
            http_get(&a, "/health").is_some_and(|b| b.contains("ok"))
        })?;
        Ok(Weir {
            proc,
            statsd_port,
            otlp_grpc,
            exposition,
            admin,
            _dir: dir,
        })
    }

    /// `POST /flush`: aggregate now and hand the batch to the exposition and every
    /// pipeline.
    pub fn flush(&self) {
        let _ = http_request(&self.admin, "POST", "/flush", b"");
    }

    /// The value of one of weir's own unlabelled metrics (admin `/metrics`).
    pub fn self_metric(&self, name: &str) -> Option<f64> {
        let page = http_get(&self.admin, "/metrics")?;
        super::prom_text::samples(&page)
            .find(|(n, l, _)| *n == name && l.is_empty())
            .map(|(_, _, v)| v)
    }
}

/// Which StatsD daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum StatsdPeerKind {
    /// weir with its default receive buffer (8 MiB asked; as root granted).
    Weir,
    /// weir asking for the kernel's default receive buffer, which the other
    /// daemons get (they cannot configure theirs).
    WeirDefaultBuffer,
    /// collectd 5.12, statsd + write_prometheus plugins.
    Collectd,
    /// The etsy StatsD daemon (npm `statsd`), graphite backend.
    EtsyStatsd,
}

impl StatsdPeerKind {
    /// Every peer, in the order they run.
    pub const ALL: [StatsdPeerKind; 4] = [
        StatsdPeerKind::Weir,
        StatsdPeerKind::WeirDefaultBuffer,
        StatsdPeerKind::Collectd,
        StatsdPeerKind::EtsyStatsd,
    ];

    /// The name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            StatsdPeerKind::Weir => "weir",
            StatsdPeerKind::WeirDefaultBuffer => "weir (default rcvbuf)",
            StatsdPeerKind::Collectd => "collectd 5.12",
            StatsdPeerKind::EtsyStatsd => "etsy statsd",
        }
    }

    /// True if its program is on this machine (weir always is: it is built).
    pub fn installed(self, benches_dir: &Path) -> bool {
        match self {
            StatsdPeerKind::Weir | StatsdPeerKind::WeirDefaultBuffer => true,
            StatsdPeerKind::Collectd => Path::new("/usr/sbin/collectd").exists(),
            StatsdPeerKind::EtsyStatsd => {
                etsy_stats_js(benches_dir).exists() && which("node").is_some()
            }
        }
    }
}

fn etsy_stats_js(benches_dir: &Path) -> PathBuf {
    benches_dir.join("peers/node_modules/statsd/stats.js")
}

/// The first `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The kernel's default socket receive buffer (`net.core.rmem_default`), bytes.
pub fn rmem_default() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/rmem_default")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992)
}

/// How every StatsD daemon of a run is configured and bounded.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DaemonOptions {
    /// Every daemon's flush interval (weir's `flush_interval`, collectd's `Interval`,
    /// etsy StatsD's `flushInterval`); whole milliseconds.
    pub flush_interval: Duration,
    /// RSS above which the harness kills a daemon and reports it as stopped at the cap.
    pub rss_cap_bytes: u64,
}

impl DaemonOptions {
    /// A 1 s flush (quick to settle; the peers' production default is 10 s) and
    /// [`super::process::default_rss_cap`].
    pub fn defaults() -> DaemonOptions {
        DaemonOptions {
            flush_interval: Duration::from_secs(1),
            rss_cap_bytes: super::process::default_rss_cap(),
        }
    }
}

/// How a wait for a daemon's running totals ended ([`StatsdPeer::settled_total`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SettleEnd {
    /// The totals reached what was expected: nothing lost.
    Reached,
    /// The totals stopped moving (three reads and, for a daemon that flushes on its
    /// own clock, two flush intervals without a change) short of what was expected: the
    /// difference is lost.
    Still,
    /// The totals were still moving when the time limit ran out: the daemon is behind
    /// (aggregating, or flushing a backlog) and what it has not shown yet counts as lost.
    TimedOut,
}

/// A daemon's running totals over the bench series, and how the wait for them ended.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Totals {
    /// Bench series it holds.
    pub series: u64,
    /// The sum of their running totals (lines aggregated).
    pub sum: f64,
    /// Why the wait ended.
    pub end: SettleEnd,
    /// How long the wait took.
    pub waited: Duration,
}

/// Running totals per series, summed from etsy StatsD's graphite lines
/// (`stats.counters.<name>.count <delta> <ts>`, one per counter per flush).
type GraphiteTotals = Arc<Mutex<HashMap<String, f64>>>;

enum Reader {
    Weir(Box<Weir>),
    Collectd { exposition: String },
    Graphite(GraphiteTotals),
}

/// A running StatsD daemon and how to read back what it aggregated.
pub struct StatsdPeer {
    /// Which one.
    pub kind: StatsdPeerKind,
    /// Its StatsD UDP port.
    pub port: u16,
    /// How often it flushes.
    pub flush_interval: Duration,
    reader: Reader,
    procs: Vec<Proc>,
    _dir: Option<WorkDir>,
}

impl StatsdPeer {
    /// Starts `kind` (weir from `weir_bin`; etsy StatsD from `benches_dir/peers`) with
    /// `opts`' flush interval, and caps its RSS at `opts.rss_cap_bytes`.
    pub fn start(
        kind: StatsdPeerKind,
        weir_bin: &Path,
        benches_dir: &Path,
        opts: &DaemonOptions,
    ) -> Result<StatsdPeer> {
        let mut peer = StatsdPeer::spawn(kind, weir_bin, benches_dir, opts.flush_interval)?;
        match &mut peer.reader {
            Reader::Weir(w) => w.proc.cap_rss(opts.rss_cap_bytes),
            _ => peer.procs[0].cap_rss(opts.rss_cap_bytes),
        }
        Ok(peer)
    }

    fn spawn(
        kind: StatsdPeerKind,
        weir_bin: &Path,
        benches_dir: &Path,
        flush: Duration,
    ) -> Result<StatsdPeer> {
        let flush_ms = flush.as_millis().max(1);
        // collectd's Interval is in seconds, fractions allowed.
        let flush_secs = flush_ms as f64 / 1000.0;
        match kind {
            StatsdPeerKind::Weir | StatsdPeerKind::WeirDefaultBuffer => {
                let statsd = if kind == StatsdPeerKind::WeirDefaultBuffer {
                    // The kernel doubles what is asked: ask half to get the default.
                    format!("recv_buffer_bytes = {}", rmem_default() / 2)
                } else {
                    String::new()
                };
                let w = Weir::start(weir_bin, &format!("{flush_ms}ms"), &statsd, "", "")?;
                Ok(StatsdPeer {
                    kind,
                    port: w.statsd_port,
                    flush_interval: flush,
                    reader: Reader::Weir(Box::new(w)),
                    procs: Vec::new(),
                    _dir: None,
                })
            }
            StatsdPeerKind::Collectd => {
                let dir = WorkDir::new("collectd")?;
                let port = free_udp_port()?;
                let prom = free_port()?;
                // `Timeout`: collectd calls a value "missing" after `Timeout` intervals
                // without an update (default 2), and write_prometheus then deletes the
                // series from its page until the next update. With thousands of series
                // dispatched every 1 s interval on a busy machine, many arrive late, so
                // series flap in and out of the page and its total never settles. The
                // bench reads running totals: no series may go missing during a run.
                let conf = format!(
                    "Hostname \"bench\"\nFQDNLookup false\nInterval {flush_secs}\nTimeout 100000\nBaseDir \"{d}\"\nPIDFile \"{d}/collectd.pid\"\n\
                     PluginDir \"/usr/lib/collectd\"\nTypesDB \"/usr/share/collectd/types.db\"\n\
                     LoadPlugin statsd\nLoadPlugin write_prometheus\n\
                     <Plugin statsd>\n  Host \"127.0.0.1\"\n  Port \"{port}\"\n  DeleteCounters false\n</Plugin>\n\
                     <Plugin write_prometheus>\n  Port \"{prom}\"\n</Plugin>\n",
                    d = dir.path().display()
                );
                let path = dir.write("collectd.conf", &conf)?;
                let mut cmd = Command::new("/usr/sbin/collectd");
                cmd.arg("-f").arg("-C").arg(&path);
                let mut proc = Proc::spawn("collectd", cmd, &dir)?;
                let exposition = format!("127.0.0.1:{prom}");
                let e = exposition.clone();
                proc.wait_ready(START_LIMIT, || {
                    http_get(&e, "/metrics").is_some()
                        && super::process::udp_socket_memory(port).is_some()
                })?;
                Ok(StatsdPeer {
                    kind,
                    port,
                    flush_interval: flush,
                    reader: Reader::Collectd { exposition },
                    procs: vec![proc],
                    _dir: Some(dir),
                })
            }
            StatsdPeerKind::EtsyStatsd => {
                let dir = WorkDir::new("etsy-statsd")?;
                let port = free_udp_port()?;
                let mgmt = free_port()?;
                let (graphite_port, totals) = graphite_listener()?;
                let conf = format!(
                    "{{ port: {port}, address: \"127.0.0.1\", mgmt_port: {mgmt}, mgmt_address: \"127.0.0.1\",\n\
                     flushInterval: {flush_ms}, backends: [\"./backends/graphite\"],\n\
                     graphiteHost: \"127.0.0.1\", graphitePort: {graphite_port},\n\
                     graphite: {{ legacyNamespace: false, globalPrefix: \"stats\" }} }}\n"
                );
                let path = dir.write("config.js", &conf)?;
                let stats_js = etsy_stats_js(benches_dir);
                let mut cmd = Command::new("node");
                cmd.arg(&stats_js).arg(&path);
                cmd.env("NODE_PATH", benches_dir.join("peers/node_modules"));
                let mut proc = Proc::spawn("etsy-statsd", cmd, &dir)?;
                // Relative backend paths resolve against stats.js' directory.
                proc.wait_ready(START_LIMIT, || {
                    std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_ok()
                        && super::process::udp_socket_memory(port).is_some()
                })?;
                Ok(StatsdPeer {
                    kind,
                    port,
                    flush_interval: flush,
                    reader: Reader::Graphite(totals),
                    procs: vec![proc],
                    _dir: Some(dir),
                })
            }
        }
    }

    /// The process under test.
    pub fn proc(&self) -> &Proc {
        match &self.reader {
            Reader::Weir(w) => &w.proc,
            _ => &self.procs[0],
        }
    }

    /// `Some((cap, rss))` once the memory cap stopped it (see [`DaemonOptions`]).
    pub fn stopped_at_cap(&self) -> Option<(u64, u64)> {
        self.proc().stopped_at_cap()
    }

    /// The bench series it holds now and the sum of their running totals.
    ///
    /// # Errors
    /// When the memory cap stopped it, or its output cannot be read.
    pub fn total(&self) -> Result<(u64, f64)> {
        if let Some((cap, rss)) = self.stopped_at_cap() {
            bail!(
                "{} stopped at the memory cap ({} MiB; RSS {} MiB)",
                self.kind.label(),
                cap >> 20,
                rss >> 20
            );
        }
        match &self.reader {
            Reader::Weir(w) => {
                w.flush();
                let page = http_get(&w.exposition, "/metrics").context("weir's exposition")?;
                Ok(count_and_sum(&page, |n, _| n.starts_with("bench_requests")))
            }
            Reader::Collectd { exposition } => {
                let page =
                    http_get(exposition, "/metrics").context("collectd's write_prometheus")?;
                let needle = format!("statsd=\"derive-{PREFIX}");
                let alt = format!("statsd=\"{PREFIX}");
                Ok(count_and_sum(&page, |n, l| {
                    n.starts_with("collectd_statsd_derive")
                        && (l.contains(&needle) || l.contains(&alt))
                }))
            }
            Reader::Graphite(t) => {
                let t = t.lock().unwrap_or_else(|p| p.into_inner());
                Ok((t.len() as u64, t.values().sum()))
            }
        }
    }

    /// [`StatsdPeer::total`] once it has reached `expected`, or stopped changing, or
    /// `limit` ran out, whichever comes first; which one it was is in [`Totals::end`].
    /// Never waits longer than `limit` plus one read (a read is itself bounded by
    /// [`super::process::HTTP_LIMIT`]).
    ///
    /// weir is read every second (each read flushes it); a peer, which flushes on its
    /// own clock, every second too, but counts as still only after its totals have not
    /// moved for two of its flush intervals (plus a second), so a 10 s flush is neither
    /// mistaken for stillness nor waited for ten seconds at a time.
    pub fn settled_total(&self, expected: f64, limit: Duration) -> Result<Totals> {
        let second = Duration::from_secs(1);
        let (poll, quiet) = match self.reader {
            Reader::Weir(_) => (second, Duration::ZERO),
            _ => (
                self.flush_interval.min(second),
                self.flush_interval * 2 + second,
            ),
        };
        settle(|| self.total(), poll, quiet, expected, limit)
    }

    /// The receive buffer its StatsD socket got and the kernel's drop count on it.
    pub fn socket_memory(&self) -> Option<(u64, u64)> {
        super::process::udp_socket_memory(self.port)
    }
}

/// Reads `read` every `interval` until its sum reaches `expected`, or it returned the
/// same reading three times in a row and for at least `quiet` since it last changed, or
/// `limit` ran out (checked before every wait, so the whole takes at most `limit` plus
/// one read).
fn settle(
    mut read: impl FnMut() -> Result<(u64, f64)>,
    interval: Duration,
    quiet: Duration,
    expected: f64,
    limit: Duration,
) -> Result<Totals> {
    let started = Instant::now();
    let deadline = started + limit;
    let (mut series, mut sum) = read()?;
    let mut still = 0;
    let mut changed = Instant::now();
    let end = loop {
        if sum >= expected {
            break SettleEnd::Reached;
        }
        if still >= 3 && changed.elapsed() >= quiet {
            break SettleEnd::Still;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break SettleEnd::TimedOut;
        };
        if left.is_zero() {
            break SettleEnd::TimedOut;
        }
        std::thread::sleep(interval.min(left));
        let now = read()?;
        if now == (series, sum) {
            still += 1;
        } else {
            still = 0;
            changed = Instant::now();
        }
        (series, sum) = now;
    };
    Ok(Totals {
        series,
        sum,
        end,
        waited: started.elapsed(),
    })
}

/// A graphite plaintext listener on a free port, summing `stats.counters.<bench
/// series>.count` values per series.
fn graphite_listener() -> Result<(u16, GraphiteTotals)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let totals: GraphiteTotals = Arc::default();
    let t = totals.clone();
    let prefix = format!("stats.counters.{PREFIX}.");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (t, prefix) = (t.clone(), prefix.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(conn).lines().map_while(|l| l.ok()) {
                    let mut parts = line.split_whitespace();
                    let (Some(path), Some(value)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let Some(series) = path
                        .strip_prefix(&prefix)
                        .and_then(|p| p.strip_suffix(".count"))
                    else {
                        continue;
                    };
                    if let Ok(v) = value.parse::<f64>() {
                        let mut m = t.lock().unwrap_or_else(|p| p.into_inner());
                        *m.entry(series.to_owned()).or_default() += v;
                    }
                }
            });
        }
    });
    Ok((port, totals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_that_never_stops_moving_ends_the_wait_at_the_limit() {
        // collectd's write_prometheus dropping and re-adding late series: the page's
        // total goes up and down forever, short of what was sent.
        let mut flap = 0u64;
        let got = settle(
            || {
                flap += 1;
                Ok((flap % 2, (flap % 2) as f64))
            },
            Duration::from_millis(1),
            Duration::ZERO,
            10.0,
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(got.end, SettleEnd::TimedOut);
        assert!(flap > 3, "it read more than once before giving up");
    }

    #[test]
    fn a_total_that_stops_short_of_the_expected_sum_is_still() {
        let got = settle(
            || Ok((5, 5.0)),
            Duration::from_millis(1),
            Duration::ZERO,
            10.0,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!((got.end, got.series, got.sum), (SettleEnd::Still, 5, 5.0));
    }

    #[test]
    fn a_total_unchanged_for_less_than_a_peers_quiet_time_is_not_still() {
        // A peer flushing every 10 s shows nothing new between flushes: three equal
        // reads one second apart are not yet the end.
        let got = settle(
            || Ok((5, 5.0)),
            Duration::from_millis(1),
            Duration::from_secs(3600),
            10.0,
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(got.end, SettleEnd::TimedOut);
    }

    #[test]
    fn a_total_that_reaches_the_expected_sum_ends_the_wait_at_once() {
        let mut reads = 0;
        let got = settle(
            || {
                reads += 1;
                Ok((reads, reads as f64 * 5.0))
            },
            Duration::from_millis(1),
            Duration::ZERO,
            10.0,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!((got.end, got.sum, reads), (SettleEnd::Reached, 10.0, 2));
    }
}
