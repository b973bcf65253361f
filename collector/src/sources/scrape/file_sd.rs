//! Scrape targets from files, in Prometheus' `file_sd_configs` format: JSON (`.json`)
//! or YAML (`.yml`, `.yaml`) lists of target groups,
//!
//! ```json
//! [{"targets": ["10.0.0.1:9100", "10.0.0.2:9100"], "labels": {"env": "prod"}}]
//! ```
//!
//! each target a `host[:port]` scraped at `<scheme>://<host[:port]><metrics_path>`. The
//! labels go on every series of the group's targets; `job` overrides the entry's job,
//! `__scheme__` and `__metrics_path__` override its scheme and path, and other labels
//! starting with `__` are dropped (as Prometheus drops them after relabelling).
//!
//! Owns: the `[[scrape.file_sd]]` entries ([`FileSdConfig`]), finding the files their
//! patterns match, reading them, and the targets they give ([`FileSd`]). Files are
//! polled every `refresh_interval` and read again only when their modification time
//! or size changed. Must never: drop the targets of a file that became unreadable or
//! invalid (as Prometheus, they stay until the file is valid again or gone), or stop
//! at a bad group or target (it is skipped, logged and counted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tracing::{info, warn};

use super::ScrapeTarget;
use crate::config::{MIN_FLUSH_INTERVAL, Step, fmt_duration, keys};
use crate::tls::client::ClientSecurityConfig;

/// Shortest accepted `refresh_interval`.
const MIN_REFRESH: Duration = Duration::from_millis(50);

/// One `[[scrape.file_sd]]` entry: files of target groups and how to scrape them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    /// File paths; the last component may hold `*` and `?` wildcards
    /// (`/etc/weir/targets/*.json`). Required, at least one.
    pub files: Vec<String>,
    /// How often the files are checked for changes. Default 30 s.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// The `job` label (a group's `job` label overrides it). Default `"file_sd"`.
    #[serde(default = "default_job")]
    pub job: String,
    /// How often each target is scraped. Default 15 s.
    #[serde(default = "super::default_scrape_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one scrape may take. Default 10 s; at most `interval`.
    #[serde(default = "super::default_scrape_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `http` or `https` (a group's `__scheme__` label overrides it). Default `http`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// The path scraped (a group's `__metrics_path__` label overrides it). Default
    /// `/metrics`.
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    /// As for `[[scrape.targets]]`.
    #[serde(default)]
    pub honor_labels: bool,
    /// `tls`, `basic_auth`, `bearer_token`, `bearer_token_file`,
    /// `headers_from_files`, for every target of the files, as for
    /// `[[scrape.targets]]` (`tls` applies to the `https` ones).
    #[serde(flatten)]
    pub security: ClientSecurityConfig,
}

fn default_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_job() -> String {
    "file_sd".to_owned()
}

fn default_scheme() -> String {
    "http".to_owned()
}

fn default_metrics_path() -> String {
    "/metrics".to_owned()
}

impl FileSdConfig {
    /// Checks the entry; the key path is relative to the entry.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.files.is_empty() {
            return Err((keys(&["files"]), "needs at least one path".to_owned()));
        }
        for f in &self.files {
            let path = Path::new(f);
            let dir_has_wildcard = path
                .parent()
                .is_some_and(|d| d.to_string_lossy().contains(['*', '?']));
            if f.is_empty() || path.file_name().is_none() || dir_has_wildcard {
                return Err((
                    keys(&["files"]),
                    format!("{f:?}: a file path, with wildcards only in its last component"),
                ));
            }
        }
        if self.refresh_interval < MIN_REFRESH {
            return Err((
                keys(&["refresh_interval"]),
                format!("must be at least {}", fmt_duration(MIN_REFRESH)),
            ));
        }
        if self.interval < MIN_FLUSH_INTERVAL {
            return Err((
                keys(&["interval"]),
                format!("must be at least {}", fmt_duration(MIN_FLUSH_INTERVAL)),
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err((
                keys(&["timeout"]),
                "must be above 0 and at most the interval".to_owned(),
            ));
        }
        if !matches!(self.scheme.as_str(), "http" | "https") {
            return Err((
                keys(&["scheme"]),
                format!("{:?}: http or https", self.scheme),
            ));
        }
        self.security
            .validate()
            .map_err(|(key, reason)| (keys(&[key]), reason))?;
        if !self.metrics_path.starts_with('/') {
            return Err((keys(&["metrics_path"]), "must start with '/'".to_owned()));
        }
        Ok(())
    }
}

/// One target group of a file.
#[derive(Debug, Deserialize)]
struct TargetGroup {
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Why a file gave no targets.
#[derive(Debug, thiserror::Error)]
pub enum FileSdError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a list of target groups.
    #[error("{path} is not a list of target groups: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
}

/// The targets of one file's groups under `config`, and how many targets or groups
/// were skipped (a bad `host[:port]`, a bad label name, an unsupported scheme).
///
/// # Errors
/// [`FileSdError`] if the file cannot be read or parsed as a list of groups.
pub fn read_file(
    path: &Path,
    config: &FileSdConfig,
) -> Result<(Vec<ScrapeTarget>, u64), FileSdError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileSdError::Read {
        path: shown.clone(),
        source,
    })?;
    let groups: Vec<TargetGroup> = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| e.to_string()),
        _ => serde_yaml_ng::from_str::<Option<Vec<TargetGroup>>>(&text)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string()),
    }
    .map_err(|reason| FileSdError::Parse {
        path: shown,
        reason,
    })?;
    let mut targets = Vec::new();
    let mut skipped = 0;
    for group in groups {
        group_targets(&group, config, &mut targets, &mut skipped);
    }
    Ok((targets, skipped))
}

/// Turns one group into targets, counting what it skips.
fn group_targets(
    group: &TargetGroup,
    config: &FileSdConfig,
    out: &mut Vec<ScrapeTarget>,
    skipped: &mut u64,
) {
    let mut labels = BTreeMap::new();
    let (mut job, mut scheme, mut path) = (
        config.job.clone(),
        config.scheme.clone(),
        config.metrics_path.clone(),
    );
    for (k, v) in &group.labels {
        match k.as_str() {
            "job" => job = v.clone(),
            "__scheme__" => scheme = v.clone(),
            "__metrics_path__" => path = v.clone(),
            k if k.starts_with("__") => {}
            k if weir_core::key::is_valid_label_name(k) => {
                labels.insert(k.to_owned(), v.clone());
            }
            _ => {
                warn!(label = %k, "file_sd: a group with an invalid label name skipped");
                *skipped += group.targets.len().max(1) as u64;
                return;
            }
        }
    }
    if !matches!(scheme.as_str(), "http" | "https") || !path.starts_with('/') {
        warn!(%scheme, %path, "file_sd: a group with an unsupported scheme or path skipped");
        *skipped += group.targets.len().max(1) as u64;
        return;
    }
    for t in &group.targets {
        let url = format!("{scheme}://{t}{path}");
        // A target without a port gets the scheme's (the `instance` label says which).
        let ok = url.parse::<hyper::Uri>().is_ok_and(|u| {
            u.authority()
                .is_some_and(|a| !a.host().is_empty() && a.as_str() == t.as_str())
        });
        if !ok {
            warn!(target = %t, "file_sd: not a host[:port] target, skipped");
            *skipped += 1;
            continue;
        }
        out.push(ScrapeTarget {
            url,
            job: job.clone(),
            interval: config.interval,
            timeout: config.timeout,
            labels: labels.clone(),
            honor_labels: config.honor_labels,
            security: config.security.clone(),
        });
    }
}

/// The files `pattern` matches, sorted (none if its directory cannot be listed).
fn matching_files(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return if path.is_file() {
            vec![path.to_owned()]
        } else {
            Vec::new()
        };
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| weir_core::encode::glob_matches(name, n))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// What a file gave when it was last read.
struct Known {
    /// Modification time and size when read: a change of either reads it again.
    stamp: Option<(SystemTime, u64)>,
    targets: Vec<ScrapeTarget>,
}

/// Counters of file discovery since start (all `Relaxed` reads for reporting).
#[derive(Debug, Default)]
pub struct FileSdCounters {
    /// Files read (first time or after a change).
    pub reads: std::sync::atomic::AtomicU64,
    /// Reads that failed (unreadable or not a list of groups).
    pub read_errors: std::sync::atomic::AtomicU64,
    /// Targets or groups skipped as invalid.
    pub skipped_targets: std::sync::atomic::AtomicU64,
    /// Targets the files give now.
    pub targets: std::sync::atomic::AtomicU64,
}

/// The targets the `[[scrape.file_sd]]` entries find, kept up to date by
/// [`FileSd::refresh`].
#[derive(Default)]
pub struct FileSd {
    configs: Vec<FileSdConfig>,
    /// Per (entry index, file).
    known: BTreeMap<(usize, PathBuf), Known>,
    /// Counters, shared with the self-metrics.
    pub counters: std::sync::Arc<FileSdCounters>,
}

impl FileSd {
    /// Discovery for `configs` (nothing read yet).
    pub fn new(configs: &[FileSdConfig]) -> FileSd {
        FileSd {
            configs: configs.to_vec(),
            ..FileSd::default()
        }
    }

    /// The entries it runs.
    pub fn configs(&self) -> &[FileSdConfig] {
        &self.configs
    }

    /// Checks every file; reads new and changed ones, forgets removed ones. A file
    /// that cannot be read or parsed keeps the targets it gave before. Returns true
    /// if the targets changed. Blocking (file I/O).
    pub fn refresh(&mut self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mut seen = Vec::new();
        let mut changed = false;
        for (i, config) in self.configs.iter().enumerate() {
            for pattern in &config.files {
                for path in matching_files(pattern) {
                    let stamp = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    let key = (i, path.clone());
                    seen.push(key.clone());
                    let current = self.known.get(&key);
                    if current.is_some_and(|k| k.stamp.is_some() && k.stamp == stamp) {
                        continue;
                    }
                    self.counters.reads.fetch_add(1, Relaxed);
                    match read_file(&path, config) {
                        Ok((targets, skipped)) => {
                            self.counters.skipped_targets.fetch_add(skipped, Relaxed);
                            if current.is_none_or(|k| k.targets != targets) {
                                changed = true;
                                info!(
                                    file = %path.display(),
                                    targets = targets.len(),
                                    skipped,
                                    "file_sd: targets read"
                                );
                            }
                            self.known.insert(key, Known { stamp, targets });
                        }
                        Err(e) => {
                            self.counters.read_errors.fetch_add(1, Relaxed);
                            warn!(error = %e, "file_sd: file refused; its previous targets stay");
                            let targets = current.map(|k| k.targets.clone()).unwrap_or_default();
                            self.known.insert(key, Known { stamp, targets });
                        }
                    }
                }
            }
        }
        let before = self.known.len();
        self.known.retain(|k, _| seen.contains(k));
        if self.known.len() != before {
            changed = true;
            info!(
                files = before - self.known.len(),
                "file_sd: files gone, their targets stop"
            );
        }
        self.counters.targets.store(
            self.known.values().map(|k| k.targets.len() as u64).sum(),
            Relaxed,
        );
        changed
    }

    /// Every target the files give, in entry and file order.
    pub fn targets(&self) -> Vec<ScrapeTarget> {
        self.known
            .values()
            .flat_map(|k| k.targets.iter().cloned())
            .collect()
    }

    /// The shortest refresh interval of the entries (none without entries).
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.configs.iter().map(|c| c.refresh_interval).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::testing::TempDir;

    fn config(files: &[&str]) -> FileSdConfig {
        FileSdConfig {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            refresh_interval: Duration::from_millis(100),
            job: "nodes".to_owned(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            scheme: "http".to_owned(),
            metrics_path: "/metrics".to_owned(),
            honor_labels: false,
            security: ClientSecurityConfig::default(),
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        TempDir::new(&format!("file-sd-{tag}"))
    }

    #[test]
    fn json_and_yaml_groups_become_targets_with_their_labels() {
        let dir = temp_dir("formats");
        let json = dir.join("a.json");
        std::fs::write(
            &json,
            r#"[{"targets": ["10.0.0.1:9100", "10.0.0.2:9100"], "labels": {"env": "prod", "job": "node", "__meta_x": "y"}},
                {"targets": ["10.0.0.3:8080"], "labels": {"__metrics_path__": "/stats"}}]"#,
        )
        .unwrap();
        let yaml = dir.join("b.yml");
        std::fs::write(
            &yaml,
            "- targets: ['10.0.0.4:9100']\n  labels:\n    rack: r1\n",
        )
        .unwrap();
        let c = config(&[]);
        let (t, skipped) = read_file(&json, &c).unwrap();
        assert_eq!(skipped, 0);
        let urls: Vec<_> = t.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:9100/metrics",
                "http://10.0.0.2:9100/metrics",
                "http://10.0.0.3:8080/stats"
            ]
        );
        assert_eq!(t[0].job, "node");
        assert_eq!(t[0].labels.get("env").map(String::as_str), Some("prod"));
        assert!(!t[0].labels.contains_key("__meta_x") && !t[0].labels.contains_key("job"));
        assert_eq!(t[2].job, "nodes");
        let (t, _) = read_file(&yaml, &c).unwrap();
        assert_eq!(t[0].url, "http://10.0.0.4:9100/metrics");
        assert_eq!(t[0].labels.get("rack").map(String::as_str), Some("r1"));
    }

    #[test]
    fn bad_targets_and_groups_are_skipped_and_counted_bad_files_refused() {
        let dir = temp_dir("bad");
        let file = dir.join("t.json");
        std::fs::write(
            &file,
            r#"[{"targets": ["ok:1", "no-port", "a/b:2"]},
                {"targets": ["x:1", "y:2"], "labels": {"bad-name": "v"}},
                {"targets": ["z:1"], "labels": {"__scheme__": "ftp"}},
                {"targets": ["s:1"], "labels": {"__scheme__": "https"}}]"#,
        )
        .unwrap();
        let (t, skipped) = read_file(&file, &config(&[])).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].url, "http://ok:1/metrics");
        assert_eq!(t[1].url, "http://no-port/metrics", "the scheme's port");
        assert_eq!(t[2].url, "https://s:1/metrics");
        assert_eq!(skipped, 1 + 2 + 1);
        std::fs::write(&file, "{not json").unwrap();
        assert!(matches!(
            read_file(&file, &config(&[])),
            Err(FileSdError::Parse { .. })
        ));
    }

    #[test]
    fn refresh_follows_new_changed_broken_and_removed_files() {
        let dir = temp_dir("refresh");
        let pattern = dir.join("*.json").display().to_string();
        let mut sd = FileSd::new(&[config(&[&pattern])]);
        assert!(!sd.refresh(), "no file yet");
        let a = dir.join("a.json");
        std::fs::write(&a, r#"[{"targets": ["a:1"]}]"#).unwrap();
        std::fs::write(dir.join("ignored.txt"), r#"[{"targets": ["t:1"]}]"#).unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.targets().len(), 1);
        assert!(!sd.refresh(), "unchanged: not read again");
        // A change of size is seen even within one mtime tick.
        std::fs::write(&a, r#"[{"targets": ["a:1", "a:2"]}]"#).unwrap();
        assert!(sd.refresh());
        assert_eq!(sd.targets().len(), 2);
        // Broken: the previous targets stay.
        std::fs::write(&a, "[{").unwrap();
        assert!(!sd.refresh());
        assert_eq!(sd.targets().len(), 2);
        assert_eq!(
            sd.counters
                .read_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        std::fs::remove_file(&a).unwrap();
        assert!(sd.refresh());
        assert!(sd.targets().is_empty());
    }
}
