//! The scraper against real HTTP servers (started by the test on 127.0.0.1, free
//! ports): scraped cumulative counters become exact deltas (reset included), and a
//! target that serves garbage is reported, not fatal.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use weir_e2e::{TIMEOUT, TempDir, Weir, field, http, http_get, http_request};

/// Serves `bodies[k]` to the k-th request (the last one from then on) for at most
/// `max` requests, and reports each request on the channel. Returns the address.
fn serve(bodies: Vec<String>, max: usize) -> (String, mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for k in 0..max {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = &bodies[k.min(bodies.len() - 1)];
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
            let _ = tx.send(k + 1);
        }
    });
    (addr, rx)
}

#[test]
fn scraped_counters_become_exact_deltas_and_garbage_is_reported() {
    let counter =
        |v: u32| format!("# TYPE jobs_done counter\njobs_done_total{{queue=\"mail\"}} {v}\n");
    // Baseline 100, +30, a restart to 4 (+4), +6, then flat.
    let (good, scrapes) = serve(
        vec![counter(100), counter(130), counter(4), counter(10)],
        200,
    );
    let (bad, _) = serve(
        vec!["this is { not \"metrics\nat all 1 2 3 4\n".into()],
        200,
    );
    let dir = TempDir::new("scrape");
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n\
         [[scrape.targets]]\nurl = \"http://{good}/metrics\"\njob = \"app\"\ninterval = \"150ms\"\ntimeout = \"100ms\"\n\
         [[scrape.targets]]\nurl = \"http://{bad}/metrics\"\njob = \"junk\"\ninterval = \"150ms\"\ntimeout = \"100ms\"\n"
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    weir.wait_for_line("scrape target", TIMEOUT, |l| l.contains("scrape target"));
    // Wait for five scrapes of the good target: all four bodies were served.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while scrapes.recv_timeout(TIMEOUT).is_ok_and(|k| k < 5) {
        assert!(std::time::Instant::now() < deadline, "too slow");
    }
    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");
    let flushes: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(": flush sequence=") || l.contains("final flush sequence="))
        .collect();
    let deltas: f64 = flushes
        .iter()
        .filter_map(|l| field(l, "counter_delta_sum").and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(deltas, 30.0 + 4.0 + 6.0, "{all}");
    // The scraped counter plus up, scrape_duration_seconds and scrape_samples_scraped
    // for each of the two targets.
    let last = flushes.last().unwrap_or_else(|| panic!("no flush:\n{all}"));
    assert_eq!(field(last, "active_series"), Some("7"), "{last}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("scrape: malformed lines skipped") && l.contains(&bad)),
        "{all}"
    );
}

#[test]
fn an_unreachable_target_fails_scrapes_without_stopping_weir() {
    // A port nobody listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new("scrape-down");
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n\
         [[scrape.targets]]\nurl = \"http://127.0.0.1:{port}/metrics\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\n"
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let failed = weir.wait_for_line("scrape failed", TIMEOUT, |l| l.contains("scrape failed"));
    assert_eq!(field(&failed, "reason"), Some("request_failed"), "{failed}");
    weir.wait_for_line("flush", TIMEOUT, |l| l.contains(": flush sequence="));
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

/// Targets change without a restart: POST /config/reload adds one, a broken file is
/// refused with 400 and changes nothing, SIGHUP removes one again.
#[test]
fn reload_adds_and_removes_targets_and_refuses_a_broken_file() {
    let (a, _) = serve(vec!["a_total 1\n".into()], 1000);
    let (b, _) = serve(vec!["b_total 1\n".into()], 1000);
    let dir = TempDir::new("reload");
    let base = "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n\
                [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n\
                [admin]\naddress = \"127.0.0.1:0\"\n";
    let target = |addr: &str| {
        format!(
            "[[scrape.targets]]\nurl = \"http://{addr}/metrics\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\n"
        )
    };
    let file = dir.write("weir.toml", &format!("{base}{}", target(&a)));
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let admin = field(&admin, "address").unwrap().to_owned();
    let urls = |status: &str| status.matches("\"url\":").count();
    assert_eq!(urls(&http_get(&admin, "/status")), 1);
    // Scrapes of target `a` so far, from /status (`{"failures":..,"scrapes":N,..,"url":"http://a/metrics"}`).
    let scrapes_of_a = || {
        let status = http_get(&admin, "/status");
        let url = format!("\"url\":\"http://{a}/metrics\"");
        let object = status
            .split('{')
            .find(|o| o.contains(&url))
            .unwrap_or_else(|| panic!("{status}"))
            .to_owned();
        object
            .split("\"scrapes\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{object}"))
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while scrapes_of_a() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = scrapes_of_a();
    assert!(before >= 3);

    dir.write("weir.toml", &format!("{base}{}{}", target(&a), target(&b)));
    let answer = http(&admin, "POST", "/config/reload");
    assert_eq!(
        answer, "{\"applied\":[\"scrape\"],\"needs_restart\":[]}",
        "{answer}"
    );
    assert_eq!(urls(&http_get(&admin, "/status")), 2);
    // The unchanged target kept running: its counters were not reset.
    assert!(
        scrapes_of_a() >= before,
        "a restarted target would count from 0"
    );

    dir.write(
        "weir.toml",
        &format!("{base}[[scrape.targets]]\nurl = \"ftp://nope\"\n"),
    );
    let (code, body) = http_request(&admin, "POST", "/config/reload");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("scrape.targets.url"), "{body}");
    assert_eq!(
        urls(&http_get(&admin, "/status")),
        2,
        "the running config stays"
    );

    dir.write("weir.toml", &format!("{base}{}", target(&b)));
    // The POST reload logged a line too: read past it first.
    weir.wait_for_line("reload", TIMEOUT, |l| l.contains("config reloaded"));
    weir.signal("HUP");
    weir.wait_for_line("reload", TIMEOUT, |l| l.contains("config reloaded"));
    assert_eq!(urls(&http_get(&admin, "/status")), 1);
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}
