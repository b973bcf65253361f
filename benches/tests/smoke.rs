//! The smoke version of weir-bench: every scenario that has a daemon to drive, with
//! small counts against the debug `weir` binary (and the peers scripts/test installs:
//! vmagent and Prometheus, when present), checking exact delivery and nothing about
//! timing. A few seconds per scenario.

use std::path::PathBuf;

use weir_benches::harness::http_server::TargetFormat;
use weir_benches::harness::peers::{DaemonOptions, StatsdPeerKind};
use weir_benches::harness::report::Section;
use weir_benches::harness::scenario::{Settings, memory, otlp, outage, scrape, statsd_rate};

fn settings() -> Settings {
    Settings {
        quick: true,
        weir_bin: weir_e2e::weir_bin().to_path_buf(),
        benches_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        threads: 1,
        progress: false,
    }
}

fn no_failures(sec: &Section) {
    assert!(
        sec.failures.is_empty(),
        "{}: {:?}",
        sec.scenario,
        sec.failures
    );
    assert!(!sec.rows.is_empty(), "{}: no rows", sec.scenario);
}

#[test]
fn statsd_rate_smoke_reads_back_every_line_weir_aggregated() {
    let sec = statsd_rate::run(
        &settings(),
        &[1_000],
        &[StatsdPeerKind::Weir],
        &statsd_rate::Probing::defaults(true),
        &DaemonOptions::defaults(),
    )
    .unwrap();
    no_failures(&sec);
    let probes = sec.data[0]["probes"].as_array().unwrap();
    assert!(!probes.is_empty());
    // At the smoke test's low first rate nothing is lost: every line sent was read back.
    assert_eq!(
        probes[0]["received"].as_f64().unwrap(),
        probes[0]["sent"].as_u64().unwrap() as f64
    );
    assert_eq!(
        sec.data[0]["series_held_after_preload"].as_u64(),
        Some(1_000)
    );
}

#[test]
fn memory_smoke_finds_every_series_held() {
    let sec = memory::run(
        &settings(),
        &[1_000],
        &[StatsdPeerKind::Weir],
        &DaemonOptions::defaults(),
    )
    .unwrap();
    no_failures(&sec);
    assert_eq!(sec.data[0]["series_held"].as_u64(), Some(1_000));
    assert_eq!(sec.data[0]["lines_aggregated"].as_f64(), Some(2_000.0));
}

#[test]
fn otlp_smoke_exports_are_all_accepted() {
    let sec = otlp::run(&settings(), Some(20)).unwrap();
    no_failures(&sec);
    assert_eq!(sec.rows.len(), 2);
}

#[test]
fn outage_smoke_loses_no_point() {
    let sec = outage::run(&settings(), Some(std::time::Duration::from_secs(2))).unwrap();
    no_failures(&sec);
    assert_eq!(sec.data["points_lost"].as_f64(), Some(0.0));
    assert!(
        sec.data["refused_requests"].as_u64().unwrap() > 0,
        "the outage refused nothing"
    );
}

#[test]
fn scrape_smoke_delivers_every_target_last_value() {
    let installed: Vec<scrape::Scraper> = scrape::Scraper::ALL
        .into_iter()
        .filter(|s| s.installed())
        .collect();
    // Protobuf bodies go to weir only: the others ask for text.
    for (format, scrapers) in [
        (TargetFormat::Text, installed),
        (TargetFormat::Protobuf, vec![scrape::Scraper::Weir]),
    ] {
        let sec = scrape::run(
            &settings(),
            format,
            Some(3),
            Some(5),
            None,
            Some(std::time::Duration::from_secs(2)),
            &scrapers,
        )
        .unwrap();
        no_failures(&sec);
        for d in sec.data.as_array().unwrap() {
            assert_eq!(d["series_exact"].as_u64(), Some(15), "{d}");
        }
    }
}
