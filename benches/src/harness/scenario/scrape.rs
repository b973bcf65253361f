//! Scenario 4: scrape N targets x M series every interval and forward by remote
//! write (default 1,000 x 100 every 10 s), weir vs vmagent and Prometheus in agent
//! mode, one after the other against fresh targets and a fresh receiver.
//!
//! Exact delivery: every target serves gauges whose value is its scrape number. After
//! the run the targets freeze (serve their last value from then on); once every
//! series' latest value in the receiver equals its target's last value (or a
//! deadline passes), series that do not match are counted as not delivered.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::Settings;
use crate::harness::http_server::{RemoteWriteReceiver, TARGET_METRIC, TargetFormat, Targets};
use crate::harness::peers::{START_LIMIT, Weir, which};
use crate::harness::process::{Proc, WorkDir, free_port, http_get};
use crate::harness::report::{Line, Plot, Section, mib, thousands};

/// Which scraper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Scraper {
    /// weir (file_sd targets, remote write pipeline, flush interval = scrape interval).
    Weir,
    /// vmagent (Debian victoria-metrics).
    Vmagent,
    /// Prometheus 2.42 with `--enable-feature=agent`.
    PrometheusAgent,
}

impl Scraper {
    /// Every scraper, in run order.
    pub const ALL: [Scraper; 3] = [Scraper::Weir, Scraper::Vmagent, Scraper::PrometheusAgent];

    /// Its name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Scraper::Weir => "weir",
            Scraper::Vmagent => "vmagent",
            Scraper::PrometheusAgent => "prometheus --agent",
        }
    }

    /// True if its binary is here.
    pub fn installed(self) -> bool {
        match self {
            Scraper::Weir => true,
            Scraper::Vmagent => which("vmagent").is_some(),
            Scraper::PrometheusAgent => which("prometheus").is_some(),
        }
    }
}

/// The version line a binary prints.
fn version(bin: &str, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            let t = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&t)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

fn prom_yaml(targets: &[String], interval: Duration, remote: Option<&str>) -> String {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut y = format!(
        "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: [{list}]\n",
        s = interval.as_secs().max(1)
    );
    if let Some(url) = remote {
        y.push_str(&format!("remote_write:\n  - url: \"{url}\"\n"));
    }
    y
}

/// A running scraper (stopped on drop).
enum Running {
    Weir(Weir),
    Other(Proc),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Weir(w) => w.proc.pid(),
            Running::Other(p) => p.pid(),
        }
    }
}

/// Starts `scraper` against `targets`, forwarding to `rx`.
fn start(
    s: &Settings,
    scraper: Scraper,
    targets: &Targets,
    interval: Duration,
    rx: &RemoteWriteReceiver,
) -> Result<(Running, WorkDir)> {
    let dir = WorkDir::new(scraper.label().split(' ').next().unwrap_or("scraper"))?;
    let secs = interval.as_secs().max(1);
    match scraper {
        Scraper::Weir => {
            let list = targets
                .addrs
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let sd = dir.write(
                "targets.json",
                &format!("[{{\"targets\": [{list}], \"labels\": {{}}}}]\n"),
            )?;
            let extra = format!(
                "[scrape]\nconcurrency = 64\n[[scrape.file_sd]]\nfiles = [\"{}\"]\njob = \"bench\"\n\
                 interval = \"{secs}s\"\ntimeout = \"{secs}s\"\n\
                 [[pipelines]]\nname = \"rw\"\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\n",
                sd.display(),
                rx.url()
            );
            let w = Weir::start(&s.weir_bin, &format!("{secs}s"), "", "", &extra)?;
            Ok((Running::Weir(w), dir))
        }
        Scraper::Vmagent => {
            let cfg = dir.write("prometheus.yml", &prom_yaml(&targets.addrs, interval, None))?;
            let http = format!("127.0.0.1:{}", free_port()?);
            let mut c = Command::new("vmagent");
            c.arg(format!("-promscrape.config={}", cfg.display()))
                .arg(format!("-remoteWrite.url={}", rx.url()))
                .arg(format!(
                    "-remoteWrite.tmpDataPath={}",
                    dir.path().join("vmagent-data").display()
                ))
                .arg(format!("-httpListenAddr={http}"))
                .arg("-loggerLevel=WARN");
            let mut p = Proc::spawn("vmagent", c, &dir)?;
            p.wait_ready(START_LIMIT, || http_get(&http, "/health").is_some())?;
            Ok((Running::Other(p), dir))
        }
        Scraper::PrometheusAgent => {
            let cfg = dir.write(
                "prometheus.yml",
                &prom_yaml(&targets.addrs, interval, Some(&rx.url())),
            )?;
            let http = format!("127.0.0.1:{}", free_port()?);
            let mut c = Command::new("prometheus");
            c.arg("--enable-feature=agent")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.agent.path={}",
                    dir.path().join("agent-data").display()
                ))
                .arg(format!("--web.listen-address={http}"))
                .arg("--log.level=warn");
            let mut p = Proc::spawn("prometheus-agent", c, &dir)?;
            p.wait_ready(START_LIMIT, || http_get(&http, "/-/ready").is_some())?;
            Ok((Running::Other(p), dir))
        }
    }
}

/// The value of label `name` in a receiver key (`a=1,b=2`).
fn label<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    key.split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Runs the scenario, the targets answering in `format`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    s: &Settings,
    format: TargetFormat,
    targets_n: Option<usize>,
    series_m: Option<usize>,
    interval: Option<Duration>,
    duration: Option<Duration>,
    scrapers: &[Scraper],
) -> Result<Section> {
    let n = targets_n.unwrap_or(if s.quick { 5 } else { 1_000 });
    let m = series_m.unwrap_or(if s.quick { 10 } else { 100 });
    let interval = interval.unwrap_or(if s.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    });
    let duration = duration.unwrap_or(if s.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    });
    let mut sec = Section {
        scenario: "scrape".into(),
        title: format!(
            "Scrape {} targets x {} series every {:?} ({} bodies), forwarded by remote write",
            thousands(n as f64),
            m,
            interval,
            match format {
                TargetFormat::Text => "text",
                TargetFormat::Protobuf => "protobuf",
            }
        ),
        columns: [
            "scraper",
            "scrapes served in the run",
            "samples delivered (whole run)",
            "series exact at the end",
            "mean scrape duration",
            "CPU s",
            "CPU s per M samples scraped",
            "peak RSS",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    sec.notes.push(format!(
        "Targets are the harness' HTTP servers ({}, gauges); each scraper runs {duration:?} against fresh \
         targets and a fresh remote-write receiver of the harness. weir's flush interval equals the scrape \
         interval, so it forwards one sample per series per interval as the others do.",
        match format {
            TargetFormat::Text => "text format 0.0.4",
            TargetFormat::Protobuf =>
                "delimited protobuf to a scraper asking for it (weir), text to the others",
        }
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut data = Vec::new();
    let mut cpu_line = Vec::new();
    for (idx, &scraper) in scrapers.iter().enumerate() {
        if !scraper.installed() {
            sec.notes.push(format!(
                "{} skipped: not installed (benches/setup-peers.sh)",
                scraper.label()
            ));
            continue;
        }
        match scraper {
            Scraper::Vmagent => sec.notes.push(format!(
                "vmagent: {} (Debian victoria-metrics)",
                std::process::Command::new("dpkg-query")
                    .args(["-W", "-f", "${Version}", "victoria-metrics"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            )),
            Scraper::PrometheusAgent => sec.notes.push(format!(
                "prometheus: {}",
                version("prometheus", "--version")
            )),
            Scraper::Weir => {}
        }
        let targets = Targets::start(rt.handle(), n, m, format)?;
        let rx = RemoteWriteReceiver::start(rt.handle())?;
        let (running, _dir) = start(s, scraper, &targets, interval, &rx)?;
        let pid = running.pid();
        let stats = || crate::harness::process::ProcStats::of(pid);
        // The clock starts once every target was scraped once (start-up and the
        // scrapers' initial offsets are not part of the run).
        let started = Instant::now() + interval * 3 + Duration::from_secs(60);
        while (0..n).any(|i| targets.scrapes(i) == 0) && Instant::now() < started {
            std::thread::sleep(Duration::from_millis(100));
        }
        let scrapes0 = targets.total_scrapes();
        let cpu0 = stats().cpu_seconds;
        let pb = s.bar(duration.as_secs(), format!("scrape: {}", scraper.label()));
        let t0 = Instant::now();
        while t0.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(250));
            pb.set_position(t0.elapsed().as_secs());
            pb.set_message(format!(
                "scrape: {}: {} scrapes served, {} samples delivered",
                scraper.label(),
                thousands(targets.total_scrapes() as f64),
                thousands(rx.with(|r| r.samples) as f64)
            ));
        }
        targets.freeze();
        let scraped = targets.total_scrapes() - scrapes0;
        let expected: HashMap<String, u64> = targets
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), targets.scrapes(i)))
            .collect();
        let exact = || {
            rx.with(|r| {
                r.series
                    .iter()
                    .filter(|(k, _)| label(k, "__name__") == Some(TARGET_METRIC))
                    .filter(|(k, st)| {
                        label(k, "instance")
                            .and_then(|i| expected.get(i))
                            .is_some_and(|&e| st.value == e as f64)
                    })
                    .count()
            })
        };
        let deadline = Instant::now() + interval * 4 + Duration::from_secs(20);
        let mut ok = exact();
        while ok < n * m && Instant::now() < deadline {
            pb.set_message(format!(
                "scrape: {}: waiting for the last values ({ok} of {})",
                scraper.label(),
                n * m
            ));
            std::thread::sleep(Duration::from_millis(250));
            ok = exact();
        }
        pb.finish_and_clear();
        let cpu = stats().cpu_seconds - cpu0;
        let st = stats();
        let (samples, mean_dur) = rx.with(|r| {
            let samples: u64 = r
                .series
                .iter()
                .filter(|(k, _)| label(k, "__name__") == Some(TARGET_METRIC))
                .map(|(_, s)| s.samples)
                .sum();
            let durs: Vec<f64> = r
                .series
                .iter()
                .filter(|(k, _)| label(k, "__name__") == Some("scrape_duration_seconds"))
                .map(|(_, s)| s.value)
                .collect();
            (
                samples,
                if durs.is_empty() {
                    f64::NAN
                } else {
                    durs.iter().sum::<f64>() / durs.len() as f64
                },
            )
        });
        // No scrape counted in the window (a scraper that stalled) has no per-sample
        // cost: it shows as "n/a" rather than as CPU divided by nothing.
        let per_m = (scraped > 0).then(|| cpu / ((scraped * m as u64) as f64 / 1e6));
        sec.rows.push(vec![
            scraper.label().into(),
            thousands(scraped as f64),
            thousands(samples as f64),
            format!("{} of {}", thousands(ok as f64), thousands((n * m) as f64)),
            if mean_dur.is_nan() {
                "not forwarded".into()
            } else {
                format!("{:.1} ms", mean_dur * 1e3)
            },
            format!("{cpu:.2}"),
            per_m.map_or("n/a".into(), |p| format!("{p:.2}")),
            mib(st.peak_rss_bytes),
        ]);
        if scraper == Scraper::Weir && ok < n * m {
            sec.failures.push(format!(
                "weir: {} of {} series did not end with their target's last value",
                n * m - ok,
                n * m
            ));
        }
        if let Some(p) = per_m {
            cpu_line.push((idx as f64 + 1.0, p));
        }
        data.push(json!({
            "scraper": scraper.label(), "format": format, "targets": n, "series_per_target": m, "interval_s": interval.as_secs_f64(),
            "scrapes_served": scraped, "samples_delivered": samples, "series_exact": ok,
            "mean_scrape_duration_s": if mean_dur.is_nan() { None } else { Some(mean_dur) },
            "cpu_seconds": cpu, "cpu_seconds_per_million_samples": per_m, "stats": st,
        }));
        drop(running);
    }
    sec.plots.push(Plot {
        name: "scrape_cpu".into(),
        title: "Scrape + remote write: CPU s per M samples (1 = weir, then the order of the table)"
            .into(),
        x: "scraper".into(),
        y: "CPU s per M samples".into(),
        log_x: false,
        lines: vec![Line {
            label: "CPU s per M samples scraped".into(),
            points: cpu_line,
        }],
    });
    sec.data = json!(data);
    rt.shutdown_background();
    Ok(sec)
}
