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
    let (config, source) = match &path {
        Some(p) => (Config::from_file(p)?, p.display().to_string()),
        None => (Config::embedded_default(), "embedded default".to_owned()),
    };
    logging::init(&config.log)?;
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
