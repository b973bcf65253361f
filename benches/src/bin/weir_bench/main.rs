//! `weir-bench`: one command that measures weir and the collectors people would pick
//! instead, side by side (see BENCHMARKS.md at the repository root).
//!
//! Every subcommand starts what it measures on free 127.0.0.1 ports, writes
//! `results.json`, `results.md` and SVG plots into `--out`, prints the Markdown, and
//! exits non-zero if weir lost a point where it must not.

mod core_memory;
mod statsd_load;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use weir_benches::harness::http_server::TargetFormat;
use weir_benches::harness::peers::{DaemonOptions, StatsdPeerKind};
use weir_benches::harness::report::{self, Machine, Section};
use weir_benches::harness::scenario::{self, Settings, scrape::Scraper, statsd_rate::Probing};

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "weir vs its peers, side by side",
    version
)]
struct Cli {
    /// Small counts and short runs: a first look, or the smoke test.
    #[arg(long, global = true)]
    quick: bool,
    /// The weir binary under test [default: target/release/weir].
    #[arg(long, global = true)]
    weir: Option<PathBuf>,
    /// Where results.json, results.md and the plots go.
    #[arg(long, global = true, default_value = "target/weir-bench")]
    out: PathBuf,
    /// StatsD sender threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// No progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How the StatsD daemons of scenarios 1 and 2 run (every one the same).
#[derive(clap::Args, Clone, Copy)]
struct DaemonArgs {
    /// Every daemon's flush interval, seconds: weir's `flush_interval`, collectd's
    /// `Interval`, etsy StatsD's `flushInterval` [default 1; 10 is the peers'
    /// production default].
    #[arg(long)]
    flush_secs: Option<u64>,
    /// Kill a daemon whose RSS passes this many MiB and report it as "stopped at cap"
    /// [default: 4096, or a quarter of MemTotal if less].
    #[arg(long)]
    rss_cap_mib: Option<u64>,
}

impl DaemonArgs {
    fn options(&self) -> DaemonOptions {
        let mut o = DaemonOptions::defaults();
        if let Some(f) = self.flush_secs {
            o.flush_interval = Duration::from_secs(f.max(1));
        }
        if let Some(m) = self.rss_cap_mib {
            o.rss_cap_bytes = m << 20;
        }
        o
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the peers (runs benches/setup-peers.sh).
    Setup,
    /// 1. StatsD: highest rate at 0 % loss per daemon and series count.
    StatsdRate {
        /// Series counts [default: 10000,100000,1000000; quick: 1000].
        #[arg(long, value_delimiter = ',')]
        series: Vec<usize>,
        /// Daemons [default: every installed one].
        #[arg(long, value_delimiter = ',', value_enum)]
        peers: Vec<StatsdPeerKind>,
        /// Seconds each probe sends [default 5; quick 1].
        #[arg(long)]
        probe_secs: Option<u64>,
        /// Probes per daemon and series count, at most [default 9; quick 2].
        #[arg(long)]
        max_probes: Option<usize>,
        /// Seconds a daemon's totals get to settle after a probe before what they do
        /// not show counts as lost [default 30, at least 4 flush intervals; quick 10].
        #[arg(long)]
        settle_secs: Option<u64>,
        #[command(flatten)]
        daemons: DaemonArgs,
    },
    /// 2. Memory (RSS) at N active StatsD series per daemon.
    Memory {
        /// Series counts [default: 10000,100000,1000000; quick: 1000].
        #[arg(long, value_delimiter = ',')]
        series: Vec<usize>,
        /// Daemons [default: every installed one].
        #[arg(long, value_delimiter = ',', value_enum)]
        peers: Vec<StatsdPeerKind>,
        #[command(flatten)]
        daemons: DaemonArgs,
    },
    /// weir only, fixed StatsD rates (DogStatsD tags), several binaries side by side:
    /// loss, CPU per line and RSS (the issue 13 scale tables).
    StatsdLoad {
        /// Offered rates, lines/s.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "500000,1000000,2000000,4000000"
        )]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Distinct series (tag values).
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// weir binaries to run each rate against, in turn [default: --weir].
        #[arg(long, value_delimiter = ',')]
        bins: Vec<PathBuf>,
        /// Send every series once first and leave it out of the counts (steady state).
        #[arg(long)]
        warmup: bool,
        /// `receivers.statsd.workers` for every binary [default: not set, the
        /// binary's default; binaries without the setting refuse it].
        #[arg(long)]
        statsd_workers: Option<usize>,
        /// Percent of the series sent as gauges instead of counters, 0 to 100 (gauge
        /// lines keep their order across StatsD workers, so they can wait where
        /// counters do not).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        gauges: u8,
        /// Series that come and go: every line sent is a new series, and the daemon
        /// evicts a series after this many seconds without updates (`series_ttl`);
        /// `--series` and `--warmup` do not apply. The RSS column then shows whether
        /// memory follows the live series (rate x TTL) or grows with every series seen.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        churn: Option<u64>,
    },
    /// weir-core's aggregator alone: heap bytes per series (counting allocator).
    MemoryCore {
        /// Series counts [default: 100000 1000000].
        counts: Vec<usize>,
    },
    /// 3. OTLP Export latency while 100k series flush, vs a no-op server.
    Otlp {
        /// Exports per server [default 2000; quick 50].
        #[arg(long)]
        exports: Option<usize>,
    },
    /// 4. Scrape N targets x M series, forward by remote write: weir, vmagent, Prometheus agent.
    Scrape {
        /// Targets [default 1000; quick 5].
        #[arg(long)]
        targets: Option<usize>,
        /// Series per target [default 100; quick 10].
        #[arg(long)]
        series: Option<usize>,
        /// Scrape interval, seconds [default 10; quick 1].
        #[arg(long)]
        interval_secs: Option<u64>,
        /// How long each scraper runs, seconds [default 60; quick 3].
        #[arg(long)]
        duration_secs: Option<u64>,
        /// Scrapers [default: every installed one].
        #[arg(long, value_delimiter = ',', value_enum)]
        scrapers: Vec<Scraper>,
        /// The targets' body format: `protobuf` answers a scraper that asks for it
        /// (weir) in delimited protobuf and the others in text.
        #[arg(long, value_enum, default_value = "text")]
        format: TargetFormat,
    },
    /// 5. Remote-write backend outage mid-run: points lost, time to drain.
    Outage {
        /// Outage length, seconds [default 60; quick 3].
        #[arg(long)]
        outage_secs: Option<u64>,
    },
    /// 6. In-process: C ABI vs prometheus-cpp, Python vs prometheus_client / OpenTelemetry.
    InProcess {
        /// Python interpreter with `weir` and `prometheus_client` installed (and
        /// `opentelemetry-sdk` for its column; without it the column says "not
        /// installed").
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// A 100k-series flush to acknowledged by a real Prometheus (in-process pipeline).
    Pipeline {
        /// Rounds [default 5; quick 2].
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Every scenario, one after the other.
    All {
        /// Python interpreter for the in-process scenario.
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    weir_benches::harness::process::install_cleanup();
    let benches_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = benches_dir
        .parent()
        .context("benches/ has a parent")?
        .to_path_buf();
    if let Cmd::Setup = cli.cmd {
        let status = std::process::Command::new(benches_dir.join("setup-peers.sh")).status()?;
        if !status.success() {
            bail!("setup-peers.sh failed ({status})");
        }
        return Ok(());
    }
    if let Cmd::MemoryCore { counts } = &cli.cmd {
        core_memory::run(counts);
        return Ok(());
    }
    let weir_bin = cli
        .weir
        .clone()
        .unwrap_or_else(|| root.join("target/release/weir"));
    if let Cmd::StatsdLoad {
        rates,
        seconds,
        series,
        bins,
        warmup,
        statsd_workers,
        gauges,
        churn,
    } = &cli.cmd
    {
        let bins = if bins.is_empty() {
            vec![weir_bin]
        } else {
            bins.clone()
        };
        let run = statsd_load::Run {
            seconds: *seconds,
            series: *series,
            warmup: *warmup,
            workers: *statsd_workers,
            gauges: *gauges,
            churn_ttl: *churn,
        };
        statsd_load::run(rates, &run, &bins);
        return Ok(());
    }
    if !weir_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --locked -p weir-collector) or pass --weir",
            weir_bin.display()
        );
    }
    // Absolute: the processes run in their own temporary directories.
    let weir_bin = weir_bin.canonicalize()?;
    let s = Settings {
        quick: cli.quick,
        weir_bin,
        benches_dir,
        threads: cli.threads,
        progress: !cli.no_progress,
    };
    let counts = |v: &Vec<usize>| {
        if !v.is_empty() {
            v.clone()
        } else if s.quick {
            vec![1_000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        }
    };
    let statsd_peers = |v: &Vec<StatsdPeerKind>| {
        if v.is_empty() {
            StatsdPeerKind::ALL.to_vec()
        } else {
            v.clone()
        }
    };
    let mut machine = Machine::now();
    let secs = |o: &Option<u64>| o.map(Duration::from_secs);
    let sections: Vec<Section> = match &cli.cmd {
        Cmd::Setup | Cmd::MemoryCore { .. } | Cmd::StatsdLoad { .. } => Vec::new(),
        Cmd::StatsdRate {
            series,
            peers,
            probe_secs,
            max_probes,
            settle_secs,
            daemons,
        } => {
            let daemons = daemons.options();
            let mut probing = Probing::defaults(s.quick);
            // A peer flushing every 10 s needs more than 30 s to show a probe.
            probing.settle_limit = probing.settle_limit.max(daemons.flush_interval * 4);
            if let Some(d) = secs(probe_secs) {
                probing.probe_time = d;
            }
            if let Some(m) = max_probes {
                probing.max_probes = *m;
            }
            if let Some(d) = secs(settle_secs) {
                probing.settle_limit = d;
            }
            vec![scenario::statsd_rate::run(
                &s,
                &counts(series),
                &statsd_peers(peers),
                &probing,
                &daemons,
            )?]
        }
        Cmd::Memory {
            series,
            peers,
            daemons,
        } => vec![scenario::memory::run(
            &s,
            &counts(series),
            &statsd_peers(peers),
            &daemons.options(),
        )?],
        Cmd::Otlp { exports } => vec![scenario::otlp::run(&s, *exports)?],
        Cmd::Scrape {
            targets,
            series,
            interval_secs,
            duration_secs,
            scrapers,
            format,
        } => {
            let sc = if scrapers.is_empty() {
                Scraper::ALL.to_vec()
            } else {
                scrapers.clone()
            };
            vec![scenario::scrape::run(
                &s,
                *format,
                *targets,
                *series,
                secs(interval_secs),
                secs(duration_secs),
                &sc,
            )?]
        }
        Cmd::Outage { outage_secs } => vec![scenario::outage::run(&s, secs(outage_secs))?],
        Cmd::InProcess { python } => vec![scenario::in_process::run(&s, python.as_deref())?],
        Cmd::Pipeline { rounds } => vec![scenario::pipeline::run(&s, *rounds)?],
        Cmd::All { python } => {
            let mut all = Vec::new();
            let c = counts(&Vec::new());
            let p = StatsdPeerKind::ALL.to_vec();
            let d = DaemonOptions::defaults();
            type Step<'a> = (&'a str, Box<dyn Fn() -> Result<Section> + 'a>);
            let steps: Vec<Step> = vec![
                (
                    "statsd-rate",
                    Box::new(|| {
                        scenario::statsd_rate::run(&s, &c, &p, &Probing::defaults(s.quick), &d)
                    }),
                ),
                ("memory", Box::new(|| scenario::memory::run(&s, &c, &p, &d))),
                ("otlp", Box::new(|| scenario::otlp::run(&s, None))),
                (
                    "scrape",
                    Box::new(|| {
                        scenario::scrape::run(
                            &s,
                            TargetFormat::Text,
                            None,
                            None,
                            None,
                            None,
                            &Scraper::ALL,
                        )
                    }),
                ),
                ("outage", Box::new(|| scenario::outage::run(&s, None))),
                (
                    "in-process",
                    Box::new(|| scenario::in_process::run(&s, python.as_deref())),
                ),
            ];
            for (name, step) in steps {
                eprintln!("weir-bench: {name}");
                let sec = step().with_context(|| format!("scenario {name}"))?;
                // Write what is done so far: a late failure keeps the earlier results.
                all.push(sec);
                report::write_all(&cli.out, &machine, &all)?;
            }
            all
        }
    };
    machine.load_after = report::load();
    report::write_all(&cli.out, &machine, &sections)?;
    for sec in &sections {
        println!("{}", sec.markdown());
    }
    println!("results: {}", display(&cli.out));
    let failures: Vec<&String> = sections.iter().flat_map(|s| &s.failures).collect();
    if !failures.is_empty() {
        bail!("{} exact-delivery failure(s): {failures:?}", failures.len());
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.join("results.md").display().to_string()
}
