//! The command-line contract: `weir --version`, `weir --print-default-config`,
//! `weir validate --config FILE`, and refusing to start on a bad config.

use weir_e2e::{TempDir, run_weir};

#[test]
fn version_prints_the_crate_version() {
    let dir = TempDir::new("version");
    let out = run_weir(&["--version"], dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn printed_default_config_passes_validate() {
    let dir = TempDir::new("default");
    let out = run_weir(&["--print-default-config"], dir.path());
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("[aggregation]"), "{}", out.stdout);
    assert!(
        out.stdout.contains("flush_interval = \"10s\""),
        "{}",
        out.stdout
    );
    let file = dir.write("default.toml", &out.stdout);
    let out = run_weir(
        &["validate", "--config", file.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "config OK");
}

#[test]
fn validate_rejects_an_unknown_key_and_names_it() {
    let dir = TempDir::new("unknown");
    let file = dir.write(
        "weir.toml",
        "[aggregation]\nflush_interval = \"1s\"\nflush_intervall = \"2s\"\n",
    );
    let out = run_weir(
        &["validate", "--config", file.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("aggregation.flush_intervall"),
        "stderr should name the key: {}",
        out.stderr
    );
    assert!(out.stderr.contains("unknown field"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
    assert!(!out.stdout.contains("config OK"), "{out:?}");
}

#[test]
fn validate_rejects_an_invalid_value_and_names_it() {
    let dir = TempDir::new("invalid");
    let file = dir.write("weir.toml", "[aggregation]\nmax_series = 0\n");
    let out = run_weir(
        &["validate", "--config", file.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("aggregation.max_series"),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let dir = TempDir::new("missing");
    let missing = dir.path().join("nope.toml");
    let out = run_weir(
        &["validate", "--config", missing.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("nope.toml"), "{}", out.stderr);
}

#[test]
fn daemon_refuses_to_start_on_a_bad_config() {
    let dir = TempDir::new("badstart");
    let file = dir.write("weir.toml", "[log]\nformat = \"xml\"\n");
    let out = run_weir(&["--config", file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("log.format"), "{}", out.stderr);
}

/// Every file in examples/ is a valid config, as docs/configuration.md promises.
#[test]
fn every_example_config_validates() {
    let dir = weir_e2e::workspace_root().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "toml") {
            let out = run_weir(&["validate", "--config", path.to_str().unwrap()], &dir);
            assert!(out.status.success(), "{}: {}", path.display(), out.stderr);
            assert!(out.stdout.contains("config OK"), "{}", out.stdout);
            n += 1;
        }
    }
    assert!(n >= 3, "examples found: {n}");
}

#[test]
fn validate_loads_a_listeners_tls_files_and_names_the_table_and_file() {
    let dir = TempDir::new("listener-tls");
    let missing = dir.path().join("missing-cert.pem");
    let file = dir.write(
        "weir.toml",
        &format!(
            "[exposition.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            missing.display().to_string(),
            missing.display().to_string()
        ),
    );
    let out = run_weir(
        &["validate", "--config", file.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("exposition.tls"), "{}", out.stderr);
    assert!(out.stderr.contains("missing-cert.pem"), "{}", out.stderr);
    assert!(!out.stdout.contains("config OK"), "{out:?}");
}
