//! The forwarder task of one pipeline: sends records in WAL order, from the ring when
//! it holds the next one and from the WAL otherwise, retries with backoff, and
//! acknowledges in the WAL once the backend answered; a supervisor restarts it if it
//! panics.
//!
//! Owns: send order, retries, acknowledgements, the drain on shutdown. Must never:
//! acknowledge a record before the backend answered, reorder records, or hold the WAL
//! lock on an async worker (every WAL call goes through `with_wal`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};
use weir_core::wal::{Wal, WalPosition};

use super::backoff::backoff;
use super::queue::{Queued, Record, order};
use super::{DRAIN, RUN, STOP, Shared, lock, now_ms, with_wal};
use crate::backends::{Backend, SendError};
use crate::pipeline::RetryConfig;

/// A record ready to send.
struct Outgoing {
    position: Option<WalPosition>,
    next: WalPosition,
    record: Record,
}

/// The forwarder task of one pipeline.
pub(super) struct Forwarder {
    pub(super) shared: Arc<Shared>,
    pub(super) mode: watch::Receiver<u8>,
    pub(super) consumer: rtrb::Consumer<Queued>,
    pub(super) backend: Box<dyn Backend>,
    pub(super) retry: RetryConfig,
    /// Everything before it is acknowledged (or was sent from the ring).
    pub(super) cursor: WalPosition,
    /// A ring entry that came ahead of the cursor (records in between are read from
    /// the WAL first).
    pub(super) stash: Option<Queued>,
}

/// What [`Forwarder::next`] found.
enum Next {
    Send(Outgoing),
    Idle,
    /// Reading the WAL failed; try again after a pause.
    ReadError,
}

/// How long a restarted forwarder waits before it sends again, so a panic that
/// repeats on every record costs one log line a second, not a hot loop.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

impl Forwarder {
    /// Runs the forwarder until the pipeline stops it. A forwarder that panics, or
    /// returns while it should run, is restarted after [`RESTART_PAUSE`] from the
    /// WAL's acknowledgement cursor, with an error log line and
    /// `weir_pipeline_forwarder_restarts_total`: a pipeline whose forwarder stopped
    /// would fill its WAL to the cap in silence. (The alternative, exiting the
    /// daemon, would stop every other pipeline and source with it.) Restarting from
    /// the cursor may send the record in flight again: at least once, as after a
    /// crash.
    pub(super) async fn supervise(mut self) {
        loop {
            let outcome = CatchUnwind(Box::pin(self.run())).await;
            let reason = match outcome {
                Ok(()) if *self.mode.borrow() != RUN => return,
                Ok(()) => "it returned while the pipeline runs".to_owned(),
                Err(panic) => format!("it panicked: {}", panic_message(panic.as_ref())),
            };
            self.shared
                .counters
                .forwarder_restarts
                .fetch_add(1, Ordering::Relaxed);
            error!(
                pipeline = %self.shared.name,
                reason = %reason,
                "forwarder stopped unexpectedly; restarting it from the WAL's \
                 acknowledgement cursor (a batch in flight may be sent twice)"
            );
            *lock(&self.shared.last_error) = Some(format!("forwarder restarted: {reason}"));
            if !self.pause(RESTART_PAUSE).await {
                return;
            }
            self.cursor = with_wal(self.shared.clone(), |wal| wal.acked()).await;
            self.stash = None;
            self.shared.sending_since_ms.store(0, Ordering::Relaxed);
        }
    }

    async fn run(&mut self) {
        loop {
            let mode = *self.mode.borrow_and_update();
            if mode == STOP {
                return;
            }
            match self.next().await {
                Next::Send(out) => {
                    if !self.send(out).await {
                        return;
                    }
                }
                Next::Idle => {
                    self.shared.sending_since_ms.store(0, Ordering::Relaxed);
                    if mode == DRAIN {
                        return;
                    }
                    let shared = self.shared.clone();
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        _ = self.mode.changed() => {}
                    }
                }
                Next::ReadError => {
                    let pause = self.retry.max_backoff.min(Duration::from_secs(1));
                    if !self.pause(pause).await {
                        return;
                    }
                }
            }
        }
    }

    /// The next record in WAL order: the ring's front when nothing in the WAL comes
    /// before it, otherwise the WAL's record at the cursor. A memory-only record (its
    /// append failed) goes where its append would have gone: after every WAL record
    /// before its `before`, ahead of the record appended after it (which may have
    /// taken that very position).
    async fn next(&mut self) -> Next {
        let front = match self.stash.take() {
            Some(q) => Some(q),
            None => self.pop_unsent(),
        };
        if let Some(q) = front {
            let in_turn = match q.position {
                Some(p) => p == self.cursor || q.before == self.cursor,
                // At or (only if the WAL was read ahead of it) past its place.
                None => q.before <= self.cursor,
            };
            if in_turn {
                return Next::Send(self.outgoing(q));
            }
            // Records between the cursor and this one (the ring was full, or they
            // predate this process): read them from the WAL first.
            self.stash = Some(q);
        }
        let read = self.read_wal().await;
        // `accept` queues its records before it lets go of the WAL lock, under
        // which the read ran: every memory-only record appended before the one
        // just read is in the ring now.
        if self.stash.is_none() {
            self.stash = self.pop_unsent();
        }
        match read {
            Next::Send(out) => {
                let key = (out.position.unwrap_or(self.cursor), 1);
                match self.stash.take_if(|q| order(q) <= key) {
                    // A memory-only record that comes first, or the ring's copy
                    // of a record the WAL skipped or just returned.
                    Some(q) => Next::Send(self.outgoing(q)),
                    None => Next::Send(out),
                }
            }
            // Nothing in the WAL from the cursor on, yet the ring holds a record:
            // a memory-only one, or one the size cap deleted meanwhile.
            Next::Idle => match self.stash.take() {
                Some(q) => Next::Send(self.outgoing(q)),
                None => Next::Idle,
            },
            Next::ReadError => Next::ReadError,
        }
    }

    /// The ring's next entry not already sent (one read from the WAL before).
    fn pop_unsent(&mut self) -> Option<Queued> {
        while let Ok(q) = self.consumer.pop() {
            if q.position.is_none_or(|p| p >= self.cursor) {
                return Some(q);
            }
        }
        None
    }

    fn outgoing(&self, q: Queued) -> Outgoing {
        Outgoing {
            position: q.position,
            // A memory-only record is never acknowledged: the cursor stays.
            next: if q.position.is_some() {
                q.next
            } else {
                self.cursor
            },
            record: q.record,
        }
    }

    async fn read_wal(&mut self) -> Next {
        loop {
            let cursor = self.cursor;
            let read = with_wal(self.shared.clone(), move |wal| wal.read(cursor)).await;
            return match read {
                Ok(None) => Next::Idle,
                Ok(Some(r)) => match Record::from_payload(r.payload) {
                    Some(record) => Next::Send(Outgoing {
                        position: Some(r.position),
                        next: r.next,
                        record,
                    }),
                    None => {
                        self.shared
                            .counters
                            .failed_batches
                            .fetch_add(1, Ordering::Relaxed);
                        error!(
                            pipeline = %self.shared.name,
                            segment = r.position.segment,
                            offset = r.position.offset,
                            "WAL record in an unknown format skipped"
                        );
                        self.acknowledge(r.next).await;
                        continue;
                    }
                },
                Err(e) => {
                    self.shared
                        .counters
                        .wal_errors
                        .fetch_add(1, Ordering::Relaxed);
                    error!(pipeline = %self.shared.name, error = %e, "WAL read failed");
                    Next::ReadError
                }
            };
        }
    }

    async fn acknowledge(&mut self, next: WalPosition) {
        if next > self.cursor {
            self.cursor = next;
            if let Err(e) = with_wal(self.shared.clone(), move |wal| wal.ack(next)).await {
                self.shared
                    .counters
                    .wal_errors
                    .fetch_add(1, Ordering::Relaxed);
                error!(pipeline = %self.shared.name, error = %e, "WAL acknowledgement failed");
            }
        }
    }

    /// Publishes an attempt's result; `refused` when the record was dropped.
    fn publish(&self, ok: bool, refused: bool) {
        self.shared.progress.send_modify(|p| {
            p.cursor = self.cursor;
            p.attempts += 1;
            p.last_ok = ok;
            p.refused += u64::from(refused);
        });
    }

    /// True while the record at `position` is still in the WAL (the size cap may
    /// have deleted its segment while the backend was down).
    async fn still_in_wal(&mut self, position: WalPosition) -> bool {
        with_wal(
            self.shared.clone(),
            move |wal| matches!(wal.read(position), Ok(Some(r)) if r.position == position),
        )
        .await
    }

    /// Sends one record until it is taken or refused for good. Returns false if the
    /// pipeline was stopped meanwhile.
    async fn send(&mut self, out: Outgoing) -> bool {
        let c = self.shared.counters.clone();
        self.shared
            .sending_since_ms
            .store(out.record.appended_ms.max(1), Ordering::Relaxed);
        let mut failures: u32 = 0;
        let dropped = |wal: &mut Wal| wal.stats().dropped_records;
        // WAL cap drops seen when the record was last found in the WAL; read only
        // once sends fail (the happy path never touches the WAL here).
        let mut drops_seen: Option<u64> = None;
        loop {
            let result = self.backend.send(out.record.body.clone()).await;
            if let Err(e) = &result {
                c.send_failures[e.cause().index()].fetch_add(1, Ordering::Relaxed);
            }
            match result {
                Ok(sent) => {
                    c.sent_batches.fetch_add(1, Ordering::Relaxed);
                    c.sent_points
                        .fetch_add(out.record.points, Ordering::Relaxed);
                    c.sent_bytes
                        .fetch_add(out.record.body.len() as u64, Ordering::Relaxed);
                    c.last_success_ms
                        .store(now_ms().max(0) as u64, Ordering::Relaxed);
                    if sent.rejected_points > 0 {
                        c.rejected_points
                            .fetch_add(sent.rejected_points, Ordering::Relaxed);
                        warn!(
                            pipeline = %self.shared.name,
                            rejected_points = sent.rejected_points,
                            "the backend took the batch but refused some of its points"
                        );
                    }
                    if failures > 0 {
                        info!(pipeline = %self.shared.name, attempts = failures + 1, "backend reachable again");
                    }
                    *lock(&self.shared.last_error) = None;
                    self.acknowledge(out.next).await;
                    self.publish(true, false);
                    return true;
                }
                Err(SendError::Permanent { reason, cause }) => {
                    c.failed_batches.fetch_add(1, Ordering::Relaxed);
                    c.failed_points
                        .fetch_add(out.record.points, Ordering::Relaxed);
                    error!(
                        pipeline = %self.shared.name,
                        points = out.record.points,
                        reason = cause.as_str(),
                        error = %reason,
                        "the backend refused a batch for good; it is dropped"
                    );
                    *lock(&self.shared.last_error) = Some(reason);
                    self.acknowledge(out.next).await;
                    self.publish(false, true);
                    return true;
                }
                Err(SendError::Retry {
                    reason,
                    retry_after,
                    cause,
                }) => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    // One line when a backend goes away, then one per ten attempts.
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(
                            pipeline = %self.shared.name,
                            attempt = failures,
                            reason = cause.as_str(),
                            error = %reason,
                            "send failed; retrying with backoff (the batch stays in the WAL)"
                        );
                    }
                    *lock(&self.shared.last_error) = Some(reason);
                    self.publish(false, false);
                    let pause = backoff(&self.retry, failures, retry_after);
                    if !self.pause(pause).await {
                        return false;
                    }
                    let drops = with_wal(self.shared.clone(), dropped).await;
                    if drops_seen != Some(drops) {
                        drops_seen = Some(drops);
                        if let Some(p) = out.position
                            && !self.still_in_wal(p).await
                        {
                            // The cap deleted it (counted and logged by the WAL
                            // side); carry on with the oldest record left.
                            return true;
                        }
                    }
                }
            }
        }
    }

    /// Sleeps for `d` unless the pipeline is stopped meanwhile (false then). While
    /// draining, retries go on until the grace period ends.
    async fn pause(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if *self.mode.borrow_and_update() == STOP {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                changed = self.mode.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// A future that turns a panic inside `poll` into an `Err`, so the supervisor can
/// restart what panicked.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        // AssertUnwindSafe: after a panic the future is dropped, never polled again,
        // and the state it shared (the forwarder) is reset from the WAL.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The message of a panic payload, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
