//! Scenario 6: in-process instrumentation. Wraps the two existing comparisons, does
//! not reimplement them: `ffi/bench/compare.cpp` (weir's C ABI vs prometheus-cpp 1.0.1
//! in one process; built here with g++ against `target/release/libweir_ffi.a`) and
//! `benches/python/bench_clients.py` (weir's Python package vs prometheus_client and
//! the OpenTelemetry SDK, read from its `--json` output), and turns their results into
//! rows: one per library pair and operation. A Python without the OpenTelemetry SDK
//! still runs; the SDK's rows then say "not installed".

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Settings;
use crate::harness::process::WorkDir;
use crate::harness::report::{Line, Plot, Section, thousands};

/// A row of compare.cpp: operation, prometheus-cpp ns, weir ns.
type CppRow = (String, f64, f64);
/// What bench_clients.py measured (its `--json` output).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct PyRun {
    /// Ops per timed run.
    ops_per_run: u64,
    /// Timed runs per operation (the best counts).
    repeat: u64,
    /// One row per operation.
    rows: Vec<PyRow>,
    /// Package versions (`None`: not installed).
    versions: std::collections::BTreeMap<String, Option<String>>,
    /// Why the OpenTelemetry SDK has no numbers (not installed), if it has none.
    otel_missing: Option<String>,
}

/// One operation of bench_clients.py, ns per op on each side.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct PyRow {
    operation: String,
    prometheus_client: f64,
    weir: f64,
    /// `None` when the SDK is not installed or has no such instrument.
    otel: Option<f64>,
}

/// Builds and runs compare.cpp; its rows `(operation, prom-cpp ns, weir ns)` and the
/// text it printed after the table.
fn cpp(root: &Path) -> Result<(Vec<CppRow>, String)> {
    let lib = root.join("target/release/libweir_ffi.a");
    if !lib.exists() {
        bail!(
            "{} is missing: cargo build --release --locked -p weir-ffi",
            lib.display()
        );
    }
    let dir = WorkDir::new("compare-cpp")?;
    let exe = dir.path().join("compare");
    let out = Command::new("g++")
        .args(["-O2", "-std=c++17"])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("ffi/bench/compare.cpp"))
        .arg(&lib)
        .args(["-lprometheus-cpp-core", "-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .context("run g++")?;
    if !out.status.success() {
        bail!(
            "g++ failed (is prometheus-cpp-dev installed?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = Command::new(&exe).output().context("run compare")?;
    if !run.status.success() {
        bail!("compare failed:\n{}", String::from_utf8_lossy(&run.stderr));
    }
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    let rows = text
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            match cells.as_slice() {
                [op, prom, weir, _ratio] => {
                    Some((op.to_string(), prom.parse().ok()?, weir.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect();
    let tail = text
        .lines()
        .filter(|l| !l.starts_with('|') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok((rows, tail))
}

/// Runs bench_clients.py with `python` (`--json`) and reads what it measured.
fn python(root: &Path, python: &Path, quick: bool) -> Result<PyRun> {
    let mut c = Command::new(python);
    c.arg(root.join("benches/python/bench_clients.py"))
        .arg("--json");
    if quick {
        c.arg("--quick");
    }
    let out = c.output().context("run bench_clients.py")?;
    if !out.status.success() {
        bail!(
            "bench_clients.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("read bench_clients.py's output: {text}"))
}

/// A package's label with its version, e.g. `prometheus_client 0.26.0`.
fn versioned(run: &PyRun, dist: &str, label: &str) -> String {
    match run.versions.get(dist) {
        Some(Some(v)) => format!("{label} {v}"),
        _ => label.to_owned(),
    }
}

/// The table rows of a Python run, two per operation (weir vs prometheus_client, weir
/// vs the OpenTelemetry SDK, whose cells say "not installed" when it is missing), and
/// the plot's ratio lines.
fn python_rows(run: &PyRun) -> (Vec<Vec<String>>, Vec<Line>) {
    let prom = versioned(run, "prometheus_client", "prometheus_client");
    let otel = versioned(run, "opentelemetry-sdk", "OpenTelemetry SDK");
    let mut rows = Vec::new();
    let (mut vs_prom, mut vs_otel) = (Vec::new(), Vec::new());
    for (i, r) in run.rows.iter().enumerate() {
        let x = i as f64 + 1.0;
        rows.push(vec![
            format!("Python vs {prom}"),
            r.operation.clone(),
            format!("{:.0}", r.prometheus_client),
            format!("{:.0}", r.weir),
            format!("{:.2}x", r.weir / r.prometheus_client),
        ]);
        vs_prom.push((x, r.weir / r.prometheus_client));
        let (theirs, ratio) = match (r.otel, &run.otel_missing) {
            (Some(o), _) => {
                vs_otel.push((x, r.weir / o));
                (format!("{o:.0}"), format!("{:.2}x", r.weir / o))
            }
            (None, Some(_)) => ("not installed".into(), "-".into()),
            (None, None) => ("no such instrument".into(), "-".into()),
        };
        rows.push(vec![
            format!("Python vs {otel}"),
            r.operation.clone(),
            theirs,
            format!("{:.0}", r.weir),
            ratio,
        ]);
    }
    let mut lines = vec![Line {
        label: "weir / prometheus_client".into(),
        points: vs_prom,
    }];
    if !vs_otel.is_empty() {
        lines.push(Line {
            label: "weir / OpenTelemetry SDK".into(),
            points: vs_otel,
        });
    }
    (rows, lines)
}

/// Runs the scenario; `python` is the interpreter with `weir` and
/// `prometheus_client` installed (skipped when `None`).
pub fn run(s: &Settings, python_bin: Option<&Path>) -> Result<Section> {
    let root = s
        .benches_dir
        .parent()
        .context("benches/ has a parent")?
        .to_path_buf();
    let mut sec = Section {
        scenario: "in-process".into(),
        title: "In-process: weir's C ABI and Python package vs prometheus-cpp, prometheus_client, OpenTelemetry SDK".into(),
        columns: ["library pair", "operation", "theirs ns/op", "weir ns/op", "weir / theirs"].map(String::from).to_vec(),
        ..Section::default()
    };
    let mut ratios = Vec::new();
    match cpp(&root) {
        Ok((rows, tail)) => {
            sec.notes.push(format!(
                "ffi/bench/compare.cpp (median of runs, one process): {tail}"
            ));
            for (i, (op, prom, weir)) in rows.iter().enumerate() {
                sec.rows.push(vec![
                    "C ABI vs prometheus-cpp 1.0.1".into(),
                    op.clone(),
                    format!("{prom:.1}"),
                    format!("{weir:.1}"),
                    format!("{:.2}x", weir / prom),
                ]);
                ratios.push((i as f64 + 1.0, weir / prom));
            }
            sec.data["cpp"] = json!(rows);
        }
        Err(e) => sec
            .notes
            .push(format!("C ABI vs prometheus-cpp skipped: {e:#}")),
    }
    let mut py_lines = Vec::new();
    if let Some(py) = python_bin {
        match python(&root, py, s.quick) {
            Ok(run) => {
                let prom = versioned(&run, "prometheus_client", "prometheus_client");
                let otel = match &run.otel_missing {
                    Some(_) => "OpenTelemetry SDK not installed".to_owned(),
                    None => versioned(&run, "opentelemetry-sdk", "OpenTelemetry SDK"),
                };
                sec.notes.push(format!(
                    "benches/python/bench_clients.py with {} ({}, {prom}, {otel}; best of {} repeats of {} ops); \
                     the OpenTelemetry SDK with an in-memory reader and no exporter",
                    py.display(),
                    versioned(&run, "weir", "weir"),
                    run.repeat,
                    thousands(run.ops_per_run as f64),
                ));
                if let Some(why) = &run.otel_missing {
                    sec.notes.push(format!("OpenTelemetry SDK column: {why}"));
                }
                let (rows, lines) = python_rows(&run);
                sec.rows.extend(rows);
                py_lines = lines;
                sec.data["python"] = json!(run);
            }
            Err(e) => sec.notes.push(format!("Python comparison skipped: {e:#}")),
        }
    } else {
        sec.notes.push(
            "Python comparison skipped: pass --python <interpreter with weir and prometheus_client \
             (and opentelemetry-sdk for its column)>"
                .into(),
        );
    }
    sec.plots.push(Plot {
        name: "in_process_cpp".into(),
        title: "weir C ABI / prometheus-cpp, ns per op ratio (rows of the table, 1 = first)".into(),
        x: "operation".into(),
        y: "ratio (lower is better)".into(),
        log_x: false,
        lines: vec![Line {
            label: "weir / prometheus-cpp".into(),
            points: ratios,
        }],
    });
    if !py_lines.is_empty() {
        sec.plots.push(Plot {
            name: "in_process_python".into(),
            title: "weir Python / prometheus_client and / OpenTelemetry SDK, ns per op ratio (operations in table order, 1 = first)".into(),
            x: "operation".into(),
            y: "ratio (lower is better)".into(),
            log_x: false,
            lines: py_lines,
        });
    }
    Ok(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(json: &str) -> PyRun {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_python_without_the_opentelemetry_sdk_gets_rows_that_say_not_installed() {
        let run = run_of(
            r#"{"ops_per_run": 10, "repeat": 1, "versions": {"weir": "0.1.0",
                "prometheus_client": "0.26.0", "opentelemetry-sdk": null},
                "otel_missing": "not installed (opentelemetry)",
                "rows": [{"operation": "bound .inc()", "prometheus_client": 700.0,
                          "weir": 70.0, "otel": null}]}"#,
        );
        let (rows, lines) = python_rows(&run);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "Python vs prometheus_client 0.26.0");
        assert_eq!(rows[0][4], "0.10x");
        assert_eq!(rows[1][0], "Python vs OpenTelemetry SDK");
        assert_eq!(rows[1][2], "not installed");
        assert_eq!(lines.len(), 1, "no OpenTelemetry line in the plot");
    }

    #[test]
    fn the_opentelemetry_sdk_column_is_a_ratio_per_operation_when_installed() {
        let run = run_of(
            r#"{"ops_per_run": 10, "repeat": 1, "versions": {"opentelemetry-sdk": "1.38.0"},
                "otel_missing": null,
                "rows": [{"operation": "Gauge.inc()", "prometheus_client": 600.0,
                          "weir": 60.0, "otel": 3000.0},
                         {"operation": "Gauge.set()", "prometheus_client": 600.0,
                          "weir": 60.0, "otel": null}]}"#,
        );
        let (rows, lines) = python_rows(&run);
        assert_eq!(rows[1][0], "Python vs OpenTelemetry SDK 1.38.0");
        assert_eq!(
            (rows[1][2].as_str(), rows[1][4].as_str()),
            ("3000", "0.02x")
        );
        assert_eq!(rows[3][2], "no such instrument");
        assert_eq!(lines[1].points, vec![(1.0, 0.02)]);
    }
}
