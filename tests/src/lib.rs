//! Helpers for weir's end-to-end tests: find (or build) the real `weir` binary, run it
//! with bounded waits, read its output line by line, and make sure no child outlives
//! its test.
//!
//! Owns: process management for tests. Must never: wait without a deadline, or leave
//! a `weir` process running after a test, passed or failed ([`Weir`] kills its child
//! on drop).
//!
//! The binary is `$WEIR_BIN` when set (used as is), else `target/debug/weir` in the
//! workspace (or under `$CARGO_TARGET_DIR`). That file is (re)built with
//! `$CARGO build -p weir-collector --bin weir` when it is missing or older than a
//! source file of the crates it is built from, so a test never runs a stale binary.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The longest any single wait in these tests may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The path of the `weir` binary under test, built first if needed (once per test
/// process). Panics with the build output if the build fails.
pub fn weir_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WEIR_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "WEIR_BIN={} is not a file", bin.display());
            return bin;
        }
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| root.join(t))
            .unwrap_or_else(|| root.join("target"));
        let bin = target
            .join("debug")
            .join(format!("weir{}", std::env::consts::EXE_SUFFIX));
        if needs_build(&bin, &root) {
            build(&root);
        }
        assert!(
            bin.is_file(),
            "`cargo build -p weir-collector --bin weir` did not produce {}",
            bin.display()
        );
        bin
    })
}

/// True when `bin` is missing or older than a source of the crates it is built from.
fn needs_build(bin: &Path, root: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for f in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(mtime(&root.join(f)));
    }
    for dir in ["collector", "core", "proto"] {
        newest = newest.max(newest_in(&root.join(dir)));
    }
    newest > built
}

fn mtime(p: &Path) -> SystemTime {
    p.metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Newest modification time of the `.rs`/`.toml` files under `dir`.
fn newest_in(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs" || x == "toml") {
                newest = newest.max(mtime(&p));
            }
        }
    }
    newest
}

fn build(root: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("weir-e2e: building the weir binary (`cargo build -p weir-collector --bin weir`)");
    let out = Command::new(&cargo)
        .args(["build", "-p", "weir-collector", "--bin", "weir"])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "building weir failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir; `tag` goes in its name.
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("weir-e2e-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP address on 127.0.0.1 that refuses every connection (the kernel answers a
/// reset: `ECONNREFUSED`) for as long as this value lives, and that no other socket
/// can take meanwhile, unlike a port bound and released, which anyone may bind and
/// listen on before the test connects.
///
/// The port is the local end of a connection this value holds open (to a listener
/// that is closed once the connection is accepted): a connected socket never
/// listens, and as it was opened without `SO_REUSEADDR`, binding its port fails for
/// everyone else. (A bound, never-listening socket would do the same, but the
/// standard library only binds TCP sockets to listen.)
pub struct RefusingAddress {
    addr: std::net::SocketAddr,
    _connection: (std::net::TcpStream, std::net::TcpStream),
}

impl RefusingAddress {
    /// Opens the connection that holds the port. Panics if the loopback interface
    /// cannot connect to itself.
    pub fn new() -> RefusingAddress {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("local addr"))
            .expect("connect to the listener");
        let (server, _) = listener.accept().expect("accept");
        drop(listener);
        RefusingAddress {
            addr: client.local_addr().expect("local addr"),
            _connection: (client, server),
        }
    }

    /// The address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Default for RefusingAddress {
    fn default() -> Self {
        RefusingAddress::new()
    }
}

/// What a finished short command printed.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A `weir` command with a clean environment for logging (`RUST_LOG` removed) and its
/// working directory in `cwd`.
fn command(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(weir_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `weir args...` to completion (at most [`TIMEOUT`], else it is killed and the
/// test fails) and returns what it printed.
pub fn run_weir(args: &[&str], cwd: &Path) -> Output {
    let mut child = Guard(Some(command(args, cwd).spawn().expect("spawn weir")));
    let c = child.0.as_mut().expect("child");
    let stdout = drain(c.stdout.take().expect("piped stdout"));
    let stderr = drain(c.stderr.take().expect("piped stderr"));
    let status = child
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("`weir {}` did not exit within {TIMEOUT:?}", args.join(" ")));
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Owns a child process; kills and reaps it on drop unless it already exited.
struct Guard(Option<Child>);

impl Guard {
    /// Polls for exit until `timeout`; `None` if still running.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.0.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.0 = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return None,
                Err(e) => panic!("waiting for weir: {e}"),
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `weir` daemon whose output (stdout and stderr, interleaved by arrival)
/// is read line by line. Killed on drop if still running.
pub struct Weir {
    child: Guard,
    pid: u32,
    lines: Receiver<String>,
    /// Every line received so far, for failure messages.
    seen: Vec<String>,
    readers: Vec<JoinHandle<()>>,
}

impl Weir {
    /// Starts `weir args...` in `cwd`.
    pub fn start(args: &[&str], cwd: &Path) -> Weir {
        let mut child = command(args, cwd).spawn().expect("spawn weir");
        let pid = child.id();
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for r in [out, err] {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }));
        }
        Weir {
            child: Guard(Some(child)),
            pid,
            lines,
            seen: Vec::new(),
            readers,
        }
    }

    /// Waits (at most `timeout`) for a line matching `pred` and returns it. Panics with
    /// everything read so far if none comes, or if the process exits first.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {what} line within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "weir closed its output before a {what} line; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` (e.g. "TERM", "INT") with `kill -SIGNAL pid`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} failed: {status}",
            self.pid
        );
    }

    /// Waits (at most `timeout`) for the process to exit, then collects the rest of
    /// its output. Returns the exit status and every line it printed. Panics (and the
    /// guard kills the process) if it does not exit in time.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let Some(status) = self.child.wait_timeout(timeout) else {
            panic!(
                "weir did not exit within {timeout:?}; output so far:\n{}",
                self.seen.join("\n")
            );
        };
        // The pipes close once the process is gone; the channel disconnects when both
        // readers have seen end-of-file and finished.
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("weir exited ({status}) but its output did not close within {timeout:?}")
                }
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (status, std::mem::take(&mut self.seen))
    }
}

/// The value of `key=` in a text log line, or of `"key":` in a JSON one.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    for pat in [format!(" {key}="), format!("\"{key}\":")] {
        if let Some(i) = line.find(&pat) {
            let rest = &line[i + pat.len()..];
            let end = rest.find([' ', ',', '}']).unwrap_or(rest.len());
            return Some(rest[..end].trim_matches('"'));
        }
    }
    None
}

/// A request over a plain TCP connection (HTTP/1.1, `Connection: close`); the status
/// code and the body.
pub fn http_request(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, &[])
}

/// [`http_request`] with extra request headers.
pub fn http_request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).expect("read");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// [`http_request`] expecting 200; the body.
pub fn http(addr: &str, method: &str, path: &str) -> String {
    let (code, body) = http_request(addr, method, path);
    assert_eq!(code, 200, "{method} {path}: {body}");
    body
}

/// `GET` expecting 200; the body.
pub fn http_get(addr: &str, path: &str) -> String {
    http(addr, "GET", path)
}

/// The sum of `counter_delta_sum` over every flush line (interval, requested and
/// final) in a daemon's text log: everything it counted from start to exit.
pub fn flushed_counter_total(lines: &[String]) -> f64 {
    lines
        .iter()
        .filter(|l| l.contains("flush sequence=") || l.contains("flush (requested) sequence="))
        .filter_map(|l| field(l, "counter_delta_sum").and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
