//! The pipelines' self-metrics (label `pipeline`) and `/status` entries.
//!
//! Owns: the `weir_pipeline_*` and `weir_wal_*` families. Must never: wait for disk
//! (it reads each pipeline's counters and its status snapshot).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Pipeline, PipelineCounters, PipelineStatus};
use crate::backends::FailureCause;
use crate::telemetry::{Kind, MetricsPage, StageMetrics, labels};

/// Every running pipeline, as reported.
pub struct PipelineSet(pub Vec<Arc<Pipeline>>);

impl StageMetrics for PipelineSet {
    fn render(&self, page: &mut MetricsPage) {
        if self.0.is_empty() {
            return;
        }
        let snapshots: Vec<_> = self
            .0
            .iter()
            .map(|p| (labels(&[("pipeline", p.name())]), p.status(), p.counters()))
            .collect();
        page.family(
            "weir_pipeline_send_failures_total",
            Kind::Counter,
            "Send attempts that failed, by cause (tls, connect, timeout, http_status, grpc_status, request).",
            self.0.iter().flat_map(|p| {
                let c = p.counters();
                FailureCause::ALL.map(|cause| {
                    (
                        labels(&[("pipeline", p.name()), ("reason", cause.as_str())]),
                        c.send_failures[cause.index()].load(Ordering::Relaxed) as f64,
                    )
                })
            }),
        );
        for (name, kind, help, get) in FAMILIES {
            page.family(
                name,
                kind,
                help,
                snapshots
                    .iter()
                    .map(|(labels, s, c)| (labels.clone(), get(s, c))),
            );
        }
    }

    fn status(&self) -> Vec<(&'static str, serde_json::Value)> {
        vec![(
            "pipelines",
            self.0
                .iter()
                .map(|p| pipeline_json(p))
                .collect::<Vec<_>>()
                .into(),
        )]
    }
}

type Get = fn(&PipelineStatus, &PipelineCounters) -> f64;

/// The families, one sample per pipeline.
const FAMILIES: [(&str, Kind, &str, Get); 20] = [
    (
        "weir_pipeline_sent_batches_total",
        Kind::Counter,
        "Batches (request bodies) the backend took.",
        |_, c| c.sent_batches.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_sent_points_total",
        Kind::Counter,
        "Points in batches the backend took.",
        |_, c| c.sent_points.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_sent_bytes_total",
        Kind::Counter,
        "Bytes sent in batches the backend took (as sent).",
        |_, c| c.sent_bytes.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_failed_batches_total",
        Kind::Counter,
        "Batches the backend refused for good (dropped).",
        |_, c| c.failed_batches.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_failed_points_total",
        Kind::Counter,
        "Points in batches refused for good.",
        |_, c| c.failed_points.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_rejected_points_total",
        Kind::Counter,
        "Points the backend refused inside accepted batches (partial success).",
        |_, c| c.rejected_points.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_retries_total",
        Kind::Counter,
        "Send attempts that failed and are retried.",
        |_, c| c.retries.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_queue_full_total",
        Kind::Counter,
        "Batches that did not fit the forwarder queue (read back from the WAL).",
        |_, c| c.queue_full.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_wal_errors_total",
        Kind::Counter,
        "WAL appends, syncs, reads or acknowledgements that failed.",
        |_, c| c.wal_errors.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_dropped_batches_total",
        Kind::Counter,
        "Batches lost because the WAL failed and the queue was full.",
        |_, c| c.dropped_batches.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_forwarder_restarts_total",
        Kind::Counter,
        "Times the forwarder task stopped unexpectedly (a panic) and was restarted from the WAL.",
        |_, c| c.forwarder_restarts.load(Ordering::Relaxed) as f64,
    ),
    (
        "weir_pipeline_last_success_timestamp_seconds",
        Kind::Gauge,
        "When the backend last took a batch (0: never).",
        |_, c| c.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0,
    ),
    (
        "weir_pipeline_forward_lag_seconds",
        Kind::Gauge,
        "Age of the oldest unsent batch in the WAL (0 when all is sent).",
        |s, _| s.lag_seconds,
    ),
    (
        "weir_wal_bytes",
        Kind::Gauge,
        "Size of the pipeline's WAL segments on disk.",
        |s, _| s.wal.bytes as f64,
    ),
    (
        "weir_wal_segments",
        Kind::Gauge,
        "Segment files in the pipeline's WAL.",
        |s, _| s.wal.segments as f64,
    ),
    (
        "weir_wal_unsent_batches",
        Kind::Gauge,
        "Batches in the WAL not yet acknowledged by the backend.",
        |s, _| s.wal.unacked_records as f64,
    ),
    (
        "weir_wal_dropped_batches_total",
        Kind::Counter,
        "Unsent batches deleted because the WAL reached its size cap.",
        |s, _| s.wal.dropped_records as f64,
    ),
    (
        "weir_wal_sync_errors_total",
        Kind::Counter,
        "WAL fsyncs that failed (their unsynced records were appended again, or sent from memory only).",
        |s, _| s.wal.sync_errors as f64,
    ),
    (
        "weir_wal_sync_lost_records_total",
        Kind::Counter,
        "Records a failed fsync took out of the WAL (the pipeline appends them again from memory).",
        |s, _| s.wal.sync_lost_records as f64,
    ),
    (
        "weir_wal_dropped_bytes_total",
        Kind::Counter,
        "Bytes of unsent batches deleted because the WAL reached its size cap.",
        |s, _| s.wal.dropped_bytes as f64,
    ),
];

fn pipeline_json(p: &Pipeline) -> serde_json::Value {
    let s = p.status();
    let c = p.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let last_success = load(&c.last_success_ms);
    serde_json::json!({
        "name": s.name,
        "type": s.kind,
        "endpoint": s.endpoint,
        "wal_bytes": s.wal.bytes,
        "wal_segments": s.wal.segments,
        "unsent_batches": s.wal.unacked_records,
        "unsent_bytes": s.wal.unacked_bytes,
        "forward_lag_seconds": s.lag_seconds,
        "wal_dropped_batches": s.wal.dropped_records,
        "wal_dropped_bytes": s.wal.dropped_bytes,
        "sent_batches": load(&c.sent_batches),
        "sent_points": load(&c.sent_points),
        "failed_batches": load(&c.failed_batches),
        "retries": load(&c.retries),
        "send_failures": FailureCause::ALL
            .iter()
            .filter(|f| load(&c.send_failures[f.index()]) > 0)
            .map(|f| (f.as_str().to_owned(), load(&c.send_failures[f.index()]).into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "last_success_unix_ms": (last_success > 0).then_some(last_success),
        "last_error": s.last_error,
    })
}
