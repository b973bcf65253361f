//! StatsD/DogStatsD over a Unix datagram socket (DogStatsD's default in containers,
//! the `datadog` client's `socket_path`): one socket file read by a dedicated OS
//! thread that applies each datagram through weir-core's [`Decoder`] and a
//! [`weir_core::Writer`] of its own, like the UDP receiver ([`super::statsd`]).
//!
//! Owns: the `[receivers.statsd_unix]` section ([`StatsdUnixConfig`]), and what the
//! Unix transports share: the socket file ([`SocketFile`]: safe replacement of a
//! stale file, permissions, removal on stop), the socket `mode` setting
//! ([`SocketMode`]) and the counters of the non-UDP StatsD transports
//! ([`TransportCounters`], rendered under a prefix of their own).
//!
//! # The socket file
//! Before binding, an existing path is checked: anything but a socket (a regular
//! file, a directory, a symlink) is never deleted and the start fails; a socket that
//! answers a connect (stream or datagram) belongs to a live process and the start
//! fails; a socket that refuses both connects is stale (left by a process that died)
//! and is removed. After binding, the file gets the configured mode. On stop the file
//! is removed if it is still the one this receiver bound (same device and inode).
//!
//! # Stop and drain
//! On stop the thread reads what the kernel still holds without waiting for more,
//! until a read finds nothing or [`DRAIN_TIME`] has passed, then exits.
//!
//! Must never: delete anything but a dead socket file, block on anything but its
//! socket, or keep the daemon from stopping. A datagram longer than
//! [`MAX_UNIX_DATAGRAM`] is skipped whole and counted (`datagram_too_long`), never
//! applied cut.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use socket2::SockRef;
use tracing::{info, warn};
use weir_core::Aggregator;
use weir_core::parse::statsd::{DatagramReport, Decoder};

use super::statsd::{DRAIN_TIME, LineCounters, MAX_RECV_BUFFER, MIN_RECV_BUFFER, render_lines};
use crate::config::{Step, keys};

/// Largest Unix datagram applied; a longer one is skipped and counted.
pub const MAX_UNIX_DATAGRAM: usize = 65_536;

/// Longest socket path (`sun_path` is 108 bytes on Linux, with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How long a blocked receive waits before checking whether to stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// `[receivers.statsd_unix]`: StatsD/DogStatsD over a Unix datagram socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdUnixConfig {
    /// Whether to listen at all. Default false.
    pub enabled: bool,
    /// The socket file. Default `/run/weir/dsd.socket`.
    pub path: PathBuf,
    /// Permissions of the socket file. Default `"0660"`.
    pub mode: SocketMode,
    /// Socket receive buffer to ask the kernel for, in bytes. Default 8 MiB; between
    /// [`MIN_RECV_BUFFER`] and [`MAX_RECV_BUFFER`].
    pub recv_buffer_bytes: usize,
}

impl Default for StatsdUnixConfig {
    fn default() -> Self {
        StatsdUnixConfig {
            enabled: false,
            path: PathBuf::from("/run/weir/dsd.socket"),
            mode: SocketMode(0o660),
            recv_buffer_bytes: 8 << 20,
        }
    }
}

impl StatsdUnixConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        validate_path(&self.path)?;
        let rb = self.recv_buffer_bytes;
        if !(MIN_RECV_BUFFER..=MAX_RECV_BUFFER).contains(&rb) {
            return Err((
                keys(&["recv_buffer_bytes"]),
                format!("must be between {MIN_RECV_BUFFER} and {MAX_RECV_BUFFER}, got {rb}"),
            ));
        }
        Ok(())
    }
}

/// Checks a socket path setting (`path`).
pub(crate) fn validate_path(path: &Path) -> Result<(), (Vec<Step>, String)> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err((keys(&["path"]), "must not be empty".to_owned()));
    }
    if len > MAX_SOCKET_PATH {
        return Err((
            keys(&["path"]),
            format!("must be at most {MAX_SOCKET_PATH} bytes (a Unix socket path), got {len}"),
        ));
    }
    Ok(())
}

/// Permission bits of a socket file, written in the config as an octal string
/// (`"0660"`), at most `0777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SocketMode(pub u32);

impl TryFrom<String> for SocketMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(SocketMode(m)),
            _ => Err(format!(
                "a socket mode is an octal string of permission bits up to \"0777\" (e.g. \"0660\"), got {s:?}"
            )),
        }
    }
}

/// A socket file this process bound: removed on drop if it is still the same file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode after binding, so that drop never removes a file that
    /// replaced ours.
    id: Option<(u64, u64)>,
}

impl SocketFile {
    /// Makes `path` free for a bind: removes a stale socket file there (see the
    /// module doc), binds with `bind`, and applies `mode`.
    ///
    /// # Errors
    /// The path holds something that is not a socket (`AlreadyExists`), a live socket
    /// (`AddrInUse`), a socket whose liveness cannot be told; or the bind or the
    /// permissions failed.
    pub fn bind<T>(
        path: &Path,
        mode: SocketMode,
        bind: impl FnOnce(&Path) -> io::Result<T>,
    ) -> io::Result<(T, SocketFile)> {
        clear_stale(path)?;
        let socket = bind(path)?;
        let file = SocketFile {
            path: path.to_owned(),
            id: std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino())),
        };
        // On error `file` is dropped and removes what was just bound.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))?;
        Ok((socket, file))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let same = std::fs::symlink_metadata(&self.path)
            .ok()
            .is_some_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.id);
        if same && let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "statsd: cannot remove the socket file");
        }
    }
}

/// Removes a stale socket file at `path`; leaves a missing path alone.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; weir does not delete it",
                path.display()
            ),
        ));
    }
    // A live socket answers one of the two connects (the other is the wrong type);
    // a stale one refuses both.
    let stream = UnixStream::connect(path).map(drop);
    let datagram = UnixDatagram::unbound().and_then(|s| s.connect(path));
    if stream.is_ok() || datagram.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is a live socket (another process answers on it)",
                path.display()
            ),
        ));
    }
    let refused = |r: &io::Result<()>| {
        r.as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    };
    if !(refused(&stream) || refused(&datagram)) {
        let e = stream.err().unwrap_or_else(|| io::Error::other("unknown"));
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot tell whether the socket {} is stale: {e}",
                path.display()
            ),
        ));
    }
    info!(path = %path.display(), "statsd: removing a stale socket file");
    std::fs::remove_file(path)
}

/// Counters of one non-UDP StatsD transport since start, rendered as
/// `<prefix>_*_total`. Relaxed: independent counters, read only for reporting.
#[derive(Debug)]
pub struct TransportCounters {
    /// `weir_statsd_unix`, `weir_statsd_tcp`, `weir_statsd_unix_stream`.
    prefix: &'static str,
    /// Whether the transport has connections (stream) or datagrams.
    stream: bool,
    datagrams: AtomicU64,
    bytes: AtomicU64,
    lines: LineCounters,
    /// Datagrams or lines over the size limit, skipped.
    too_long: AtomicU64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    connections_open: AtomicU64,
}

/// A snapshot of [`TransportCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Datagrams read (datagram transport).
    pub datagrams: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Lines that parsed.
    pub lines: u64,
    /// Samples the aggregator took.
    pub samples: u64,
    /// Samples the aggregator refused.
    pub rejected: u64,
    /// Lines skipped by the parser, by reason, and the over-long datagrams or lines
    /// (`datagram_too_long`, `line_too_long`).
    pub parse_errors: Vec<(&'static str, u64)>,
    /// Connections accepted (stream transports).
    pub connections: u64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections open now.
    pub connections_open: u64,
}

impl TransportStats {
    /// All skipped lines and datagrams.
    pub fn parse_errors_total(&self) -> u64 {
        self.parse_errors.iter().map(|(_, n)| n).sum()
    }

    /// The count of one reason.
    pub fn parse_errors(&self, reason: &str) -> u64 {
        self.parse_errors
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

impl TransportCounters {
    /// Counters rendered under `prefix` (`weir_statsd_tcp`); `stream` for the
    /// connection-oriented transports.
    pub fn new(prefix: &'static str, stream: bool) -> TransportCounters {
        TransportCounters {
            prefix,
            stream,
            datagrams: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lines: LineCounters::default(),
            too_long: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
        }
    }

    fn too_long_reason(&self) -> &'static str {
        if self.stream {
            "line_too_long"
        } else {
            "datagram_too_long"
        }
    }

    /// Adds what one decoded chunk did.
    pub(crate) fn add_report(&self, r: &DatagramReport) {
        self.lines.add(r);
    }

    pub(crate) fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_too_long(&self) {
        self.too_long.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// A snapshot.
    pub fn stats(&self) -> TransportStats {
        let mut lines = self.lines.snapshot();
        lines.parse_errors.push((
            self.too_long_reason(),
            self.too_long.load(Ordering::Relaxed),
        ));
        TransportStats {
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lines: lines.lines,
            samples: lines.samples,
            rejected: lines.rejected,
            parse_errors: lines.parse_errors,
            connections: self.connections.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
        }
    }
}

impl crate::telemetry::StageMetrics for TransportCounters {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::Kind::{Counter, Gauge};
        let s = self.stats();
        let p = self.prefix;
        if self.stream {
            page.single(
                &format!("{p}_connections_total"),
                Counter,
                "StatsD connections accepted.",
                s.connections as f64,
            );
            page.single(
                &format!("{p}_connections_refused_total"),
                Counter,
                "StatsD connections closed at once because max_connections were open.",
                s.connections_refused as f64,
            );
            page.single(
                &format!("{p}_connections_open"),
                Gauge,
                "StatsD connections open.",
                s.connections_open as f64,
            );
        } else {
            page.single(
                &format!("{p}_datagrams_total"),
                Counter,
                "StatsD datagrams read.",
                s.datagrams as f64,
            );
        }
        page.single(
            &format!("{p}_bytes_total"),
            Counter,
            "StatsD bytes read.",
            s.bytes as f64,
        );
        render_lines(page, p, s.lines, s.samples, &s.parse_errors);
    }
}

/// Warns about lines skipped since the last report (`seen` of them were reported
/// before); returns the new total. At most one line per flush.
pub(crate) fn warn_parse_errors(name: &str, stats: &TransportStats, seen: u64) -> u64 {
    let total = stats.parse_errors_total();
    if total > seen {
        let reasons: Vec<String> = stats
            .parse_errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        warn!(
            source = name,
            skipped = total - seen,
            since_start = %reasons.join(","),
            "statsd: malformed lines skipped"
        );
    }
    total
}

/// Logs a transport's totals when it stops.
pub(crate) fn log_stopped(name: &str, s: &TransportStats) {
    info!(
        source = name,
        datagrams = s.datagrams,
        connections = s.connections,
        connections_refused = s.connections_refused,
        bytes = s.bytes,
        lines = s.lines,
        samples = s.samples,
        rejected = s.rejected,
        parse_errors = s.parse_errors_total(),
        "statsd {name} receiver stopped"
    );
}

/// The running Unix datagram receiver.
pub struct StatsdUnixReceiver {
    stop: Arc<AtomicBool>,
    counters: Arc<TransportCounters>,
    thread: Option<JoinHandle<()>>,
    /// Dropped after the thread ends (the socket is closed then).
    file: Option<SocketFile>,
}

impl StatsdUnixReceiver {
    /// Binds the socket file (replacing a stale one) and starts the receive thread.
    ///
    /// # Errors
    /// The path is taken (see [`SocketFile::bind`]), or the socket or the thread could
    /// not be set up.
    pub fn start(
        config: &StatsdUnixConfig,
        aggregator: &Aggregator,
    ) -> io::Result<StatsdUnixReceiver> {
        let (socket, file) =
            SocketFile::bind(&config.path, config.mode, |p| UnixDatagram::bind(p))?;
        if let Err(e) = SockRef::from(&socket).set_recv_buffer_size(config.recv_buffer_bytes) {
            warn!(error = %e, "statsd_unix: cannot size the receive buffer");
        }
        socket.set_read_timeout(Some(STOP_POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(TransportCounters::new("weir_statsd_unix", false));
        let mut writer = aggregator.writer();
        let thread = std::thread::Builder::new()
            .name("weir-statsd-unix".to_owned())
            .spawn({
                let stop = stop.clone();
                let counters = counters.clone();
                move || receive(&socket, &mut writer, &counters, &stop)
            })?;
        Ok(StatsdUnixReceiver {
            stop,
            counters,
            thread: Some(thread),
            file: Some(file),
        })
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<TransportCounters> {
        self.counters.clone()
    }

    /// Stops the thread after it drained the socket, removes the socket file, and
    /// returns the totals.
    pub fn stop(mut self) -> TransportStats {
        self.shutdown();
        self.counters.stats()
    }

    fn shutdown(&mut self) {
        // Release: the thread's Acquire load then sees the request.
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("statsd_unix: receive thread panicked");
        }
        self.file.take();
    }
}

impl Drop for StatsdUnixReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Applies one datagram (or skips it whole when over [`MAX_UNIX_DATAGRAM`]).
fn apply(
    datagram: &[u8],
    decoder: &mut Decoder,
    writer: &mut weir_core::Writer,
    counters: &TransportCounters,
) {
    counters.datagrams.fetch_add(1, Ordering::Relaxed);
    counters.add_bytes(datagram.len());
    if datagram.len() > MAX_UNIX_DATAGRAM {
        counters.add_too_long();
        return;
    }
    counters.add_report(&decoder.ingest(datagram, writer));
}

/// The receive thread: reads until `stop`, then drains without waiting.
fn receive(
    socket: &UnixDatagram,
    writer: &mut weir_core::Writer,
    counters: &TransportCounters,
    stop: &AtomicBool,
) {
    // One byte more than the limit, so that a longer datagram shows as one.
    let mut buf = vec![0u8; MAX_UNIX_DATAGRAM + 1];
    let mut decoder = Decoder::default();
    // Acquire: pairs with `shutdown`'s Release.
    while !stop.load(Ordering::Acquire) {
        // Also while idle (a receive times out every `STOP_POLL`).
        writer.tidy();
        match socket.recv(&mut buf) {
            Ok(n) => apply(&buf[..n], &mut decoder, writer, counters),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                warn!(error = %e, "statsd_unix: receive failed");
                std::thread::sleep(STOP_POLL);
            }
        }
    }
    if let Err(e) = socket.set_nonblocking(true) {
        warn!(error = %e, "statsd_unix: cannot drain the socket on stop");
        return;
    }
    let started = Instant::now();
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => apply(&buf[..n], &mut decoder, writer, counters),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(error = %e, "statsd_unix: receive failed while draining on stop");
                return;
            }
        }
        if started.elapsed() >= DRAIN_TIME {
            warn!("statsd_unix: drain on stop cut short (the sender is still sending)");
            return;
        }
    }
}

/// The Unix datagram StatsD source.
pub struct StatsdUnixSource {
    receiver: StatsdUnixReceiver,
    parse_errors_seen: u64,
}

impl StatsdUnixSource {
    /// Starts the receiver if `receivers.statsd_unix` is enabled.
    ///
    /// # Errors
    /// The socket file could not be bound.
    pub fn start(
        config: &crate::config::Config,
        aggregator: &Aggregator,
    ) -> Result<Option<StatsdUnixSource>, super::SourceError> {
        let c = &config.receivers.statsd_unix;
        if !c.enabled {
            return Ok(None);
        }
        let receiver = StatsdUnixReceiver::start(c, aggregator)
            .map_err(super::SourceError::at("statsd_unix", c.path.display()))?;
        info!(
            path = %c.path.display(),
            mode = format!("{:04o}", c.mode.0),
            "statsd receiver listening (Unix datagram)"
        );
        Ok(Some(StatsdUnixSource {
            receiver,
            parse_errors_seen: 0,
        }))
    }
}

impl super::Source for StatsdUnixSource {
    fn name(&self) -> &'static str {
        "statsd_unix"
    }

    fn metrics(&self) -> Arc<dyn crate::telemetry::StageMetrics> {
        self.receiver.counters()
    }

    fn after_flush(&mut self) {
        let stats = self.receiver.counters.stats();
        self.parse_errors_seen = warn_parse_errors("statsd_unix", &stats, self.parse_errors_seen);
    }

    fn stop(self: Box<Self>) -> super::StopFuture {
        let StatsdUnixSource {
            receiver,
            parse_errors_seen,
        } = *self;
        Box::pin(async move {
            // Joining the receive thread blocks: off the async workers.
            let Ok(stats) = tokio::task::spawn_blocking(move || receiver.stop()).await else {
                warn!("statsd_unix: stopping the receiver panicked");
                return;
            };
            warn_parse_errors("statsd_unix", &stats, parse_errors_seen);
            log_stopped("unix", &stats);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::testing::TempDir;

    fn config(dir: &Path) -> StatsdUnixConfig {
        StatsdUnixConfig {
            enabled: true,
            path: dir.join("dsd.sock"),
            ..StatsdUnixConfig::default()
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        TempDir::new(&format!("uds-{name}"))
    }

    #[test]
    fn datagrams_on_the_socket_reach_the_aggregator_exactly() {
        let dir = temp_dir("exact");
        let agg = Aggregator::default();
        let r = StatsdUnixReceiver::start(&config(&dir), &agg).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        for i in 0..100 {
            client
                .send_to(
                    format!("uds.hits:2|c|#i:{}\nbroken|c\n", i % 3).as_bytes(),
                    dir.join("dsd.sock"),
                )
                .unwrap();
        }
        // Over the limit: skipped whole and counted.
        let long = format!("uds.hits:1|c|#pad:{}\n", "x".repeat(MAX_UNIX_DATAGRAM));
        client
            .send_to(long.as_bytes(), dir.join("dsd.sock"))
            .unwrap();
        let stats = r.stop();
        assert_eq!(agg.flush().counter_delta_sum(), 200.0);
        assert_eq!(
            (stats.datagrams, stats.lines, stats.samples),
            (101, 100, 100)
        );
        assert_eq!(stats.parse_errors("missing_value"), 100);
        assert_eq!(stats.parse_errors("datagram_too_long"), 1);
        assert!(
            !dir.join("dsd.sock").exists(),
            "the socket file is removed on stop"
        );
    }

    #[test]
    fn the_socket_file_gets_the_configured_mode() {
        let dir = temp_dir("mode");
        let agg = Aggregator::default();
        for mode in [0o600, 0o666] {
            let c = StatsdUnixConfig {
                mode: SocketMode(mode),
                ..config(&dir)
            };
            let r = StatsdUnixReceiver::start(&c, &agg).unwrap();
            let meta = std::fs::metadata(&c.path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode);
            r.stop();
        }
    }

    #[test]
    fn a_dead_socket_file_is_replaced() {
        let dir = temp_dir("stale");
        let path = dir.join("dsd.sock");
        // Bound and closed: the file stays, nothing answers on it.
        drop(UnixDatagram::bind(&path).unwrap());
        assert!(path.exists());
        let agg = Aggregator::default();
        let r = StatsdUnixReceiver::start(&config(&dir), &agg).unwrap();
        UnixDatagram::unbound()
            .unwrap()
            .send_to(b"after.replace:1|c\n", &path)
            .unwrap();
        r.stop();
        assert_eq!(agg.flush().counter_delta_sum(), 1.0);
        // A dead stream socket file too.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        StatsdUnixReceiver::start(&config(&dir), &agg)
            .unwrap()
            .stop();
    }

    #[test]
    fn a_live_socket_makes_the_start_fail_and_is_left_alone() {
        let dir = temp_dir("live");
        let path = dir.join("dsd.sock");
        let agg = Aggregator::default();
        let first = StatsdUnixReceiver::start(&config(&dir), &agg).unwrap();
        let e = StatsdUnixReceiver::start(&config(&dir), &agg)
            .err()
            .expect("a second receiver on a live socket");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("live socket"), "{e}");
        // The first one still receives.
        UnixDatagram::unbound()
            .unwrap()
            .send_to(b"still:1|c\n", &path)
            .unwrap();
        first.stop();
        assert_eq!(agg.flush().counter_delta_sum(), 1.0);
        // A live stream listener is left alone too.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = StatsdUnixReceiver::start(&config(&dir), &agg)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(listener);
    }

    #[test]
    fn a_regular_file_at_the_path_is_never_deleted() {
        let dir = temp_dir("regular");
        let path = dir.join("dsd.sock");
        std::fs::write(&path, b"precious").unwrap();
        let agg = Aggregator::default();
        let e = StatsdUnixReceiver::start(&config(&dir), &agg)
            .err()
            .expect("a regular file is not replaced");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn each_transport_renders_its_own_families_with_the_too_long_reason() {
        use crate::telemetry::{MetricsPage, StageMetrics as _};
        let datagram = TransportCounters::new("weir_statsd_unix", false);
        datagram.add_too_long();
        let stream = TransportCounters::new("weir_statsd_tcp", true);
        stream.connection_opened();
        stream.connection_refused();
        let mut page = MetricsPage::new();
        datagram.render(&mut page);
        stream.render(&mut page);
        let text = page.into_string();
        for line in [
            "weir_statsd_unix_datagrams_total 0",
            "weir_statsd_unix_parse_errors_total{reason=\"datagram_too_long\"} 1",
            "weir_statsd_tcp_connections_total 1",
            "weir_statsd_tcp_connections_refused_total 1",
            "weir_statsd_tcp_connections_open 1",
            "weir_statsd_tcp_parse_errors_total{reason=\"line_too_long\"} 0",
            "weir_statsd_tcp_parse_errors_total{reason=\"missing_value\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Never the UDP receiver's families: both can be registered at once.
        assert!(!text.contains("weir_statsd_lines_total"), "{text}");
    }

    #[test]
    fn socket_modes_parse_from_octal_strings_only() {
        assert_eq!(
            SocketMode::try_from("0660".to_owned()),
            Ok(SocketMode(0o660))
        );
        assert_eq!(
            SocketMode::try_from("777".to_owned()),
            Ok(SocketMode(0o777))
        );
        for bad in ["", "0o", "0888", "1777", "rw", "-1"] {
            assert!(SocketMode::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
