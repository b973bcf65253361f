//! The `weir` binary: command-line parsing and wiring. Everything it runs lives in the
//! `weir_collector` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_collector::config::Config;
use weir_collector::daemon::{Daemon, StopSignals};
use weir_collector::{DEFAULT_CONFIG_TOML, logging};

/// weir: a metrics collector. Runs the daemon with the given config (or the embedded
/// defaults).
#[derive(Debug, Parser)]
#[command(name = "weir", version)]
struct Cli {
    /// Config file (TOML). Without it, the embedded defaults are used.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the embedded default config (with comments on every key) and exit.
    #[arg(long, conflicts_with = "config")]
    print_default_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: prints "config OK" and exits 0, or prints the error
    /// (naming the key) and exits 1.
    Validate {
        /// The config file to check.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Probe a running weir: GET its admin `/health` over plain HTTP; exits 0 on a
    /// 2xx, 1 otherwise (the container image's HEALTHCHECK; no curl needed).
    Health {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8686/health")]
        url: String,
        /// How long the whole probe may take.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        if cli.command.is_some() {
            eprintln!("weir: --print-default-config takes no subcommand");
            return ExitCode::from(2);
        }
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Validate { config }) => {
            let Some(path) = config.or(cli.config) else {
                eprintln!("weir: validate needs --config FILE");
                return ExitCode::from(2);
            };
            match Config::from_file(&path)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    c.check_security_files()?;
                    c.check_listener_tls_files()?;
                    Ok(c)
                }) {
                Ok(_) => {
                    println!("config OK");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Health { url, timeout }) => {
            match weir_collector::health::probe(&url, timeout) {
                Ok(status) => {
                    println!("healthy: {status}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match run(cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Once logging is up, errors go through it (so JSON logs stay JSON).
                if tracing::dispatcher::has_been_set() {
                    tracing::error!("weir failed: {e:#}");
                } else {
                    eprintln!("weir: error: {e:#}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

/// Loads the config, sets up logging and runs the daemon until SIGINT/SIGTERM.
fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread's arena follows the cap.
    let arenas = limit_malloc_arenas();
    let (config, source) = match &path {
        Some(p) => (Config::from_file(p)?, p.display().to_string()),
        None => (Config::embedded_default(), "embedded default".to_owned()),
    };
    logging::init(&config.log)?;
    if let Some(n) = arenas {
        tracing::debug!(
            arenas = n,
            "malloc arenas capped (MALLOC_ARENA_MAX overrides)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-rt")
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let signals = StopSignals::install().context("cannot install signal handlers")?;
        let mut daemon = Daemon::new(config, source);
        if let Some(p) = path {
            daemon = daemon.with_config_path(p);
        }
        daemon.run(signals.recv()).await?;
        Ok(())
    })
}

/// How many malloc arenas the daemon asks glibc for: none (glibc's own choice) when
/// the operator set `MALLOC_ARENA_MAX`, else the CPU count clamped to 2..=4.
///
/// glibc gives a thread that finds the arenas busy one of its own, up to 8 per CPU,
/// and memory freed in one arena is not reused by another. weir's blocking pool
/// (scrape bodies, flushes, encoding, WAL appends) runs tens of threads, so with the
/// default a daemon scraping 1,000 targets grew from ~110 to ~317 MiB over 7 minutes
/// with a constant 100k series; with 2 arenas it peaked at 161 MiB for the same CPU
/// (side by side, `benches/README.md`, "The scrape path"). The hot paths allocate
/// nothing per point and each thread keeps a small cache of its own (glibc's tcache),
/// so few arenas cost no measurable contention.
fn malloc_arenas(env: Option<std::ffi::OsString>, cpus: usize) -> Option<i32> {
    if env.is_some() {
        return None;
    }
    Some(i32::try_from(cpus.clamp(2, 4)).unwrap_or(2))
}

/// Applies [`malloc_arenas`] (glibc only); returns the cap set, if any.
fn limit_malloc_arenas() -> Option<i32> {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let n = malloc_arenas(std::env::var_os("MALLOC_ARENA_MAX"), cpus)?;
    set_arena_max(n).then_some(n)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: i32) -> bool {
    /// `M_ARENA_MAX` in glibc's `<malloc.h>`.
    const M_ARENA_MAX: std::ffi::c_int = -8;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: `mallopt` is glibc's documented, thread-safe tuning call; M_ARENA_MAX
    // with a positive value only bounds how many arenas later threads may create.
    unsafe { mallopt(M_ARENA_MAX, n) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arenas_follow_the_cpus_within_two_to_four_unless_the_operator_chose() {
        assert_eq!(malloc_arenas(None, 1), Some(2));
        assert_eq!(malloc_arenas(None, 2), Some(2));
        assert_eq!(malloc_arenas(None, 3), Some(3));
        assert_eq!(malloc_arenas(None, 64), Some(4));
        assert_eq!(malloc_arenas(Some("8".into()), 2), None);
    }

    #[test]
    fn glibc_takes_the_cap() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(set_arena_max(2));
        }
    }
}
