//! The StatsD/DogStatsD UDP receiver: one or more sockets bound to the configured
//! address, each read by a dedicated OS thread that applies the datagrams through
//! weir-core's [`Decoder`] and a [`weir_core::Writer`] of its own.
//!
//! Owns: the `[receivers.statsd]` section ([`StatsdConfig`]: schema, defaults, limits,
//! validation), the sockets (bind, `SO_REUSEPORT` when there are several, receive buffer),
//! the receive loops, their workers and their counters. Must never: block on anything
//! but its socket and the gauge turn of an earlier batch (the aggregator never blocks
//! a writer, and a batch goes to a worker only if one is waiting: there is no hand-off
//! queue to fill), apply a gauge line before one read earlier, allocate per datagram
//! or line in steady state (the receive buffers, at most two per socket thread and one
//! per worker, are allocated once and reused), or stop reading while running, or keep
//! the daemon from stopping.
//!
//! # Workers
//! One sender's datagrams all reach one socket, so its thread bounds what one sender
//! can send (~5 M lines/s of 42-line datagrams at 100k series on the reference
//! machine). Each socket's thread therefore has `receivers.statsd.workers` worker
//! threads (default 1), each with a writer of its own. When `recvmmsg` calls come
//! back full several times in a row (`BEHIND_AFTER`: datagrams stay queued, the
//! thread is behind) and a worker is waiting (tried in order, so the first ones take
//! most batches and the others' caches stay cold), the thread hands that batch's
//! buffer to the worker and reads on into another one; otherwise it applies the batch
//! itself. So a thread that keeps up does all the work (the workers sleep: no
//! hand-off costs), and one that falls behind shares it. Datagrams handed off are
//! counted in `weir_statsd_worker_datagrams_total`.
//!
//! While a worker applies one batch the thread applies the next, so their lines
//! apply at the same time. For counters, timers, histograms, distributions and sets
//! the order does not matter (sums, counts, bounds and unions come out the same); for
//! a gauge it does, it keeps its last value. So gauge lines keep the order of their
//! batches (`GaugeTurn`): each batch read is numbered; a batch applied while an
//! earlier one is still with a worker applies everything but its gauge lines at
//! once, and its gauge lines (sets and adjustments, in their order) only once those
//! of every earlier batch are in. If they are not yet, the batch parks its gauge lines
//! and its thread reads on; whichever thread finishes the batch before it applies
//! them (with those of any later batches parked already, in order). A batch without
//! gauges parks nothing, and one read while nothing is out applies in order at once.
//! A gauge therefore ends on the last value sent, whoever applied it, and nobody
//! waits for a turn while fewer than `PARK_BYTES` of gauge lines are parked: only
//! a load made mostly of gauges (whose lines all apply one turn after another
//! anyway) makes a batch wait, and a batch of the thread's that waited holds back
//! the next hand-offs (`GAUGE_HOLD_BACK`). (Sums of non-integer values may round
//! differently in another order, as with several sockets.) A worker idle for
//! `WORKER_IDLE` frees its writer cache. On stop the workers finish what they hold
//! before the thread reports its drain.
//!
//! # Stop and drain
//! On stop each thread drains what the kernel still holds for its socket, without
//! waiting for more, and exits. A sender that keeps sending would keep the queue
//! from ever being empty, so the drain is bounded and ends at the first of:
//! - an empty read: everything queued was read ([`DrainEnd::Emptied`]);
//! - a budget of what was queued when the stop was seen ([`DrainEnd::Budget`]): the
//!   bytes the kernel held for the socket then (its `rx_queue` in `/proc/net/udp*`,
//!   Linux), or where the OS does not say, the receive buffer it granted plus one
//!   largest datagram (the most it can hold). Each datagram read is charged its
//!   length plus [`DATAGRAM_CHARGE`] bytes, less than the kernel charges a queued
//!   datagram (its payload plus the `sk_buff` and shared-info overhead: 790 bytes
//!   and more, measured on loopback), so the budget is not spent before everything
//!   queued at the stop was read, and is spent soon after if the sender keeps
//!   sending: what arrives after the stop is not waited for, as on any other
//!   receiver;
//! - [`DRAIN_TIME`] (1 s) since the stop was seen ([`DrainEnd::TimeLimit`]): a
//!   backstop for a large queue on a slow machine. A full default buffer (8 MiB asked,
//!   16 MiB granted) holds about 400,000 lines of 40 bytes: ~50 ms at the measured
//!   8 M lines/s of a release build, ~100 ms for a 32 MiB buffer. An unoptimised
//!   build reads ~135,000 lines/s (measured: 2,719 datagrams of 11 lines in 221 ms)
//!   and the end-to-end tests leave up to 4,000 such datagrams queued at their stop:
//!   ~0.35 s (a 250 ms bound would cut them short). 1 s covers both and costs little
//!   next to the 5 s default `shutdown.grace_period` that follows.
//!
//! The limits are checked after each receive call, so a drain overshoots them by at
//! most one batch. A drain cut short is logged as a warning with what it read, how
//! long it took and the bytes the kernel still held for the socket (Linux): those
//! datagrams are lost with the socket. A complete drain is logged at info.
//! [`StatsdReceiver::stop`] returns each socket's [`Drain`] in
//! [`StatsdStats::drains`].
//!
//! Reads are batched: on Linux one `recvmmsg` call takes up to
//! `receivers.statsd.recv_batch` datagrams (through the `nix` crate, since this
//! crate forbids `unsafe`); elsewhere, and with a batch of 1, one `recv_from` takes
//! one. With `receivers.statsd.sockets` above 1 the kernel spreads *senders* over the
//! sockets by a hash of their address and port: the datagrams of a single sender all
//! land on one socket (measured; spreading them would take a reuseport BPF program).
//!
//! The kernel's own count of datagrams it dropped for each socket (receive buffer
//! full) is read from `/proc/net/udp` and `/proc/net/udp6` where Linux provides them,
//! and summed over the sockets.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{info, warn};
use weir_core::Aggregator;
use weir_core::parse::statsd::{DatagramReport, Decoder, LineError};

use crate::config::{Step, keys};

/// `[receivers.statsd]`: the StatsD/DogStatsD UDP receiver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// Whether to listen at all. Default true.
    pub enabled: bool,
    /// UDP address to bind. Default `127.0.0.1:8125`.
    pub address: SocketAddr,
    /// Socket receive buffer to ask the kernel for, in bytes (it caps the request at
    /// `net.core.rmem_max`). A large buffer absorbs scheduling pauses without loss.
    /// Default 8 MiB; between [`MIN_RECV_BUFFER`] and [`MAX_RECV_BUFFER`].
    pub recv_buffer_bytes: usize,
    /// Sockets bound to `address`, one receive thread each. Above 1 they share the
    /// address with `SO_REUSEPORT` and the kernel spreads senders over them by a hash
    /// of each sender's address and port, so the datagrams of one sender (one source
    /// port) all reach one socket. Default 1; between 1 and [`MAX_STATSD_SOCKETS`].
    pub sockets: usize,
    /// Datagrams read per receive call, at most (`recvmmsg` on Linux; 1 reads one
    /// datagram per call). Default 64; between 1 and [`MAX_RECV_BATCH`].
    pub recv_batch: usize,
    /// Worker threads per socket that take whole batches off its receive thread when
    /// it falls behind (see the module doc; gauge lines keep their order). Default 1;
    /// 0 turns them off; at most [`MAX_STATSD_WORKERS`]. Linux with `recv_batch`
    /// above 1 only.
    pub workers: usize,
}

/// Smallest accepted `receivers.statsd.recv_buffer_bytes`.
pub const MIN_RECV_BUFFER: usize = 4096;
/// Largest accepted `receivers.statsd.recv_buffer_bytes`.
pub const MAX_RECV_BUFFER: usize = 1 << 30;
/// Largest accepted `receivers.statsd.sockets`.
pub const MAX_STATSD_SOCKETS: usize = 64;
/// Largest accepted `receivers.statsd.recv_batch`.
pub const MAX_RECV_BATCH: usize = 256;
/// Largest accepted `receivers.statsd.workers`.
pub const MAX_STATSD_WORKERS: usize = 16;

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 8125)),
            recv_buffer_bytes: 8 << 20,
            sockets: 1,
            recv_batch: 64,
            workers: 1,
        }
    }
}

impl StatsdConfig {
    /// Checks the section; on error returns the key inside it (`sockets`) and the
    /// reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        let rb = self.recv_buffer_bytes;
        if !(MIN_RECV_BUFFER..=MAX_RECV_BUFFER).contains(&rb) {
            return Err((
                keys(&["recv_buffer_bytes"]),
                format!("must be between {MIN_RECV_BUFFER} and {MAX_RECV_BUFFER}, got {rb}"),
            ));
        }
        let n = self.sockets;
        if !(1..=MAX_STATSD_SOCKETS).contains(&n) {
            return Err((
                keys(&["sockets"]),
                format!("must be between 1 and {MAX_STATSD_SOCKETS}, got {n}"),
            ));
        }
        let n = self.recv_batch;
        if !(1..=MAX_RECV_BATCH).contains(&n) {
            return Err((
                keys(&["recv_batch"]),
                format!("must be between 1 and {MAX_RECV_BATCH}, got {n}"),
            ));
        }
        let n = self.workers;
        if n > MAX_STATSD_WORKERS {
            return Err((
                keys(&["workers"]),
                format!("must be between 0 and {MAX_STATSD_WORKERS}, got {n}"),
            ));
        }
        Ok(())
    }
}

/// How long a blocked receive waits before checking whether to stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Largest datagram read (the UDP maximum); a longer one is cut by the kernel.
const MAX_DATAGRAM: usize = 65_535;

/// The longest a stop's drain of one socket reads (see the module doc for why).
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// What a drain charges per datagram on top of its length, against its budget of
/// what was queued at the stop: under the kernel's own per-datagram overhead
/// (`sk_buff` plus shared info, 790 bytes and more), so the budget is never spent
/// before what was queued at the stop is read.
pub const DATAGRAM_CHARGE: u64 = 256;

/// Distance between two datagram slots of a batch buffer: a 64 KiB slot plus three
/// cache lines, so that the starts of the slots (where short datagrams live) do not
/// all map to the same cache sets, as a 64 KiB stride would make them.
const SLOT_STRIDE: usize = 65_536 + 192;

/// Counters of one receiver (all its sockets) since start. Relaxed: independent
/// counters, read only for reporting. Each receive thread adds once per batch.
#[derive(Default)]
pub struct StatsdCounters {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    /// Datagrams a worker applied (see the module doc), of `datagrams`.
    worker_datagrams: AtomicU64,
    lines: LineCounters,
    /// The receiver's sockets in bind order, set once they are all bound.
    sockets: OnceLock<Vec<SocketEntry>>,
}

/// A snapshot of [`StatsdCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsdStats {
    /// Datagrams read.
    pub datagrams: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Datagrams read by a socket's receive thread but applied by one of its workers
    /// because the receive thread was behind (see the module doc), of `datagrams`.
    pub worker_datagrams: u64,
    /// Lines that parsed.
    pub lines: u64,
    /// Samples the aggregator took.
    pub samples: u64,
    /// Samples the aggregator refused (its counters say why).
    pub rejected: u64,
    /// Lines skipped, by reason (every reason listed).
    pub parse_errors: Vec<(&'static str, u64)>,
    /// Datagrams the kernel dropped for the receiver's sockets because a receive
    /// buffer was full, since they were opened, summed over the sockets; `None` where
    /// the OS does not say.
    pub kernel_drops: Option<u64>,
    /// Datagrams read by each socket, in bind order.
    pub socket_datagrams: Vec<u64>,
    /// How each socket's drain on stop ended, in bind order: filled in by
    /// [`StatsdReceiver::stop`] only (empty in live snapshots).
    pub drains: Vec<Drain>,
}

/// What one socket's drain on stop read, and why it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    /// Datagrams read after the stop was seen.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// From the stop being seen to the end of the drain.
    pub elapsed: Duration,
    /// Why it ended.
    pub end: DrainEnd,
    /// Bytes the kernel still held for the socket when the drain was cut short (its
    /// `rx_queue`, which counts the kernel's per-datagram overhead too); `None` when
    /// the drain emptied the queue or the OS does not say.
    pub left_queued_bytes: Option<u64>,
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DrainEnd {
    /// A read found nothing queued: everything the kernel held was read.
    #[default]
    Emptied,
    /// Cut short at [`DRAIN_TIME`]: the sender kept sending. What it sent after is
    /// lost with the socket.
    TimeLimit,
    /// Cut short once what was queued at the stop was read (see the module doc): the
    /// sender kept sending. What it sent after is lost with the socket.
    Budget,
    /// Nothing drained: the socket could not be made non-blocking, or a read failed
    /// (logged). What was queued is lost with the socket.
    Failed,
}

impl DrainEnd {
    /// Whether datagrams were left behind because the drain hit one of its limits.
    pub fn cut_short(self) -> bool {
        matches!(self, DrainEnd::TimeLimit | DrainEnd::Budget)
    }

    /// A stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainEnd::Emptied => "emptied",
            DrainEnd::TimeLimit => "time_limit",
            DrainEnd::Budget => "budget",
            DrainEnd::Failed => "failed",
        }
    }
}

impl StatsdStats {
    /// Lines skipped, all reasons.
    pub fn parse_errors_total(&self) -> u64 {
        self.parse_errors.iter().map(|(_, n)| n).sum()
    }
}

impl StatsdCounters {
    fn add(&self, t: &Tally) {
        self.datagrams.fetch_add(t.datagrams, Ordering::Relaxed);
        self.bytes.fetch_add(t.bytes, Ordering::Relaxed);
        self.lines.add(&t.report);
    }

    /// A snapshot, with the kernel's drop count summed over the receiver's sockets
    /// (read from `/proc/net/udp*` on Linux).
    pub fn stats(&self) -> StatsdStats {
        self.snapshot(self.kernel_drops())
    }

    /// A snapshot with the given kernel drop count.
    fn snapshot(&self, kernel_drops: Option<u64>) -> StatsdStats {
        let lines = self.lines.snapshot();
        StatsdStats {
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            worker_datagrams: self.worker_datagrams.load(Ordering::Relaxed),
            lines: lines.lines,
            samples: lines.samples,
            rejected: lines.rejected,
            parse_errors: lines.parse_errors,
            kernel_drops,
            socket_datagrams: self
                .sockets()
                .iter()
                .map(|s| s.datagrams.load(Ordering::Relaxed))
                .collect(),
            drains: Vec::new(),
        }
    }

    fn sockets(&self) -> &[SocketEntry] {
        self.sockets.get().map_or(&[], Vec::as_slice)
    }

    /// The kernel's drop count summed over the sockets it reports; `None` if it
    /// reports none of them.
    fn kernel_drops(&self) -> Option<u64> {
        let inodes: Vec<u64> = self.sockets().iter().filter_map(|s| s.inode).collect();
        if inodes.is_empty() {
            return None;
        }
        let tables: Vec<String> = ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
        let mut found = false;
        let mut sum = 0;
        for inode in inodes {
            if let Some(n) = tables.iter().find_map(|t| drops_in_proc_net_udp(t, inode)) {
                found = true;
                sum += n;
            }
        }
        found.then_some(sum)
    }
}

/// What a receive thread read since it last published to [`StatsdCounters`]: summed
/// locally over a batch so the shared counters are written once per batch, not per
/// datagram.
#[derive(Default)]
struct Tally {
    datagrams: u64,
    bytes: u64,
    report: DatagramReport,
}

impl Tally {
    fn add(&mut self, bytes: usize, r: &DatagramReport) {
        self.datagrams += 1;
        self.bytes += bytes as u64;
        self.report.merge(r);
    }

    /// Adds what was read to the shared counters and to this socket's datagram
    /// count, and starts over.
    fn publish(&mut self, counters: &StatsdCounters, socket_datagrams: &AtomicU64) {
        if self.datagrams > 0 {
            counters.add(self);
            socket_datagrams.fetch_add(self.datagrams, Ordering::Relaxed);
            *self = Tally::default();
        }
    }
}

/// One bound socket of a receiver, as the receiver keeps it after handing the socket
/// itself to its thread.
struct SocketEntry {
    /// The socket's inode, to find it in `/proc/net/udp*`.
    inode: Option<u64>,
    /// Datagrams its thread read.
    datagrams: Arc<AtomicU64>,
}

/// A running StatsD receiver.
pub struct StatsdReceiver {
    local_addr: SocketAddr,
    recv_buffer_bytes: usize,
    recv_batch: usize,
    /// Worker threads per socket (0 where batches are not read with `recvmmsg`).
    workers: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<StatsdCounters>,
    /// One per socket, in bind order: each answers its drain on stop.
    threads: Vec<JoinHandle<Drain>>,
}

impl StatsdReceiver {
    /// Binds `config.sockets` sockets to `config.address` (sharing it with
    /// `SO_REUSEPORT` when there are several; with port 0, every socket gets the port
    /// the first one got) and starts one receive thread per socket.
    ///
    /// # Errors
    /// A socket could not be created, sized or bound, or a thread not started. The
    /// threads already started are stopped again.
    pub fn start(config: &StatsdConfig, aggregator: &Aggregator) -> io::Result<StatsdReceiver> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut receiver = StatsdReceiver {
            local_addr: config.address,
            recv_buffer_bytes: 0,
            recv_batch: config.recv_batch.clamp(1, MAX_RECV_BATCH),
            workers: 0,
            stop,
            counters: Arc::new(StatsdCounters::default()),
            threads: Vec::new(),
        };
        let count = config.sockets.max(1);
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            // After the first bind, `local_addr` holds the port it got.
            let socket = bind(receiver.local_addr, config.recv_buffer_bytes, count > 1)?;
            let granted = SockRef::from(&socket).recv_buffer_size()?;
            if i == 0 {
                receiver.local_addr = socket.local_addr()?;
                receiver.recv_buffer_bytes = granted;
            }
            let limit = DrainLimit {
                time: DRAIN_TIME,
                budget: DrainBudget::QueuedAtStop {
                    fallback: (granted + MAX_DATAGRAM) as u64,
                },
            };
            let entry = SocketEntry {
                inode: socket_inode(&socket),
                datagrams: Arc::new(AtomicU64::new(0)),
            };
            let writer = aggregator.writer();
            // Workers only take batches of several datagrams (`recvmmsg`, Linux).
            if cfg!(target_os = "linux") && receiver.recv_batch > 1 {
                receiver.workers = config.workers;
            }
            let worker_writers: Vec<_> =
                (0..receiver.workers).map(|_| aggregator.writer()).collect();
            let thread = std::thread::Builder::new()
                .name(format!("weir-statsd-{i}"))
                .spawn({
                    let stop = receiver.stop.clone();
                    let counters = receiver.counters.clone();
                    let datagrams = entry.datagrams.clone();
                    let batch = receiver.recv_batch;
                    move || {
                        with_workers(i, worker_writers, &counters, |workers| {
                            // Dropped on return, with the workers' channel: they stop.
                            let mut r =
                                Reader::new(&socket, writer, &counters, &datagrams, workers);
                            r.run(batch, &stop, limit)
                        })
                    }
                })?;
            sockets.push(entry);
            receiver.threads.push(thread);
        }
        // Set once, here: `receiver` is new, so nothing set it before.
        let _ = receiver.counters.sockets.set(sockets);
        Ok(receiver)
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The receive buffer the kernel granted (to the first socket), in bytes.
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }

    /// How many sockets (and receive threads) the receiver has.
    pub fn socket_count(&self) -> usize {
        self.counters.sockets().len()
    }

    /// Datagrams read per receive call, at most.
    pub fn recv_batch(&self) -> usize {
        self.recv_batch
    }

    /// Worker threads per socket (see the module doc).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The live counters, for the admin API.
    pub fn counters(&self) -> Arc<StatsdCounters> {
        self.counters.clone()
    }

    /// Counters since start, with the kernel's drop count summed over the sockets.
    pub fn stats(&self) -> StatsdStats {
        self.counters.stats()
    }

    /// Stops the threads after each has drained its socket (within the bounds the
    /// module doc gives), waits for them, and logs how the drains ended.
    pub fn stop(mut self) -> StatsdStats {
        // Read while the sockets are still open: they leave /proc/net/udp with them.
        let drops = self.counters.kernel_drops();
        let drains = self.shutdown();
        StatsdStats {
            drains,
            ..self.counters.snapshot(drops)
        }
    }

    fn shutdown(&mut self) -> Vec<Drain> {
        // Release: each thread's Acquire load then sees the request.
        self.stop.store(true, Ordering::Release);
        let mut drains = Vec::with_capacity(self.threads.len());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(d) => drains.push(d),
                Err(_) => warn!("statsd: receive thread panicked"),
            }
        }
        log_drains(&drains);
        drains
    }
}

impl Drop for StatsdReceiver {
    fn drop(&mut self) {
        // After `stop` there are no threads left: nothing to drain or log.
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

/// Logs the drains of a receiver's sockets in one line: at info when every socket
/// was emptied, as a warning when one was cut short or failed.
fn log_drains(drains: &[Drain]) {
    let datagrams: u64 = drains.iter().map(|d| d.datagrams).sum();
    let bytes: u64 = drains.iter().map(|d| d.bytes).sum();
    let elapsed_ms = drains
        .iter()
        .map(|d| d.elapsed.as_millis())
        .max()
        .unwrap_or(0);
    let cut: Vec<&Drain> = drains.iter().filter(|d| d.end.cut_short()).collect();
    let failed = drains.iter().filter(|d| d.end == DrainEnd::Failed).count();
    if cut.is_empty() && failed == 0 {
        info!(
            datagrams,
            bytes, elapsed_ms, "statsd: drained the sockets on stop"
        );
        return;
    }
    // Summed over the sockets cut short that say; `None` if none says.
    let left_queued_bytes = cut
        .iter()
        .filter_map(|d| d.left_queued_bytes)
        .reduce(|a, b| a + b);
    let end = cut.first().map_or("failed", |d| d.end.as_str());
    warn!(
        datagrams,
        bytes,
        elapsed_ms,
        sockets_cut_short = cut.len(),
        sockets_failed = failed,
        end,
        left_queued_bytes,
        "statsd: drain on stop cut short (the sender is still sending); datagrams left in the kernel queue are lost"
    );
}

/// Creates, sizes and binds one socket.
fn bind(address: SocketAddr, recv_buffer_bytes: usize, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    set_recv_buffer(&socket, recv_buffer_bytes);
    if reuse_port {
        // Only with several sockets: a single one keeps its address exclusive, so a
        // second weir on the same port fails to start instead of sharing the traffic.
        set_reuse_port(&socket)?;
    }
    socket.bind(&address.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(STOP_POLL))?;
    Ok(socket)
}

/// Asks for a receive buffer of `bytes`: with `SO_RCVBUFFORCE` where the process may
/// (Linux, `CAP_NET_ADMIN`), which is not capped by `net.core.rmem_max`; otherwise
/// with `SO_RCVBUF`, which the kernel caps there. Either way the kernel doubles what
/// it grants; the granted size is logged so an operator can see a cap.
fn set_recv_buffer(socket: &Socket, bytes: usize) {
    #[cfg(target_os = "linux")]
    if nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &bytes).is_ok()
    {
        return;
    }
    if let Err(e) = socket.set_recv_buffer_size(bytes) {
        warn!(error = %e, requested = bytes, "statsd: cannot size the receive buffer");
    }
}

#[cfg(unix)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(unix))]
fn set_reuse_port(_: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "receivers.statsd.sockets above 1 needs SO_REUSEPORT (Unix only)",
    ))
}

/// The inode of a socket, from its `/proc/self/fd` entry (Linux).
fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::MetadataExt as _;
        let fd = socket.as_raw_fd();
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .map(|m| m.ino())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// Finds `inode` in the text of `/proc/net/udp` (columns: sl, local, remote, st,
/// tx:rx queue, tr:when, retrnsmt, uid, timeout, inode, ref, pointer, drops) and
/// returns its `drops` column.
pub fn drops_in_proc_net_udp(text: &str, inode: u64) -> Option<u64> {
    proc_net_udp_line(text, inode)?
        .split_whitespace()
        .nth(12)?
        .parse()
        .ok()
}

/// Finds `inode` in the text of `/proc/net/udp` and returns its `rx_queue` (the
/// hexadecimal half after the colon of `tx_queue:rx_queue`): the bytes the kernel
/// holds for the socket, its per-datagram overhead included.
pub fn rx_queue_in_proc_net_udp(text: &str, inode: u64) -> Option<u64> {
    let queues = proc_net_udp_line(text, inode)?.split_whitespace().nth(4)?;
    let (_, rx) = queues.split_once(':')?;
    u64::from_str_radix(rx, 16).ok()
}

/// The line of `inode` (column 9) in a `/proc/net/udp` text, past its header.
fn proc_net_udp_line(text: &str, inode: u64) -> Option<&str> {
    text.lines().skip(1).find(|line| {
        line.split_whitespace()
            .nth(9)
            .and_then(|c| c.parse::<u64>().ok())
            == Some(inode)
    })
}

/// The bytes the kernel holds for the socket `inode` (Linux: `/proc/net/udp*`).
fn queued_bytes(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        rx_queue_in_proc_net_udp(&text, inode)
    })
}

/// The bounds of one socket's drain on stop (see the module doc).
#[derive(Debug, Clone, Copy)]
struct DrainLimit {
    /// Read for at most this long.
    time: Duration,
    /// Read at most this much: bytes plus [`DATAGRAM_CHARGE`] per datagram.
    budget: DrainBudget,
}

/// How much a drain may read, in bytes plus [`DATAGRAM_CHARGE`] per datagram.
#[derive(Debug, Clone, Copy)]
enum DrainBudget {
    /// What the kernel holds for the socket when the stop is seen, or `fallback`
    /// where the OS does not say.
    QueuedAtStop { fallback: u64 },
    /// This much, whatever is queued (for tests).
    #[cfg(test)]
    Fixed(u64),
}

/// What a receive call answered.
enum Received {
    /// Datagrams were read and applied (or a signal interrupted the call).
    Datagrams,
    /// Nothing to read before the poll timeout (or at once, while draining).
    Empty,
    /// The call failed otherwise.
    Failed(io::Error),
}

impl Received {
    fn from_error(e: io::Error) -> Received {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Received::Empty,
            // A signal: nothing read, try again.
            io::ErrorKind::Interrupted => Received::Datagrams,
            _ => Received::Failed(e),
        }
    }
}

/// One socket's receive thread: reads, applies, counts.
struct Reader<'a> {
    socket: &'a UdpSocket,
    writer: weir_core::Writer,
    decoder: Decoder,
    counters: &'a StatsdCounters,
    socket_datagrams: &'a AtomicU64,
    tally: Tally,
    /// Where full batches go while the thread is behind; `None`: no workers.
    workers: Option<Workers>,
}

/// A receive thread's side of its workers (see the module doc).
struct Workers {
    /// One channel per worker, tried in order (so the first workers take most
    /// batches and the others' caches stay cold). Capacity 0: a send succeeds only
    /// while that worker waits for work, so a batch never waits behind another one.
    work: Vec<SyncSender<Datagrams>>,
    /// Buffers the workers are done with, for the next batches.
    done: Receiver<Datagrams>,
    /// Whose turn it is to apply its gauges, shared with the workers.
    turn: Arc<GaugeTurn>,
    /// The number of the next batch read.
    next: u64,
    /// The gauge lines of a batch the thread applies while an earlier one is out.
    gauges: Vec<u8>,
    /// Hand-offs still to skip because a recent batch waited for its gauges' turn
    /// (see [`GAUGE_HOLD_BACK`]).
    hold_back: u32,
}

/// The order in which batches apply their gauge lines (see the module doc): each
/// batch read gets the next number, and its gauge lines apply only once those of
/// every earlier batch did. A batch finished before its turn parks its gauge lines
/// here and its thread moves on; whoever finishes the batch before it applies them
/// (and those of any finished batches after them, in order). Nobody waits for a turn
/// unless [`GaugeTurn::park_bytes`] of gauge lines are parked already.
struct GaugeTurn {
    state: Mutex<Turns>,
    changed: Condvar,
    /// Bytes of gauge lines parked at most before a batch waits for its turn instead.
    park_bytes: usize,
}

#[derive(Default)]
struct Turns {
    /// The lowest batch not finished: every batch before it applied its gauges.
    first_open: u64,
    /// Batch `first_open + i` in slot `i`: `None` while it is not finished (or is
    /// applying), its parked gauge lines (possibly none) once finished before its turn.
    slots: VecDeque<Option<Vec<u8>>>,
    /// Bytes in `slots`.
    parked_bytes: usize,
    /// Buffers of parked lines already applied, for the next ones to park.
    free: Vec<Vec<u8>>,
    /// Threads waiting for their turn: a finish wakes them only if there are any (a
    /// wake is a system call, and most batches have no one to wake).
    waiting: usize,
}

/// Gauge lines parked at most (see [`GaugeTurn`]) before a batch finished ahead of its
/// turn waits for it instead: ~11 batches' worth where gauges fill them (64 datagrams
/// of 42 gauge lines are ~90 KB), ~100 where one line in ten is a gauge, ~35 at three
/// in ten, so a worker descheduled for a few milliseconds makes nobody wait unless
/// gauges fill the load. (At 100k series and 6M lines/s with three lines in ten
/// gauges, 256 KiB lost 7.9 / 15.2 % and 1 MiB 4.3 / 1.1 %, side by side.)
const PARK_BYTES: usize = 1 << 20;

/// Emptied buffers of parked lines a [`GaugeTurn`] keeps for reuse, at most: about
/// as many as batches park at once while a worker holds one.
const FREE_BUFFERS: usize = 16;

impl Default for GaugeTurn {
    fn default() -> GaugeTurn {
        GaugeTurn::with_park_bytes(PARK_BYTES)
    }
}

impl GaugeTurn {
    fn with_park_bytes(park_bytes: usize) -> GaugeTurn {
        GaugeTurn {
            state: Mutex::default(),
            changed: Condvar::new(),
            park_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every batch before `batch` is finished.
    fn is_turn_of(&self, batch: u64) -> bool {
        self.lock().first_open == batch
    }

    /// Finishes `batch`, whose other lines are in, with its gauge lines (`gauges`,
    /// left empty). In its turn they apply now through `apply`, followed by the parked
    /// lines of the batches after it that finished already, in order; before its turn
    /// they are parked and this returns at once, unless parking them would pass
    /// [`GaugeTurn::park_bytes`]: then it waits for its turn. Returns whether it waited.
    ///
    /// If `apply` panics the batch being applied and the parked ones right after it
    /// are skipped (their gauges are lost), so no batch waits for good.
    fn finish(&self, batch: u64, gauges: &mut Vec<u8>, mut apply: impl FnMut(&[u8])) -> bool {
        let mut turns = self.lock();
        let mut waited = false;
        if turns.first_open != batch {
            if gauges.is_empty() || turns.parked_bytes + gauges.len() <= self.park_bytes {
                let lines = if gauges.is_empty() {
                    Vec::new()
                } else {
                    let buf = turns.free.pop().unwrap_or_default();
                    std::mem::replace(gauges, buf)
                };
                turns.parked_bytes += lines.len();
                // Batches finish after the turn's start: at most the batches in flight.
                let slot = (batch - turns.first_open) as usize;
                if turns.slots.len() <= slot {
                    turns.slots.resize(slot + 1, None);
                }
                turns.slots[slot] = Some(lines);
                return false;
            }
            waited = true;
            while turns.first_open != batch {
                turns.waiting += 1;
                turns = self
                    .changed
                    .wait(turns)
                    .unwrap_or_else(PoisonError::into_inner);
                turns.waiting -= 1;
            }
        }
        drop(turns);
        // Our turn: nobody else applies gauges until `first_open` moves on.
        let open = OpenTurn { turn: self };
        if !gauges.is_empty() {
            apply(gauges);
            gauges.clear();
        }
        let mut applied: Option<Vec<u8>> = None;
        loop {
            let mut turns = self.lock();
            if let Some(mut buf) = applied.take()
                && turns.free.len() < FREE_BUFFERS
            {
                buf.clear();
                turns.free.push(buf);
            }
            turns.slots.pop_front();
            turns.first_open += 1;
            let Some(lines) = turns.slots.front_mut().and_then(Option::take) else {
                let waiting = turns.waiting > 0;
                drop(turns);
                std::mem::forget(open);
                if waiting {
                    self.changed.notify_all();
                }
                return waited;
            };
            turns.parked_bytes -= lines.len();
            drop(turns);
            if !lines.is_empty() {
                apply(&lines);
            }
            applied = Some(lines);
        }
    }
}

/// The turn a thread holds while it applies gauges: if that panics, its drop moves
/// the turn past the batch and the parked ones after it.
struct OpenTurn<'a> {
    turn: &'a GaugeTurn,
}

impl Drop for OpenTurn<'_> {
    fn drop(&mut self) {
        let mut turns = self.turn.lock();
        loop {
            turns.slots.pop_front();
            turns.first_open += 1;
            match turns.slots.front_mut().and_then(Option::take) {
                Some(lines) => turns.parked_bytes -= lines.len(),
                None => break,
            }
        }
        drop(turns);
        self.turn.changed.notify_all();
    }
}

/// Receive calls in a row that must come back full before a thread counts as behind
/// and hands batches to its workers: at the default `recv_batch` of 64, 256 datagrams
/// were queued. One full call is mostly a burst or a pause the thread catches up
/// with alone; handing those off warmed the workers' caches for nothing (1M series at
/// 3M lines/s, which one thread keeps up with: 215-237 MiB with hand-offs after one
/// full call, 211-212 after four, the same 0 % loss; at 100k series and 6M lines/s
/// both kept up). Not a guard against reordering: a burst of one-line datagrams from
/// an ordinary client passes it (gauges keep their order by [`GaugeTurn`]).
const BEHIND_AFTER: u32 = 4;

/// Hand-offs skipped after a batch the thread applied while a worker held an earlier
/// one had to wait for its gauges' turn ([`PARK_BYTES`] of gauge lines were parked):
/// gauges fill the load, their lines apply one turn after another whoever parses
/// them, and a worker's batch mostly makes the thread wait (at 100k series and 6M
/// lines/s with only gauges, before lines could park: 33-45 % lost with every batch
/// waiting for the worker's, against 11-13 % for one thread alone). One try in this
/// many notices when the gauges are gone; each try costs a wait for the worker's
/// batch, slow with its cache cold (~2.7 ms for a default batch at 100k series: one
/// try in 64 still lost 18 % with only gauges).
const GAUGE_HOLD_BACK: u32 = 1024;

/// How long a worker waits for work before it frees its writer cache: a worker that
/// helped once would otherwise keep its cache's series (evicted ones included) in
/// memory for good.
const WORKER_IDLE: Duration = Duration::from_secs(30);

/// Runs `run` with `writers.len()` worker threads for receive thread `socket` (none
/// when `writers` is empty or no thread can be spawned); the workers apply what they
/// were handed and stop once `run` returned.
fn with_workers<R>(
    socket: usize,
    writers: Vec<weir_core::Writer>,
    counters: &StatsdCounters,
    run: impl FnOnce(Option<Workers>) -> R,
) -> R {
    if writers.is_empty() {
        return run(None);
    }
    let (give_back, done) = std::sync::mpsc::channel();
    let turn = Arc::new(GaugeTurn::default());
    std::thread::scope(|scope| {
        let mut work = Vec::with_capacity(writers.len());
        for (j, writer) in writers.into_iter().enumerate() {
            let (to_worker, take) = std::sync::mpsc::sync_channel(0);
            let give_back = give_back.clone();
            let turn = turn.clone();
            let worker = std::thread::Builder::new()
                .name(format!("weir-statsd-{socket}w{j}"))
                .spawn_scoped(scope, move || {
                    work_on(&take, &give_back, &turn, writer, counters);
                });
            match worker {
                Ok(_) => work.push(to_worker),
                Err(e) => warn!(error = %e, "statsd: cannot start a worker thread"),
            }
        }
        // `run` owns the only senders: the workers stop once it returned.
        run((!work.is_empty()).then_some(Workers {
            work,
            done,
            turn,
            next: 0,
            gauges: Vec::new(),
            hold_back: 0,
        }))
    })
}

/// A worker's loop: applies the batches it takes from `take` with its own writer
/// (their gauges in turn), gives each buffer back, and frees its writer cache after
/// [`WORKER_IDLE`] without work; returns once the receive thread is gone.
fn work_on(
    take: &Receiver<Datagrams>,
    give_back: &Sender<Datagrams>,
    turn: &GaugeTurn,
    mut writer: weir_core::Writer,
    counters: &StatsdCounters,
) {
    let mut decoder = Decoder::default();
    let mut gauges = Vec::new();
    loop {
        match take.recv_timeout(WORKER_IDLE) {
            Ok(batch) => {
                let (report, _) =
                    apply_in_turn(&batch, &mut decoder, &mut writer, turn, &mut gauges);
                counters
                    .worker_datagrams
                    .fetch_add(batch.lens.len() as u64, Ordering::Relaxed);
                counters.lines.add(&report);
                writer.tidy();
                // The receive thread may be gone: then the buffer is just freed.
                let _ = give_back.send(batch);
            }
            Err(RecvTimeoutError::Timeout) => writer.release_cache(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Applies `batch` while an earlier batch may still be applying on another thread:
/// every line but the gauges at once, then finishes its turn with the gauge lines
/// (set aside in `gauges`, which is left empty: see [`GaugeTurn::finish`]). Returns
/// what the lines applied here did, and whether the batch waited for its turn.
fn apply_in_turn(
    batch: &Datagrams,
    decoder: &mut Decoder,
    writer: &mut weir_core::Writer,
    turn: &GaugeTurn,
    gauges: &mut Vec<u8>,
) -> (DatagramReport, bool) {
    let mut report = DatagramReport::default();
    let unfinished = Unfinished {
        turn,
        batch: batch.number,
    };
    for datagram in batch.iter() {
        report.merge(&decoder.ingest_except_gauges(datagram, writer, gauges));
    }
    std::mem::forget(unfinished);
    let waited = turn.finish(batch.number, gauges, |lines| {
        report.merge(&decoder.ingest(lines, writer));
    });
    (report, waited)
}

/// A batch whose lines are being applied before its turn is finished: if that
/// panics, its drop finishes the batch without gauges, so the batches after it do not
/// wait for good (if its turn has come, the gauges parked right after it are dropped
/// too: the drop has no decoder to apply them with).
struct Unfinished<'a> {
    turn: &'a GaugeTurn,
    batch: u64,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.turn.finish(self.batch, &mut Vec::new(), |_| {});
    }
}

impl<'a> Reader<'a> {
    /// A reader of `socket` that applies through `writer` (and `workers`, if any).
    fn new(
        socket: &'a UdpSocket,
        writer: weir_core::Writer,
        counters: &'a StatsdCounters,
        socket_datagrams: &'a AtomicU64,
        workers: Option<Workers>,
    ) -> Reader<'a> {
        Reader {
            socket,
            writer,
            decoder: Decoder::default(),
            counters,
            socket_datagrams,
            tally: Tally::default(),
            workers,
        }
    }
}

impl Reader<'_> {
    /// Reads until `stop`, then drains what the kernel still holds without waiting
    /// for more, within `limit`, and returns what the drain did.
    fn run(&mut self, batch: usize, stop: &AtomicBool, limit: DrainLimit) -> Drain {
        let mut batch = Batch::new(batch);
        // Acquire: pairs with `shutdown`'s Release.
        while !stop.load(Ordering::Acquire) {
            let received = batch.receive(self);
            self.tally.publish(self.counters, self.socket_datagrams);
            // Also while idle (a receive times out every `STOP_POLL`).
            self.writer.tidy();
            if let Received::Failed(e) = received {
                // ICMP-induced errors and the like: keep reading, but do not spin.
                warn!(error = %e, "statsd: receive failed");
                std::thread::sleep(STOP_POLL);
            }
        }
        self.drain(&mut batch, limit)
    }

    /// Reads what is queued without waiting, until a read finds nothing or `limit`
    /// is reached (checked after each call, so it overshoots by at most one batch).
    fn drain(&mut self, batch: &mut Batch, limit: DrainLimit) -> Drain {
        let started = Instant::now();
        let mut drain = Drain::default();
        let inode = socket_inode(self.socket);
        let budget = match limit.budget {
            DrainBudget::QueuedAtStop { fallback } => {
                inode.and_then(queued_bytes).unwrap_or(fallback)
            }
            #[cfg(test)]
            DrainBudget::Fixed(bytes) => bytes,
        };
        if let Err(e) = self.socket.set_nonblocking(true) {
            warn!(error = %e, "statsd: cannot drain the socket on stop");
            drain.end = DrainEnd::Failed;
            return drain;
        }
        let mut charged = 0u64;
        drain.end = loop {
            let received = batch.receive(self);
            drain.datagrams += self.tally.datagrams;
            drain.bytes += self.tally.bytes;
            charged = charged
                .saturating_add(self.tally.bytes)
                .saturating_add(self.tally.datagrams.saturating_mul(DATAGRAM_CHARGE));
            self.tally.publish(self.counters, self.socket_datagrams);
            match received {
                Received::Datagrams => {}
                Received::Empty => break DrainEnd::Emptied,
                Received::Failed(e) => {
                    warn!(error = %e, "statsd: receive failed while draining on stop");
                    break DrainEnd::Failed;
                }
            }
            if started.elapsed() >= limit.time {
                break DrainEnd::TimeLimit;
            }
            if charged >= budget {
                break DrainEnd::Budget;
            }
        };
        drain.elapsed = started.elapsed();
        if drain.end.cut_short() {
            drain.left_queued_bytes = inode.and_then(queued_bytes);
            if drain.left_queued_bytes == Some(0) {
                // The limit was reached with the last datagram: nothing was left.
                drain.end = DrainEnd::Emptied;
                drain.left_queued_bytes = None;
            }
        }
        drain
    }

    /// Applies one datagram and counts it.
    #[inline]
    fn apply(&mut self, datagram: &[u8]) {
        let report = self.decoder.ingest(datagram, &mut self.writer);
        self.tally.add(datagram.len(), &report);
    }

    /// Applies a batch the thread read and keeps: in order if no earlier batch is
    /// still with a worker; otherwise everything but its gauge lines at once, and
    /// those once the earlier batches have applied theirs (see the module doc).
    fn apply_batch(&mut self, batch: &Datagrams) {
        let Some(workers) = self.workers.as_mut() else {
            for datagram in batch.iter() {
                self.apply(datagram);
            }
            return;
        };
        let turn = workers.turn.clone();
        if turn.is_turn_of(batch.number) {
            // Nothing is out: no other thread applies anything meanwhile.
            for datagram in batch.iter() {
                self.apply(datagram);
            }
            turn.finish(batch.number, &mut Vec::new(), |_| {});
            return;
        }
        let (report, waited) = apply_in_turn(
            batch,
            &mut self.decoder,
            &mut self.writer,
            &turn,
            &mut workers.gauges,
        );
        if waited {
            // Gauges fill the load (their lines apply one turn after another anyway)
            // and a worker's batch mostly makes the thread wait: keep the next here.
            workers.hold_back = GAUGE_HOLD_BACK;
        }
        self.tally.datagrams += batch.lens.len() as u64;
        self.tally.bytes += batch.bytes();
        self.tally.report.merge(&report);
    }

    /// Reads one datagram with `recv_from` into `buf` and applies it: the portable
    /// path, and the one for a batch of 1.
    fn receive_one(&mut self, buf: &mut [u8]) -> Received {
        match self.socket.recv_from(buf) {
            Ok((n, _)) => {
                self.apply(buf.get(..n).unwrap_or(buf));
                Received::Datagrams
            }
            Err(e) => Received::from_error(e),
        }
    }
}

/// The datagrams one receive call read: datagram `i` at `i * SLOT_STRIDE` in `buf`,
/// `lens[i]` bytes long. What a receive thread hands to a worker.
struct Datagrams {
    buf: Vec<u8>,
    lens: Vec<usize>,
    /// The batch's number, in the order of reading (see [`GaugeTurn`]).
    number: u64,
}

impl Datagrams {
    /// Room for `slots` datagrams (pages the kernel never writes to stay unallocated).
    fn new(slots: usize) -> Datagrams {
        Datagrams {
            buf: vec![
                0;
                if slots == 1 {
                    MAX_DATAGRAM
                } else {
                    slots * SLOT_STRIDE
                }
            ],
            lens: Vec::with_capacity(slots),
            number: 0,
        }
    }

    /// The bytes of all its datagrams.
    fn bytes(&self) -> u64 {
        self.lens.iter().sum::<usize>() as u64
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.lens.iter().enumerate().map(|(i, &n)| {
            let start = i * SLOT_STRIDE;
            self.buf.get(start..start + n).unwrap_or_default()
        })
    }
}

/// The receive buffers of one thread, allocated once: `slots` datagram slots of
/// [`SLOT_STRIDE`] bytes, on Linux the `recvmmsg` headers, and while workers hold
/// some of its buffers, a spare one.
struct Batch {
    slots: usize,
    read: Datagrams,
    /// A buffer not handed to a worker (taken before trying, kept when no worker was
    /// waiting).
    spare: Option<Datagrams>,
    /// Receive calls in a row that came back full (see [`BEHIND_AFTER`]).
    full_in_a_row: u32,
    #[cfg(target_os = "linux")]
    headers: nix::sys::socket::MultiHeaders<()>,
}

impl Batch {
    fn new(slots: usize) -> Batch {
        #[cfg(not(target_os = "linux"))]
        let slots = 1;
        let slots = slots.clamp(1, MAX_RECV_BATCH);
        Batch {
            slots,
            read: Datagrams::new(slots),
            spare: None,
            full_in_a_row: 0,
            #[cfg(target_os = "linux")]
            headers: nix::sys::socket::MultiHeaders::preallocate(slots, None),
        }
    }

    /// Reads up to `slots` datagrams in one call and applies each through `reader`.
    fn receive(&mut self, reader: &mut Reader<'_>) -> Received {
        if self.slots == 1 {
            return reader.receive_one(&mut self.read.buf);
        }
        self.receive_many(reader)
    }

    /// Hands the full batch just read to a worker if one waits, counting its
    /// datagrams as read, and reads on into another buffer; false (nothing done) when
    /// no worker waits.
    fn hand_off(&mut self, reader: &mut Reader<'_>) -> bool {
        let Some(workers) = &mut reader.workers else {
            return false;
        };
        if workers.hold_back > 0 {
            workers.hold_back -= 1;
            return false;
        }
        let next = self
            .spare
            .take()
            .or_else(|| workers.done.try_recv().ok())
            .unwrap_or_else(|| Datagrams::new(self.slots));
        let mut full = std::mem::replace(&mut self.read, next);
        let (datagrams, bytes) = (full.lens.len() as u64, full.bytes());
        for worker in &workers.work {
            match worker.try_send(full) {
                Ok(()) => {
                    reader.tally.datagrams += datagrams;
                    reader.tally.bytes += bytes;
                    return true;
                }
                Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => full = back,
            }
        }
        self.spare = Some(std::mem::replace(&mut self.read, full));
        false
    }

    #[cfg(not(target_os = "linux"))]
    fn receive_many(&mut self, reader: &mut Reader<'_>) -> Received {
        reader.receive_one(&mut self.read.buf)
    }

    /// `recvmmsg` with `MSG_WAITFORONE`: waits (up to the socket's read timeout) for
    /// the first datagram, then takes what else is queued, up to `slots`, without
    /// waiting.
    #[cfg(target_os = "linux")]
    fn receive_many(&mut self, reader: &mut Reader<'_>) -> Received {
        // The I/O vectors live in an array on the stack, rebuilt per call: size it
        // to the batch, so a call sets up no more of them than it offers.
        match self.slots {
            ..=16 => self.receive_n::<16>(reader),
            17..=64 => self.receive_n::<64>(reader),
            _ => self.receive_n::<MAX_RECV_BATCH>(reader),
        }
    }

    /// [`Batch::receive_many`] with room for `N` I/O vectors (`N` ≥ `slots`).
    #[cfg(target_os = "linux")]
    fn receive_n<const N: usize>(&mut self, reader: &mut Reader<'_>) -> Received {
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd as _;

        use nix::sys::socket::{MsgFlags, recvmmsg};

        // One I/O vector per slot (a few stores each): they borrow the buffer, which
        // the results below borrow in turn, so they cannot be kept between calls.
        let mut chunks = self.read.buf.chunks_mut(SLOT_STRIDE);
        let mut iovs: [[IoSliceMut<'_>; 1]; N] = std::array::from_fn(|_| {
            [IoSliceMut::new(chunks.next().map_or(&mut [][..], |c| {
                let len = c.len().min(MAX_DATAGRAM);
                &mut c[..len]
            }))]
        });
        let result = recvmmsg(
            reader.socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut().take(self.slots),
            MsgFlags::MSG_WAITFORONE,
            None,
        );
        self.read.lens.clear();
        match result {
            // Message `i` is in slot `i`, cut at the bytes received.
            Ok(messages) => self
                .read
                .lens
                .extend(messages.map(|m| m.bytes.min(MAX_DATAGRAM))),
            Err(errno) => return Received::from_error(errno.into()),
        }
        if let Some(workers) = &mut reader.workers {
            // Numbered as read: the order in which batches apply their gauges.
            self.read.number = workers.next;
            workers.next += 1;
        }
        // Full batches in a row: more stays queued, the thread is behind.
        if self.read.lens.len() == self.slots {
            self.full_in_a_row += 1;
        } else {
            self.full_in_a_row = 0;
        }
        if self.full_in_a_row >= BEHIND_AFTER && self.hand_off(reader) {
            return Received::Datagrams;
        }
        reader.apply_batch(&self.read);
        Received::Datagrams
    }
}

/// Logs the receiver's start.
pub fn log_listening(r: &StatsdReceiver) {
    info!(
        address = %r.local_addr(),
        recv_buffer_bytes = r.recv_buffer_bytes(),
        sockets = r.socket_count(),
        recv_batch = r.recv_batch(),
        workers = r.workers(),
        "statsd receiver listening (UDP)"
    );
}

/// The StatsD source: the receiver, and what its warnings already reported.
pub struct StatsdSource {
    receiver: StatsdReceiver,
    /// Parse errors already reported in a warning.
    parse_errors_seen: u64,
    /// Kernel drops already reported in a warning.
    kernel_drops_seen: u64,
}

impl StatsdSource {
    /// Starts the receiver if `receivers.statsd` is enabled.
    ///
    /// # Errors
    /// The socket could not be bound.
    pub fn start(
        config: &crate::config::Config,
        aggregator: &Aggregator,
    ) -> Result<Option<StatsdSource>, crate::sources::SourceError> {
        let c = &config.receivers.statsd;
        if !c.enabled {
            return Ok(None);
        }
        let receiver = StatsdReceiver::start(c, aggregator)
            .map_err(crate::sources::SourceError::at("statsd", c.address))?;
        log_listening(&receiver);
        Ok(Some(StatsdSource {
            receiver,
            parse_errors_seen: 0,
            kernel_drops_seen: 0,
        }))
    }
}

impl crate::sources::Source for StatsdSource {
    fn name(&self) -> &'static str {
        "statsd"
    }

    fn metrics(&self) -> Arc<dyn crate::telemetry::StageMetrics> {
        self.receiver.counters()
    }

    fn after_flush(&mut self) {
        let stats = self.receiver.stats();
        self.parse_errors_seen = warn_parse_errors(&stats, self.parse_errors_seen);
        self.kernel_drops_seen = warn_kernel_drops(&stats, self.kernel_drops_seen);
    }

    fn stop(self: Box<Self>) -> crate::sources::StopFuture {
        let StatsdSource {
            receiver,
            parse_errors_seen,
            ..
        } = *self;
        Box::pin(async move {
            // Joining the receive threads blocks: off the async workers.
            let Ok(stats) = tokio::task::spawn_blocking(move || receiver.stop()).await else {
                warn!("statsd: stopping the receiver panicked");
                return;
            };
            warn_parse_errors(&stats, parse_errors_seen);
            info!(
                datagrams = stats.datagrams,
                worker_datagrams = stats.worker_datagrams,
                lines = stats.lines,
                samples = stats.samples,
                rejected = stats.rejected,
                parse_errors = stats.parse_errors_total(),
                kernel_drops = stats.kernel_drops,
                "statsd receiver stopped"
            );
        })
    }
}

/// Warns when the kernel dropped StatsD datagrams since the last report (`seen` of
/// them were reported before); returns the new total.
fn warn_kernel_drops(stats: &StatsdStats, seen: u64) -> u64 {
    let total = stats.kernel_drops.unwrap_or(0);
    if total > seen {
        warn!(
            dropped = total - seen,
            since_start = total,
            "statsd: the kernel dropped datagrams (receive buffer full: raise \
             receivers.statsd.recv_buffer_bytes and net.core.rmem_max)"
        );
    }
    total
}

/// Warns about StatsD lines skipped since the last report (`seen` of them were
/// reported before); returns the new total. At most one line per flush.
fn warn_parse_errors(stats: &StatsdStats, seen: u64) -> u64 {
    let total = stats.parse_errors_total();
    if total > seen {
        let reasons: Vec<String> = stats
            .parse_errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        warn!(
            skipped = total - seen,
            since_start = %reasons.join(","),
            "statsd: malformed lines skipped"
        );
    }
    total
}

impl crate::telemetry::StageMetrics for StatsdCounters {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::Kind::Counter;
        let s = self.stats();
        page.single(
            "weir_statsd_datagrams_total",
            Counter,
            "StatsD datagrams read.",
            s.datagrams as f64,
        );
        if let Some(drops) = s.kernel_drops {
            page.single(
                "weir_statsd_kernel_drops_total",
                Counter,
                "StatsD datagrams the kernel dropped because a socket's receive buffer was full (/proc/net/udp).",
                drops as f64,
            );
        }
        page.single(
            "weir_statsd_worker_datagrams_total",
            Counter,
            "StatsD datagrams applied by a worker thread because their socket's receive thread was behind.",
            s.worker_datagrams as f64,
        );
        render_lines(page, "weir_statsd", s.lines, s.samples, &s.parse_errors);
    }
}

/// What the lines of one StatsD transport did: parsed, aggregated, refused by the
/// aggregator, skipped by the parser (by reason). Every StatsD transport (UDP, Unix
/// datagram and stream, TCP) counts its lines with one. Relaxed: independent counters,
/// read only for reporting.
#[derive(Debug, Default)]
pub(crate) struct LineCounters {
    lines: AtomicU64,
    samples: AtomicU64,
    rejected: AtomicU64,
    parse_errors: [AtomicU64; LineError::ALL.len()],
}

/// A snapshot of [`LineCounters`].
pub(crate) struct LineTotals {
    pub(crate) lines: u64,
    pub(crate) samples: u64,
    pub(crate) rejected: u64,
    /// Every parse error reason, in [`LineError::ALL`] order.
    pub(crate) parse_errors: Vec<(&'static str, u64)>,
}

impl LineCounters {
    /// Adds what one or more decoded datagrams (or stream chunks) did.
    pub(crate) fn add(&self, r: &DatagramReport) {
        self.lines.fetch_add(r.lines, Ordering::Relaxed);
        self.samples.fetch_add(r.samples, Ordering::Relaxed);
        self.rejected.fetch_add(r.rejected, Ordering::Relaxed);
        for (c, n) in self.parse_errors.iter().zip(r.parse_errors) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> LineTotals {
        LineTotals {
            lines: self.lines.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            parse_errors: LineError::ALL
                .iter()
                .zip(&self.parse_errors)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// Renders a StatsD transport's line counters as `<prefix>_lines_total`,
/// `<prefix>_samples_total` and `<prefix>_parse_errors_total{reason}`.
pub(crate) fn render_lines(
    page: &mut crate::telemetry::MetricsPage,
    prefix: &str,
    lines: u64,
    samples: u64,
    parse_errors: &[(&'static str, u64)],
) {
    use crate::telemetry::Kind::Counter;
    page.single(
        &format!("{prefix}_lines_total"),
        Counter,
        "StatsD lines that parsed.",
        lines as f64,
    );
    page.single(
        &format!("{prefix}_samples_total"),
        Counter,
        "StatsD samples aggregated.",
        samples as f64,
    );
    page.family(
        &format!("{prefix}_parse_errors_total"),
        Counter,
        "StatsD lines (or datagrams) skipped, by reason.",
        parse_errors
            .iter()
            .map(|(r, n)| (crate::telemetry::labels(&[("reason", r)]), *n as f64)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  753: 0100007F:1FBD 00000000:0000 07 00000000:00000A40 00:00000000 00000000     0        0 884413 2 0000000000000000 17
  801: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   105        0 21877 2 0000000000000000 0
";

    #[test]
    fn drops_are_read_from_the_sockets_line() {
        assert_eq!(drops_in_proc_net_udp(PROC, 884413), Some(17));
        assert_eq!(drops_in_proc_net_udp(PROC, 21877), Some(0));
        assert_eq!(drops_in_proc_net_udp(PROC, 1), None);
        assert_eq!(drops_in_proc_net_udp("garbage\nmore garbage", 1), None);
    }

    #[test]
    fn the_receive_queue_is_read_from_the_sockets_line() {
        assert_eq!(rx_queue_in_proc_net_udp(PROC, 884413), Some(0xA40));
        assert_eq!(rx_queue_in_proc_net_udp(PROC, 21877), Some(0));
        assert_eq!(rx_queue_in_proc_net_udp(PROC, 1), None);
        assert_eq!(rx_queue_in_proc_net_udp("h\n1 2 3 4 x 5 6 7 8 9", 9), None);
    }

    fn config(sockets: usize, recv_batch: usize) -> StatsdConfig {
        StatsdConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            sockets,
            recv_batch,
            ..StatsdConfig::default()
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_live_socket_reports_its_kernel_drops() {
        let agg = Aggregator::default();
        for sockets in [1, 3] {
            let r = StatsdReceiver::start(&config(sockets, 64), &agg).unwrap();
            assert_eq!(r.socket_count(), sockets);
            assert_eq!(r.stats().kernel_drops, Some(0));
            // The shared counters (what the admin API holds) say the same.
            let live = r.counters().stats();
            assert_eq!(
                (live.kernel_drops, live.socket_datagrams.len()),
                (Some(0), sockets)
            );
            let stats = r.stop();
            assert_eq!(stats.kernel_drops, Some(0));
            assert_eq!(stats.socket_datagrams, vec![0; sockets]);
        }
    }

    /// A socket's thread with nothing to read still lets go of the series evicted
    /// from its writer's cache (see `Writer::tidy`): its receive times out and tidies.
    #[test]
    fn an_idle_thread_lets_go_of_evicted_series() {
        let agg = Aggregator::new(weir_core::AggregatorConfig {
            series_ttl: Duration::from_secs(60),
            ..weir_core::AggregatorConfig::default()
        });
        let t0 = 1_000_000_000_000;
        agg.flush_at(t0);
        let r = StatsdReceiver::start(&config(1, 64), &agg).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let lines: String = (0..10).map(|i| format!("idle.c:1|c|#i:{i}\n")).collect();
        client.send_to(lines.as_bytes(), r.local_addr()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.stats().lines < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        agg.flush_at(t0 + 10_000);
        agg.flush_at(t0 + 100_000);
        assert_eq!(agg.stats().evicted_series, 10);
        while agg.stats().writer_cache_evictions < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(agg.stats().writer_cache_evictions, 10);
        r.stop();
    }

    /// Datagrams of `lines` lines each: good counters (1 each) with a malformed
    /// line in the middle of every datagram.
    fn datagram(i: usize, lines: usize) -> String {
        let mut d = String::new();
        for l in 0..lines {
            if l == lines / 2 {
                d.push_str("broken|c\n");
            }
            d.push_str(&format!("rx.hits:1|c|#d:{},l:{l}\n", i % 7));
        }
        d
    }

    /// Sends `count` datagrams from `senders` client sockets (round-robin), then
    /// stops the receiver at once: what the kernel still holds is drained into the
    /// totals.
    fn send_and_stop(sockets: usize, batch: usize, senders: usize, count: usize) -> StatsdStats {
        let agg = Aggregator::default();
        let r = StatsdReceiver::start(&config(sockets, batch), &agg).unwrap();
        let clients: Vec<UdpSocket> = (0..senders)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for i in 0..count {
            clients[i % senders]
                .send_to(datagram(i, 10).as_bytes(), r.local_addr())
                .unwrap();
        }
        let stats = r.stop();
        let batch = agg.flush();
        assert_eq!(
            batch.counter_delta_sum(),
            (count * 10) as f64,
            "every good line of every datagram aggregated"
        );
        stats
    }

    fn assert_exact(stats: &StatsdStats, count: usize) {
        assert_eq!(stats.kernel_drops.unwrap_or(0), 0, "{stats:?}");
        assert_eq!(stats.datagrams, count as u64);
        assert_eq!(stats.lines, count as u64 * 10);
        assert_eq!(stats.samples, count as u64 * 10);
        assert_eq!(stats.rejected, 0);
        assert_eq!(stats.parse_errors_total(), count as u64);
        let missing_value = stats
            .parse_errors
            .iter()
            .find(|(r, _)| *r == "missing_value")
            .map(|(_, n)| *n);
        assert_eq!(missing_value, Some(count as u64));
        assert_eq!(stats.socket_datagrams.iter().sum::<u64>(), count as u64);
    }

    #[test]
    fn batched_receives_count_and_aggregate_every_datagram() {
        // 2,000 datagrams of ~0.3 KB fit the default 8 MiB buffer even if the
        // receive thread did not run at all until the stop: no loss by design.
        for batch in [256, 64, 7, 1] {
            let stats = send_and_stop(1, batch, 1, 2_000);
            assert_exact(&stats, 2_000);
        }
    }

    /// Reads until the counters (the thread's and its workers') hold `sent`
    /// datagrams, publishing after each call.
    fn read_all(reader: &mut Reader<'_>, batch: &mut Batch, sent: u64) {
        while reader.counters.stats().datagrams < sent {
            assert!(matches!(batch.receive(reader), Received::Datagrams));
            reader
                .tally
                .publish(reader.counters, reader.socket_datagrams);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_behind_hands_whole_batches_to_a_waiting_worker_and_gauges_keep_their_order() {
        for workers in [1, 2] {
            hand_off_to(workers);
        }
    }

    /// Datagram `i` of [`hand_off_to`]: with `gauge`, a gauge set to `i` in one of
    /// three series (each set several times per batch); and `counters` counters.
    fn gauge_datagram(i: usize, gauge: bool, counters: usize) -> String {
        let mut d = String::new();
        if gauge {
            d.push_str(&format!("hand.g:{i}|g|#s:{}\n", i % 3));
        }
        for c in 0..counters {
            d.push_str(&format!("hand.c:1|c|#s:{}\n", (i + c) % 7));
        }
        d
    }

    /// Reads datagrams with `workers` workers, first keeping up, then behind; checks
    /// that whole batches were handed off, every line was applied once and every
    /// gauge ended on the last value sent for it, also after a run of only gauges
    /// (a batch finished before its turn parks them for the batch before it).
    #[cfg(target_os = "linux")]
    fn hand_off_to(workers: usize) {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 8 << 20, false).unwrap();
        let to = socket.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let agg = Aggregator::default();
        let counters = StatsdCounters::default();
        let per_socket = AtomicU64::new(0);
        let (mut sent, mut lines, mut gauge_sent) = (0, 0, Vec::new());
        let mut send = |n: usize, gauge: bool, counters: usize| {
            for _ in 0..n {
                let d = gauge_datagram(sent, gauge, counters);
                client.send_to(d.as_bytes(), to).unwrap();
                sent += 1;
                lines += d.lines().count() as u64;
                gauge_sent.push(gauge);
            }
            sent as u64
        };
        let mut handed_with_counters = 0;
        let writers = (0..workers).map(|_| agg.writer()).collect();
        with_workers(0, writers, &counters, |workers| {
            assert!(workers.is_some(), "the workers started");
            let mut reader = Reader::new(&socket, agg.writer(), &counters, &per_socket, workers);
            let mut batch = Batch::new(16);
            // A thread that keeps up (calls that come back short) keeps its work.
            for _ in 0..3 {
                let n = send(5, true, 5);
                read_all(&mut reader, &mut batch, n);
            }
            assert_eq!(counters.stats().worker_datagrams, 0);
            // Five batches queued while the workers wait: the fourth call in a row
            // that comes back full hands its batch to a worker. Each round gives the
            // workers time to get back to their wait; bounded, on a busy machine too.
            let behind = 16 * BEHIND_AFTER as usize + 16;
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(10));
                let n = send(behind, false, 3);
                read_all(&mut reader, &mut batch, n);
                if counters.stats().worker_datagrams >= 32 {
                    break;
                }
            }
            handed_with_counters = counters.stats().worker_datagrams;
            // Gauges among the counters, then only gauges: a batch the thread applies
            // while a worker holds one parks its gauges for the worker to apply.
            for only in [false, true] {
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(10));
                    let n = send(behind, true, if only { 0 } else { 5 });
                    read_all(&mut reader, &mut batch, n);
                }
            }
        });
        // The workers are done (joined): every line they took is counted.
        let stats = counters.stats();
        let handed = stats.worker_datagrams;
        assert!(handed_with_counters >= 32, "{stats:?}");
        assert_eq!(handed % 16, 0, "whole batches only: {stats:?}");
        let sent = sent as u64;
        assert_eq!((stats.datagrams, stats.lines), (sent, lines));
        assert_eq!(per_socket.load(Ordering::Relaxed), sent);
        let flushed = agg.flush();
        let gauge_lines = gauge_sent.iter().filter(|g| **g).count() as u64;
        assert_eq!(
            flushed.counter_delta_sum(),
            (lines - gauge_lines) as f64,
            "every line but the gauges is a counter of 1"
        );
        // Gauge lines apply in the order of their batches: each gauge holds the last
        // value sent for it.
        let mut gauges = 0;
        for s in &flushed.series {
            if let weir_core::FlushedValue::Gauge { value, .. } = s.value {
                let (_, series) = s.key.labels().find(|(k, _)| *k == "s").unwrap();
                let series: u64 = series.parse().unwrap();
                let last = (0..sent)
                    .rev()
                    .find(|i| i % 3 == series && gauge_sent[*i as usize])
                    .unwrap();
                assert_eq!(value, last as f64, "{:?}", s.key);
                gauges += 1;
            }
        }
        assert_eq!(gauges, 3);
    }

    /// Finishes `batch` with `gauges` (one 8-byte number per "line") and records the
    /// numbers `turn` applies in `applied`; whether it waited.
    fn finish(turn: &GaugeTurn, batch: u64, gauges: &[u64], applied: &Mutex<Vec<u64>>) -> bool {
        let mut lines: Vec<u8> = gauges.iter().flat_map(|g| g.to_le_bytes()).collect();
        let waited = turn.finish(batch, &mut lines, |lines| {
            let mut applied = applied.lock().unwrap();
            for g in lines.chunks(8) {
                applied.push(u64::from_le_bytes(g.try_into().unwrap()));
            }
        });
        assert!(lines.is_empty());
        waited
    }

    #[test]
    fn batches_apply_their_gauges_in_order_whichever_thread_finishes_first() {
        // Four threads, each with every fourth batch; every third batch without
        // gauges. With room to park, most batches park and the thread finishing the
        // batch before applies them; with none, each waits for its turn.
        for park_bytes in [1 << 20, 0] {
            let turn = GaugeTurn::with_park_bytes(park_bytes);
            let applied = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for t in 0..4u64 {
                    let (turn, applied) = (&turn, &applied);
                    scope.spawn(move || {
                        for batch in (t..200).step_by(4) {
                            let gauges = [batch, batch + 1000];
                            let n = if batch % 3 == 0 { 0 } else { 2 };
                            finish(turn, batch, &gauges[..n], applied);
                        }
                    });
                }
            });
            let expected: Vec<u64> = (0..200)
                .filter(|b| b % 3 != 0)
                .flat_map(|b| [b, b + 1000])
                .collect();
            assert_eq!(applied.into_inner().unwrap(), expected, "{park_bytes}");
            assert!(turn.is_turn_of(200));
            let turns = turn.lock();
            assert_eq!((turns.parked_bytes, turns.slots.len()), (0, 0));
        }
    }

    #[test]
    fn a_batch_finished_early_parks_its_gauges_for_the_batch_before_it() {
        let turn = GaugeTurn::with_park_bytes(16);
        let applied = Mutex::new(Vec::new());
        // Batches 2 and 1 finish first: they park (2 with gauges, 1 without) and do
        // not wait; batch 0 applies its gauges, then theirs.
        assert!(!finish(&turn, 2, &[2], &applied));
        assert!(!finish(&turn, 1, &[], &applied));
        assert!(applied.lock().unwrap().is_empty());
        assert!(turn.is_turn_of(0));
        assert!(!finish(&turn, 0, &[0], &applied));
        assert_eq!(*applied.lock().unwrap(), [0, 2]);
        assert!(turn.is_turn_of(3));
        // Past the room to park (16 bytes: two gauges), a batch waits for its turn.
        assert!(!finish(&turn, 4, &[4, 4], &applied));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| finish(&turn, 5, &[5], &applied));
            let deadline = Instant::now() + Duration::from_secs(10);
            while turn.lock().waiting == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(turn.lock().waiting, 1, "batch 5 waits");
            assert!(!finish(&turn, 3, &[3], &applied));
            assert!(waiter.join().unwrap(), "batch 5 said it waited");
        });
        assert_eq!(*applied.lock().unwrap(), [0, 2, 3, 4, 4, 5]);
        // A batch whose apply panics moves the turn past itself and the parked batch
        // after it (whose gauges are lost), so no batch waits for good.
        assert!(!finish(&turn, 7, &[7], &applied));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turn.finish(6, &mut vec![6], |_| panic!("in the apply"));
        }));
        assert!(r.is_err());
        assert!(turn.is_turn_of(8));
        assert!(!finish(&turn, 8, &[8], &applied));
        assert_eq!(*applied.lock().unwrap(), [0, 2, 3, 4, 4, 5, 8]);
        // A batch that panics before it finishes (in its other lines) is finished by
        // its guard: the batch after it is not left waiting.
        assert!(!finish(&turn, 10, &[10], &applied));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _unfinished = Unfinished {
                turn: &turn,
                batch: 9,
            };
            panic!("in the other lines");
        }));
        assert!(r.is_err());
        assert!(turn.is_turn_of(11));
        assert_eq!(turn.lock().parked_bytes, 0);
    }

    #[test]
    fn receivers_start_the_configured_workers_where_batches_are_read_whole() {
        let agg = Aggregator::default();
        for (recv_batch, workers, started) in [(64, 2, 2), (64, 0, 0), (1, 2, 0)] {
            let c = StatsdConfig {
                workers,
                ..config(1, recv_batch)
            };
            let r = StatsdReceiver::start(&c, &agg).unwrap();
            let expect = if cfg!(target_os = "linux") {
                started
            } else {
                0
            };
            assert_eq!(
                r.workers(),
                expect,
                "recv_batch {recv_batch}, workers {workers}"
            );
            r.stop();
        }
    }

    #[test]
    fn one_call_reads_up_to_a_batch_of_queued_datagrams() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1 << 20, false).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..100 {
            client
                .send_to(datagram(i, 3).as_bytes(), socket.local_addr().unwrap())
                .unwrap();
        }
        let agg = Aggregator::default();
        let counters = StatsdCounters::default();
        let per_socket = AtomicU64::new(0);
        let mut reader = Reader::new(&socket, agg.writer(), &counters, &per_socket, None);
        let mut batch = Batch::new(64);
        // Linux reads 64 in the first call and the other 36 in the second; elsewhere
        // one per call.
        let per_call = if cfg!(target_os = "linux") { 64 } else { 1 };
        assert!(matches!(batch.receive(&mut reader), Received::Datagrams));
        assert_eq!(reader.tally.datagrams, per_call);
        assert_eq!(reader.tally.report.lines, per_call * 3);
        assert_eq!(
            reader.tally.report.parse_errors[LineError::MissingValue.index()],
            per_call
        );
        reader.tally.publish(&counters, &per_socket);
        assert_eq!(reader.tally.datagrams, 0, "published and reset");
        while reader.tally.datagrams + counters.stats().datagrams < 100 {
            assert!(matches!(batch.receive(&mut reader), Received::Datagrams));
        }
        reader.tally.publish(&counters, &per_socket);
        let stats = counters.stats();
        assert_eq!((stats.datagrams, stats.lines), (100, 300));
        assert_eq!(per_socket.load(Ordering::Relaxed), 100);
        assert_eq!(
            stats.bytes,
            (0..100).map(|i| datagram(i, 3).len() as u64).sum::<u64>()
        );
        // Nothing left: the call waits out the read timeout and says so.
        assert!(matches!(batch.receive(&mut reader), Received::Empty));
        assert_eq!(agg.flush().counter_delta_sum(), 300.0);
    }

    #[test]
    #[cfg(unix)]
    fn several_reuseport_sockets_share_the_address_and_the_senders() {
        let stats = send_and_stop(2, 64, 32, 2_000);
        assert_exact(&stats, 2_000);
        assert_eq!(stats.socket_datagrams.len(), 2);
        // 32 source ports hash onto 2 sockets: all on one has odds of 2^-31.
        assert!(
            stats.socket_datagrams.iter().all(|&n| n > 0),
            "{:?}",
            stats.socket_datagrams
        );
    }

    #[test]
    #[cfg(unix)]
    fn one_socket_keeps_its_address_exclusive() {
        let agg = Aggregator::default();
        let r = StatsdReceiver::start(&config(1, 64), &agg).unwrap();
        let again = StatsdConfig {
            address: r.local_addr(),
            ..config(1, 64)
        };
        assert!(StatsdReceiver::start(&again, &agg).is_err());
        let shared = StatsdConfig {
            address: r.local_addr(),
            ..config(2, 64)
        };
        assert!(
            StatsdReceiver::start(&shared, &agg).is_err(),
            "a reuseport socket cannot join an exclusive one"
        );
    }

    /// Queues `count` datagrams of 3 lines on a fresh socket, then runs a receive
    /// thread's loop with the stop already requested: only the drain reads. Returns
    /// the drain and the datagrams counted.
    fn drain_queued(count: usize, batch: usize, limit: DrainLimit) -> (Drain, u64) {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1 << 20, false).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..count {
            client
                .send_to(datagram(i, 3).as_bytes(), socket.local_addr().unwrap())
                .unwrap();
        }
        let agg = Aggregator::default();
        let counters = StatsdCounters::default();
        let per_socket = AtomicU64::new(0);
        let mut reader = Reader::new(&socket, agg.writer(), &counters, &per_socket, None);
        let drain = reader.run(batch, &AtomicBool::new(true), limit);
        let counted = counters.stats().datagrams;
        assert_eq!(
            (drain.datagrams, drain.bytes),
            (counted, counters.stats().bytes)
        );
        (drain, counted)
    }

    const NO_LIMIT: DrainLimit = DrainLimit {
        time: Duration::from_secs(3600),
        budget: DrainBudget::Fixed(u64::MAX),
    };

    #[test]
    fn a_drain_within_its_limits_reads_the_whole_queue_and_says_it_emptied() {
        for batch in [64, 1] {
            let (drain, counted) = drain_queued(100, batch, NO_LIMIT);
            assert_eq!(counted, 100);
            assert_eq!(drain.end, DrainEnd::Emptied);
            assert_eq!(drain.left_queued_bytes, None);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_drain_budgeted_by_the_queue_at_the_stop_reads_all_of_it() {
        // The kernel says what it holds: the fallback (nothing) is not used.
        let limit = DrainLimit {
            budget: DrainBudget::QueuedAtStop { fallback: 0 },
            ..NO_LIMIT
        };
        for batch in [64, 1] {
            let (drain, counted) = drain_queued(100, batch, limit);
            assert_eq!(counted, 100);
            assert_eq!(drain.end, DrainEnd::Emptied, "{drain:?}");
        }
    }

    #[test]
    fn a_drain_past_its_budget_is_cut_short_and_says_what_is_left() {
        // One datagram per call: the budget of exactly ten datagrams' charge ends
        // the drain after the tenth.
        let charge = |i| datagram(i, 3).len() as u64 + DATAGRAM_CHARGE;
        let limit = DrainLimit {
            budget: DrainBudget::Fixed((0..10).map(charge).sum()),
            ..NO_LIMIT
        };
        let (drain, counted) = drain_queued(100, 1, limit);
        assert_eq!((drain.datagrams, counted), (10, 10));
        assert_eq!(drain.end, DrainEnd::Budget);
        assert!(drain.end.cut_short());
        #[cfg(target_os = "linux")]
        assert!(
            drain.left_queued_bytes.unwrap()
                >= (10..100).map(|i| datagram(i, 3).len() as u64).sum(),
            "{drain:?}"
        );
    }

    #[test]
    fn a_drain_past_its_time_is_cut_short_after_one_call() {
        let limit = DrainLimit {
            time: Duration::ZERO,
            ..NO_LIMIT
        };
        for (batch, per_call) in [(1, 1), (64, if cfg!(target_os = "linux") { 64 } else { 1 })] {
            let (drain, counted) = drain_queued(100, batch, limit);
            assert_eq!((drain.datagrams, counted), (per_call, per_call));
            assert_eq!(drain.end, DrainEnd::TimeLimit);
        }
    }

    /// The defect this bounds: the drain used to end only at the first empty read,
    /// so a sender that kept sending kept `stop` from returning.
    #[test]
    fn stop_returns_while_a_sender_keeps_sending_and_says_the_drain_was_cut_short() {
        let agg = Aggregator::default();
        let r = StatsdReceiver::start(&config(1, 64), &agg).unwrap();
        let target = r.local_addr();
        let done = Arc::new(AtomicBool::new(false));
        // Datagrams of 100 lines: parsing them costs the receiver several times what
        // sending costs the sender, so the queue stays full while the sender runs.
        // Bounded in count and time whatever happens to the receiver.
        let sender = std::thread::spawn({
            let done = done.clone();
            move || {
                let client = UdpSocket::bind("127.0.0.1:0").unwrap();
                let payload = datagram(0, 100);
                let started = Instant::now();
                let mut sent = 0u64;
                // Relaxed: a flag polled to end a loop, ordering nothing else.
                while !done.load(Ordering::Relaxed)
                    && sent < 20_000_000
                    && started.elapsed() < Duration::from_secs(60)
                {
                    if client.send_to(payload.as_bytes(), target).is_ok() {
                        sent += 1;
                    }
                }
                sent
            }
        });
        // Stop once the sender has outrun the receiver: the kernel dropped datagrams
        // for a full buffer (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.stats().kernel_drops.unwrap_or(1) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let filled = r.stats().kernel_drops.unwrap_or(1) > 0;
        let stopping = Instant::now();
        let stats = r.stop();
        let took = stopping.elapsed();
        done.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        assert!(filled && sent > 0, "the sender never filled the buffer");
        // The bound is 1 s (plus a batch and a join); 10 s leaves room for a busy
        // machine, and is far below what an unbounded drain takes here (until the
        // sender's own 60 s bound).
        assert!(took < Duration::from_secs(10), "stop took {took:?}");
        assert_eq!(stats.drains.len(), 1);
        let drain = &stats.drains[0];
        assert!(drain.end.cut_short(), "{drain:?}");
        assert!(drain.datagrams > 0, "{drain:?}");
    }
}
