//! The embeddable runtime under a `weir_instance`.
//!
//! Owns: nothing of its own; it adapts the runtime the C ABI is built on. Today that
//! is a bare [`Aggregator`] (flushes happen only when the caller asks, and nothing is
//! forwarded); the collector's `Instance` (pipelines, WAL, periodic flush) replaces it
//! behind this same interface. Must never: hold a lock across a caller's update.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir_core::{Aggregator, FlushBatch};

/// A running aggregator and what the C ABI asks of it.
pub(crate) struct Runtime {
    aggregator: Aggregator,
    closed: AtomicBool,
}

impl Runtime {
    /// Starts from configuration text. Only the defaults are supported by this runtime:
    /// any non-blank text is refused.
    pub(crate) fn from_toml(text: &str) -> Result<Runtime, String> {
        if !text.trim().is_empty() {
            return Err(
                "configuration text is not supported by this build (only the defaults)".into(),
            );
        }
        Ok(Runtime {
            aggregator: Aggregator::default(),
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// Flushes now; `None` once closed.
    pub(crate) fn flush(&self) -> Option<Arc<FlushBatch>> {
        // Relaxed: the flag only gates later flushes; the aggregator orders its own data.
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        Some(Arc::new(self.aggregator.flush()))
    }

    /// The aggregator's own counters in the Prometheus text format.
    pub(crate) fn self_metrics(&self) -> String {
        use std::fmt::Write as _;
        let s = self.aggregator.stats();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE weir_series_active gauge\nweir_series_active {}",
            s.active_series
        );
        let _ = writeln!(out, "# TYPE weir_rejected_total counter");
        for (reason, n) in &s.rejected {
            let _ = writeln!(out, "weir_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# TYPE weir_flushes_total counter\nweir_flushes_total {}",
            s.flushes
        );
        out
    }

    /// Stops flushing. Idempotent.
    pub(crate) fn close(&self, _grace: Duration) {
        // Relaxed: see `flush`.
        self.closed.store(true, Ordering::Relaxed);
    }
}
