//! Forwarding pipelines: one per `[[pipelines]]` entry, each with its encoder, its
//! write-ahead log, its in-memory queue and its forwarder task.
//!
//! Data flow of one flush: the daemon hands each chunk of the flush's `FlushBatch`
//! (8,192 entries, see `instance.rs`) to every pipeline's [`Pipeline::append`] (on a
//! blocking thread); it encodes the chunk into request bodies and appends each as one
//! WAL record, which the WAL keeps from the forwarder's reads (`Wal::defer_reads`).
//! After the last chunk, [`Pipeline::commit`] syncs the WAL once (per `wal.sync`),
//! publishes the records, puts a handle to each on the pipeline's SPSC ring and wakes
//! the forwarder. The forwarder sends records in WAL order, retrying with exponential
//! backoff and full jitter, and acknowledges each one in the WAL once the backend took
//! it (or refused it for good); the WAL deletes fully acknowledged segments.
//!
//! The ring only saves reading bodies back from disk: when it is full the record is
//! still in the WAL and the forwarder reads it from there, and after a restart the
//! forwarder starts at the WAL's acknowledgement cursor, so everything not
//! acknowledged is sent again (at least once). The WAL persists that cursor in
//! batches while a backlog drains, at once when it catches up, and on
//! [`Pipeline::shutdown`] (see `weir_core::wal`, "Crash semantics").
//!
//! When the WAL fails: a record whose append failed is queued as memory-only (sent,
//! never acknowledged, lost on a restart) and sent in its place in WAL order, after
//! every older record even if those are in the WAL only (the ring overflowed). A
//! failed sync takes the flush's unsynced records out of the WAL; `commit` still
//! holds their bodies and appends them again, and after a second failure sends them
//! as memory-only (the forwarder could read none of them meanwhile). Records are
//! queued on the ring before the WAL lock is released, which is what lets the
//! forwarder place memory-only records (see `Forwarder::next`).
//!
//! Files: `config.rs` (the `[[pipelines]]` schema), `queue.rs` (the record framing in
//! the WAL and the ring's entries), `forwarder.rs` (the forwarder task and its
//! supervisor), `backoff.rs` (pauses between attempts), `metrics.rs` (self-metrics).
//!
//! Owns: the flush side (encode, append, sync, queue), the per-pipeline counters and
//! the status snapshot; the forwarder loop (order, retries, acknowledgement, drain on
//! shutdown) is in `forwarder.rs`.
//! Must never: block the flush on a backend (sends happen only on the forwarder
//! task), acknowledge a record before the backend answered, reorder records of one
//! pipeline, or lose a record silently (every drop is a counter and a log line).

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::atomic::AtomicCell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use weir_core::FlushBatch;
use weir_core::encode::{EncodeOptions, EncodedRequest, NameFilter};
use weir_core::wal::{SyncPolicy, Wal, WalConfig, WalError, WalPosition, WalStats};

use crate::backends::{Backend, FailureCause};
use crate::tls::client::LiveSecurity;

mod backoff;
mod config;
mod forwarder;
mod metrics;
mod queue;

pub use backoff::backoff;
use forwarder::Forwarder;
use queue::Queued;
pub use queue::Record;

pub use config::{
    CompressionConfig, PipelineCommon, PipelineConfig, PipelineWalConfig, RetryConfig,
    TemporalityConfig, WalSyncConfig,
};
pub use metrics::PipelineSet;

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The WAL directory could not be opened or recovered.
    #[error("pipeline {name}: cannot open its WAL in {dir}: {source}")]
    Wal {
        /// The pipeline.
        name: String,
        /// The WAL directory.
        dir: String,
        /// Why.
        source: weir_core::wal::WalError,
    },
    /// The endpoint or the filter patterns cannot be used.
    #[error("pipeline {name}: {reason}")]
    Config {
        /// The pipeline.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Counters of one pipeline since start (all `Relaxed`: each is an independent
/// statistic, read for reporting only; no other memory is published through them).
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Batches encoded: whole flushes, or each chunk of a flush the daemon encodes in
    /// chunks (`Pipeline::append` is called once per chunk).
    pub flushes: AtomicU64,
    /// Request bodies appended to the WAL.
    pub records_written: AtomicU64,
    /// Points in them.
    pub points_written: AtomicU64,
    /// Bodies the backend took.
    pub sent_batches: AtomicU64,
    /// Points in them.
    pub sent_points: AtomicU64,
    /// Bytes in them (as sent, compressed).
    pub sent_bytes: AtomicU64,
    /// Points the backend reported refused in an otherwise successful answer.
    pub rejected_points: AtomicU64,
    /// Bodies refused for good (dropped after logging).
    pub failed_batches: AtomicU64,
    /// Points in them.
    pub failed_points: AtomicU64,
    /// Attempts that will be retried.
    pub retries: AtomicU64,
    /// Failed attempts (retried or not) by cause, indexed by
    /// [`FailureCause::index`].
    pub send_failures: [AtomicU64; FailureCause::ALL.len()],
    /// Records that did not fit the ring and are read back from the WAL instead.
    pub queue_full: AtomicU64,
    /// WAL appends, syncs, reads or acknowledgements that failed.
    pub wal_errors: AtomicU64,
    /// Times the forwarder task stopped unexpectedly (a panic) and was restarted.
    pub forwarder_restarts: AtomicU64,
    /// Records lost because the WAL failed *and* the ring was full.
    pub dropped_batches: AtomicU64,
    /// Time of the last successful send, ms since the Unix epoch (0: never).
    pub last_success_ms: AtomicU64,
}

/// The forwarder's progress, published after every attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Everything before this WAL position is acknowledged.
    pub cursor: WalPosition,
    /// Send attempts so far.
    pub attempts: u64,
    /// Whether the latest attempt succeeded.
    pub last_ok: bool,
    /// Records the backend refused for good so far (dropped: past the cursor, but
    /// not delivered).
    pub refused: u64,
}

/// What `/flush` and the shutdown report per pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutcome {
    /// The pipeline.
    pub pipeline: String,
    /// True if every record written up to the flush was acknowledged.
    pub delivered: bool,
    /// The latest error, if the attempt failed.
    pub error: Option<String>,
}

/// A snapshot for `/status` and `/metrics`.
#[derive(Debug, Clone)]
pub struct PipelineStatus {
    /// The pipeline's name.
    pub name: String,
    /// Its backend (the `type` key).
    pub kind: &'static str,
    /// Its endpoint.
    pub endpoint: String,
    /// The WAL's state.
    pub wal: WalStats,
    /// Forward lag: seconds since the oldest unsent batch was written to the WAL
    /// (0 when everything is sent).
    pub lag_seconds: f64,
    /// The latest send error, if the latest attempt failed.
    pub last_error: Option<String>,
}

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const STOP: u8 = 2;

/// State shared by a pipeline's flush side and its forwarder task.
struct Shared {
    name: String,
    wal: Mutex<Wal>,
    wake: Notify,
    counters: Arc<PipelineCounters>,
    progress: watch::Sender<Progress>,
    /// RUN, DRAIN (send what is there, then stop) or STOP.
    mode: watch::Sender<u8>,
    last_error: Mutex<Option<String>>,
    /// WAL drops already logged.
    drops_logged: AtomicU64,
    /// When the record the forwarder is sending was appended (ms since the Unix
    /// epoch; 0 while it is idle): records go out in order, so this is the oldest
    /// unsent one. Relaxed: a statistic, read for reporting only.
    sending_since_ms: std::sync::atomic::AtomicI64,
    /// The WAL's stats and head as of the last operation on it, stored by whoever
    /// held the WAL lock, read without it: `/status` and `/metrics` never wait for
    /// an append or an fsync in progress. `AtomicCell` of a type this size is a
    /// seqlock: readers retry while a store is under way, they never block it.
    wal_snapshot: AtomicCell<WalSnapshot>,
}

/// What status reads of the WAL: copied out under the WAL lock after each operation.
#[derive(Debug, Clone, Copy, Default)]
struct WalSnapshot {
    stats: WalStats,
    head: WalPosition,
}

impl WalSnapshot {
    fn of(wal: &Wal) -> WalSnapshot {
        WalSnapshot {
            stats: wal.stats(),
            head: wal.head(),
        }
    }
}

impl Shared {
    /// Logs WAL cap drops that happened since the last call.
    fn log_wal_drops(&self, stats: &WalStats) {
        let seen = self
            .drops_logged
            .swap(stats.dropped_records, Ordering::Relaxed);
        if stats.dropped_records > seen {
            warn!(
                pipeline = %self.name,
                dropped_batches = stats.dropped_records - seen,
                dropped_batches_total = stats.dropped_records,
                dropped_bytes_total = stats.dropped_bytes,
                "WAL size cap reached: the oldest unsent segments were deleted \
                 (raise wal.max_bytes, or bring the backend back)"
            );
        }
    }
}

/// One running pipeline.
pub struct Pipeline {
    config: PipelineConfig,
    options: EncodeOptions,
    shared: Arc<Shared>,
    producer: Mutex<rtrb::Producer<Queued>>,
    /// Records of the flush being appended ([`Pipeline::append`]), in append order,
    /// queued by [`Pipeline::commit`]. Locked after the WAL.
    pending: Mutex<Vec<Queued>>,
    forwarder: Mutex<Option<JoinHandle<()>>>,
    /// The backend's TLS material and credentials (none for a backend given by the
    /// embedder), re-read on reload.
    security: Option<Arc<LiveSecurity>>,
}

impl Pipeline {
    /// Opens the WAL under `data_dir` (recovering it, on the blocking pool: it reads
    /// and checks every unacknowledged record) and starts the forwarder, which first
    /// sends everything the WAL holds unacknowledged. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`PipelineError`] if the WAL cannot be opened or the config cannot be used.
    pub async fn start(
        config: &PipelineConfig,
        data_dir: &std::path::Path,
    ) -> Result<Pipeline, PipelineError> {
        let config_error = |reason| PipelineError::Config {
            name: config.name().to_owned(),
            reason,
        };
        let security = Arc::new(config.load_security().map_err(config_error)?);
        let backend = config.connect(security.clone()).map_err(config_error)?;
        let mut pipeline = Pipeline::start_with_backend(config, data_dir, backend).await?;
        pipeline.security = Some(security);
        Ok(pipeline)
    }

    /// True if the pipeline's config names TLS or credentials settings.
    pub fn has_security_files(&self) -> bool {
        *self.config.security() != crate::tls::client::ClientSecurityConfig::default()
    }

    /// Re-reads the pipeline's TLS and credentials files (on a config reload); the
    /// next request uses them, on new connections. On error the material in use
    /// stays.
    ///
    /// # Errors
    /// A message naming the key and the file that cannot be used.
    pub fn reload_security(&self) -> Result<(), String> {
        match &self.security {
            Some(s) => s.reload().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// As [`Pipeline::start`], sending through `backend` instead of the one the
    /// config's `type` names (the config still sets the encoding, WAL, queue and
    /// retries): for embedding weir with a backend of one's own, and for tests.
    ///
    /// # Errors
    /// [`PipelineError`] if the WAL cannot be opened or the config cannot be used.
    pub async fn start_with_backend(
        config: &PipelineConfig,
        data_dir: &std::path::Path,
        backend: Box<dyn Backend>,
    ) -> Result<Pipeline, PipelineError> {
        let common = config.common();
        let name = common.name.clone();
        let config_error = |reason: String| PipelineError::Config {
            name: name.clone(),
            reason,
        };
        let filter = NameFilter::new(&common.include, &common.exclude)
            .map_err(|e| config_error(e.to_string()))?;
        let options = EncodeOptions {
            external_labels: common
                .external_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            filter,
            max_request_bytes: common.max_request_bytes,
            temporality: config.temporality().to_core(),
        };
        let dir = config.wal_dir(data_dir);
        let wal_config = WalConfig {
            segment_bytes: common.wal.segment_bytes,
            cap_bytes: common.wal.max_bytes,
            sync: match common.wal.sync {
                WalSyncConfig::Flush => SyncPolicy::Fsync,
                WalSyncConfig::Never => SyncPolicy::Never,
            },
            ..WalConfig::default()
        };
        let open_dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || Wal::open(&open_dir, wal_config))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let wal = opened.map_err(|source| PipelineError::Wal {
            name: name.clone(),
            dir: dir.display().to_string(),
            source,
        })?;
        let stats = wal.stats();
        if stats.corrupt_tails > 0 {
            warn!(
                pipeline = %name,
                corrupt_tails = stats.corrupt_tails,
                truncated_bytes = stats.truncated_bytes,
                "WAL: torn or corrupt data cut off at the last good record"
            );
        }
        info!(
            pipeline = %name,
            kind = config.kind(),
            endpoint = %common.endpoint,
            wal = %dir.display(),
            replay_batches = stats.unacked_records,
            replay_bytes = stats.unacked_bytes,
            "pipeline started"
        );
        let cursor = wal.acked();
        let snapshot = WalSnapshot::of(&wal);
        let (progress, _) = watch::channel(Progress {
            cursor,
            attempts: 0,
            last_ok: true,
            refused: 0,
        });
        let shared = Arc::new(Shared {
            name: name.clone(),
            wal: Mutex::new(wal),
            wake: Notify::new(),
            counters: Arc::new(PipelineCounters::default()),
            progress,
            mode: watch::channel(RUN).0,
            last_error: Mutex::new(None),
            drops_logged: AtomicU64::new(0),
            sending_since_ms: std::sync::atomic::AtomicI64::new(0),
            wal_snapshot: AtomicCell::new(snapshot),
        });
        let (producer, consumer) = rtrb::RingBuffer::new(common.queue_capacity);
        let forwarder = Forwarder {
            mode: shared.mode.subscribe(),
            shared: shared.clone(),
            consumer,
            backend,
            retry: common.retry.clone(),
            cursor,
            stash: None,
        };
        let task = tokio::spawn(forwarder.supervise());
        Ok(Pipeline {
            config: config.clone(),
            options,
            shared,
            producer: Mutex::new(producer),
            pending: Mutex::new(Vec::new()),
            forwarder: Mutex::new(Some(task)),
            security: None,
        })
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        self.config.name()
    }

    /// The pipeline's counters.
    pub fn counters(&self) -> Arc<PipelineCounters> {
        self.shared.counters.clone()
    }

    /// Runs `f` while holding the WAL's lock, as an append or an fsync in progress
    /// does. For tests of what must not wait for the WAL.
    #[doc(hidden)]
    pub fn while_wal_is_busy<R>(&self, f: impl FnOnce() -> R) -> R {
        let _wal = lock(&self.shared.wal);
        f()
    }

    /// Makes the WAL's next `n` writes fail (a full disk). For fault-injection tests
    /// only.
    #[doc(hidden)]
    pub fn inject_wal_write_failures(&self, n: u32) {
        lock(&self.shared.wal).inject_write_failures(n);
    }

    /// Makes the WAL's next `n` fsync or fdatasync calls fail. For fault-injection
    /// tests only.
    #[doc(hidden)]
    pub fn inject_wal_sync_failures(&self, n: u32) {
        lock(&self.shared.wal).inject_sync_failures(n);
    }

    /// Encodes `batch` and appends it to the WAL, then commits it
    /// ([`Pipeline::append`] and [`Pipeline::commit`]). Blocking (encoding and disk
    /// I/O): call it on a blocking thread. Returns the WAL head after the append: the
    /// flush is delivered once the forwarder's cursor reaches it.
    pub fn accept(&self, batch: &FlushBatch) -> WalPosition {
        self.append(batch);
        self.commit()
    }

    /// Encodes `batch`, a whole flush or one chunk of it, and appends its requests to
    /// the WAL, where the forwarder does not see them before [`Pipeline::commit`].
    /// Blocking (encoding and disk I/O): call it on a blocking thread.
    pub fn append(&self, batch: &FlushBatch) {
        let c = &self.shared.counters;
        c.flushes.fetch_add(1, Ordering::Relaxed);
        let requests = self.config.encode(batch, &self.options);
        let appended_ms = now_ms();
        let mut wal = lock(&self.shared.wal);
        // Until the commit has synced them: a failed sync may take them out again.
        wal.defer_reads();
        let mut pending = lock(&self.pending);
        for EncodedRequest { body, points } in requests {
            let record = Record {
                appended_ms,
                points,
                body: Bytes::from(body),
            };
            let before = wal.head();
            let position = match wal.append(&record.to_payload()) {
                Ok(p) => Some(p),
                Err(e) => {
                    c.wal_errors.fetch_add(1, Ordering::Relaxed);
                    error!(
                        pipeline = %self.config.name(),
                        error = %e,
                        "WAL append failed: this batch is sent from memory only \
                         (not durable across a restart)"
                    );
                    None
                }
            };
            c.records_written.fetch_add(1, Ordering::Relaxed);
            c.points_written.fetch_add(points, Ordering::Relaxed);
            pending.push(Queued {
                position,
                before,
                next: wal.head(),
                record,
            });
        }
    }

    /// Makes what [`Pipeline::append`] appended since the last commit durable (one
    /// sync for all of it, per `wal.sync`), lets the forwarder read it and queues it
    /// for the forwarder. Blocking (disk I/O). Returns the WAL head: the flush is
    /// delivered once the forwarder's cursor reaches it.
    pub fn commit(&self) -> WalPosition {
        let c = &self.shared.counters;
        let head = {
            let mut wal = lock(&self.shared.wal);
            let mut queued = std::mem::take(&mut *lock(&self.pending));
            if self.config.common().wal.sync == WalSyncConfig::Flush && !queued.is_empty() {
                self.sync_flush(&mut wal, &mut queued);
            }
            wal.publish();
            let snapshot = WalSnapshot::of(&wal);
            self.shared.wal_snapshot.store(snapshot);
            self.shared.log_wal_drops(&snapshot.stats);
            // Queued while the WAL is still locked: the forwarder reads the WAL under
            // this lock, so once it has read a record, every memory-only record
            // appended before it is in the ring (see `Forwarder::next`).
            let mut producer = lock(&self.producer);
            for q in queued {
                let memory_only = q.position.is_none();
                if producer.push(q).is_err() {
                    if memory_only {
                        c.dropped_batches.fetch_add(1, Ordering::Relaxed);
                        error!(
                            pipeline = %self.config.name(),
                            "batch dropped: the WAL failed and the forwarder queue is full"
                        );
                    } else {
                        c.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            snapshot.head
        };
        self.shared.wake.notify_one();
        head
    }

    /// Syncs the WAL after a flush's appends. A failed sync takes the records it should
    /// have made durable out of the log (`weir_core::wal`, "Failed syncs"); this flush
    /// still holds their bodies, so they are appended again, in order, and synced once
    /// more. What a second failed sync takes out is sent from memory only (not
    /// durable across a restart), after every record left in the WAL.
    fn sync_flush(&self, wal: &mut Wal, queued: &mut [Queued]) {
        let c = &self.shared.counters;
        for attempt in 0..2 {
            let lost_from = match wal.sync() {
                Ok(()) => return,
                Err(e) => {
                    c.wal_errors.fetch_add(1, Ordering::Relaxed);
                    error!(pipeline = %self.config.name(), error = %e, "WAL sync failed");
                    match e {
                        WalError::SyncLost { lost_from, .. } => lost_from,
                        _ => return,
                    }
                }
            };
            // Queued entries are in append order; those from `lost_from` on (and
            // memory-only ones placed there) are a suffix.
            let first = queued.partition_point(|q| q.position.unwrap_or(q.before) < lost_from);
            let lost = &mut queued[first..];
            if attempt == 0 {
                for q in lost {
                    q.before = wal.head();
                    q.position = match wal.append(&q.record.to_payload()) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            c.wal_errors.fetch_add(1, Ordering::Relaxed);
                            error!(pipeline = %self.config.name(), error = %e, "WAL append failed");
                            None
                        }
                    };
                    q.next = wal.head();
                }
            } else {
                error!(
                    pipeline = %self.config.name(),
                    batches = lost.len(),
                    "WAL sync failed twice: these batches are sent from memory only \
                     (not durable across a restart)"
                );
                let head = wal.head();
                for q in lost {
                    q.position = None;
                    q.before = head;
                    q.next = head;
                }
            }
        }
    }

    /// Waits until the forwarder acknowledged everything before `head`, or made an
    /// attempt that failed after this call, or `timeout` passed. A record the
    /// backend refused for good after this call makes the outcome not delivered.
    pub async fn wait_delivered(&self, head: WalPosition, timeout: Duration) -> ForwardOutcome {
        let mut rx = self.shared.progress.subscribe();
        let (attempts_before, refused_before) = {
            let p = rx.borrow();
            (p.attempts, p.refused)
        };
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                {
                    let p = *rx.borrow_and_update();
                    if p.refused > refused_before {
                        return false;
                    }
                    if p.cursor >= head {
                        return true;
                    }
                    if p.attempts > attempts_before && !p.last_ok {
                        return false;
                    }
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        let delivered = outcome.unwrap_or(false);
        ForwardOutcome {
            pipeline: self.config.name().to_owned(),
            delivered,
            error: if delivered {
                None
            } else {
                Some(
                    lock(&self.shared.last_error)
                        .clone()
                        .unwrap_or_else(|| format!("not delivered within {timeout:?}")),
                )
            },
        }
    }

    /// The pipeline's state for `/status` and `/metrics`. Never waits for the WAL
    /// (an append or fsync in progress): it reads the snapshot taken after the WAL's
    /// latest operation.
    pub fn status(&self) -> PipelineStatus {
        let wal = self.shared.wal_snapshot.load().stats;
        self.shared.log_wal_drops(&wal);
        let since = self.shared.sending_since_ms.load(Ordering::Relaxed);
        let lag_seconds = if since > 0 && wal.unacked_records > 0 {
            ((now_ms() - since).max(0) as f64) / 1000.0
        } else {
            0.0
        };
        PipelineStatus {
            name: self.config.name().to_owned(),
            kind: self.config.kind(),
            endpoint: self.config.common().endpoint.clone(),
            wal,
            lag_seconds,
            last_error: lock(&self.shared.last_error).clone(),
        }
    }

    /// Lets the forwarder send what the WAL holds for up to `grace`, then stops it.
    /// Whatever is not acknowledged by then stays in the WAL for the next start.
    pub async fn shutdown(&self, grace: Duration) -> ForwardOutcome {
        let head = self.shared.wal_snapshot.load().head;
        let refused_before = self.shared.progress.borrow().refused;
        self.shared.mode.send_replace(DRAIN);
        let task = lock(&self.forwarder).take();
        let mut delivered = false;
        if let Some(mut task) = task {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                self.shared.mode.send_replace(STOP);
                // A send in progress is cut off; it was not acknowledged, so it is
                // sent again after the next start.
                task.abort();
                let _ = task.await;
            }
            let p = *self.shared.progress.borrow();
            delivered = p.cursor >= head && p.refused == refused_before;
        }
        // A clean stop: the ack file catches up with the forwarder (acks are
        // persisted in batches), so the next start replays only what is unsent.
        // fsyncs: on the blocking pool.
        let (synced, persisted) =
            with_wal(self.shared.clone(), |wal| (wal.sync(), wal.persist_ack())).await;
        if let Err(e) = synced {
            error!(pipeline = %self.config.name(), error = %e, "WAL sync at shutdown failed");
        }
        if let Err(e) = persisted {
            error!(pipeline = %self.config.name(), error = %e, "WAL ack file write at shutdown failed");
        }
        let stats = self.shared.wal_snapshot.load().stats;
        info!(
            pipeline = %self.config.name(),
            delivered,
            unsent_batches = stats.unacked_records,
            unsent_bytes = stats.unacked_bytes,
            "pipeline stopped; unsent batches stay in the WAL for the next start"
        );
        ForwardOutcome {
            pipeline: self.config.name().to_owned(),
            delivered,
            error: (!delivered).then(|| {
                lock(&self.shared.last_error)
                    .clone()
                    .unwrap_or_else(|| "grace period over".to_owned())
            }),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.mode.send_replace(STOP);
        if let Some(task) = lock(&self.forwarder).take() {
            task.abort();
        }
    }
}

/// Runs `f` on the WAL on a blocking thread (disk reads, fsyncs of the ack file:
/// never on an async worker, which the receivers share).
async fn with_wal<T: Send + 'static>(
    shared: Arc<Shared>,
    f: impl FnOnce(&mut Wal) -> T + Send + 'static,
) -> T {
    let run = move || {
        let mut wal = lock(&shared.wal);
        let out = f(&mut wal);
        shared.wal_snapshot.store(WalSnapshot::of(&wal));
        out
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
