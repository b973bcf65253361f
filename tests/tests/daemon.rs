//! The daemon as an operator runs it: it starts, logs one summary line per flush, and
//! on SIGTERM/SIGINT flushes once more, logs it and exits 0.

use weir_e2e::{
    TIMEOUT, TempDir, Weir, field, flushed_counter_total, http, http_get, http_request,
    http_request_with,
};

/// An interval flush line in text format (not the final flush).
fn is_flush(line: &str) -> bool {
    line.contains(": flush sequence=")
}

fn seq(line: &str) -> u64 {
    field(line, "sequence")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {line:?}"))
}

#[test]
fn logs_flushes_and_flushes_once_more_on_sigterm() {
    let dir = TempDir::new("sigterm");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\naddress = \"127.0.0.1:0\"\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());

    let started = weir.wait_for_line("startup", TIMEOUT, |l| l.contains("weir started"));
    assert_eq!(
        field(&started, "flush_interval"),
        Some("200ms"),
        "{started}"
    );
    let first = weir.wait_for_line("flush", TIMEOUT, is_flush);
    let second = weir.wait_for_line("flush", TIMEOUT, is_flush);
    assert_eq!(seq(&second), seq(&first) + 1, "{first}\n{second}");
    for key in [
        "series",
        "counter_delta_sum",
        "histogram_observations",
        "rejected_total",
        "duration_us",
    ] {
        assert!(field(&second, key).is_some(), "no {key} in {second}");
    }

    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");
    let last_flush = lines
        .iter()
        .rfind(|l| is_flush(l))
        .map_or(seq(&second), |l| seq(l));
    let fin = lines
        .iter()
        .find(|l| l.contains("final flush sequence="))
        .unwrap_or_else(|| panic!("no final flush line:\n{all}"));
    assert_eq!(seq(fin), last_flush + 1, "{all}");
    assert!(all.contains("SIGTERM"), "{all}");
    assert!(
        lines.last().is_some_and(|l| l.contains("weir stopped")),
        "{all}"
    );
}

#[test]
fn json_logs_and_sigint() {
    let dir = TempDir::new("sigint");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n\
         [log]\nformat = \"json\"\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let line = weir.wait_for_line("flush", TIMEOUT, |l| l.contains("\"message\":\"flush\""));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert_eq!(field(&line, "series"), Some("0"), "{line}");

    weir.signal("INT");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");
    assert!(all.contains("\"message\":\"final flush\""), "{all}");
    assert!(
        lines.iter().all(|l| l.starts_with('{')),
        "non-JSON line:\n{all}"
    );
}

/// StatsD lines sent over UDP to the real daemon are aggregated: the counter deltas of
/// all flushes add up to what was sent, malformed lines are skipped with a warning,
/// and lines still in the socket at SIGTERM land in the final flush.
#[test]
fn statsd_lines_over_udp_are_aggregated() {
    let dir = TempDir::new("statsd");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\naddress = \"127.0.0.1:0\"\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let listening = weir.wait_for_line("statsd listening", TIMEOUT, |l| {
        l.contains("statsd receiver listening")
    });
    let addr: std::net::SocketAddr = field(&listening, "address")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0.0;
    for i in 0..50u32 {
        let datagram = format!(
            "shop.orders:{i}|c|#region:eu\nshop.orders:1|c|@0.5|#region:us\nbroken-line\nshop.queue:{i}|g\n"
        );
        sock.send_to(datagram.as_bytes(), addr).unwrap();
        sent += f64::from(i) + 2.0;
    }
    // Counter deltas of every flush until SIGTERM, including the final one.
    let _ = weir.wait_for_line("a flush with data", TIMEOUT, |l| {
        is_flush(l) && field(l, "counter_delta_sum").is_some_and(|v| v != "0" && v != "0.0")
    });
    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");
    // `lines` holds everything the daemon printed, from its start.
    let got = flushed_counter_total(&lines);
    assert_eq!(got, sent, "{all}");
    assert!(all.contains("statsd: malformed lines skipped"), "{all}");
    assert!(all.contains("missing_value=50"), "{all}");
    let stopped = lines
        .iter()
        .find(|l| l.contains("statsd receiver stopped"))
        .unwrap_or_else(|| panic!("no receiver stop line:\n{all}"));
    assert_eq!(field(stopped, "datagrams"), Some("50"), "{stopped}");
    assert_eq!(field(stopped, "samples"), Some("150"), "{stopped}");
    // Linux reports the socket's kernel drops; 50 small datagrams fit the buffer.
    assert_eq!(field(stopped, "kernel_drops"), Some("0"), "{stopped}");
}

/// The statsd_exporter role: StatsD lines in, exact per-series values on the
/// exposition endpoint after the next flush (counters as running totals).
#[test]
fn exposition_serves_exact_statsd_values() {
    let dir = TempDir::new("exposition");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"200ms\"\nhistogram_buckets = [0.1, 1]\n\
         [receivers.statsd]\naddress = \"127.0.0.1:0\"\n[receivers.otlp]\nenabled = false\n\
         [exposition]\naddress = \"127.0.0.1:0\"\n[admin]\nenabled = false\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let statsd = weir.wait_for_line("statsd", TIMEOUT, |l| {
        l.contains("statsd receiver listening")
    });
    let expo = weir.wait_for_line("exposition", TIMEOUT, |l| {
        l.contains("exposition endpoint listening")
    });
    let statsd = field(&statsd, "address").unwrap().to_owned();
    let expo = field(&expo, "address").unwrap().to_owned();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(
        b"shop.orders:3|c|#region:eu\nshop.orders:4|c|#region:eu\nshop.queue:12|g\napi.latency:250|ms\napi.latency:50|ms",
        &statsd,
    )
    .unwrap();
    // The page changes at flushes: wait for one that has the orders.
    let want = "# TYPE api_latency histogram\n\
        api_latency_bucket{le=\"0.1\"} 1\napi_latency_bucket{le=\"1\"} 2\napi_latency_bucket{le=\"+Inf\"} 2\n\
        api_latency_sum 0.3\napi_latency_count 2\n\
        # TYPE shop_orders counter\nshop_orders{region=\"eu\"} 7\n\
        # TYPE shop_queue gauge\nshop_queue 12\n";
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut page = String::new();
    while std::time::Instant::now() < deadline {
        page = http_get(&expo, "/metrics");
        if page == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(page, want);
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

/// The admin API as an operator uses it: health, a flush on demand that answers with
/// its summary, weir's own metrics and the status document.
#[test]
fn admin_api_health_flush_metrics_status() {
    let dir = TempDir::new("admin");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"1h\"\n[receivers.statsd]\naddress = \"127.0.0.1:0\"\n\
         [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\n",
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let statsd = weir.wait_for_line("statsd", TIMEOUT, |l| {
        l.contains("statsd receiver listening")
    });
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let statsd = field(&statsd, "address").unwrap().to_owned();
    let admin = field(&admin, "address").unwrap().to_owned();
    assert_eq!(http_get(&admin, "/health"), "ok\n");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"a:2|c\nb:1|g\nbad", &statsd).unwrap();
    // The flush interval is an hour: only POST /flush can flush. Retry until the
    // datagram has been read (it is UDP: read asynchronously).
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut total = 0.0;
    while total < 2.0 && std::time::Instant::now() < deadline {
        let summary = http(&admin, "POST", "/flush");
        let v: f64 = summary
            .split("\"counter_delta_sum\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("{summary}"));
        total += v;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(total, 2.0);
    let metrics = http_get(&admin, "/metrics");
    for want in [
        "weir_active_series 2\n",
        "weir_statsd_lines_total 2\n",
        "weir_statsd_kernel_drops_total 0\n",
        "weir_statsd_parse_errors_total{reason=\"missing_value\"} 1\n",
        "weir_rejected_total{reason=\"type_conflict\"} 0\n",
    ] {
        assert!(metrics.contains(want), "no {want:?} in\n{metrics}");
    }
    // The process metrics every Prometheus client library exports, with sane values.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    let status = http_get(&admin, "/status");
    assert!(status.contains("\"active_series\":2"), "{status}");
    assert!(
        status.contains("\"time_unix_ms\":1"),
        "last flush time: {status}"
    );
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

/// With `admin.token`, the mutating endpoints answer 401 without the bearer token
/// (and with a wrong one) and work with it; read-only endpoints stay open.
#[test]
fn admin_token_guards_mutating_endpoints() {
    let dir = TempDir::new("admin-token");
    let token = "s3cret-token-0123456789";
    let file = dir.write(
        "weir.toml",
        &format!(
            "[aggregation]\nflush_interval = \"1h\"\n[receivers.statsd]\nenabled = false\n\
             [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{token}\"\n"
        ),
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let admin = field(&admin, "address").unwrap().to_owned();
    for path in ["/flush", "/config/reload"] {
        let (code, body) = http_request(&admin, "POST", path);
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) = http_request_with(
            &admin,
            "POST",
            path,
            &[("Authorization", "Bearer wrong-token-0123456789")],
        );
        assert_eq!(code, 401, "{path}");
        let (code, _) = http_request_with(&admin, "POST", path, &[("Authorization", token)]);
        assert_eq!(code, 401, "{path}: a token without the Bearer scheme");
    }
    let bearer = format!("Bearer {token}");
    let (code, body) = http_request_with(&admin, "POST", "/flush", &[("Authorization", &bearer)]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"sequence\":1"), "{body}");
    let (code, body) = http_request_with(
        &admin,
        "POST",
        "/config/reload",
        &[("Authorization", &bearer)],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_get(&admin, "/health"), "ok\n");
    assert!(http_get(&admin, "/status").contains("\"active_series\":0"));
    assert!(!http_get(&admin, "/status").contains(token));
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

/// The README's quick start, exactly: `weir` with no config listens on the default
/// ports, takes the README's StatsD lines and serves them on 127.0.0.1:9102 after a
/// flush (requested through the default admin address instead of waiting 10 s).
/// Needs the default ports free, as the README does.
#[test]
fn the_embedded_default_serves_statsd_input_on_the_exposition_endpoint() {
    for port in [8686, 9102, 4317, 4318] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: stop whatever weir or other service holds it"
        );
    }
    let dir = TempDir::new("quick-start");
    let mut weir = Weir::start(&[], dir.path());
    weir.wait_for_line("statsd", TIMEOUT, |l| {
        l.contains("statsd receiver listening") && l.contains("127.0.0.1:8125")
    });
    weir.wait_for_line("exposition", TIMEOUT, |l| {
        l.contains("exposition endpoint listening") && l.contains("127.0.0.1:9102")
    });
    weir.wait_for_line("admin", TIMEOUT, |l| {
        l.contains("admin API listening") && l.contains("127.0.0.1:8686")
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(
        b"shop.orders:3|c|#region:eu\nshop.queue:12|g\napi.latency:250|ms\n",
        "127.0.0.1:8125",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut page = String::new();
    while !page.contains("api_latency_count") && std::time::Instant::now() < deadline {
        http("127.0.0.1:8686", "POST", "/flush");
        page = http_get("127.0.0.1:9102", "/metrics");
    }
    for want in [
        "shop_orders{region=\"eu\"} 3\n",
        "shop_queue 12\n",
        "api_latency_bucket{le=\"0.25\"} 1\n",
        "api_latency_sum 0.25\n",
        "api_latency_count 1\n",
    ] {
        assert!(page.contains(want), "no {want:?} in\n{page}");
    }
    assert!(
        !dir.path().join("weir-data").exists(),
        "no pipelines: nothing is written to disk"
    );
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}
