//! Control: what the run loop can be asked to do from outside it (flush now, reload
//! the config) and what it answers.
//!
//! Owns: the request and answer types that the admin API sends and the daemon's run
//! loop serves, so neither imports the other. Must never: carry a subsystem's state
//! (requests are messages; the run loop owns what they act on).

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::info;
use weir_core::{AggregatorStats, FlushBatch, FlushedValue};

/// A request for a flush: the run loop answers on the channel.
pub type FlushRequest = oneshot::Sender<FlushSummary>;

/// What a reload did: sections applied, changed sections that need a restart, and
/// what failed to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sections applied (`scrape`, `shutdown`, and `pipeline_credentials` when
    /// pipelines read their TLS and credentials files again).
    pub applied: Vec<&'static str>,
    /// Sections that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
    /// What could not be applied while the rest was: a listener's certificate files
    /// that did not load (the listener keeps serving its previous certificate), each
    /// naming the `tls` table and the file.
    pub errors: Vec<String>,
}

/// A reload's outcome: the report, or why the file was refused.
pub type ReloadResult = Result<ReloadReport, String>;

/// A request for a config reload: the run loop answers on the channel.
pub type ReloadRequest = oneshot::Sender<ReloadResult>;

/// What one flush took out of the aggregator: the fields of its log line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushSummary {
    /// The batch's sequence number (1 for the first flush).
    pub sequence: u64,
    /// When the flush ran, ms since the Unix epoch.
    pub end_ms: i64,
    /// Series in the batch (live series plus final entries of evicted ones).
    pub series: usize,
    /// Series in the batch that were evicted (their last entry).
    pub evicted: usize,
    /// Sum of counter deltas in the batch.
    pub counter_delta_sum: f64,
    /// Histogram observations during the interval.
    pub histogram_observations: u64,
    /// Series held after the flush.
    pub active_series: usize,
    /// Points refused since start, all reasons.
    pub rejected_total: u64,
    /// Points refused since the previous flush.
    pub rejected_since_last: u64,
    /// Non-zero refusal counts since start, as `reason=count` pairs, or `none`.
    pub rejected_reasons: String,
    /// How long the walk over the series took (the pipelines' encoding and WAL
    /// appends on the flushing thread not included: from 256k series other threads
    /// walk on meanwhile, see
    /// [`Aggregator::flush_chunked_at`](weir_core::Aggregator::flush_chunked_at)).
    pub duration: Duration,
    /// Per pipeline (in config order), the WAL head after this flush was appended:
    /// the flush is delivered once the forwarder's cursor reaches it.
    pub pipeline_heads: Vec<weir_core::wal::WalPosition>,
}

impl FlushSummary {
    /// Adds what `batch`, a whole flush or one chunk of it (see
    /// [`Aggregator::flush_chunked_at`](weir_core::Aggregator::flush_chunked_at)), holds
    /// to a summary begun as `FlushSummary::default()`.
    pub fn add(&mut self, batch: &FlushBatch) {
        self.sequence = batch.sequence;
        self.end_ms = batch.end_ms;
        self.series += batch.series.len();
        self.evicted += batch.evicted;
        for s in &batch.series {
            match &s.value {
                FlushedValue::Histogram { delta, .. } => self.histogram_observations += delta.count,
                FlushedValue::Counter { delta, .. } => self.counter_delta_sum += delta,
                _ => {}
            }
        }
    }

    /// Completes the summary of a flush whose batch was [`FlushSummary::add`]ed, with
    /// `stats` read right after it and the rejected total of the previous summary.
    pub fn finish(&mut self, stats: &AggregatorStats, previous_rejected: u64, duration: Duration) {
        let rejected_total: u64 = stats.rejected.iter().map(|(_, n)| n).sum();
        let reasons: Vec<String> = stats
            .rejected
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        self.active_series = stats.active_series;
        self.rejected_total = rejected_total;
        self.rejected_since_last = rejected_total.saturating_sub(previous_rejected);
        self.rejected_reasons = if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons.join(",")
        };
        self.duration = duration;
    }

    /// The summary as `/status` and `POST /flush` show it.
    pub fn to_json(&self) -> serde_json::Value {
        let s = self;
        serde_json::json!({
            "sequence": s.sequence,
            "time_unix_ms": s.end_ms,
            "series": s.series,
            "evicted": s.evicted,
            "counter_delta_sum": s.counter_delta_sum,
            "histogram_observations": s.histogram_observations,
            "active_series": s.active_series,
            "rejected_total": s.rejected_total,
            "duration_seconds": s.duration.as_secs_f64(),
        })
    }

    /// Logs the summary as one info line with message `message`.
    pub fn log(&self, message: &str) {
        info!(
            sequence = self.sequence,
            series = self.series,
            evicted = self.evicted,
            counter_delta_sum = self.counter_delta_sum,
            histogram_observations = self.histogram_observations,
            active_series = self.active_series,
            rejected_total = self.rejected_total,
            rejected_since_last = self.rejected_since_last,
            rejected_reasons = %self.rejected_reasons,
            duration_us = self.duration.as_micros() as u64,
            "{message}"
        );
    }
}
