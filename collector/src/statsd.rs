//! The StatsD/DogStatsD UDP receiver: a dedicated OS thread per socket that reads
//! datagrams and applies them through weir-core's [`Decoder`] and a [`weir_core::Writer`] of its
//! own.
//!
//! Owns: the socket (bind, receive buffer), the receive loop and its counters. Must
//! never: block on anything but the socket (the aggregator never blocks a writer, so
//! there is no hand-off queue to fill: a datagram is applied where it is read), or
//! stop reading while running. On stop it drains what the kernel still holds, then
//! exits.
//!
//! The kernel's own count of datagrams it dropped for the socket (receive buffer full)
//! is read from `/proc/net/udp` and `/proc/net/udp6` where Linux provides them.
//!
//! Not yet: batched receives (`recvmmsg`) and several `SO_REUSEPORT` sockets.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};
use weir_core::Aggregator;
use weir_core::statsd::{DatagramReport, Decoder, LineError};

use crate::config::StatsdConfig;

/// How long a blocked receive waits before checking whether to stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Largest datagram read (the UDP maximum); a longer one is cut by the kernel.
const MAX_DATAGRAM: usize = 65_535;

/// Counters of one receiver since start. Relaxed: independent counters, read only for
/// reporting.
#[derive(Default)]
pub struct StatsdCounters {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    lines: AtomicU64,
    samples: AtomicU64,
    rejected: AtomicU64,
    parse_errors: [AtomicU64; LineError::ALL.len()],
}

/// A snapshot of [`StatsdCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsdStats {
    /// Datagrams read.
    pub datagrams: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Lines that parsed.
    pub lines: u64,
    /// Samples the aggregator took.
    pub samples: u64,
    /// Samples the aggregator refused (its counters say why).
    pub rejected: u64,
    /// Lines skipped, by reason (every reason listed).
    pub parse_errors: Vec<(&'static str, u64)>,
    /// Datagrams the kernel dropped for this socket because its receive buffer was
    /// full, since the socket was opened; `None` where the OS does not say.
    pub kernel_drops: Option<u64>,
}

impl StatsdStats {
    /// Lines skipped, all reasons.
    pub fn parse_errors_total(&self) -> u64 {
        self.parse_errors.iter().map(|(_, n)| n).sum()
    }
}

impl StatsdCounters {
    fn add(&self, bytes: usize, r: &DatagramReport) {
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.lines.fetch_add(r.lines, Ordering::Relaxed);
        self.samples.fetch_add(r.samples, Ordering::Relaxed);
        self.rejected.fetch_add(r.rejected, Ordering::Relaxed);
        for (c, n) in self.parse_errors.iter().zip(r.parse_errors) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A snapshot (without the kernel's drop count, which the receiver adds).
    pub fn stats(&self) -> StatsdStats {
        StatsdStats {
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lines: self.lines.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            parse_errors: LineError::ALL
                .iter()
                .zip(&self.parse_errors)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
            kernel_drops: None,
        }
    }
}

/// A running StatsD receiver.
pub struct StatsdReceiver {
    local_addr: SocketAddr,
    /// The socket's inode, to find it in `/proc/net/udp*`.
    inode: Option<u64>,
    recv_buffer_bytes: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<StatsdCounters>,
    thread: Option<JoinHandle<()>>,
}

impl StatsdReceiver {
    /// Binds the socket and starts the receive thread.
    ///
    /// # Errors
    /// The socket could not be created, sized or bound, or the thread not started.
    pub fn start(config: &StatsdConfig, aggregator: &Aggregator) -> io::Result<StatsdReceiver> {
        let socket = Socket::new(
            Domain::for_address(config.address),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        // The kernel caps this at net.core.rmem_max (and doubles what it grants);
        // the granted size is logged so an operator can see a cap.
        if let Err(e) = socket.set_recv_buffer_size(config.recv_buffer_bytes) {
            warn!(error = %e, requested = config.recv_buffer_bytes, "statsd: cannot size the receive buffer");
        }
        socket.bind(&config.address.into())?;
        let socket: UdpSocket = socket.into();
        socket.set_read_timeout(Some(STOP_POLL))?;
        let local_addr = socket.local_addr()?;
        let recv_buffer_bytes = Socket::from(socket.try_clone()?).recv_buffer_size()?;
        let inode = socket_inode(&socket);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(StatsdCounters::default());
        let writer = aggregator.writer();
        let thread = std::thread::Builder::new()
            .name("weir-statsd".into())
            .spawn({
                let (stop, counters) = (stop.clone(), counters.clone());
                move || receive_loop(&socket, writer, &stop, &counters)
            })?;
        Ok(StatsdReceiver {
            local_addr,
            inode,
            recv_buffer_bytes,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The receive buffer the kernel granted, in bytes.
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }

    /// The live counters, for the admin API.
    pub fn counters(&self) -> Arc<StatsdCounters> {
        self.counters.clone()
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsdStats {
        let mut s = self.counters.stats();
        s.kernel_drops = self.inode.and_then(kernel_drops);
        s
    }

    /// Stops the thread after it has drained the socket, and waits for it.
    pub fn stop(mut self) -> StatsdStats {
        // Read while the socket is still open: it leaves /proc/net/udp with it.
        let drops = self.inode.and_then(kernel_drops);
        self.shutdown();
        StatsdStats {
            kernel_drops: drops,
            ..self.counters.stats()
        }
    }

    fn shutdown(&mut self) {
        // Release: the thread's Acquire load then sees the request.
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("statsd: receive thread panicked");
        }
    }
}

impl Drop for StatsdReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
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

/// The kernel's drop count for the socket with `inode`, from `/proc/net/udp` or
/// `/proc/net/udp6`.
fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| drops_in_proc_net_udp(&text, inode))
}

/// Finds `inode` in the text of `/proc/net/udp` (columns: sl, local, remote, st,
/// tx:rx queue, tr:when, retrnsmt, uid, timeout, inode, ref, pointer, drops) and
/// returns its `drops` column.
pub fn drops_in_proc_net_udp(text: &str, inode: u64) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| cols.get(12)?.parse().ok())
            .flatten()
    })
}

fn receive_loop(
    socket: &UdpSocket,
    mut writer: weir_core::Writer,
    stop: &AtomicBool,
    counters: &StatsdCounters,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut decoder = Decoder::default();
    let mut draining = false;
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let report = decoder.ingest(&buf[..n], &mut writer);
                counters.add(n, &report);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if draining {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ICMP-induced errors and the like: keep reading, but do not spin.
                warn!(error = %e, "statsd: receive failed");
                std::thread::sleep(STOP_POLL);
            }
        }
        // Acquire: pairs with `shutdown`'s Release.
        if !draining && stop.load(Ordering::Acquire) {
            // Drain what the kernel still holds without waiting for more.
            draining = true;
            if socket.set_nonblocking(true).is_err() {
                return;
            }
        }
    }
}

/// Logs the receiver's start.
pub fn log_listening(r: &StatsdReceiver) {
    info!(
        address = %r.local_addr(),
        recv_buffer_bytes = r.recv_buffer_bytes(),
        "statsd receiver listening (UDP)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  753: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 884413 2 0000000000000000 17
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
    #[cfg(target_os = "linux")]
    fn a_live_socket_reports_its_kernel_drops() {
        let agg = Aggregator::default();
        let config = StatsdConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            ..StatsdConfig::default()
        };
        let r = StatsdReceiver::start(&config, &agg).unwrap();
        assert_eq!(r.stats().kernel_drops, Some(0));
        let stats = r.stop();
        assert_eq!(stats.kernel_drops, Some(0));
    }
}
