//! The StatsD fast path through the real daemon: several `SO_REUSEPORT` sockets,
//! batched receives, many datagrams sent as fast as the sender can, exact totals.

use std::net::{SocketAddr, UdpSocket};

use weir_e2e::{TIMEOUT, TempDir, Weir, field, flushed_counter_total};

/// Senders (distinct source ports, so the kernel spreads them over the sockets).
const SENDERS: usize = 32;
/// Datagrams in all: bounded, and small enough (~1.5 MB of payload) that the
/// receive buffers hold every one of them even if weir read nothing until the end.
const DATAGRAMS: usize = 4_000;
/// Lines per datagram, one of them malformed.
const LINES: usize = 12;
/// Every `GARBAGE`th datagram is nothing but bad lines.
const GARBAGE: usize = 50;

/// Datagram `i`: `LINES - 1` counters with a malformed line in the middle, or (every
/// `GARBAGE`th) only bad lines: a missing type, invalid UTF-8 and an unknown type.
/// Returns the datagram and the sum of its counter values.
fn datagram(i: usize) -> (Vec<u8>, u64) {
    if i % GARBAGE == GARBAGE - 1 {
        return (b"fast.bad:1\n\xff\xfe:1|c\nfast.bad:1|q\n".to_vec(), 0);
    }
    let mut d = Vec::new();
    let mut sum = 0;
    for l in 0..LINES - 1 {
        if l == LINES / 2 {
            d.extend_from_slice(b"fast.hits|c|#broken\n");
        }
        let v = (i + l) % 5 + 1;
        sum += v as u64;
        d.extend_from_slice(format!("fast.hits:{v}|c|#shard:s{},line:l{l}\n", i % 16).as_bytes());
    }
    (d, sum)
}

#[test]
fn many_datagrams_over_two_reuseport_sockets_arrive_exactly() {
    let dir = TempDir::new("statsd-fast");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"200ms\"\n\
         [receivers.statsd]\naddress = \"127.0.0.1:0\"\nsockets = 2\nrecv_batch = 64\n\
         recv_buffer_bytes = 33554432\n\
         [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let listening = weir.wait_for_line("statsd listening", TIMEOUT, |l| {
        l.contains("statsd receiver listening")
    });
    assert_eq!(field(&listening, "sockets"), Some("2"), "{listening}");
    assert_eq!(field(&listening, "recv_batch"), Some("64"), "{listening}");
    assert_eq!(field(&listening, "workers"), Some("1"), "{listening}");
    let addr: SocketAddr = field(&listening, "address")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));

    let senders: Vec<UdpSocket> = (0..SENDERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut want_sum = 0;
    let mut want_garbage = 0u64;
    for i in 0..DATAGRAMS {
        let (d, sum) = datagram(i);
        want_sum += sum;
        want_garbage += u64::from(sum == 0);
        senders[i % SENDERS].send_to(&d, addr).unwrap();
    }
    let good = DATAGRAMS as u64 - want_garbage;
    // Lines still queued at SIGTERM are drained into the final flush.
    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");

    let got = flushed_counter_total(&lines);
    assert_eq!(got, want_sum as f64, "counter deltas of every flush\n{all}");
    let stopped = lines
        .iter()
        .find(|l| l.contains("statsd receiver stopped"))
        .unwrap_or_else(|| panic!("no receiver stop line:\n{all}"));
    let n = |key: &str| -> u64 {
        field(stopped, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stopped}"))
    };
    assert_eq!(n("kernel_drops"), 0, "{stopped}");
    assert_eq!(n("datagrams"), DATAGRAMS as u64, "{stopped}");
    // Whether the threads fell behind depends on the machine; what workers took is
    // counted within the datagrams either way.
    assert!(n("worker_datagrams") <= DATAGRAMS as u64, "{stopped}");
    assert_eq!(n("lines"), good * (LINES as u64 - 1), "{stopped}");
    assert_eq!(n("samples"), good * (LINES as u64 - 1), "{stopped}");
    assert_eq!(n("parse_errors"), good + 3 * want_garbage, "{stopped}");
    // Every reason shows in the warning, with its count since start.
    let warned = lines
        .iter()
        .rfind(|l| l.contains("statsd: malformed lines skipped"))
        .unwrap_or_else(|| panic!("no parse error warning:\n{all}"));
    for reason in [
        format!("missing_value={good}"),
        format!("missing_type={want_garbage}"),
        format!("invalid_utf8={want_garbage}"),
        format!("unknown_type={want_garbage}"),
    ] {
        assert!(warned.contains(&reason), "{reason} in {warned}");
    }
}

#[test]
fn a_second_daemon_cannot_take_a_single_sockets_port() {
    let dir = TempDir::new("statsd-exclusive");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"1h\"\n[receivers.statsd]\naddress = \"127.0.0.1:0\"\n\
         [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let listening = weir.wait_for_line("statsd listening", TIMEOUT, |l| {
        l.contains("statsd receiver listening")
    });
    assert_eq!(field(&listening, "sockets"), Some("1"), "{listening}");
    let addr = field(&listening, "address").unwrap().to_owned();
    let second = dir.write(
        "second.toml",
        &format!(
            "[receivers.statsd]\naddress = \"{addr}\"\nsockets = 2\n\
             [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n"
        ),
    );
    let out = weir_e2e::run_weir(&["--config", second.to_str().unwrap()], dir.path());
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("cannot start the statsd receiver"),
        "{printed}"
    );
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}
