//! The scraper against real HTTP servers (started by the test on 127.0.0.1, free
//! ports): scraped cumulative counters become exact deltas (reset included), a target
//! that serves garbage is reported, not fatal, and every exposition format (protobuf,
//! OpenMetrics, text, gzip-compressed, a gzip bomb) gives exact values.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use weir_e2e::{RefusingAddress, TIMEOUT, TempDir, Weir, field, http, http_get, http_request};

/// Serves `bodies[k]` to the k-th request (the last one from then on) for at most
/// `max` requests, and reports each request on the channel. Returns the address.
fn serve(bodies: Vec<String>, max: usize) -> (String, mpsc::Receiver<usize>) {
    let responses = bodies
        .into_iter()
        .map(|b| Response::new("text/plain; version=0.0.4", b.into_bytes()))
        .collect();
    let (addr, rx, _) = serve_responses(responses, max);
    (addr, rx)
}

/// One canned answer of a test target.
#[derive(Clone)]
struct Response {
    content_type: &'static str,
    /// `Content-Encoding`, if any.
    encoding: Option<&'static str>,
    body: Vec<u8>,
    /// How long the target thinks before it answers.
    delay: Duration,
    /// Bytes of an extra `X-Padding` header in the response head.
    padding: usize,
}

impl Response {
    fn new(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            content_type,
            encoding: None,
            body,
            delay: Duration::ZERO,
            padding: 0,
        }
    }

    /// The same answer with an `X-Padding` header of `bytes` bytes in its head.
    fn padded(mut self, bytes: usize) -> Response {
        self.padding = bytes;
        self
    }

    /// The same answer, sent `delay` after the request arrived.
    fn delayed(mut self, delay: Duration) -> Response {
        self.delay = delay;
        self
    }

    /// The same answer gzip-compressed (by the system's `gzip`, part of every Debian
    /// base system), with `Content-Encoding: gzip`.
    fn gzipped(mut self) -> Response {
        self.body = gzip(&self.body);
        self.encoding = Some("gzip");
        self
    }
}

/// `data` compressed by `gzip -c -9`.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .args(["-c", "-9"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().unwrap().expect("feed gzip");
    assert!(out.status.success());
    out.stdout
}

/// [`serve`] with full responses; the third channel carries each request's head
/// (request line and headers).
fn serve_responses(
    responses: Vec<Response>,
    max: usize,
) -> (String, mpsc::Receiver<usize>, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    let (head_tx, heads) = mpsc::channel();
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
            let _ = head_tx.send(String::from_utf8_lossy(&req).into_owned());
            let r = &responses[k.min(responses.len() - 1)];
            std::thread::sleep(r.delay);
            let encoding = r
                .encoding
                .map_or_else(String::new, |e| format!("Content-Encoding: {e}\r\n"));
            let padding = if r.padding > 0 {
                format!("X-Padding: {}\r\n", "p".repeat(r.padding))
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{encoding}{padding}Content-Length: {}\r\nConnection: close\r\n\r\n",
                r.content_type,
                r.body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&r.body);
            let _ = tx.send(k + 1);
        }
    });
    (addr, rx, heads)
}

/// A hand-written protobuf encoder for `io.prometheus.client` messages, kept apart
/// from weir's own types so that the test checks weir against the wire format.
mod pb {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Field `tag` with wire type 2 (length-delimited).
    pub fn bytes(tag: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// Field `tag` with wire type 1 (a double).
    pub fn double(tag: u64, v: f64, out: &mut Vec<u8>) {
        varint(tag << 3 | 1, out);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Field `tag` with wire type 0 (a varint).
    pub fn uint(tag: u64, v: u64, out: &mut Vec<u8>) {
        varint(tag << 3, out);
        varint(v, out);
    }

    /// `Metric { label = 1 (LabelPair { name = 1, value = 2 }), <value> }`.
    pub fn metric(labels: &[(&str, &str)], value_field: u64, value: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for (k, v) in labels {
            let mut l = Vec::new();
            bytes(1, k.as_bytes(), &mut l);
            bytes(2, v.as_bytes(), &mut l);
            bytes(1, &l, &mut m);
        }
        bytes(value_field, value, &mut m);
        m
    }

    /// A counter (`Metric.counter = 3`), gauge (2) or untyped (5) value message:
    /// `{ value = 1 }`.
    pub fn number(v: f64) -> Vec<u8> {
        let mut out = Vec::new();
        double(1, v, &mut out);
        out
    }

    /// `Histogram { sample_count = 1, sample_sum = 2, bucket = 3 (Bucket {
    /// cumulative_count = 1, upper_bound = 2 }) }` (`Metric.histogram = 7`).
    pub fn histogram(count: u64, sum: f64, buckets: &[(f64, u64)]) -> Vec<u8> {
        let mut h = Vec::new();
        uint(1, count, &mut h);
        double(2, sum, &mut h);
        for (le, c) in buckets {
            let mut b = Vec::new();
            uint(1, *c, &mut b);
            double(2, *le, &mut b);
            bytes(3, &b, &mut h);
        }
        h
    }

    /// `Summary { sample_count = 1, sample_sum = 2, quantile = 3 (Quantile { quantile =
    /// 1, value = 2 }) }` (`Metric.summary = 4`).
    pub fn summary(count: u64, sum: f64, quantiles: &[(f64, f64)]) -> Vec<u8> {
        let mut s = Vec::new();
        uint(1, count, &mut s);
        double(2, sum, &mut s);
        for (q, v) in quantiles {
            let mut one = Vec::new();
            double(1, *q, &mut one);
            double(2, *v, &mut one);
            bytes(3, &one, &mut s);
        }
        s
    }

    /// A delimited `MetricFamily { name = 1, help = 2, type = 3, metric = 4 }`.
    /// Types: 0 counter, 1 gauge, 2 summary, 3 untyped, 4 histogram.
    pub fn family(name: &str, kind: u64, metrics: &[Vec<u8>]) -> Vec<u8> {
        let mut f = Vec::new();
        bytes(1, name.as_bytes(), &mut f);
        bytes(2, b"Help text.", &mut f);
        uint(3, kind, &mut f);
        for m in metrics {
            bytes(4, m, &mut f);
        }
        let mut out = Vec::new();
        varint(f.len() as u64, &mut out);
        out.extend_from_slice(&f);
        out
    }
}

/// The protobuf body of scrape `k`: a counter, a gauge, an untyped value, a histogram
/// and a summary, their values growing from scrape 0 to scrape 1 and flat after.
fn protobuf_body(k: u64) -> Vec<u8> {
    let (jobs, depth, hist, sum) = if k == 0 {
        (100.0, 5.0, [(0.5, 1), (1.0, 2)], 1.5)
    } else {
        (130.0, 7.0, [(0.5, 2), (1.0, 5)], 4.0)
    };
    let count = if k == 0 { 3 } else { 8 };
    [
        pb::family(
            "pb_jobs_total",
            0,
            &[pb::metric(&[("queue", "mail")], 3, &pb::number(jobs))],
        ),
        pb::family(
            "pb_queue_depth",
            1,
            &[pb::metric(&[("queue", "mail")], 2, &pb::number(depth))],
        ),
        pb::family(
            "pb_temperature",
            3,
            &[pb::metric(&[], 5, &pb::number(21.5))],
        ),
        pb::family(
            "pb_latency_seconds",
            4,
            &[pb::metric(&[], 7, &pb::histogram(count, sum, &hist))],
        ),
        pb::family(
            "pb_rpc_seconds",
            2,
            &[pb::metric(
                &[],
                4,
                &pb::summary(count, sum, &[(0.5, 0.25), (0.9, 0.75)]),
            )],
        ),
    ]
    .concat()
}

/// The OpenMetrics body of scrape `k` (as `prometheus_client` writes it, plus a unit,
/// an exemplar, an info family and a state set).
fn openmetrics_body(k: u64) -> Vec<u8> {
    let jobs = if k == 0 { 10 } else { 25 };
    format!(
        "# HELP om_jobs Jobs.\n# TYPE om_jobs counter\n# UNIT om_jobs jobs\n\
         om_jobs_total{{queue=\"mail\"}} {jobs}.0 # {{trace_id=\"abc\"}} 1.0 1700000000.5\n\
         om_jobs_created{{queue=\"mail\"}} 1.7e+09\n\
         # TYPE om_build info\nom_build_info{{version=\"1.2.3\"}} 1\n\
         # TYPE om_mode stateset\nom_mode{{om_mode=\"fast\"}} 1\nom_mode{{om_mode=\"slow\"}} 0\n\
         # EOF\n"
    )
    .into_bytes()
}

/// The value of the exposition line `name{labels}` (labels as the page writes them),
/// or `None`.
fn value_of(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Every format, and gzip, gives exact values through the exposition endpoint; a gzip
/// bomb fails its target (`up 0`) and nothing else. Each target logs its format.
#[test]
fn every_exposition_format_gives_exact_values() {
    let protobuf = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
    let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let text = "text/plain; version=0.0.4; charset=utf-8";
    let (pb_addr, pb_scrapes, pb_heads) = serve_responses(
        vec![
            Response::new(protobuf, protobuf_body(0)),
            Response::new(protobuf, protobuf_body(1)),
        ],
        1000,
    );
    let (om_addr, om_scrapes, _) = serve_responses(
        vec![
            Response::new(openmetrics, openmetrics_body(0)),
            Response::new(openmetrics, openmetrics_body(1)),
        ],
        1000,
    );
    // Compressed protobuf and text: what node_exporter and prometheus_client send.
    let (gz_addr, gz_scrapes, _) = serve_responses(
        vec![
            Response::new(protobuf, protobuf_body(0)).gzipped(),
            Response::new(
                text,
                b"# TYPE gz_hits_total counter\ngz_hits_total 40\n".to_vec(),
            )
            .gzipped(),
        ],
        1000,
    );
    // 16 MiB of zeros in ~16 KiB: under the 1 MiB body limit as sent, far over it
    // once decompressed.
    let bomb = Response::new(text, vec![0u8; 16 << 20]).gzipped();
    assert!(bomb.body.len() < 64 << 10, "{} bytes", bomb.body.len());
    let (bomb_addr, bomb_scrapes, _) = serve_responses(vec![bomb], 1000);

    let dir = TempDir::new("scrape-formats");
    let target = |addr: &str, job: &str| {
        format!(
            "[[scrape.targets]]\nurl = \"http://{addr}/metrics\"\njob = \"{job}\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\n"
        )
    };
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n\
         [exposition]\naddress = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[scrape]\nbody_limit_bytes = 1048576\n{}{}{}{}",
        target(&pb_addr, "pb"),
        target(&om_addr, "om"),
        target(&gz_addr, "gz"),
        target(&bomb_addr, "bomb"),
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let listening = weir.wait_for_line("exposition", TIMEOUT, |l| {
        l.contains("exposition endpoint listening")
    });
    let exposition = field(&listening, "address").unwrap().to_owned();
    // Four scrapes of each target: every body was served at least twice.
    for scrapes in [&pb_scrapes, &om_scrapes, &gz_scrapes, &bomb_scrapes] {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while scrapes.recv_timeout(TIMEOUT).is_ok_and(|k| k < 4) {
            assert!(std::time::Instant::now() < deadline, "too slow");
        }
    }
    let at = |job: &str, addr: &str| format!("instance=\"{addr}\",job=\"{job}\"");
    let pb = at("pb", &pb_addr);
    let om = at("om", &om_addr);
    let gz = at("gz", &gz_addr);
    let want: Vec<(String, f64)> = vec![
        // Protobuf: the counter's running total, the latest gauges, the histogram's
        // cumulative buckets and the latest summary.
        (format!("pb_jobs_total{{{pb},queue=\"mail\"}}"), 130.0),
        (format!("pb_queue_depth{{{pb},queue=\"mail\"}}"), 7.0),
        (format!("pb_temperature{{{pb}}}"), 21.5),
        (format!("pb_latency_seconds_bucket{{{pb},le=\"0.5\"}}"), 2.0),
        (format!("pb_latency_seconds_bucket{{{pb},le=\"1\"}}"), 5.0),
        (
            format!("pb_latency_seconds_bucket{{{pb},le=\"+Inf\"}}"),
            8.0,
        ),
        (format!("pb_latency_seconds_sum{{{pb}}}"), 4.0),
        (format!("pb_latency_seconds_count{{{pb}}}"), 8.0),
        (format!("pb_rpc_seconds{{{pb},quantile=\"0.9\"}}"), 0.75),
        (format!("pb_rpc_seconds_count{{{pb}}}"), 8.0),
        // OpenMetrics: `_created` is no series, the info and state set are gauges.
        (format!("om_jobs_total{{{om},queue=\"mail\"}}"), 25.0),
        (format!("om_build_info{{{om},version=\"1.2.3\"}}"), 1.0),
        (format!("om_mode{{{om},om_mode=\"slow\"}}"), 0.0),
        // gzip: the protobuf body's counter then a text body's.
        (format!("pb_jobs_total{{{gz},queue=\"mail\"}}"), 100.0),
        (format!("gz_hits_total{{{gz}}}"), 40.0),
        // Per target, as Prometheus records them.
        (format!("up{{{pb}}}"), 1.0),
        (format!("up{{{om}}}"), 1.0),
        (format!("up{{{gz}}}"), 1.0),
        (format!("up{{{}}}", at("bomb", &bomb_addr)), 0.0),
        (format!("scrape_samples_scraped{{{pb}}}"), 5.0),
        (format!("scrape_samples_scraped{{{om}}}"), 4.0),
        (format!("scrape_samples_scraped{{{gz}}}"), 1.0),
        (
            format!("scrape_samples_scraped{{{}}}", at("bomb", &bomb_addr)),
            0.0,
        ),
    ];
    // The page changes at flushes: wait (bounded) for one that holds the values of
    // the last scrapes. (Waiting for the next two flush lines instead could return at
    // once: the lines read first may be flushes logged before those scrapes.)
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut page = http_get(&exposition, "/metrics");
    while !want.iter().all(|(s, v)| value_of(&page, s) == Some(*v))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        page = http_get(&exposition, "/metrics");
    }
    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    let all = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{all}");

    let head = pb_heads.recv_timeout(TIMEOUT).unwrap().to_ascii_lowercase();
    assert!(
        head.contains("\r\naccept: application/vnd.google.protobuf;proto=io.prometheus.client.metricfamily;encoding=delimited;q=0.7,application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\naccept-encoding: gzip\r\n"), "{head}");

    for (series, value) in &want {
        assert_eq!(value_of(&page, series), Some(*value), "{series}\n{page}");
    }
    for addr in [&pb, &om, &gz, &at("bomb", &bomb_addr)] {
        let d = value_of(&page, &format!("scrape_duration_seconds{{{addr}}}"));
        assert!(
            d.is_some_and(|d| d > 0.0 && d < 1.0),
            "{addr}: {d:?}\n{page}"
        );
    }
    assert!(!page.contains("om_jobs_created"), "{page}");
    assert!(!page.contains("pb_latency_seconds_created"), "{page}");

    // Each target's format was logged; the bomb failed as too large, nothing else did.
    let format_of = |addr: &str| {
        lines
            .iter()
            .filter(|l| l.contains("scrape format") && l.contains(addr))
            .map(|l| {
                (
                    field(l, "format").unwrap_or("?"),
                    field(l, "gzip").unwrap_or("?"),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(format_of(&pb_addr), vec![("protobuf", "false")], "{all}");
    assert_eq!(format_of(&om_addr), vec![("openmetrics", "false")], "{all}");
    assert_eq!(
        format_of(&gz_addr),
        vec![("protobuf", "true"), ("text", "true")],
        "{all}"
    );
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("scrape failed"))
        .collect();
    assert!(!failures.is_empty(), "{all}");
    for f in failures {
        assert!(f.contains(&bomb_addr), "{f}");
        assert_eq!(field(f, "reason"), Some("body_too_large"), "{f}");
    }
    assert!(!all.contains("malformed lines skipped"), "{all}");
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

/// A response head is read into an 8 KiB buffer: one of 6 KiB is scraped, one of
/// 64 KiB fails the scrape as `request_failed` and is named in the log.
#[test]
fn a_response_head_up_to_8_kib_is_scraped_and_a_larger_one_fails_the_scrape() {
    let text = |name: &str| format!("{name}_total 7\n").into_bytes();
    let plain = "text/plain; version=0.0.4";
    let (big, big_scrapes, _) = serve_responses(
        vec![Response::new(plain, text("big")).padded(6 << 10)],
        1000,
    );
    let (huge, _, _) = serve_responses(
        vec![Response::new(plain, text("huge")).padded(64 << 10)],
        1000,
    );
    let dir = TempDir::new("scrape-head");
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\naddress = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
         [[scrape.targets]]\nurl = \"http://{big}/metrics\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         [[scrape.targets]]\nurl = \"http://{huge}/metrics\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n"
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let page = weir.wait_for_line("exposition", TIMEOUT, |l| {
        l.contains("exposition endpoint listening")
    });
    let page = field(&page, "address").unwrap().to_owned();
    let failed = weir.wait_for_line("scrape failed", TIMEOUT, |l| {
        l.contains("scrape failed") && l.contains(&huge)
    });
    assert_eq!(field(&failed, "reason"), Some("request_failed"), "{failed}");
    big_scrapes
        .recv_timeout(TIMEOUT)
        .expect("the 6 KiB head was answered");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let metrics = http_get(&page, "/metrics");
        let at = |name: &str, addr: &str| format!("{name}{{instance=\"{addr}\",job=\"scrape\"}}");
        if value_of(&metrics, &at("big_total", &big)) == Some(7.0) {
            assert!(!metrics.contains("huge_total"), "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never scraped:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

#[test]
fn an_unreachable_target_fails_scrapes_without_stopping_weir() {
    // A port nobody listens on, held so for the whole test.
    let refusing = RefusingAddress::new();
    let port = refusing.addr().port();
    let dir = TempDir::new("scrape-down");
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[scrape.targets]]\nurl = \"http://127.0.0.1:{port}/metrics\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\n"
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let admin = field(&admin, "address").unwrap().to_owned();
    let failed = weir.wait_for_line("scrape failed", TIMEOUT, |l| l.contains("scrape failed"));
    assert_eq!(field(&failed, "reason"), Some("request_failed"), "{failed}");
    // /status says when it last scraped and why that failed.
    let status = http_get(&admin, "/status");
    assert!(status.contains("\"up\":false"), "{status}");
    assert!(
        status.contains("\"last_error\":\"request_failed: "),
        "{status}"
    );
    assert!(status.contains("\"last_scrape_unix_ms\":1"), "{status}");
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
        answer, "{\"applied\":[\"scrape\"],\"errors\":[],\"needs_restart\":[]}",
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
    assert!(body.contains("scrape.targets[0].url"), "{body}");
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

/// A target removed by a reload while its scrape is in flight finishes that scrape:
/// its points are aggregated, not abandoned.
#[test]
fn a_target_removed_by_reload_finishes_its_scrape_in_flight() {
    let slow = Response::new("text/plain; version=0.0.4", b"inflight_total 7\n".to_vec())
        .delayed(Duration::from_millis(800));
    let (addr, _served, heads) = serve_responses(vec![slow], 1);
    let dir = TempDir::new("reload-inflight");
    let base = "[aggregation]\nflush_interval = \"100ms\"\n[receivers.statsd]\nenabled = false\n\
                [receivers.otlp]\nenabled = false\n[exposition]\naddress = \"127.0.0.1:0\"\n\
                [admin]\naddress = \"127.0.0.1:0\"\n";
    let file = dir.write(
        "weir.toml",
        &format!(
            "{base}[[scrape.targets]]\nurl = \"http://{addr}/metrics\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n"
        ),
    );
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let exposition = weir.wait_for_line("exposition", TIMEOUT, |l| {
        l.contains("exposition endpoint listening")
    });
    let exposition = field(&exposition, "address").unwrap().to_owned();
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let admin = field(&admin, "address").unwrap().to_owned();
    // The scrape has started: the target holds its answer for 800 ms.
    heads.recv_timeout(TIMEOUT).expect("a scrape");
    dir.write("weir.toml", base);
    let answer = http(&admin, "POST", "/config/reload");
    assert!(answer.contains("\"applied\":[\"scrape\"]"), "{answer}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut page = String::new();
    while !page.contains("inflight_total{") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        page = http_get(&exposition, "/metrics");
    }
    let line = page
        .lines()
        .find(|l| l.starts_with("inflight_total{"))
        .unwrap_or_else(|| panic!("the scrape in flight was abandoned:\n{page}"));
    assert!(line.ends_with(" 7"), "{line}");
    weir.signal("TERM");
    let (status, _) = weir.wait_exit(TIMEOUT);
    assert!(status.success());
}

/// Targets from files (`[[scrape.file_sd]]`) follow the files without a restart: a
/// target written to a file is scraped, one removed from it stops, a broken file keeps
/// the targets it gave, and the counters say what happened.
#[test]
fn file_discovered_targets_follow_their_files_without_a_restart() {
    let (a, _) = serve(vec!["a_total 1\n".into()], 100_000);
    let (b, _) = serve(vec!["b_total 1\n".into()], 100_000);
    let dir = TempDir::new("file-sd");
    let targets = dir.path().join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    let config = format!(
        "[aggregation]\nflush_interval = \"200ms\"\n[receivers.statsd]\nenabled = false\n\
         [receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[scrape.file_sd]]\nfiles = [\"{}\"]\nrefresh_interval = \"100ms\"\n\
         interval = \"100ms\"\ntimeout = \"50ms\"\njob = \"discovered\"\n",
        targets.join("*.json").display()
    );
    let file = dir.write("weir.toml", &config);
    let mut weir = Weir::start(&["--config", file.to_str().unwrap()], dir.path());
    let admin = weir.wait_for_line("admin", TIMEOUT, |l| l.contains("admin API listening"));
    let admin = field(&admin, "address").unwrap().to_owned();
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let status = http_get(&admin, "/status");
            if ok(&status) {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {status}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let url_a = format!("\"url\":\"http://{a}/metrics\"");
    let url_b = format!("\"url\":\"http://{b}/metrics\"");
    assert!(!http_get(&admin, "/status").contains(&url_a));

    // A JSON file appears: its target is scraped.
    std::fs::write(
        targets.join("one.json"),
        format!(r#"[{{"targets": ["{a}"], "labels": {{"env": "test"}}}}]"#),
    )
    .unwrap();
    wait_for("target a scraped", &|s| {
        s.split('{')
            .any(|o| o.contains(&url_a) && o.contains("\"up\":true"))
    });
    // The file changes to b: a stops, b starts.
    std::fs::write(
        targets.join("one.json"),
        format!(r#"[{{"targets": ["{b}"]}}]"#),
    )
    .unwrap();
    wait_for("target a replaced by b", &|s| {
        !s.contains(&url_a)
            && s.split('{')
                .any(|o| o.contains(&url_b) && o.contains("\"up\":true"))
    });
    // Broken: b stays, and the refusal is counted.
    std::fs::write(targets.join("one.json"), "[{").unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !http_get(&admin, "/metrics").contains("weir_scrape_file_sd_read_errors_total 1") {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(http_get(&admin, "/status").contains(&url_b));
    // Gone: its targets stop.
    std::fs::remove_file(targets.join("one.json")).unwrap();
    wait_for("targets of a removed file stop", &|s| !s.contains(&url_b));
    weir.signal("TERM");
    let (status, lines) = weir.wait_exit(TIMEOUT);
    assert!(status.success(), "{lines:?}");
    // Each read of a file is logged.
    assert!(
        lines.iter().any(|l| l.contains("file_sd: targets read")),
        "{lines:?}"
    );
}
