//! StatsD over stream connections: TCP (the `statsd` package's `TCPStatsClient`) and
//! Unix stream sockets, newline-delimited. One tokio task per connection reads into
//! a buffer of its own, cuts it at the last newline and applies the complete lines
//! through weir-core's [`Decoder`] and a [`weir_core::Writer`] of its own; a line
//! split across reads waits in the buffer for its end.
//!
//! Owns: the `[receivers.statsd_tcp]` and `[receivers.statsd_unix_stream]` sections
//! ([`StatsdTcpConfig`], [`StatsdUnixStreamConfig`]), the listeners, the connection
//! tasks and the line framing ([`LineReader`]).
//!
//! # Limits
//! - A line longer than `max_line_bytes` (without its newline) is skipped and counted
//!   (`line_too_long`); the connection stays open and the next line is applied. Each
//!   connection's buffer is `max_line_bytes` plus [`READ_CHUNK`], allocated when it
//!   opens: memory is bounded by `max_connections` times that.
//! - At `max_connections` open connections a new one is accepted and closed at once,
//!   and counted (`connections_refused`).
//! - A connection's final line without a newline is applied when the peer closes.
//!
//! # Stop and drain
//! On stop the listener accepts, without waiting, the connections the kernel already
//! completed (a client may connect, write and close before weir accepts it), then
//! closes (the Unix socket file is removed). Each connection reads what the kernel
//! already holds for it, without waiting for more, for at most [`DRAIN_TIME`],
//! applies its complete lines (and a final partial one) and closes.
//!
//! Must never: block a sender beyond TCP's own flow control, let one connection's bad
//! line end the connection, or keep the daemon from stopping.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};
use weir_core::Aggregator;
use weir_core::parse::statsd::Decoder;

use super::statsd::DRAIN_TIME;
use super::statsd_unix::{
    SocketFile, SocketMode, TransportCounters, TransportStats, log_stopped, validate_path,
    warn_parse_errors,
};
use crate::config::{Step, keys};

/// Bytes read per call on top of the longest line's room.
pub const READ_CHUNK: usize = 16 * 1024;
/// Shortest accepted `max_line_bytes`.
pub const MIN_LINE_BYTES: usize = 64;
/// Longest accepted `max_line_bytes`.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most accepted `max_connections`.
pub const MAX_STREAM_CONNECTIONS: usize = 65_536;

/// `[receivers.statsd_tcp]`: StatsD over TCP, newline-delimited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdTcpConfig {
    /// Whether to listen at all. Default false.
    pub enabled: bool,
    /// TCP address to listen on. Default `127.0.0.1:8125`.
    pub address: SocketAddr,
    /// Longest line, in bytes without its newline. Default 65,536.
    pub max_line_bytes: usize,
    /// Most connections open at once. Default 256.
    pub max_connections: usize,
}

impl Default for StatsdTcpConfig {
    fn default() -> Self {
        StatsdTcpConfig {
            enabled: false,
            address: SocketAddr::from(([127, 0, 0, 1], 8125)),
            max_line_bytes: 65_536,
            max_connections: 256,
        }
    }
}

impl StatsdTcpConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        validate_limits(self.max_line_bytes, self.max_connections)
    }
}

/// `[receivers.statsd_unix_stream]`: StatsD over a Unix stream socket,
/// newline-delimited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdUnixStreamConfig {
    /// Whether to listen at all. Default false.
    pub enabled: bool,
    /// The socket file. Default `/run/weir/statsd.sock`.
    pub path: PathBuf,
    /// Permissions of the socket file. Default `"0660"`.
    pub mode: SocketMode,
    /// Longest line, in bytes without its newline. Default 65,536.
    pub max_line_bytes: usize,
    /// Most connections open at once. Default 256.
    pub max_connections: usize,
}

impl Default for StatsdUnixStreamConfig {
    fn default() -> Self {
        StatsdUnixStreamConfig {
            enabled: false,
            path: PathBuf::from("/run/weir/statsd.sock"),
            mode: SocketMode(0o660),
            max_line_bytes: 65_536,
            max_connections: 256,
        }
    }
}

impl StatsdUnixStreamConfig {
    /// Checks the section; on error returns the key inside it and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        validate_path(&self.path)?;
        validate_limits(self.max_line_bytes, self.max_connections)
    }
}

fn validate_limits(max_line: usize, max_connections: usize) -> Result<(), (Vec<Step>, String)> {
    if !(MIN_LINE_BYTES..=MAX_LINE_BYTES).contains(&max_line) {
        return Err((
            keys(&["max_line_bytes"]),
            format!("must be between {MIN_LINE_BYTES} and {MAX_LINE_BYTES}, got {max_line}"),
        ));
    }
    if !(1..=MAX_STREAM_CONNECTIONS).contains(&max_connections) {
        return Err((
            keys(&["max_connections"]),
            format!("must be between 1 and {MAX_STREAM_CONNECTIONS}, got {max_connections}"),
        ));
    }
    Ok(())
}

/// Newline framing over one connection's reads. The buffer holds at most one
/// partial line (at most `max_line` bytes) between reads, so there is always room
/// for [`READ_CHUNK`] more.
pub struct LineReader {
    buf: Vec<u8>,
    /// Bytes of `buf` holding the current partial line (none of them a newline).
    len: usize,
    max_line: usize,
    /// Skipping the rest of an over-long line (already counted) up to its newline.
    discarding: bool,
    decoder: Decoder,
}

impl LineReader {
    /// A reader for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> LineReader {
        LineReader {
            buf: vec![0; max_line + READ_CHUNK],
            len: 0,
            max_line,
            discarding: false,
            decoder: Decoder::default(),
        }
    }

    /// Where the next read goes (never empty).
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Takes `n` bytes just read into [`LineReader::space`]: applies every complete
    /// line, skips and counts the over-long ones, keeps the partial last line.
    pub fn filled(
        &mut self,
        n: usize,
        writer: &mut weir_core::Writer,
        counters: &TransportCounters,
    ) {
        counters.add_bytes(n);
        let start = self.len;
        let end = (start + n).min(self.buf.len());
        // The start of the current line, and of the run of good lines not yet applied.
        let mut line_start = 0;
        let mut search = start;
        if self.discarding {
            match self.buf[start..end].iter().position(|&b| b == b'\n') {
                None => {
                    self.len = 0;
                    return;
                }
                Some(p) => {
                    self.discarding = false;
                    line_start = start + p + 1;
                    search = line_start;
                }
            }
        }
        let mut run_start = line_start;
        while let Some(p) = self.buf[search..end].iter().position(|&b| b == b'\n') {
            let newline = search + p;
            if newline - line_start > self.max_line {
                self.apply(run_start, line_start, writer, counters);
                counters.add_too_long();
                run_start = newline + 1;
            }
            line_start = newline + 1;
            search = line_start;
        }
        self.apply(run_start, line_start, writer, counters);
        let rest = end - line_start;
        if rest > self.max_line {
            counters.add_too_long();
            self.discarding = true;
            self.len = 0;
        } else {
            self.buf.copy_within(line_start..end, 0);
            self.len = rest;
        }
    }

    /// The peer closed (or the drain ended): applies a final line that has no
    /// newline.
    pub fn finish(&mut self, writer: &mut weir_core::Writer, counters: &TransportCounters) {
        if !self.discarding {
            self.apply(0, self.len, writer, counters);
        }
        self.len = 0;
        self.discarding = false;
    }

    fn apply(
        &mut self,
        from: usize,
        to: usize,
        writer: &mut weir_core::Writer,
        counters: &TransportCounters,
    ) {
        if let Some(lines) = self.buf.get(from..to)
            && !lines.is_empty()
        {
            counters.add_report(&self.decoder.ingest(lines, writer));
        }
    }
}

/// A listening socket of either kind.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection of either kind.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }

    /// Accepts, without waiting, every connection the kernel completed but nobody
    /// accepted yet (a client that connected, wrote and closed just before the stop),
    /// and closes the listener.
    fn accept_queued(self) -> Vec<Conn> {
        let mut queued = Vec::new();
        match self {
            // `into_std` keeps the listener non-blocking: an empty queue says
            // WouldBlock.
            Listener::Tcp(l) => {
                if let Ok(l) = l.into_std() {
                    while let Ok((s, _)) = l.accept() {
                        match s
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpStream::from_std(s))
                        {
                            Ok(c) => queued.push(Conn::Tcp(c)),
                            Err(e) => {
                                warn!(error = %e, "statsd: cannot take a queued connection on stop")
                            }
                        }
                    }
                }
            }
            Listener::Unix(l) => {
                if let Ok(l) = l.into_std() {
                    while let Ok((s, _)) = l.accept() {
                        match s
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::UnixStream::from_std(s))
                        {
                            Ok(c) => queued.push(Conn::Unix(c)),
                            Err(e) => {
                                warn!(error = %e, "statsd: cannot take a queued connection on stop")
                            }
                        }
                    }
                }
            }
        }
        queued
    }
}

impl Conn {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.readable().await,
            Conn::Unix(s) => s.readable().await,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_read(buf),
            Conn::Unix(s) => s.try_read(buf),
        }
    }

    /// Reads what the kernel holds now, with a plain `recv` on the (non-blocking)
    /// socket: unlike `try_read` it does not depend on the runtime having seen the
    /// socket's readiness yet, so a drain finds what is there.
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read as _;
        let socket = match self {
            Conn::Tcp(s) => socket2::SockRef::from(s),
            Conn::Unix(s) => socket2::SockRef::from(s),
        };
        (&*socket).read(buf)
    }
}

/// A running stream receiver (TCP or Unix stream).
pub struct StatsdStreamReceiver {
    name: &'static str,
    counters: Arc<TransportCounters>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// Removed after the listener is closed.
    file: Option<SocketFile>,
}

impl StatsdStreamReceiver {
    /// Listens on `config.address` (within a tokio runtime).
    ///
    /// # Errors
    /// The address could not be bound.
    pub fn start_tcp(
        config: &StatsdTcpConfig,
        aggregator: &Aggregator,
    ) -> io::Result<StatsdStreamReceiver> {
        let std = std::net::TcpListener::bind(config.address)?;
        std.set_nonblocking(true)?;
        let local = std.local_addr()?;
        let listener = Listener::Tcp(tokio::net::TcpListener::from_std(std)?);
        let mut r = Self::spawn(
            "statsd_tcp",
            "weir_statsd_tcp",
            listener,
            config.max_line_bytes,
            config.max_connections,
            aggregator,
        );
        r.local_addr = Some(local);
        Ok(r)
    }

    /// Listens on the socket file `config.path` (replacing a stale one; within a
    /// tokio runtime).
    ///
    /// # Errors
    /// The path is taken (see [`SocketFile::bind`]) or could not be bound.
    pub fn start_unix(
        config: &StatsdUnixStreamConfig,
        aggregator: &Aggregator,
    ) -> io::Result<StatsdStreamReceiver> {
        let (std, file) = SocketFile::bind(&config.path, config.mode, |p| {
            std::os::unix::net::UnixListener::bind(p)
        })?;
        std.set_nonblocking(true)?;
        let listener = Listener::Unix(tokio::net::UnixListener::from_std(std)?);
        let mut r = Self::spawn(
            "statsd_unix_stream",
            "weir_statsd_unix_stream",
            listener,
            config.max_line_bytes,
            config.max_connections,
            aggregator,
        );
        r.file = Some(file);
        Ok(r)
    }

    fn spawn(
        name: &'static str,
        prefix: &'static str,
        listener: Listener,
        max_line: usize,
        max_connections: usize,
        aggregator: &Aggregator,
    ) -> StatsdStreamReceiver {
        let counters = Arc::new(TransportCounters::new(prefix, true));
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            name,
            listener,
            aggregator.clone(),
            counters.clone(),
            stopped,
            max_line,
            max_connections,
        ));
        StatsdStreamReceiver {
            name,
            counters,
            stop,
            accept: Some(accept),
            local_addr: None,
            file: None,
        }
    }

    /// The bound TCP address (useful with port 0); `None` for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<TransportCounters> {
        self.counters.clone()
    }

    /// Stops listening, lets every connection drain what the kernel holds for it
    /// (bounded), waits for them, removes the socket file and returns the totals.
    pub async fn stop(mut self) -> TransportStats {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take()
            && accept.await.is_err()
        {
            warn!(source = self.name, "statsd: the accept task panicked");
        }
        self.file.take();
        self.counters.stats()
    }
}

impl Drop for StatsdStreamReceiver {
    fn drop(&mut self) {
        // Not stopped: end the tasks without waiting for them.
        let _ = self.stop.send(true);
    }
}

/// How long to wait after a failed accept (out of file descriptors, say), so that the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn accept_loop(
    name: &'static str,
    listener: Listener,
    aggregator: Aggregator,
    counters: Arc<TransportCounters>,
    mut stop: watch::Receiver<bool>,
    max_line: usize,
    max_connections: usize,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|&s| s) => break,
        };
        // Reap the finished ones, so the set holds open connections only.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok(conn) => {
                if counters.open() >= max_connections as u64 {
                    counters.connection_refused();
                    debug!(
                        source = name,
                        "statsd: max_connections open, closing a new one"
                    );
                    drop(conn);
                    continue;
                }
                counters.connection_opened();
                connections.spawn(serve(
                    conn,
                    aggregator.writer(),
                    counters.clone(),
                    stop.clone(),
                    max_line,
                ));
            }
            Err(e) => {
                warn!(source = name, error = %e, "statsd: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    for conn in listener.accept_queued() {
        // They see the stop at once: each drains what it holds and ends.
        if counters.open() >= max_connections as u64 {
            counters.connection_refused();
            continue;
        }
        counters.connection_opened();
        connections.spawn(serve(
            conn,
            aggregator.writer(),
            counters.clone(),
            stop.clone(),
            max_line,
        ));
    }
    while connections.join_next().await.is_some() {}
}

/// How often a connection's writer is tidied ([`weir_core::Writer::tidy`]) also
/// while no data comes: once per flush at most does any work.
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// Reads one connection until the peer closes it or the receiver stops.
async fn serve(
    conn: Conn,
    mut writer: weir_core::Writer,
    counters: Arc<TransportCounters>,
    mut stop: watch::Receiver<bool>,
    max_line: usize,
) {
    let mut lines = LineReader::new(max_line);
    // An idle connection's writer still lets go of evicted series.
    let mut tidy = tokio::time::interval(TIDY_EVERY);
    tidy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.readable() => if r.is_err() { break },
            _ = tidy.tick() => {
                writer.tidy();
                continue;
            }
            _ = stop.wait_for(|&s| s) => {
                drain(&conn, &mut lines, &mut writer, &counters);
                break;
            }
        }
        match conn.try_read(lines.space()) {
            Ok(0) => break,
            Ok(n) => lines.filled(n, &mut writer, &counters),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                debug!(error = %e, "statsd: connection read failed");
                break;
            }
        }
    }
    lines.finish(&mut writer, &counters);
    counters.connection_closed();
}

/// Reads what the kernel holds for the connection without waiting, for at most
/// [`DRAIN_TIME`].
fn drain(
    conn: &Conn,
    lines: &mut LineReader,
    writer: &mut weir_core::Writer,
    counters: &TransportCounters,
) {
    let started = Instant::now();
    while started.elapsed() < DRAIN_TIME {
        match conn.read_now(lines.space()) {
            Ok(0) => return,
            Ok(n) => lines.filled(n, writer, counters),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A StatsD stream source (TCP or Unix stream).
pub struct StatsdStreamSource {
    receiver: StatsdStreamReceiver,
    parse_errors_seen: u64,
    refused_seen: u64,
}

impl StatsdStreamSource {
    /// Starts the TCP receiver if `receivers.statsd_tcp` is enabled.
    ///
    /// # Errors
    /// The address could not be bound.
    pub fn start_tcp(
        config: &crate::config::Config,
        aggregator: &Aggregator,
    ) -> Result<Option<StatsdStreamSource>, super::SourceError> {
        let c = &config.receivers.statsd_tcp;
        if !c.enabled {
            return Ok(None);
        }
        let receiver = StatsdStreamReceiver::start_tcp(c, aggregator)
            .map_err(super::SourceError::at("statsd_tcp", c.address))?;
        info!(
            address = %receiver.local_addr().unwrap_or(c.address),
            max_connections = c.max_connections,
            max_line_bytes = c.max_line_bytes,
            "statsd receiver listening (TCP)"
        );
        Ok(Some(Self::new(receiver)))
    }

    /// Starts the Unix stream receiver if `receivers.statsd_unix_stream` is enabled.
    ///
    /// # Errors
    /// The socket file could not be bound.
    pub fn start_unix(
        config: &crate::config::Config,
        aggregator: &Aggregator,
    ) -> Result<Option<StatsdStreamSource>, super::SourceError> {
        let c = &config.receivers.statsd_unix_stream;
        if !c.enabled {
            return Ok(None);
        }
        let receiver = StatsdStreamReceiver::start_unix(c, aggregator).map_err(
            super::SourceError::at("statsd_unix_stream", c.path.display()),
        )?;
        info!(
            path = %c.path.display(),
            mode = format!("{:04o}", c.mode.0),
            max_connections = c.max_connections,
            max_line_bytes = c.max_line_bytes,
            "statsd receiver listening (Unix stream)"
        );
        Ok(Some(Self::new(receiver)))
    }

    fn new(receiver: StatsdStreamReceiver) -> StatsdStreamSource {
        StatsdStreamSource {
            receiver,
            parse_errors_seen: 0,
            refused_seen: 0,
        }
    }
}

impl super::Source for StatsdStreamSource {
    fn name(&self) -> &'static str {
        self.receiver.name
    }

    fn metrics(&self) -> Arc<dyn crate::telemetry::StageMetrics> {
        self.receiver.counters()
    }

    fn after_flush(&mut self) {
        let name = self.receiver.name;
        let stats = self.receiver.counters.stats();
        self.parse_errors_seen = warn_parse_errors(name, &stats, self.parse_errors_seen);
        if stats.connections_refused > self.refused_seen {
            warn!(
                source = name,
                refused = stats.connections_refused - self.refused_seen,
                since_start = stats.connections_refused,
                "statsd: connections closed at once because max_connections were open"
            );
            self.refused_seen = stats.connections_refused;
        }
    }

    fn stop(self: Box<Self>) -> super::StopFuture {
        let StatsdStreamSource {
            receiver,
            parse_errors_seen,
            ..
        } = *self;
        Box::pin(async move {
            let name = receiver.name;
            let stats = receiver.stop().await;
            warn_parse_errors(name, &stats, parse_errors_seen);
            let transport = if name == "statsd_tcp" {
                "tcp"
            } else {
                "unix_stream"
            };
            log_stopped(transport, &stats);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn counters() -> TransportCounters {
        TransportCounters::new("weir_statsd_test", true)
    }

    /// Feeds `reads` one by one through a reader of `max_line`, then the end.
    fn feed(max_line: usize, reads: &[&[u8]]) -> (f64, TransportStats) {
        let agg = Aggregator::default();
        let mut writer = agg.writer();
        let c = counters();
        let mut r = LineReader::new(max_line);
        for read in reads {
            let space = r.space();
            space[..read.len()].copy_from_slice(read);
            r.filled(read.len(), &mut writer, &c);
        }
        r.finish(&mut writer, &c);
        drop(writer);
        (agg.flush().counter_delta_sum(), c.stats())
    }

    #[test]
    fn a_line_split_across_two_reads_is_joined() {
        let (sum, s) = feed(64, &[b"split.me:", b"5|c\nnext:1|c\n"]);
        assert_eq!(sum, 6.0);
        assert_eq!((s.lines, s.parse_errors_total()), (2, 0));
        // Split anywhere, byte by byte.
        let text = b"a:1|c\nbb:2|c\nccc:3|c\n";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        let (sum, s) = feed(64, &bytes);
        assert_eq!((sum, s.lines), (6.0, 3));
    }

    #[test]
    fn an_over_long_line_is_counted_and_skipped_and_the_next_lines_apply() {
        let long = format!("long:1|c|#pad:{}\n", "x".repeat(200));
        // In one read, between good lines.
        let text = format!("a:1|c\n{long}b:2|c\n");
        let (sum, s) = feed(64, &[text.as_bytes()]);
        assert_eq!((sum, s.lines), (3.0, 2));
        assert_eq!(s.parse_errors("line_too_long"), 1);
        // Across reads: the long line's start fills the buffer before its newline.
        let chunks: Vec<&[u8]> = long.as_bytes().chunks(50).collect();
        let mut reads = vec![&b"a:1|c\n"[..]];
        reads.extend(chunks);
        reads.push(b"b:2|c\nc:4|");
        reads.push(b"c\n");
        let (sum, s) = feed(64, &reads);
        assert_eq!((sum, s.lines), (7.0, 3));
        assert_eq!(s.parse_errors("line_too_long"), 1);
        // A line of exactly the limit is applied.
        let exact = format!("e:1|c|#p:{}", "y".repeat(64 - 9));
        assert_eq!(exact.len(), 64);
        let (sum, s) = feed(64, &[format!("{exact}\n").as_bytes()]);
        assert_eq!((sum, s.parse_errors_total()), (1.0, 0));
    }

    #[test]
    fn a_final_line_without_a_newline_is_applied_at_the_end() {
        let (sum, s) = feed(64, &[b"a:1|c\nlast:2|c"]);
        assert_eq!((sum, s.lines), (3.0, 2));
    }

    fn tcp_config(max_connections: usize) -> StatsdTcpConfig {
        StatsdTcpConfig {
            enabled: true,
            address: "127.0.0.1:0".parse().unwrap(),
            max_line_bytes: 64,
            max_connections,
        }
    }

    #[tokio::test]
    async fn lines_over_tcp_reach_the_aggregator_exactly() {
        let agg = Aggregator::default();
        let r = StatsdStreamReceiver::start_tcp(&tcp_config(8), &agg).unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(
                tokio::net::TcpStream::connect(r.local_addr().unwrap())
                    .await
                    .unwrap(),
            );
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(b"tcp.hits:1|c\ntcp.hi").await.unwrap();
            c.write_all(format!("ts:2|c|#c:{i}\n").as_bytes())
                .await
                .unwrap();
            c.write_all(format!("long:1|c|#{}\n", "z".repeat(100)).as_bytes())
                .await
                .unwrap();
            c.write_all(b"after:4|c\n").await.unwrap();
            c.shutdown().await.unwrap();
        }
        // Wait for every connection to end (bounded), then stop.
        for _ in 0..1000 {
            let s = r.counters().stats();
            if s.connections == 3 && s.connections_open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = r.stop().await;
        assert_eq!(agg.flush().counter_delta_sum(), 3.0 * 7.0);
        assert_eq!(stats.lines, 9);
        assert_eq!(stats.parse_errors("line_too_long"), 3);
        assert_eq!(stats.connections, 3);
    }

    #[tokio::test]
    async fn the_stop_drains_what_open_connections_already_sent() {
        let agg = Aggregator::default();
        let r = StatsdStreamReceiver::start_tcp(&tcp_config(8), &agg).unwrap();
        let mut c = tokio::net::TcpStream::connect(r.local_addr().unwrap())
            .await
            .unwrap();
        c.write_all(b"open:1|c\nopen:2|c\npartial:4|c")
            .await
            .unwrap();
        c.flush().await.unwrap();
        // Accepted (bounded wait); the connection stays open: the stop reads what the
        // kernel holds for it, applies the final partial line, and ends it.
        for _ in 0..1000 {
            if r.counters().stats().connections == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = r.stop().await;
        assert_eq!(agg.flush().counter_delta_sum(), 7.0);
        assert_eq!((stats.connections, stats.connections_open), (1, 0));
        drop(c);
    }

    /// The defect this covers: connections the kernel completed but weir had not
    /// accepted yet were dropped, with what they had sent, when the stop came.
    #[tokio::test]
    async fn the_stop_accepts_and_drains_connections_not_yet_accepted() {
        let agg = Aggregator::default();
        let r = StatsdStreamReceiver::start_tcp(&tcp_config(64), &agg).unwrap();
        let addr = r.local_addr().unwrap();
        // Blocking clients: this test's (single-threaded) runtime does not run the
        // accept task until the stop, so every connection waits in the kernel's queue.
        for i in 0..20 {
            use std::io::Write as _;
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(format!("queued:1|c|#c:{i}\nqueued:2|c|#c:{i}").as_bytes())
                .unwrap();
        }
        let stats = r.stop().await;
        assert_eq!(agg.flush().counter_delta_sum(), 60.0);
        assert_eq!((stats.connections, stats.lines), (20, 40));
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_counted() {
        let agg = Aggregator::default();
        let r = StatsdStreamReceiver::start_tcp(&tcp_config(1), &agg).unwrap();
        let addr = r.local_addr().unwrap();
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(b"first:1|c\n").await.unwrap();
        // Accepted (bounded wait).
        for _ in 0..1000 {
            if r.counters().stats().connections == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        // Closed by weir: the read sees the end.
        use tokio::io::AsyncReadExt as _;
        let n = tokio::time::timeout(Duration::from_secs(30), second.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(r.counters().stats().connections_refused, 1);
        first.shutdown().await.unwrap();
        drop(first);
        let stats = r.stop().await;
        assert_eq!(stats.connections, 1);
        assert_eq!(agg.flush().counter_delta_sum(), 1.0);
    }

    #[tokio::test]
    async fn lines_over_a_unix_stream_socket_reach_the_aggregator_exactly() {
        let dir = std::env::temp_dir().join(format!(
            "weir-uds-stream-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("statsd.sock");
        // A stale stream socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let config = StatsdUnixStreamConfig {
            enabled: true,
            path: path.clone(),
            mode: SocketMode(0o600),
            max_line_bytes: 64,
            max_connections: 4,
        };
        let agg = Aggregator::default();
        let r = StatsdStreamReceiver::start_unix(&config, &agg).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second receiver on the live socket fails and leaves it alone.
        let e = StatsdStreamReceiver::start_unix(&config, &agg)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        c.write_all(b"uds.stream:3|c\nuds.str").await.unwrap();
        c.write_all(b"eam:4|c\n").await.unwrap();
        c.shutdown().await.unwrap();
        drop(c);
        for _ in 0..1000 {
            let s = r.counters().stats();
            if s.connections == 1 && s.connections_open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = r.stop().await;
        assert_eq!(agg.flush().counter_delta_sum(), 7.0);
        assert_eq!(stats.lines, 2);
        assert!(!path.exists(), "the socket file is removed on stop");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
