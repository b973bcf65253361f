//! The embeddable runtime under a `weir_instance`: the collector's
//! [`Instance`] (aggregator, periodic flush, pipelines with their WALs), the same code
//! the daemon runs on.
//!
//! Owns: the gate that makes `weir_flush` refuse once the instance is closed (the
//! pipelines are shut down by then). Must never: hold a lock across a caller's update
//! (updates go straight to the aggregator).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir_collector::instance::Instance;
use weir_core::{Aggregator, FlushBatch};

/// A running instance and what the C ABI asks of it.
pub(crate) struct Runtime {
    instance: Instance,
    closed: AtomicBool,
}

impl Runtime {
    /// Starts from TOML text with the daemon's schema (empty: the defaults).
    pub(crate) fn from_toml(text: &str) -> Result<Runtime, String> {
        let instance = Instance::from_toml(text).map_err(|e| e.to_string())?;
        Ok(Runtime {
            instance,
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn aggregator(&self) -> &Aggregator {
        self.instance.aggregator()
    }

    /// Flushes now (into every pipeline too); `None` once closed.
    pub(crate) fn flush(&self) -> Option<FlushBatch> {
        // Relaxed: the flag only gates later flushes; the instance orders its own
        // flushes with its flush mutex.
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.instance.flush())
    }

    /// The instance's self-metrics in the Prometheus text format.
    pub(crate) fn self_metrics(&self) -> String {
        self.instance.self_metrics()
    }

    /// Final flush into the WALs, then up to `grace` for sending. Idempotent.
    pub(crate) fn close(&self, grace: Duration) {
        // Relaxed: see `flush`.
        self.closed.store(true, Ordering::Relaxed);
        self.instance.close(grace);
    }
}
