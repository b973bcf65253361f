//! Scenario 6: in-process instrumentation. Wraps the two existing comparisons, does
//! not reimplement them: `ffi/bench/compare.cpp` (weir's C ABI vs prometheus-cpp 1.0.1
//! in one process; built here with g++ against `target/release/libweir_ffi.a`) and
//! `benches/python/bench_clients.py` (weir's Python package vs prometheus_client and
//! the OpenTelemetry SDK), and turns their tables into rows.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Settings;
use crate::harness::process::WorkDir;
use crate::harness::report::{Line, Plot, Section};

/// A row of compare.cpp: operation, prometheus-cpp ns, weir ns.
type CppRow = (String, f64, f64);
/// A row of bench_clients.py: operation, prometheus_client ns, weir ns, OpenTelemetry ns.
type PyRow = (String, f64, f64, Option<f64>);

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

/// Runs bench_clients.py with `python`; rows `(operation, prometheus_client ns, weir
/// ns, otel ns)`.
fn python(root: &Path, python: &Path, quick: bool) -> Result<Vec<PyRow>> {
    let mut c = Command::new(python);
    c.arg(root.join("benches/python/bench_clients.py"));
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
    // Rows: an operation name (may contain spaces) then numbers: prom, weir, ratio (`0.12x`), [otel].
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let toks: Vec<&str> = l.split_whitespace().collect();
            let x = toks
                .iter()
                .position(|t| t.ends_with('x') && t[..t.len() - 1].parse::<f64>().is_ok())?;
            if x < 3 {
                return None;
            }
            let prom = toks[x - 2].parse().ok()?;
            let weir = toks[x - 1].parse().ok()?;
            let otel = toks.get(x + 1).and_then(|t| t.parse().ok());
            Some((toks[..x - 2].join(" "), prom, weir, otel))
        })
        .collect())
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
    if let Some(py) = python_bin {
        match python(&root, py, s.quick) {
            Ok(rows) => {
                sec.notes.push(format!(
                    "benches/python/bench_clients.py with {} (best of repeats)",
                    py.display()
                ));
                for (op, prom, weir, otel) in &rows {
                    sec.rows.push(vec![
                        "Python vs prometheus_client".into(),
                        op.clone(),
                        format!("{prom:.0}"),
                        format!("{weir:.0}"),
                        format!("{:.2}x", weir / prom),
                    ]);
                    if let Some(o) = otel {
                        sec.rows.push(vec![
                            "Python vs OpenTelemetry SDK".into(),
                            op.clone(),
                            format!("{o:.0}"),
                            format!("{weir:.0}"),
                            format!("{:.2}x", weir / o),
                        ]);
                    }
                }
                sec.data["python"] = json!(rows);
            }
            Err(e) => sec.notes.push(format!("Python comparison skipped: {e:#}")),
        }
    } else {
        sec.notes.push("Python comparison skipped: pass --python <interpreter with weir and prometheus_client>".into());
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
    Ok(sec)
}
