//! Results: one [`Section`] per scenario, written as JSON (`results.json`), a
//! Markdown page (`results.md`) and SVG plots (plotters' SVG backend, no fonts or
//! bitmaps needed).
//!
//! Owns: the output formats. Must never: round a number it stores in JSON (tables
//! round; the JSON keeps what was measured).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

/// One line of a plot: a label and its (x, y) points.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A plot to draw for a section.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    /// File name (`<name>.svg`).
    pub name: String,
    /// Title.
    pub title: String,
    /// X axis caption.
    pub x: String,
    /// Y axis caption.
    pub y: String,
    /// Log-scaled x axis.
    pub log_x: bool,
    /// The lines.
    pub lines: Vec<Line>,
}

/// What one scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Section {
    /// Subcommand name.
    pub scenario: String,
    /// Heading.
    pub title: String,
    /// How it ran (settings, receive buffers, what was skipped and why).
    pub notes: Vec<String>,
    /// Table header.
    pub columns: Vec<String>,
    /// Table rows (formatted).
    pub rows: Vec<Vec<String>>,
    /// Every measurement, unrounded.
    pub data: serde_json::Value,
    /// Plots.
    pub plots: Vec<Plot>,
    /// Exact-delivery failures (weir losing a point where it must not): the run
    /// exits non-zero when any section has one.
    pub failures: Vec<String>,
}

impl Section {
    /// The section as Markdown: heading, notes, table.
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n`weir-bench {}`\n\n", self.title, self.scenario);
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        if !self.columns.is_empty() {
            s.push_str(&format!("| {} |\n", self.columns.join(" | ")));
            s.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
            for r in &self.rows {
                s.push_str(&format!("| {} |\n", r.join(" | ")));
            }
            s.push('\n');
        }
        for p in &self.plots {
            s.push_str(&format!("![{}]({}.svg)\n\n", p.title, p.name));
        }
        for f in &self.failures {
            s.push_str(&format!("**FAILED:** {f}\n\n"));
        }
        s
    }
}

/// Machine facts for the page's header.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// Model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// 1-minute load average when the run started and ended.
    pub load_before: String,
    /// Same, at the end.
    pub load_after: String,
    /// `git describe --always --dirty`.
    pub commit: String,
    /// When it started (UTC, from `date -u`).
    pub started: String,
}

impl Machine {
    /// Reads what it can.
    pub fn now() -> Machine {
        let cmd = |c: &str, args: &[&str]| {
            std::process::Command::new(c)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            load_before: load(),
            load_after: String::new(),
            commit: cmd("git", &["describe", "--always", "--dirty"]),
            started: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// `/proc/loadavg`'s first three fields.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `results.json`, `results.md` and every plot into `dir`.
pub fn write_all(dir: &Path, machine: &Machine, sections: &[Section]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::json!({ "machine": machine, "sections": sections });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut md = format!(
        "# weir-bench results\n\n{} x {}, commit {}, started {}, load average {} before, {} after.\n\n",
        machine.cpus,
        machine.cpu_model,
        machine.commit,
        machine.started,
        machine.load_before,
        machine.load_after
    );
    for s in sections {
        md.push_str(&s.markdown());
        for p in &s.plots {
            plot(&dir.join(format!("{}.svg", p.name)), p)?;
        }
    }
    std::fs::write(dir.join("results.md"), md)?;
    Ok(())
}

/// Draws one line plot as SVG.
pub fn plot(path: &Path, p: &Plot) -> Result<()> {
    let pts = p.lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(&p.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(p.x.as_str())
                .y_desc(p.y.as_str())
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (i, l) in p.lines.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .label(l.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(l.points.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }};
    }
    if p.log_x && x0 > 0.0 {
        draw!(
            b.build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..y1)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
        );
    } else {
        draw!(
            b.build_cartesian_2d(x0..x1, 0.0..y1)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
        );
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// `n` with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// Bytes as MiB with one decimal.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}
