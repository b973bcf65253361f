//! weir's own metrics and status: every stage registers what it reports, and the
//! admin API renders whatever is registered.
//!
//! A stage (a source, the aggregator, a pipeline) implements [`StageMetrics`]: it
//! appends its `weir_*` families to a [`MetricsPage`] and may add fields to
//! `GET /status`. The daemon registers each stage in the process's [`Telemetry`] when
//! it starts it (a reload may replace an entry), so adding a stage never means
//! editing the admin API.
//!
//! Owns: the text-format writer of self-metrics (names, HELP, TYPE, label escaping)
//! and the registry. Must never: take a lock that a stage holds across I/O (stages
//! render from atomics or snapshots; the registry's own lock is held only to clone
//! the list), or render the same family twice.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at zero with the process); the name ends in `_total`.
    Counter,
    /// Any value.
    Gauge,
}

/// The self-metrics page being written, in the Prometheus text format 0.0.4.
#[derive(Debug, Default)]
pub struct MetricsPage {
    text: String,
}

impl MetricsPage {
    /// An empty page.
    pub fn new() -> MetricsPage {
        MetricsPage::default()
    }

    /// Appends one family: `HELP`, `TYPE` and one line per sample. `labels` of a
    /// sample is `""` or a rendered label set (see [`labels`]).
    pub fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.text, "{name}{labels} {v}");
        }
    }

    /// Appends a family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help, [(String::new(), value)]);
    }

    /// The page's text.
    pub fn into_string(self) -> String {
        self.text
    }
}

/// A rendered label set, `{a="x",b="y"}`, values escaped for the text format (as the
/// aggregated series' page writes them: [`weir_core::key::write_labels`]); every caller
/// passes at least one label.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    // Writing to a `String` cannot fail.
    let _ = weir_core::key::write_labels(&mut s, pairs.iter().copied());
    s
}

/// What one stage reports.
pub trait StageMetrics: Send + Sync {
    /// Appends this stage's families to `page`.
    fn render(&self, page: &mut MetricsPage);

    /// This stage's fields of `GET /status` (top-level keys of the JSON object).
    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        Vec::new()
    }
}

/// The registry of stages that report, in registration order.
#[derive(Default)]
pub struct Telemetry {
    stages: Mutex<Vec<(&'static str, Arc<dyn StageMetrics>)>>,
}

impl Telemetry {
    /// An empty registry.
    pub fn new() -> Telemetry {
        Telemetry::default()
    }

    /// Registers `stage` under `name`, replacing an earlier registration of that name.
    pub fn register(&self, name: &'static str, stage: Arc<dyn StageMetrics>) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        match stages.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = stage,
            None => stages.push((name, stage)),
        }
    }

    /// The registered stages (cloned, so rendering holds no lock).
    fn stages(&self) -> Vec<Arc<dyn StageMetrics>> {
        self.stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Every stage's families, in registration order.
    pub fn render(&self, page: &mut MetricsPage) {
        for stage in self.stages() {
            stage.render(page);
        }
    }

    /// Every stage's `/status` fields, into `object`.
    pub fn status(&self, object: &mut serde_json::Map<String, serde_json::Value>) {
        for stage in self.stages() {
            for (key, value) in stage.status() {
                object.insert(key.to_owned(), value);
            }
        }
    }
}

/// The standard `process_*` metrics of Prometheus client libraries, read from
/// `/proc/self` (Linux); left out where the file is not there.
pub struct ProcessMetrics {
    /// When the process started (for `process_start_time_seconds`).
    pub started: Instant,
}

impl StageMetrics for ProcessMetrics {
    fn render(&self, page: &mut MetricsPage) {
        // USER_HZ, the unit of /proc times: 100 on every Linux architecture weir runs on.
        const TICKS_PER_SECOND: f64 = 100.0;
        page.single(
            "weir_uptime_seconds",
            Kind::Gauge,
            "Seconds since weir started.",
            self.started.elapsed().as_secs_f64(),
        );
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) in parentheses.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")";
            // vsize is field 23 (21 after ")").
            let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                page.single(
                    "process_cpu_seconds_total",
                    Kind::Counter,
                    "Total user and system CPU time spent in seconds.",
                    (u + s) / TICKS_PER_SECOND,
                );
            }
            if let Some(v) = num(20) {
                page.single(
                    "process_virtual_memory_bytes",
                    Kind::Gauge,
                    "Virtual memory size in bytes.",
                    v,
                );
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(kib) = rss_kib {
                page.single(
                    "process_resident_memory_bytes",
                    Kind::Gauge,
                    "Resident memory size in bytes.",
                    kib * 1024.0,
                );
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            page.single(
                "process_open_fds",
                Kind::Gauge,
                "Number of open file descriptors.",
                fds.count() as f64,
            );
        }
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        if let Some(max) = max_fds {
            page.single(
                "process_max_fds",
                Kind::Gauge,
                "Maximum number of open file descriptors.",
                max,
            );
        }
        let start = std::time::SystemTime::now()
            .checked_sub(self.started.elapsed())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        page.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since the Unix epoch in seconds.",
            start,
        );
    }

    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            (
                "uptime_seconds",
                self.started.elapsed().as_secs_f64().into(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);

    impl StageMetrics for Fixed {
        fn render(&self, page: &mut MetricsPage) {
            page.single("weir_fixed", Kind::Gauge, "A value.", self.0);
        }
        fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
            vec![("fixed", self.0.into())]
        }
    }

    #[test]
    fn a_registration_under_the_same_name_replaces_the_earlier_one() {
        let t = Telemetry::new();
        t.register("a", Arc::new(Fixed(1.0)));
        t.register("b", Arc::new(Fixed(2.0)));
        t.register("a", Arc::new(Fixed(3.0)));
        let mut page = MetricsPage::new();
        t.render(&mut page);
        let text = page.into_string();
        assert_eq!(text.matches("# TYPE weir_fixed gauge").count(), 2);
        assert!(text.contains("weir_fixed 3\n") && text.contains("weir_fixed 2\n"));
        assert!(!text.contains("weir_fixed 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("target", "http://h/\"x\"\\\n"), ("b", "y")]),
            r#"{target="http://h/\"x\"\\\n",b="y"}"#
        );
    }
}
