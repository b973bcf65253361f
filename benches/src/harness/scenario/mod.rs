//! The scenarios of `weir-bench`, one module each; every one returns a
//! [`Section`](super::report::Section) of results and stops every process it started.

pub mod in_process;
pub mod memory;
pub mod otlp;
pub mod outage;
pub mod pipeline;
pub mod scrape;
pub mod statsd_rate;

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// What every scenario needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Small counts and short runs (the smoke test and a first look).
    pub quick: bool,
    /// The weir binary under test.
    pub weir_bin: PathBuf,
    /// `benches/` (the etsy StatsD install lives in `peers/` under it).
    pub benches_dir: PathBuf,
    /// Sender threads of the StatsD load.
    pub threads: usize,
    /// Show progress bars (on a terminal).
    pub progress: bool,
}

impl Settings {
    /// A progress bar of `len` steps with `msg`, hidden unless enabled.
    pub fn bar(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}
