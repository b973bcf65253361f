//! The StatsD load generator: distinct series packed many lines to a datagram, sent
//! over UDP by several threads at a fixed total rate.
//!
//! Owns: the series shape (names only, which every StatsD daemon reads, or DogStatsD
//! tags, which only weir reads), the datagrams, pacing, and the exact count of lines
//! sent. Must never: count a line whose datagram the kernel refused to send.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Datagram payload budget (fits a 1500-byte MTU with headers).
pub const DATAGRAM_BYTES: usize = 1400;

/// The prefix of every series' metric name.
pub const PREFIX: &str = "bench.requests";

/// How series differ from each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Shape {
    /// `bench.requests.s<i>:1|c`: one metric name per series (plain StatsD: every peer).
    Names,
    /// `bench.requests:1|c|#series:s<i>`: one name, a DogStatsD tag per series (weir).
    Tags,
}

/// One line per series, every value 1 (so a series' total is the number of its
/// lines received), packed into datagrams; with the line count of each datagram.
pub fn datagrams(series: usize, shape: Shape) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(DATAGRAM_BYTES);
    let mut lines = 0u64;
    for i in 0..series {
        let line = match shape {
            Shape::Names => format!("{PREFIX}.s{i}:1|c\n"),
            Shape::Tags => format!("{PREFIX}:1|c|#series:s{i}\n"),
        };
        if cur.len() + line.len() > DATAGRAM_BYTES {
            out.push((std::mem::take(&mut cur), lines));
            lines = 0;
        }
        cur.extend_from_slice(line.as_bytes());
        lines += 1;
    }
    if lines > 0 {
        out.push((cur, lines));
    }
    out
}

/// A running send: `threads` senders share the rate and the datagrams (thread `t`
/// takes every `threads`-th one).
pub struct Load {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts sending `payloads` round-robin to 127.0.0.1:`port` at `rate` lines/s in
    /// all for `duration` (or until [`Load::finish`]).
    pub fn start(
        port: u16,
        payloads: Arc<Vec<(Vec<u8>, u64)>>,
        rate: f64,
        threads: usize,
        duration: Duration,
    ) -> std::io::Result<Load> {
        let threads = threads.clamp(1, payloads.len().max(1));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for t in 0..threads {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            sock.connect(("127.0.0.1", port))?;
            let (payloads, sent, stop) = (payloads.clone(), sent.clone(), stop.clone());
            let my_rate = rate / threads as f64;
            handles.push(std::thread::spawn(move || {
                let mine: Vec<&(Vec<u8>, u64)> = payloads.iter().skip(t).step_by(threads).collect();
                let started = Instant::now();
                let end = started + duration;
                let mut lines = 0u64;
                let mut k = 0usize;
                // Relaxed: `stop` is a flag polled in a loop; `sent` is a tally read
                // after `join` (which orders it) or approximately for the progress bar.
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    let due = (started.elapsed().as_secs_f64() * my_rate) as u64;
                    let mut burst = 0u64;
                    while lines < due {
                        let (d, n) = mine[k % mine.len()];
                        if sock.send(d).is_ok() {
                            lines += n;
                            burst += n;
                        }
                        k += 1;
                    }
                    sent.fetch_add(burst, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            }));
        }
        Ok(Load {
            sent,
            stop,
            handles,
        })
    }

    /// Lines sent so far (approximate while running).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// True while a sender still runs.
    pub fn running(&self) -> bool {
        self.handles.iter().any(|h| !h.is_finished())
    }

    /// Stops the senders and returns the exact number of lines sent.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Sends every series exactly `rounds` times at `rate` lines/s and returns the lines
/// sent (`rounds * series` unless the kernel refused a datagram).
pub fn send_rounds(
    port: u16,
    payloads: &[(Vec<u8>, u64)],
    rounds: usize,
    rate: f64,
) -> std::io::Result<u64> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(("127.0.0.1", port))?;
    let started = Instant::now();
    let mut lines = 0u64;
    for _ in 0..rounds {
        for (d, n) in payloads {
            while (started.elapsed().as_secs_f64() * rate) < lines as f64 {
                std::thread::sleep(Duration::from_micros(200));
            }
            if sock.send(d).is_ok() {
                lines += n;
            }
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_hold_every_series_once_within_the_budget() {
        for shape in [Shape::Names, Shape::Tags] {
            let d = datagrams(10_000, shape);
            assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 10_000);
            assert!(d.iter().all(|(b, _)| b.len() <= DATAGRAM_BYTES));
            let text: String = d.iter().map(|(b, _)| String::from_utf8_lossy(b)).collect();
            assert_eq!(text.lines().count(), 10_000);
            assert!(text.lines().any(|l| l.contains("s9999")));
        }
    }
}
