//! Process-wide log setup: tracing-subscriber writing text or JSON lines to standard
//! error.
//!
//! Owns: the `[log]` section ([`LogConfig`]: schema, defaults, validation), choosing
//! the filter (`RUST_LOG` over `[log] level`) and the line format.
//! Must never: write to standard output (it belongs to commands such as
//! `weir --print-default-config`), or be installed twice in one process.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::{Step, keys};

/// `[log]`: what the daemon logs and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`info,weir_collector=debug`).
    /// `RUST_LOG`, when set, overrides it. Default `info`.
    pub level: String,
    /// Line format. Default [`LogFormat::Text`].
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl LogConfig {
    /// Checks the section; on error returns the key inside it (`level`) and the
    /// reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        if self.level.trim().is_empty() {
            return Err((keys(&["level"]), "must not be empty".to_owned()));
        }
        if let Err(e) = EnvFilter::try_new(&self.level) {
            return Err((
                keys(&["level"]),
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or filter: {e}",
                    self.level
                ),
            ));
        }
        Ok(())
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("RUST_LOG={value:?} is not a valid log filter: {reason}")]
    BadRustLog {
        /// The variable's value.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// `[log] level` is not a valid filter (normally caught by config validation).
    #[error("`log.level` {value:?} is not a valid log filter: {reason}")]
    BadLevel {
        /// The configured value.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadySet(String),
}

/// The filter in effect: `RUST_LOG` when set and not empty, else `[log] level`.
/// Returns the filter and where it came from (`"RUST_LOG"` or `"log.level"`).
///
/// # Errors
/// [`LoggingError::BadRustLog`] or [`LoggingError::BadLevel`] for a filter that does
/// not parse.
pub fn filter(config: &LogConfig) -> Result<(EnvFilter, &'static str), LoggingError> {
    let (value, source) = filter_text(config);
    EnvFilter::try_new(&value)
        .map(|f| (f, source))
        .map_err(|e| match source {
            "RUST_LOG" => LoggingError::BadRustLog {
                value,
                reason: e.to_string(),
            },
            _ => LoggingError::BadLevel {
                value,
                reason: e.to_string(),
            },
        })
}

/// The filter text in effect and where it came from: `RUST_LOG` when set and not
/// empty, else `[log] level` (`"log.level"`).
pub fn filter_text(config: &LogConfig) -> (String, &'static str) {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => (value, "RUST_LOG"),
        _ => (config.level.clone(), "log.level"),
    }
}

/// Installs the global subscriber for `config`. Returns where the filter came from.
///
/// # Errors
/// See [`filter`]; [`LoggingError::AlreadySet`] on a second call.
pub fn init(config: &LogConfig) -> Result<&'static str, LoggingError> {
    let (filter, source) = filter(config)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|e| LoggingError::AlreadySet(e.to_string()))?;
    Ok(source)
}
