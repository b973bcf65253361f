//! The processes weir-bench measures: started on free 127.0.0.1 ports with a
//! generated config in a temporary directory, read through `/proc`, and always
//! stopped.
//!
//! Owns: spawning, readiness waits (bounded), `/proc` CPU and memory readings, the
//! memory cap on a process under test ([`Proc::cap_rss`]: a watchdog kills it once its
//! RSS passes the cap, so a peer whose memory grows without bound cannot take the
//! machine down), the kernel receive buffer a UDP socket was given (from `ss`), and the
//! Ctrl-C / SIGTERM clean-up. Must never: leave a child running or a temporary
//! directory behind, on success, error or interrupt ([`Proc`] kills on drop;
//! [`install_cleanup`] kills what is still registered when the harness is interrupted),
//! or signal a pid that may no longer be its child (the watchdog is joined before the
//! child is reaped).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Pids of running children and temporary directories, for the interrupt handler.
static LIVE: Mutex<(Vec<u32>, Vec<PathBuf>)> = Mutex::new((Vec::new(), Vec::new()));

fn live() -> std::sync::MutexGuard<'static, (Vec<u32>, Vec<PathBuf>)> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills every registered child and removes every registered directory when the
/// harness gets SIGINT or SIGTERM, then exits with status 130.
pub fn install_cleanup() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let (pids, dirs) = std::mem::take(&mut *live());
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        eprintln!("weir-bench: interrupted; stopped every process it started");
        std::process::exit(130);
    });
}

/// A temporary directory for one process' config and data, removed on drop (and by
/// the interrupt handler).
pub struct WorkDir(tempfile::TempDir);

impl WorkDir {
    /// A fresh directory under the system's temporary directory.
    pub fn new(what: &str) -> Result<WorkDir> {
        let d = tempfile::Builder::new()
            .prefix(&format!("weir-bench-{what}-"))
            .tempdir()
            .context("create a temporary directory")?;
        live().1.push(d.path().to_path_buf());
        Ok(WorkDir(d))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `text` to `name` inside it and returns the file's path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.path().join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let p = self.0.path().to_path_buf();
        live().1.retain(|d| *d != p);
    }
}

/// A started process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
    cap: Option<RssWatchdog>,
}

/// How often the memory-cap watchdog reads the RSS. A process growing 1 GiB/s (more
/// than collectd's write queue does) overshoots its cap by at most ~100 MiB.
const RSS_POLL: Duration = Duration::from_millis(100);

/// The thread enforcing [`Proc::cap_rss`].
struct RssWatchdog {
    cap_bytes: u64,
    /// Tells the thread to end (set before the child is killed and reaped).
    stop: Arc<AtomicBool>,
    /// The RSS the process had when the watchdog killed it; 0 while it has not.
    killed_at: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatchdog {
    /// Ends the thread and waits for it: after this it signals nothing.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Proc {
    /// Starts `cmd` in its own process group (a Ctrl-C at the terminal reaches the
    /// harness, which then stops it), stdout and stderr to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &WorkDir) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(dir.path())
            .process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!("start {name} ({cmd:?}); is it installed? see benches/setup-peers.sh")
        })?;
        live().0.push(child.id());
        Ok(Proc {
            child,
            name: name.to_owned(),
            log,
            cap: None,
        })
    }

    /// Kills the process (SIGKILL) as soon as its RSS exceeds `cap_bytes`, read every
    /// 100 ms by a watchdog thread; [`Proc::stopped_at_cap`] then says so. Replaces an
    /// earlier cap.
    ///
    /// The pid stays this child's while the watchdog runs: a dead child is a zombie
    /// until [`Proc`]'s drop reaps it, and the drop stops the watchdog first.
    pub fn cap_rss(&mut self, cap_bytes: u64) {
        if let Some(mut old) = self.cap.take() {
            old.stop();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let killed_at = Arc::new(AtomicU64::new(0));
        let pid = self.pid();
        let (st, k) = (stop.clone(), killed_at.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let rss = ProcStats::of(pid).rss_bytes;
                if rss > cap_bytes {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    k.store(rss, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(RSS_POLL);
            }
        });
        self.cap = Some(RssWatchdog {
            cap_bytes,
            stop,
            killed_at,
            thread: Some(thread),
        });
    }

    /// `Some((cap, rss))` once the memory cap stopped the process: the cap and the RSS
    /// it had when it was killed.
    pub fn stopped_at_cap(&self) -> Option<(u64, u64)> {
        let c = self.cap.as_ref()?;
        match c.killed_at.load(Ordering::SeqCst) {
            0 => None,
            rss => Some((c.cap_bytes, rss)),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `ready` every 50 ms until it holds, for at most `limit`; fails with the
    /// tail of the process' log if the process exits or the time is up.
    pub fn wait_ready(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {limit:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 2 KB of the process' output.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s[s.len().saturating_sub(2048)..].to_owned()
    }

    /// CPU, RSS and peak RSS now.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.cap.as_mut() {
            c.stop();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        live().0.retain(|p| *p != pid);
    }
}

/// What `/proc` says about a process at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProcStats {
    /// User + system CPU seconds since it started.
    pub cpu_seconds: f64,
    /// Resident set size now, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; zeros if the process is gone.
    pub fn of(pid: u32) -> ProcStats {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
        let cpu_seconds = (num(11) + num(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        ProcStats {
            cpu_seconds,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        }
    }
}

/// The memory cap weir-bench puts on a daemon by default: 4 GiB, or a quarter of
/// `MemTotal` on a machine with less than 16 GiB.
pub fn default_rss_cap() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024);
    (4u64 << 30).min(total / 4)
}

/// Ports [`free_port`] and [`free_udp_port`] have handed out in this process. A port is
/// released as soon as it is picked (the daemon binds it later), so the kernel may hand
/// the same port to the very next pick; a caller asking for two ports in a row would
/// then give one daemon the same port twice. Remembering them rules that out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port on 127.0.0.1 that nothing was bound to when `bind` ran and that this process
/// has not handed out before (at most 64 picks).
fn unused_port(bind: impl Fn() -> std::io::Result<u16>) -> Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        let port = bind()?;
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh port on 127.0.0.1 in 64 picks")
}

/// A free TCP port on 127.0.0.1 (bound, then released: the caller's process binds it
/// next), never one handed out before in this process.
pub fn free_port() -> Result<u16> {
    unused_port(|| {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
}

/// A free UDP port on 127.0.0.1, never one handed out before in this process.
pub fn free_udp_port() -> Result<u16> {
    unused_port(|| {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
}

/// The kernel receive buffer (`rb` of `ss -m`, bytes) and the datagrams the kernel
/// dropped (`d`) of the UDP socket bound to 127.0.0.1:`port`, when `ss` shows it.
pub fn udp_socket_memory(port: u16) -> Option<(u64, u64)> {
    let out = Command::new("ss")
        .args(["-u", "-a", "-m", "-n", "sport", "=", &format!(":{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let skmem = text.split("skmem:(").nth(1)?.split(')').next()?;
    let mut fields = BTreeMap::new();
    for f in skmem.split(',') {
        let k: String = f.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        if let Ok(v) = f[k.len()..].parse::<u64>() {
            fields.insert(k, v);
        }
    }
    Some((*fields.get("rb")?, *fields.get("d").unwrap_or(&0)))
}

/// The most one HTTP request of the harness may take, connect to last byte (a 1M-series
/// exposition page is ~100 MB).
pub const HTTP_LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request with an optional body (`Connection: close`); the status code
/// and the response body, or `None` if the server cannot be reached or the whole
/// exchange takes longer than [`HTTP_LIMIT`].
pub fn http_request(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + HTTP_LIMIT;
    let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()?
        .next()?;
    let mut conn = std::net::TcpStream::connect_timeout(&sock, HTTP_LIMIT).ok()?;
    let _ = conn.set_write_timeout(Some(HTTP_LIMIT));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(body).ok()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // Each read waits at most until the deadline: a server that trickles or stalls
        // cannot hold the harness longer than HTTP_LIMIT.
        let left = deadline.checked_duration_since(Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line = std::str::from_utf8(&out[..split])
        .ok()?
        .lines()
        .next()?
        .to_owned();
    let code = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut payload = out[split + 4..].to_vec();
    if std::str::from_utf8(&out[..split])
        .ok()?
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    Some((code, payload))
}

/// Decodes a chunked transfer-encoded body (what is well-formed of it).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// GET `path` from `addr`: the body when the answer is 2xx.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    match http_request(addr, "GET", path, b"")? {
        (200..=299, body) => Some(String::from_utf8_lossy(&body).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_memory_grows_without_bound_is_killed_at_the_cap() {
        let dir = WorkDir::new("cap-test").unwrap();
        // tail keeps the last lines of /dev/zero, which has no newline: its memory
        // grows until something stops it.
        let mut cmd = Command::new("tail");
        cmd.arg("/dev/zero");
        let mut p = Proc::spawn("tail", cmd, &dir).unwrap();
        let cap = 64 << 20;
        p.cap_rss(cap);
        // Bounded: 60 s at most, far more than tail needs to pass 64 MiB.
        let mut stopped = None;
        for _ in 0..600 {
            stopped = p.stopped_at_cap();
            if stopped.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (got_cap, rss) = stopped.expect("the watchdog stopped it");
        assert_eq!(got_cap, cap);
        assert!(rss > cap, "killed at {rss} B, above the cap");
        let status = p.child.wait().unwrap();
        assert!(!status.success(), "tail was killed, not finished: {status}");
    }

    #[test]
    fn a_port_the_kernel_hands_out_twice_is_skipped_the_second_time() {
        // Ports 1-3 are below any ephemeral range, so no real pick in this process
        // can have taken them.
        let picks = Mutex::new(vec![3, 2, 1, 1]);
        let pick = || Ok(picks.lock().unwrap().pop().expect("a pick left"));
        assert_eq!(unused_port(pick).unwrap(), 1);
        assert_eq!(unused_port(pick).unwrap(), 2, "the repeated 1 is skipped");
        assert_eq!(unused_port(pick).unwrap(), 3);
        let always_3 = || Ok(3);
        assert!(
            unused_port(always_3).is_err(),
            "bounded, not a loop for good"
        );
    }
}
