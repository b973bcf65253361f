//! The flush walk: every series' share since the previous flush, TTL eviction, and the
//! running totals that only the flusher touches.
//!
//! Owns: [`Aggregator::flush_at`] and its chunked form
//! ([`Aggregator::flush_chunked_at`]), the flusher's list of series and the spare
//! batch allocation ([`Aggregator::recycle`]). Must never: take one update into two
//! flushes or into none, retire a series a handle holds, hold the flush lock while
//! dropping a recycled batch's entries (a chunked flush drops one chunk's at a time
//! under it, as its consumer is done with each), or let a chunk's lent keys (below)
//! outlive the call that lends them.
//!
//! A whole batch (`flush_at`) may outlive the flush, so its entries hold counted
//! clones of the series' keys. A chunk (`flush_chunked_at`) is only lent to its
//! consumer, under the flush lock, while the flusher's list holds every live series:
//! its live entries hold uncounted copies of the keys (`Keys::Lent`), forgotten after
//! the call, which spares every series two atomic operations per flush, one of them on
//! a line that has left the cache by then.
//!
//! The list holds only each series' address (8 bytes): what the flusher alone keeps
//! per series, the running totals of counters and histograms and when activity was
//! last seen, lives in the series itself (`Series::touched`, `Counter`,
//! `Histogram`), on the lines the walk reads anyway. (It was a 40-, then 32-byte entry
//! beside the pointer: 32 MB at 1M series that each flush also streamed through.)
//!
//! The walk prefetches each series 16 entries ahead (`prefetch_ahead`): the series,
//! its key's reference count (which a whole batch's key clone increments) and its
//! key bytes are one allocation (`SharedSeries`), whose first two or three cache lines
//! the walk reads (the key bytes only when a series is evicted); without the prefetch
//! it would miss on them one series after the other, each a DRAM access at 100k series
//! and more.
//!
//! The walk gives its core away every `YIELD_EVERY` series (see there), so that on
//! a busy machine a flush of 1M series does not keep a woken receiver waiting for a
//! whole scheduler time slice.
//!
//! A chunked flush of at least twice `SERIES_PER_WALKER` series (256k) is walked by
//! several threads, one per core up to `MAX_WALKERS`, each claiming the next block of
//! the list in turn (`Walk::parallel`): a walk is bound by how many misses one core
//! keeps in flight, not by the memory bus, so two cores take a 1M-series flush in
//! about half the time. The walkers only take live series' shares and send their chunks to the
//! flushing thread, which alone hands them to the consumer and evicts (the walkers
//! list the idle series; every flush evicts on one thread, after the walk). The other
//! walkers are scoped threads named `weir-flush-walk`, started per flush (tens of
//! microseconds against milliseconds of walk); one that cannot be started is done
//! without.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::SegQueue;

use crate::cell::CounterTake;
use crate::flush::{FlushBatch, FlushedSeries, FlushedValue};
use crate::hint::prefetch;
use crate::key::{Keyed, SeriesKey};
use crate::point::HistogramValue;

use super::kept::{Kept, KeptState};
use super::series::{Cell, Counter, Series, SharedSeries, try_retire};
use super::series_index;

use super::{Aggregator, now_ms};

/// What a series leaves for a successor when it is evicted: its start, total and last
/// cumulative input. Called after the final (sealing) collection.
fn kept(series: &Series) -> Option<Kept> {
    let state = match &series.cell {
        Cell::Counter(_, c) => {
            let (last_cumulative, last_start_ms) = c.last_input();
            KeptState::Counter {
                total: c.total(),
                last_cumulative,
                last_start_ms,
            }
        }
        Cell::Histogram(_, h) => {
            let (last, last_start_ms) = h.last_input();
            KeptState::Histogram {
                total: Box::new(h.total().clone()),
                last_cumulative: last.map(Box::new),
                last_start_ms,
            }
        }
        _ => return None,
    };
    Some(Kept {
        start_ms: series.start_ms(),
        state,
    })
}

/// Whose references the keys of a walk's live entries are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Counted clones: the batch may outlive the walk (a whole flush, kept by its
    /// caller; a peek).
    Counted,
    /// Uncounted copies ([`SeriesKey::uncounted_copy`]) of the keys of series the
    /// flusher's list holds: a chunk lent to its consumer while the flush lock is held,
    /// whose keys [`forget_lent`] forgets after the call (and likewise the chunks of
    /// [`Aggregator::peek_in_order`], whose own copy of the list holds the series).
    /// A counted clone costs every series an atomic increment in the walk and a
    /// decrement when the chunk is emptied, by when its line has long left the cache
    /// (a chunked flush of 1M series took 52-57 ms with them, 38 without); the final
    /// shares of evicted series, which leave the list, are always counted.
    Lent,
}

/// Takes the interval's share out of a series' cell, sealing it if `evicted` (its last
/// share, always with a counted key), and moves its running total; `None` for a summary
/// never set. `now_ms` stamps set counts. Flusher only (it alone writes the totals).
/// With [`Keys::Lent`] the series must stay in the flusher's list until the entry is
/// forgotten (see there).
///
/// Live counters and gauges, nearly every series, are taken here, inlined into the
/// walk; the rest in [`collect_other`], whose histogram and summary paths need a
/// frame of several KB that a call per series would set up (and probe) each time.
#[inline(always)]
fn collect_into(
    out: &mut Vec<FlushedSeries>,
    series: &SharedSeries,
    evicted: bool,
    now_ms: i64,
    keys: Keys,
) {
    match (&series.cell, evicted) {
        (Cell::Counter(_, c), false) => {
            let value = counter_share(c, c.collect());
            push_entry(out, series, value, keys);
        }
        (Cell::Gauge(_, g), false) => {
            let (value, timestamp_ms) = g.read();
            let value = FlushedValue::Gauge {
                value,
                timestamp_ms,
            };
            push_entry(out, series, value, keys);
        }
        _ => out.extend(collect_other(series, evicted, now_ms, keys)),
    }
}

/// Appends `series`' entry to `out`. When there is room (always, in a walk: `walk`
/// allocates a chunk's capacity up front) it writes the entry in place, field by
/// field; `Vec::push`'s growth call would make the compiler build each entry on the
/// stack and copy it, and the copy's 16-byte loads of 8-byte stores stall store
/// forwarding on every series.
#[inline(always)]
fn push_entry(
    out: &mut Vec<FlushedSeries>,
    series: &SharedSeries,
    value: FlushedValue,
    keys: Keys,
) {
    let len = out.len();
    if len < out.capacity() {
        // SAFETY: `len < capacity`, so slot `len` is allocated and unused; it is
        // written once and then counted by `set_len`.
        unsafe {
            out.as_mut_ptr()
                .add(len)
                .write(flushed(series, value, keys));
            out.set_len(len + 1);
        }
    } else {
        out.push(flushed(series, value, keys));
    }
}

/// [`collect_into`] for the series it does not take inline: histograms, sets, summaries,
/// and the final share of every evicted series (with a counted key).
#[inline(never)]
fn collect_other(
    series: &SharedSeries,
    evicted: bool,
    now_ms: i64,
    keys: Keys,
) -> Option<FlushedSeries> {
    let value = match &series.cell {
        Cell::Counter(_, c) => counter_share(c, if evicted { c.seal() } else { c.collect() }),
        Cell::Gauge(_, g) => {
            let (value, timestamp_ms) = if evicted { g.seal() } else { g.read() };
            FlushedValue::Gauge {
                value,
                timestamp_ms,
            }
        }
        Cell::Histogram(_, h) => {
            let (delta, baseline) = if evicted { h.seal() } else { h.collect() };
            let mut total = h.total();
            if let Some(b) = &baseline {
                add_histogram(&mut total, b);
            }
            add_histogram(&mut total, &delta);
            FlushedValue::Histogram {
                delta: Box::new(delta),
                total: Box::new(total.clone()),
            }
        }
        Cell::Set(_, s) => FlushedValue::Gauge {
            value: (if evicted { s.seal() } else { s.collect() }) as f64,
            timestamp_ms: now_ms,
        },
        Cell::Summary(_, s) => {
            FlushedValue::Summary(Box::new(if evicted { s.seal() } else { s.read() }?))
        }
    };
    let keys = if evicted { Keys::Counted } else { keys };
    Some(flushed(series, value, keys))
}

/// A counter's batch value for the share `take`, moving its running total.
#[inline(always)]
fn counter_share(c: &Counter, take: CounterTake) -> FlushedValue {
    let total = c.total() + take.delta + take.baseline;
    c.set_total(total);
    FlushedValue::Counter {
        delta: take.delta,
        total,
    }
}

/// What [`collect_into`] would report now, without taking anything from the cell or moving
/// the running totals: the pending share as the delta, and the totals with it added.
fn peek(series: &SharedSeries, now_ms: i64, keys: Keys) -> Option<FlushedSeries> {
    let value = match &series.cell {
        Cell::Counter(_, c) => {
            let p = c.pending();
            FlushedValue::Counter {
                delta: p.delta,
                total: c.total() + p.delta + p.baseline,
            }
        }
        Cell::Gauge(_, g) => {
            let (value, timestamp_ms) = g.read();
            FlushedValue::Gauge {
                value,
                timestamp_ms,
            }
        }
        Cell::Histogram(_, h) => {
            let (delta, baseline) = h.pending();
            let mut total = h.total().clone();
            if let Some(b) = &baseline {
                add_histogram(&mut total, b);
            }
            add_histogram(&mut total, &delta);
            FlushedValue::Histogram {
                delta: Box::new(delta),
                total: Box::new(total),
            }
        }
        Cell::Set(_, s) => FlushedValue::Gauge {
            value: s.pending() as f64,
            timestamp_ms: now_ms,
        },
        Cell::Summary(_, s) => FlushedValue::Summary(Box::new(s.read()?)),
    };
    Some(flushed(series, value, keys))
}

#[inline(always)]
fn flushed(series: &SharedSeries, value: FlushedValue, keys: Keys) -> FlushedSeries {
    let key = match keys {
        Keys::Counted => series.key().clone(),
        // SAFETY: lent keys are asked for by two callers, each for the entries of chunks
        // it lends to its consumer and then empties with `forget_lent`, which forgets
        // their keys (a panic on the way leaks the chunk: both hold it in
        // `ManuallyDrop`); until then a counted reference keeps each series alive.
        // `walk`, for live entries: the flush lock is held throughout (its walker
        // threads are joined before it is released) and the flusher's list, whose
        // entries only the walk removes (evicted series, whose entries are counted,
        // after the walkers are done), holds the reference. `peek_in_order`: its own
        // sorted copy of the list, dropped only after the last chunk.
        Keys::Lent => unsafe { series.key().uncounted_copy() },
    };
    FlushedSeries {
        key,
        start_ms: series.start_ms(),
        value,
    }
}

/// Empties a chunk of a [`Keys::Lent`] walk once its consumer is done: its live entries'
/// keys are forgotten (they hold no reference) and their values dropped, the final
/// shares of evicted series (the last `evicted` entries, counted) dropped whole. Returns
/// the allocation, empty.
fn forget_lent(mut series: Vec<FlushedSeries>, evicted: usize) -> Vec<FlushedSeries> {
    series.truncate(series.len() - evicted);
    for entry in series.drain(..) {
        let FlushedSeries { key, value, .. } = entry;
        std::mem::forget(key);
        drop(value);
    }
    series
}

/// Adds `d` into `total`; both have the cell's bounds.
pub(super) fn add_histogram(total: &mut HistogramValue, d: &HistogramValue) {
    for (t, c) in total.counts.iter_mut().zip(&d.counts) {
        *t += c;
    }
    total.count += d.count;
    total.sum += d.sum;
    total.min = total.min.min(d.min);
    total.max = total.max.max(d.max);
}

/// Series walked between two offers of the flusher's core to other threads (a few
/// hundred microseconds of walk). On a machine whose cores are all busy, a receiver
/// woken during a flush of 1M series then waits for at most one such chunk instead of
/// the scheduler's full time slice. Writers never wait for the flush lock, so nothing
/// else is held up by the yield.
const YIELD_EVERY: usize = 8192;

/// How far ahead of the walk a series is prefetched.
const PREFETCH_AHEAD: usize = 16;

/// Asks for the series `PREFETCH_AHEAD` entries on: every cache line from its start to
/// its end, and with [`Keys::Counted`] on to the end of its key's header (the reference
/// count the batch's key clone increments), two or three lines depending on where the
/// block starts, so that the walk's misses overlap with the work on the current series
/// instead of following it.
#[inline(always)]
fn prefetch_ahead(series: &[SharedSeries], i: usize, keys: Keys) {
    if let Some(s) = series.get(i + PREFETCH_AHEAD) {
        let p: *const u8 = Keyed::as_ptr(s).cast();
        let last = match keys {
            Keys::Counted => SharedSeries::VALUE_AND_HEADER - 1,
            Keys::Lent => size_of::<Series>() - 1,
        };
        prefetch(p);
        prefetch(p.wrapping_add(64.min(last)));
        prefetch(p.wrapping_add(last));
    }
}

/// The capacity of a batch allocated for `series` entries: 1/16 more, so a slowly
/// growing series count does not allocate a fresh batch at every flush.
fn spare_capacity(series: usize) -> usize {
    series.saturating_add(series / 16)
}

/// Series per walker thread of a chunked flush: a list shorter than twice this is
/// walked on the flushing thread alone (64 in unit tests, so that they walk in
/// parallel too). At 128k series a walk takes a few milliseconds, against tens of
/// microseconds to start a thread.
const SERIES_PER_WALKER: usize = if cfg!(test) { 64 } else { 1 << 17 };

/// The most threads a flush walks with (its own included).
const MAX_WALKERS: usize = 4;

/// Series a walker of a parallel walk claims at a time: a tenth of a millisecond of
/// walk or so, against one atomic increment per block (16 in unit tests, whose lists
/// are short).
const WALK_BLOCK: usize = if cfg!(test) { 16 } else { 4096 };

/// Walker threads for a chunked flush of `series` on a machine with `cores`: one per
/// [`SERIES_PER_WALKER`] series, at most one per core and [`MAX_WALKERS`]; 1 means
/// the flushing thread walks alone. The model test (`shuttle`) always walks alone.
fn walkers_for(series: usize, cores: usize) -> usize {
    if cfg!(feature = "shuttle") {
        return 1;
    }
    (series / SERIES_PER_WALKER).clamp(1, cores.clamp(1, MAX_WALKERS))
}

/// The flushing thread's and the walkers' part of a walk: what is the same for every
/// series.
#[derive(Clone, Copy)]
struct Walk {
    now_ms: i64,
    ttl_ms: i64,
    chunk_len: usize,
    keys: Keys,
}

impl Walk {
    /// Takes the share of every series in `series` (the flusher's list from index
    /// `base`) that is not idle for the TTL into `out`, handing `full` each chunk of
    /// `chunk_len` entries (`full` gives back the allocation to fill next, empty, or
    /// `None` to stop the walk: its consumer is gone; false is returned then), and
    /// lists the idle ones' indices in `idle`, ascending, for the flushing thread to
    /// evict. Their activity is noted here (`Series::notice_activity`), once per
    /// flush.
    fn live(
        self,
        series: &[SharedSeries],
        base: usize,
        out: &mut Vec<FlushedSeries>,
        idle: &mut Vec<usize>,
        full: &mut impl FnMut(Vec<FlushedSeries>) -> Option<Vec<FlushedSeries>>,
    ) -> bool {
        for (i, s) in series.iter().enumerate() {
            prefetch_ahead(series, i, self.keys);
            let active_at_ms = s.notice_activity(self.now_ms);
            if self.ttl_ms > 0 && self.now_ms - active_at_ms >= self.ttl_ms {
                idle.push(base + i);
                continue;
            }
            collect_into(out, s, false, self.now_ms, self.keys);
            if out.len() >= self.chunk_len {
                match full(std::mem::take(out)) {
                    Some(next) => *out = next,
                    None => return false,
                }
            }
            if (base + i + 1).is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            }
        }
        true
    }

    /// [`Walk::live`] over the whole list, block by block ([`WALK_BLOCK`] series), by
    /// this thread and `walkers - 1` scoped threads, each claiming the next block not
    /// yet taken until none is left: a walker that the scheduler puts aside holds up
    /// the flush by one block, not by a share of the list. Every chunk reaches `emit`
    /// on this thread: the other walkers' between two of its own and at the end, so
    /// the consumer sees them in no fixed order, and each walker's last chunk as it
    /// is, shorter than `chunk_len`. The idle series end up in `idle`, ascending. Only
    /// for [`Keys::Lent`] walks: the flushing thread holds the flush lock and does not
    /// touch the list until every walker is done, so the list holds every lent key
    /// until `emit` forgets it.
    fn parallel(
        self,
        series: &[SharedSeries],
        walkers: usize,
        idle: &mut Vec<usize>,
        mut emit: impl FnMut(Vec<FlushedSeries>) -> Vec<FlushedSeries>,
    ) {
        debug_assert!(self.keys == Keys::Lent);
        let cursor = AtomicUsize::new(0);
        // Allocations that `emit` gave back, for the walkers' next chunks.
        let spares = std::sync::Mutex::new(Vec::<Vec<FlushedSeries>>::new());
        // A chunk never holds more than the list (a caller may ask for one chunk).
        let capacity = self.chunk_len.min(series.len());
        let take_spare = || {
            let spare = spares.lock().unwrap_or_else(|p| p.into_inner()).pop();
            spare.unwrap_or_else(|| Vec::with_capacity(capacity))
        };
        std::thread::scope(|scope| {
            // Chunks travel as `ManuallyDrop`: should this thread panic, the channel's
            // unread ones leak rather than give back references they never took. Two
            // per walker in flight at most, so a consumer slower than the walk holds
            // the walkers back instead of their chunks piling up.
            let (tx, rx) = std::sync::mpsc::sync_channel(2 * walkers);
            // A thread that cannot be started (a process at its thread limit) is done
            // without: the walkers that run claim its blocks.
            let others: Vec<_> = (1..walkers)
                .filter_map(|_| {
                    let tx: std::sync::mpsc::SyncSender<ManuallyDrop<Vec<FlushedSeries>>> =
                        tx.clone();
                    let (cursor, take_spare) = (&cursor, &take_spare);
                    let walker = std::thread::Builder::new().name("weir-flush-walk".into());
                    walker
                        .spawn_scoped(scope, move || {
                            let mut idle = Vec::new();
                            let mut out = ManuallyDrop::new(take_spare());
                            // An error means the flushing thread is unwinding (its consumer
                            // panicked): the chunk leaks, and the walk stops.
                            let mut send = |chunk| {
                                tx.send(ManuallyDrop::new(chunk))
                                    .ok()
                                    .map(|()| take_spare())
                            };
                            self.claimed(series, cursor, &mut out, &mut idle, &mut send);
                            let last = ManuallyDrop::into_inner(out);
                            if last.is_empty() {
                                drop(last);
                            } else {
                                let _ = tx.send(ManuallyDrop::new(last));
                            }
                            idle
                        })
                        .ok()
                })
                .collect();
            drop(tx);
            let mut give_back = |chunk: ManuallyDrop<Vec<FlushedSeries>>| {
                let spare = emit(ManuallyDrop::into_inner(chunk));
                spares.lock().unwrap_or_else(|p| p.into_inner()).push(spare);
            };
            // This thread walks too, handing over the other walkers' chunks that are
            // ready after each of its own.
            let mut out = ManuallyDrop::new(take_spare());
            self.claimed(series, &cursor, &mut out, idle, &mut |chunk| {
                give_back(ManuallyDrop::new(chunk));
                while let Ok(theirs) = rx.try_recv() {
                    give_back(theirs);
                }
                Some(take_spare())
            });
            if out.is_empty() {
                drop(ManuallyDrop::into_inner(out));
            } else {
                give_back(out);
            }
            for chunk in rx {
                give_back(chunk);
            }
            for walker in others {
                match walker.join() {
                    Ok(their_idle) => idle.extend(their_idle),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
        idle.sort_unstable();
    }

    /// [`Walk::live`] over the blocks of `series` that `cursor` hands out, until none
    /// is left or `full` stops the walk.
    fn claimed(
        self,
        series: &[SharedSeries],
        cursor: &AtomicUsize,
        out: &mut Vec<FlushedSeries>,
        idle: &mut Vec<usize>,
        full: &mut impl FnMut(Vec<FlushedSeries>) -> Option<Vec<FlushedSeries>>,
    ) {
        loop {
            // Relaxed: the cursor only hands out distinct blocks; the list it indexes
            // was shared with the walkers before they started.
            let start = cursor.fetch_add(WALK_BLOCK, Ordering::Relaxed);
            if start >= series.len() {
                return;
            }
            let block = &series[start..series.len().min(start + WALK_BLOCK)];
            if !self.live(block, start, out, idle, full) {
                return;
            }
        }
    }
}

/// What only the flusher touches.
pub(super) struct FlusherState {
    /// Every series, in the order the flusher first saw them (evictions swap the last
    /// one into the gap). 8 bytes each: what the flusher keeps per series lives in the
    /// series (see `Series`).
    pub(super) series: Vec<SharedSeries>,
    pub(super) sequence: u64,
    pub(super) last_flush_ms: i64,
    /// An empty batch vector handed back by [`Aggregator::recycle`], which the next
    /// flush fills instead of allocating (and page-faulting in) a fresh one.
    pub(super) spare: Vec<FlushedSeries>,
    /// The machine's cores, as far as this process may use them: how many threads a
    /// chunked flush of many series may walk with (see `walkers_for`).
    pub(super) cores: usize,
}

impl FlusherState {
    /// Appends the series created since the last call to the list, in creation order.
    pub(super) fn take_created(&mut self, created: &SegQueue<SharedSeries>) {
        while let Some(s) = created.pop() {
            self.series.push(s);
        }
    }
}

impl Aggregator {
    /// Flushes now (wall clock).
    pub fn flush(&self) -> FlushBatch {
        self.flush_at(now_ms())
    }

    /// The current state of every live series, without flushing: what a flush now would
    /// report, except that nothing is taken out of the cells, no running total moves,
    /// nothing is evicted and the flush sequence stays. Counters and histograms carry
    /// their pending share as the delta and their running totals with it added, so
    /// [`prometheus_text`](crate::encode::prometheus_text) renders the values a scrape
    /// expects, while every point still goes into exactly one real flush (the
    /// exposition pages of the daemon and of embedded instances read the cells this
    /// way, through [`Aggregator::peek_in_order`], so scraping never steals from the
    /// pipelines). The returned batch has the last
    /// flush's `sequence`, and `start_ms` .. `end_ms` from the last flush to now. Takes
    /// the flush lock (a concurrent flush waits, writers do not); each cell is read
    /// with plain loads, so points racing the peek may or may not be included, and a
    /// histogram's words may be read mid-update.
    ///
    /// ```
    /// use weir_core::{Aggregator, MetricKind};
    /// let agg = Aggregator::default();
    /// let h = agg.handle("hits_total", &[], MetricKind::Counter).unwrap();
    /// h.increment(2).unwrap();
    /// assert_eq!(agg.peek().counter_delta_sum(), 2.0);
    /// assert_eq!(agg.flush().counter_delta_sum(), 2.0);
    /// ```
    pub fn peek(&self) -> FlushBatch {
        let sh = &*self.shared;
        let mut st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = now_ms().max(sh.clock_ms.load(Ordering::Relaxed));
        // New series join the flusher's list here as they would at the next flush.
        // Their creation stamp is left for that flush to notice, so their idle time
        // counts from it as for any other update.
        st.take_created(&sh.created);
        // Sized up front: `collect` from a filter would grow by doubling.
        let mut series = Vec::with_capacity(st.series.len());
        series.extend(
            st.series
                .iter()
                .filter_map(|s| peek(s, now_ms, Keys::Counted)),
        );
        FlushBatch {
            sequence: st.sequence,
            start_ms: st.last_flush_ms,
            end_ms: now_ms,
            series,
            evicted: 0,
        }
    }

    /// [`Aggregator::peek`], handed to `each` in chunks of at most `chunk_len` entries
    /// (at least one), the series in the order of
    /// [`SeriesKey::cmp_by_name`](crate::SeriesKey::cmp_by_name): what an exposition
    /// page renders, without the whole batch (40 bytes per series) that sorting a
    /// peek would hold. It holds 8 bytes per series (a reference to each, sorted
    /// without any lock) and one chunk. Every chunk has the sequence of the last flush
    /// before the call, which is returned, and `end_ms` of the call; each chunk's
    /// values are read under the flush lock, so a flush between two chunks shows in
    /// the later one's values (never half in one series), and series it evicts are
    /// left out. `each` runs without the lock; it may flush or peek.
    ///
    /// ```
    /// use weir_core::{Aggregator, MetricKind};
    /// let agg = Aggregator::default();
    /// for q in ["c", "a", "b"] {
    ///     agg.handle("jobs_total", &[("q", q)], MetricKind::Counter).unwrap().increment(1).unwrap();
    /// }
    /// let mut seen = Vec::new();
    /// agg.peek_in_order(2, |c| seen.extend(c.series.iter().map(|s| s.key.to_string())));
    /// assert_eq!(seen, [r#"jobs_total{q="a"}"#, r#"jobs_total{q="b"}"#, r#"jobs_total{q="c"}"#]);
    /// ```
    pub fn peek_in_order(&self, chunk_len: usize, mut each: impl FnMut(&FlushBatch)) -> u64 {
        let sh = &*self.shared;
        let (mut list, sequence, start_ms) = {
            let mut st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
            // As in `peek`: new series join the flusher's list here.
            st.take_created(&sh.created);
            (st.series.clone(), st.sequence, st.last_flush_ms)
        };
        list.sort_unstable_by(|a, b| a.key().cmp_by_name(b.key()));
        let now_ms = now_ms().max(sh.clock_ms.load(Ordering::Relaxed));
        let chunk_len = chunk_len.max(1);
        let mut entries = Vec::with_capacity(chunk_len.min(list.len()));
        for part in list.chunks(chunk_len) {
            {
                let _st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
                // Under the flush lock, a series a flush has evicted since the copy is
                // marked retired, and none is being evicted.
                let live = part.iter().filter(|s| !s.handles().retired());
                entries.extend(live.filter_map(|s| peek(s, now_ms, Keys::Lent)));
            }
            // Held as `ManuallyDrop` while `each` runs: should it panic, the chunk leaks
            // rather than giving back references its entries never took.
            let batch = ManuallyDrop::new(FlushBatch {
                sequence,
                start_ms,
                end_ms: now_ms,
                series: entries,
                evicted: 0,
            });
            each(&batch);
            entries = forget_lent(ManuallyDrop::into_inner(batch).series, 0);
        }
        sequence
    }

    /// Hands a batch back once its consumers are done with it, so that the next flush
    /// fills its allocation instead of a fresh one. At 1M series a batch is ~50 MB,
    /// and a fresh one costs the kernel's zeroing of every page as the flush first
    /// writes it (about a third of the flush); a reused one is already resident. The
    /// entries are dropped here, on the caller's thread, before the flush lock is
    /// taken. The aggregator keeps one spare, the larger, so its memory stays resident
    /// between flushes: the price of the faster flush. A caller that never recycles
    /// gets a fresh allocation per flush, as before.
    ///
    /// ```
    /// use weir_core::{Aggregator, MetricKind};
    /// let agg = Aggregator::default();
    /// let h = agg.handle("hits_total", &[], MetricKind::Counter).unwrap();
    /// h.increment(2).unwrap();
    /// agg.recycle(agg.flush());
    /// h.increment(3).unwrap();
    /// assert_eq!(agg.flush().counter_delta_sum(), 3.0);
    /// ```
    pub fn recycle(&self, batch: FlushBatch) {
        let mut series = batch.series;
        series.clear();
        let mut st = self
            .shared
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if series.capacity() > st.spare.capacity() {
            st.spare = series;
        }
    }

    /// Takes every series' share since the previous flush, evicts series idle for
    /// `series_ttl` (their last shares end the batch: [`FlushBatch::evicted_series`]),
    /// and returns the batch. `now_ms` is the flush time (milliseconds since the Unix
    /// epoch); tests pass their own clock. Ingestion continues throughout; concurrent
    /// flushes run one after the other.
    pub fn flush_at(&self, now_ms: i64) -> FlushBatch {
        let mut whole = None;
        self.walk(now_ms, usize::MAX, Keys::Counted, |batch| {
            whole = Some(batch);
            Vec::new()
        });
        whole.unwrap_or_else(|| FlushBatch {
            sequence: 0,
            start_ms: now_ms,
            end_ms: now_ms,
            series: Vec::new(),
            evicted: 0,
        })
    }

    /// Flushes now (wall clock) in chunks: [`Aggregator::flush_chunked_at`].
    pub fn flush_chunked(&self, chunk_len: usize, each: impl FnMut(&FlushBatch)) {
        self.flush_chunked_at(now_ms(), chunk_len, each);
    }

    /// [`Aggregator::flush_at`], handing the batch to `each` in chunks of at most
    /// `chunk_len` live entries (at least one) instead of returning it whole. Every
    /// chunk has the flush's `sequence`, `start_ms` and `end_ms`; the last one, always
    /// given (empty when there is nothing to flush), has up to `chunk_len` live entries
    /// and then the final shares of the series this flush evicts. A few chunks'
    /// allocations serve the whole flush (one, and the next flushes reuse it, while it
    /// walks on one thread), so a consumer that encodes each chunk as it comes keeps a
    /// few times `chunk_len` entries resident rather than one per series (40 MB at 1M
    /// series).
    ///
    /// Up to 256k series, the chunks are full but the last and come in the order of a
    /// whole flush. From there on the series are walked by several threads (one per
    /// core and 128k series, at most 4, this one among them), each claiming 4,096 of
    /// them at a time, and the chunks come as the walkers fill them: in no fixed
    /// order, and each walker's last one shorter.
    ///
    /// `each` runs on the calling thread with the flush lock held: peeks and other
    /// flushes wait for it, writers do not. It must not flush or peek this aggregator.
    ///
    /// ```
    /// use weir_core::{Aggregator, MetricKind};
    /// let agg = Aggregator::default();
    /// for q in ["a", "b", "c"] {
    ///     agg.handle("jobs_total", &[("q", q)], MetricKind::Counter).unwrap().increment(1).unwrap();
    /// }
    /// let mut chunks = Vec::new();
    /// agg.flush_chunked_at(1_000, 2, |c| chunks.push((c.sequence, c.series.len())));
    /// assert_eq!(chunks, [(1, 2), (1, 1)]);
    /// ```
    pub fn flush_chunked_at(
        &self,
        now_ms: i64,
        chunk_len: usize,
        mut each: impl FnMut(&FlushBatch),
    ) {
        self.walk(now_ms, chunk_len.max(1), Keys::Lent, |batch| {
            // Held as `ManuallyDrop` while `each` runs: should it panic, the chunk leaks
            // rather than giving back references its live entries never took.
            let batch = ManuallyDrop::new(batch);
            each(&batch);
            let FlushBatch {
                series, evicted, ..
            } = ManuallyDrop::into_inner(batch);
            forget_lent(series, evicted)
        });
    }

    /// The flush walk: hands `emit` the batch in chunks of at most `chunk_len` live
    /// entries, the last one (always given) with the evicted series' final shares
    /// after its live ones. `emit` gives back the allocation to fill next, empty. The
    /// live entries' keys are as `keys` says; with [`Keys::Lent`], `emit` must empty
    /// each chunk with [`forget_lent`] before it returns.
    fn walk(
        &self,
        now_ms: i64,
        chunk_len: usize,
        keys: Keys,
        mut emit: impl FnMut(FlushBatch) -> Vec<FlushedSeries>,
    ) {
        let sh = &*self.shared;
        let mut st = sh.flusher.lock().unwrap_or_else(|p| p.into_inner());
        // Relaxed: a coarse stamp for writers; see `Shared::clock_ms`.
        sh.clock_ms.store(now_ms, Ordering::Relaxed);
        st.take_created(&sh.created);
        {
            let mut table = sh.kept.lock().unwrap_or_else(|p| p.into_inner());
            if table.len() > 0 {
                table.expire(now_ms);
            }
        }
        // `ManuallyDrop`: with lent keys, a panic in the walk must leak the entries
        // rather than give back references they never took.
        let mut out = ManuallyDrop::new(std::mem::take(&mut st.spare));
        let wanted = st.series.len().min(chunk_len);
        if out.capacity() < wanted {
            // A fresh allocation sized to the series plus 1/16 for growth, not
            // `reserve`'s doubling: a spare of 999k entries that meets 1M series would
            // become a 2M-entry (96 MB) batch, and being the larger it would stay as
            // the spare. The old spare is empty, so nothing is copied.
            *out = Vec::with_capacity(spare_capacity(wanted));
        }
        let sequence = st.sequence + 1;
        let start_ms = st.last_flush_ms;
        let ttl_ms = i64::try_from(sh.config.series_ttl.as_millis()).unwrap_or(i64::MAX);
        let batch = |series: Vec<FlushedSeries>, evicted: usize| FlushBatch {
            sequence,
            start_ms,
            end_ms: now_ms,
            series,
            evicted,
        };
        // Every live series' share, in chunks; the idle ones are only listed (by
        // index, ascending) and evicted below, on this thread alone.
        let mut idle = Vec::new();
        let walk = Walk {
            now_ms,
            ttl_ms,
            chunk_len,
            keys,
        };
        let walkers = if keys == Keys::Lent {
            walkers_for(st.series.len(), st.cores)
        } else {
            1
        };
        if walkers > 1 {
            walk.parallel(&st.series, walkers, &mut idle, |chunk| {
                emit(batch(chunk, 0))
            });
        } else {
            // Never stopped: `emit` always gives an allocation back.
            walk.live(&st.series, 0, &mut out, &mut idle, &mut |chunk| {
                Some(emit(batch(chunk, 0)))
            });
        }
        // The final shares of evicted series, which go after every live one (the
        // batch counts them rather than flagging each entry). Evictions are rare, so
        // this allocates only in flushes that evict. From the highest index down, so
        // that the series `swap_remove` moves into a gap is never one still to visit.
        let mut evicted = Vec::new();
        for &i in idle.iter().rev() {
            let s = &st.series[i];
            if !try_retire(s) {
                // A handle holds it: it stays, and its share is taken as any other.
                collect_into(&mut out, s, false, now_ms, keys);
                if out.len() >= chunk_len {
                    *out = emit(batch(std::mem::take(&mut *out), 0));
                }
                continue;
            }
            // Counters and histograms keep their totals for a successor. The table's
            // lock is held from before the removal until the totals are in the table,
            // and creators of counters and histograms hold it from their second index
            // lookup until their insert (`Shared::resolve`), so a successor created
            // after the removal waits for the totals and resumes them.
            let keeps = matches!(s.cell, Cell::Counter(_, _) | Cell::Histogram(_, _));
            let mut table = keeps.then(|| sh.kept.lock().unwrap_or_else(|p| p.into_inner()));
            // Out of the index first, so writers that find the cell sealed resolve
            // to a successor rather than to this series again.
            sh.index.remove(s);
            collect_into(&mut evicted, s, true, now_ms, keys);
            if let (Some(t), Some(k)) = (table.as_mut(), kept(s)) {
                // A key of its own: a clone of the series' key would keep the whole
                // series (cell included) alive for as long as the totals are kept.
                let key = SeriesKey::from_canonical(s.key().as_bytes());
                let dropped = t.insert(key, k, now_ms);
                sh.kept_dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            drop(table);
            let s = st.series.swap_remove(i);
            // By name: the series does not hold its family. If the family it was
            // counted in was dropped in a race (see below) this may release a
            // newer one's count, which `release` keeps from going below zero.
            if let Some(f) = sh.families.pin().get(s.key().name()) {
                f.release();
            }
            sh.active.fetch_sub(1, Ordering::AcqRel);
            sh.evicted.fetch_add(1, Ordering::Relaxed);
        }
        // Families whose series are all gone are dropped so churning names do not
        // grow memory. A creator that admitted a series into a family dropped here in
        // the same instant counted it in the dropped family: the name's count then
        // undercounts by one while that series lives, and its eviction releases the
        // newer family's count (never below zero).
        sh.families
            .pin()
            .retain(|_, f| f.active.load(Ordering::Acquire) > 0);
        // The index's references to the series evicted above are freed through the
        // epoch: let it free them now (see there).
        series_index::reclaim();
        let evicted_count = evicted.len();
        out.append(&mut evicted);
        st.sequence = sequence;
        sh.flushes.store(sequence, Ordering::Relaxed);
        st.last_flush_ms = now_ms;
        let spare = emit(batch(ManuallyDrop::into_inner(out), evicted_count));
        if spare.capacity() > st.spare.capacity() {
            st.spare = spare;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::MetricKind;

    #[test]
    fn a_flushed_key_points_into_its_series_allocation() {
        let agg = Aggregator::default();
        let h = agg
            .handle("hits_total", &[("path", "/")], MetricKind::Counter)
            .unwrap();
        h.increment(1).unwrap();
        let batch = agg.flush();
        let key = &batch.series[0].key;
        let series_start = Keyed::as_ptr(&h.series) as usize;
        assert_eq!(
            key.as_bytes().as_ptr() as usize,
            series_start + SharedSeries::VALUE_AND_HEADER,
            "the batch's key is the series' own, behind the series and its header"
        );
        assert_eq!(key, h.key());
        assert_eq!(key.to_string(), r#"hits_total{path="/"}"#);
    }

    /// A chunked flush lends its live entries the series' own keys without counting
    /// them (`Keys::Lent`): whatever a series' kind (counters and gauges are taken
    /// inline, the rest out of line), it has the same references after the flush as
    /// before, a clone the consumer keeps is a reference of its own, and the final
    /// shares of evicted series (counted) give theirs back.
    #[test]
    fn a_chunked_flush_lends_keys_and_leaves_every_reference_as_it_was() {
        let agg = Aggregator::new(crate::AggregatorConfig {
            series_ttl: std::time::Duration::from_secs(60),
            ..crate::AggregatorConfig::default()
        });
        let summary = crate::point::SummaryValue {
            count: 1,
            sum: 2.0,
            quantiles: vec![],
        };
        let record_all = |now_ms: i64| {
            let samples = [
                (
                    "c_total",
                    crate::Sample::Counter(1.0, crate::Temporality::Delta),
                ),
                ("g", crate::Sample::Gauge(1.0)),
                (
                    "h",
                    crate::Sample::Observe {
                        value: 1.0,
                        count: 1,
                    },
                ),
                ("s", crate::Sample::SetMember("m")),
                ("q", crate::Sample::Summary(&summary)),
            ];
            for (name, sample) in samples {
                agg.record(name, &[], sample, now_ms).unwrap();
            }
        };
        record_all(1_000);
        agg.flush_at(1_000); // the flusher takes the series in
        let series: Vec<SharedSeries> = agg.shared.flusher.lock().unwrap().series.clone();
        assert_eq!(series.len(), 5);
        let before: Vec<u32> = series.iter().map(Keyed::references).collect();
        record_all(2_000);
        let mut kept = Vec::new();
        let mut entries = 0;
        agg.flush_chunked_at(2_000, 2, |chunk| {
            entries += chunk.series.len();
            kept.push(chunk.series[0].key.clone());
        });
        assert_eq!(entries, 5);
        let after: Vec<u32> = series.iter().map(Keyed::references).collect();
        let kept_one: Vec<u32> = series
            .iter()
            .map(|s| u32::from(kept.iter().any(|k| k == s.key())))
            .collect();
        let expected: Vec<u32> = before.iter().zip(&kept_one).map(|(b, k)| b + k).collect();
        assert_eq!(
            after, expected,
            "only the consumer's clones add a reference"
        );
        drop(kept);
        assert_eq!(
            series.iter().map(Keyed::references).collect::<Vec<_>>(),
            before
        );

        // Idle past the TTL: every series is evicted into the last chunk, counted.
        drop(series);
        let mut evicted = Vec::new();
        agg.flush_chunked_at(120_000, 2, |chunk| {
            evicted.extend(chunk.evicted_series().iter().map(|s| s.key.clone()));
        });
        assert_eq!(evicted.len(), 5);
        // The index gives its reference back through the epoch, which other tests'
        // threads, pinned meanwhile, may hold back for a while (bounded wait).
        for _ in 0..10_000 {
            if evicted.iter().all(|k| k.references() == 1) {
                break;
            }
            super::super::series_index::reclaim();
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        for key in &evicted {
            assert_eq!(key.references(), 1, "{key}: only the test's clone is left");
        }
    }

    /// Flushes `series` counters of `agg`, each incremented by 2, in chunks of
    /// `chunk_len` to a consumer that panics at its `fails_at`-th chunk; checks that
    /// the leaked chunks took and gave back no reference; then increments each by 3
    /// and returns what the next chunked flush takes.
    fn flush_to_a_panicking_consumer(
        agg: &Aggregator,
        series: usize,
        chunk_len: usize,
        fails_at: usize,
    ) -> f64 {
        let handles: Vec<_> = (0..series)
            .map(|i| {
                let v = i.to_string();
                agg.handle("hits_total", &[("i", &v)], MetricKind::Counter)
                    .unwrap()
            })
            .collect();
        agg.flush_at(1_000);
        let references = || -> Vec<u32> {
            handles
                .iter()
                .map(|h| Keyed::references(&h.series))
                .collect()
        };
        let before = references();
        for h in &handles {
            h.increment(2).unwrap();
        }
        let mut seen = 0;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            agg.flush_chunked_at(2_000, chunk_len, |_| {
                seen += 1;
                assert!(seen < fails_at, "consumer fails");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(
            references(),
            before,
            "the leaked chunks' lent keys took and gave back nothing"
        );
        for h in &handles {
            h.increment(3).unwrap();
        }
        let mut sum = 0.0;
        agg.flush_chunked_at(3_000, chunk_len, |c| sum += c.counter_delta_sum());
        sum
    }

    /// A consumer that panics mid-flush leaks its chunk (lent keys are never given
    /// back for references they did not take); the aggregator flushes on afterwards,
    /// every series alive and counted as before.
    #[test]
    fn a_panicking_chunk_consumer_leaks_its_chunk_and_gives_back_nothing() {
        let sum = flush_to_a_panicking_consumer(&Aggregator::default(), 5, 2, 1);
        // The two series of the chunk that reached the consumer were taken by the
        // failed flush; the other three still had their share of 2 pending.
        assert_eq!(sum, 5.0 * 3.0 + 3.0 * 2.0);
    }

    /// An aggregator whose chunked flushes walk with up to `cores` threads, whatever
    /// the machine has.
    fn with_cores(config: crate::AggregatorConfig, cores: usize) -> Aggregator {
        let agg = Aggregator::starting_at(config, 1_000);
        agg.shared.flusher.lock().unwrap().cores = cores;
        agg
    }

    /// Every entry of a flush as text, sorted: what two flushes are compared by.
    fn entries(series: &[FlushedSeries]) -> Vec<String> {
        let mut v: Vec<String> = series
            .iter()
            .map(|e| format!("{} {:?}", e.key, e.value))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_flush_walks_with_one_thread_per_128k_series_up_to_the_cores() {
        let per = SERIES_PER_WALKER;
        assert_eq!(walkers_for(0, 8), 1);
        assert_eq!(walkers_for(2 * per - 1, 8), 1);
        assert_eq!(walkers_for(2 * per, 8), 2);
        assert_eq!(walkers_for(3 * per, 2), 2);
        assert_eq!(walkers_for(100 * per, 8), MAX_WALKERS);
        assert_eq!(walkers_for(100 * per, 1), 1);
        assert_eq!(walkers_for(100 * per, 0), 1);
    }

    /// A chunked flush of many series walks them with several threads (here 4 over
    /// 1,231 series): it hands over exactly the entries a flush on one thread does,
    /// each once, in chunks of at most `chunk_len`, the evicted series' final shares
    /// last; an idle series that a handle holds stays and is flushed as a live one;
    /// and every series has the references it had before.
    #[test]
    fn a_parallel_chunked_flush_gives_what_a_serial_flush_gives() {
        let config = crate::AggregatorConfig {
            series_ttl: std::time::Duration::from_secs(60),
            ..crate::AggregatorConfig::default()
        };
        let (parallel, serial) = (with_cores(config.clone(), 4), with_cores(config, 1));
        // 1,000 counters, and in the first round 200 gauges and 31 histograms among
        // them (so that the idle series are spread over the list).
        let feed = |agg: &Aggregator, round: u32, now_ms: i64| {
            let mut w = agg.writer();
            for i in 0..1_000u32 {
                let v = i.to_string();
                let sample =
                    crate::Sample::Counter(f64::from(round + i), crate::Temporality::Delta);
                w.record("jobs_total", &[("i", &v)], sample, now_ms)
                    .unwrap();
                if round == 0 && i % 5 == 0 {
                    w.record("temp", &[("i", &v)], crate::Sample::Gauge(1.0), now_ms)
                        .unwrap();
                }
                if round == 0 && i % 33 == 0 {
                    let sample = crate::Sample::Observe {
                        value: 2.0,
                        count: 1,
                    };
                    w.record("lat", &[("i", &v)], sample, now_ms).unwrap();
                }
            }
        };
        let held = parallel
            .handle("temp", &[("i", "5")], MetricKind::Gauge)
            .unwrap();
        let held_too = serial
            .handle("temp", &[("i", "5")], MetricKind::Gauge)
            .unwrap();
        let t0 = 1_000_000_000_000;
        for (round, now) in [(0, t0), (1, t0 + 60_000), (2, t0 + 120_000)] {
            feed(&parallel, round, now);
            feed(&serial, round, now);
            let listed: Vec<SharedSeries> = {
                let sh = &parallel.shared;
                let mut st = sh.flusher.lock().unwrap();
                st.take_created(&sh.created);
                st.series.clone()
            };
            let before: Vec<u32> = listed.iter().map(Keyed::references).collect();
            let want = serial.flush_at(now);
            let (mut got, mut chunks, mut last_evicted) = (Vec::new(), 0, 0);
            parallel.flush_chunked_at(now, 100, |c| {
                // A slow consumer: the other walkers claim blocks meanwhile.
                std::thread::sleep(std::time::Duration::from_micros(300));
                assert!(c.series.len() - c.evicted <= 100);
                assert_eq!((c.sequence, c.end_ms), (want.sequence, want.end_ms));
                got.extend(entries(&c.series));
                chunks += 1;
                last_evicted = c.evicted;
                if c.evicted > 0 {
                    assert_eq!(entries(c.evicted_series()), entries(want.evicted_series()));
                }
            });
            got.sort_unstable();
            assert_eq!(got, entries(&want.series), "round {round}");
            assert!(chunks > 4, "round {round}: {chunks} chunks");
            // The idle gauges and histograms go in the second round but the held
            // gauge.
            let evicted = if round == 1 { 199 + 31 } else { 0 };
            assert_eq!((last_evicted, want.evicted), (evicted, evicted));
            // An evicted series is one reference short, the list's, and soon two, the
            // index's (given back through the epoch).
            let after: Vec<u32> = listed.iter().map(Keyed::references).collect();
            for ((s, b), a) in listed.iter().zip(&before).zip(&after) {
                if s.handles().retired() {
                    assert!(*a == b - 1 || *a == b - 2, "{}: {b} -> {a}", s.key());
                } else {
                    assert_eq!(a, b, "{}", s.key());
                }
            }
            // Chunks as large as a caller likes (nothing is left to take): no
            // allocation of that size.
            let mut left = 0.0;
            parallel.flush_chunked_at(now, usize::MAX, |c| left += c.counter_delta_sum());
            assert_eq!((left, serial.flush_at(now).counter_delta_sum()), (0.0, 0.0));
        }
        assert!(!held.series.handles().retired());
        drop((held, held_too));
    }

    /// A consumer that panics while walkers are under way: every chunk it did not
    /// finish leaks (lent keys give nothing back), the walkers stop, and the
    /// aggregator flushes on with every series alive.
    #[test]
    fn a_panicking_consumer_of_a_parallel_flush_leaks_and_gives_back_nothing() {
        let agg = with_cores(crate::AggregatorConfig::default(), 2);
        let sum = flush_to_a_panicking_consumer(&agg, 1_000, 50, 3);
        // Two chunks were taken by the failed flush; the shares of chunks that did not
        // reach the consumer are lost with them, the others are still pending.
        assert!(
            (3.0 * 1_000.0..=5.0 * 1_000.0 - 200.0).contains(&sum),
            "{sum}"
        );
    }

    /// Writers on two threads race parallel chunked flushes whose clock evicts idle
    /// series all the time (while the writers' caches still hold them): the flushed
    /// counts add up to what was sent.
    #[test]
    fn writers_racing_parallel_flushes_that_evict_lose_and_double_nothing() {
        const ROUNDS: u32 = 40;
        const SERIES: u32 = 600;
        let agg = with_cores(
            crate::AggregatorConfig {
                series_ttl: std::time::Duration::from_millis(2),
                ..crate::AggregatorConfig::default()
            },
            3,
        );
        let done = std::sync::atomic::AtomicUsize::new(0);
        let (flushed, flushes) = std::thread::scope(|scope| {
            for t in 0..2u32 {
                let (agg, done) = (&agg, &done);
                scope.spawn(move || {
                    let mut w = agg.writer();
                    for round in 0..ROUNDS {
                        // Each thread leaves a different part idle every other round.
                        for i in (0..SERIES).filter(|i| (i + round + t) % 3 != 0) {
                            let v = i.to_string();
                            let one = crate::Sample::Counter(1.0, crate::Temporality::Delta);
                            w.record("hits_total", &[("i", &v)], one, 0).unwrap();
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            let (mut sum, mut now, mut flushes) = (0.0, 1_000_000_000_000i64, 0);
            while done.load(Ordering::SeqCst) < 2 && flushes < 100_000 {
                now += 1;
                agg.flush_chunked_at(now, 16, |c| sum += c.counter_delta_sum());
                flushes += 1;
            }
            // Past the TTL for every series: the last shares of all of them, evicted
            // (whether or not the racing flushes evicted any, which depends on timing).
            // A series written after the last racing flush is seen active by the first
            // of these (activity is noticed per flush), so it is evicted by the second.
            for later in [1_000, 3_000] {
                agg.flush_chunked_at(now + later, 16, |c| sum += c.counter_delta_sum());
            }
            (sum, flushes)
        });
        let sent: u32 = (0..2u32)
            .map(|t| {
                (0..ROUNDS)
                    .map(|r| (0..SERIES).filter(|i| (i + r + t) % 3 != 0).count() as u32)
                    .sum::<u32>()
            })
            .sum();
        assert_eq!(flushed, f64::from(sent), "after {flushes} flushes");
        assert!(flushes > 1, "flushes ran while the writers wrote");
        assert!(
            agg.stats().evicted_series >= u64::from(SERIES),
            "every series was evicted at least once"
        );
    }

    #[test]
    fn the_flusher_keeps_8_bytes_per_series_and_a_series_is_64() {
        // The flusher's list holds only the series' addresses (8 MB at 1M); its
        // running totals and activity time live in the series, which holds neither a
        // pointer to its family nor a fingerprint (its key gives one on demand), keeps
        // its handle count in the cell's tag padding (see `series::Cell`) and its start
        // and activity in 32-bit seconds. At 64 bytes with the key's 8-byte header a
        // series with a 28-byte key (StatsD's shape) fits a 112-byte malloc chunk, and
        // one with a 64-byte key (a scraped series with job and instance) 144.
        assert_eq!(size_of::<SharedSeries>(), 8);
        assert_eq!(size_of::<Series>(), 64);
    }

    #[test]
    fn a_growing_series_count_gets_a_batch_sized_to_it_not_doubled() {
        let agg = Aggregator::default();
        let record = |n: usize| {
            for i in 0..n {
                let v = i.to_string();
                agg.record("hits_total", &[("i", &v)], crate::Sample::Gauge(1.0), 0)
                    .unwrap();
            }
        };
        record(1_000);
        let first = agg.flush();
        assert_eq!(first.series.capacity(), spare_capacity(1_000));
        agg.recycle(first);
        // Within the spare's 1/16: the spare is filled as it is.
        record(1_050);
        let same = agg.flush();
        assert_eq!(same.series.len(), 1_050);
        assert_eq!(same.series.capacity(), spare_capacity(1_000));
        agg.recycle(same);
        // Past it: a fresh batch for the new count, not twice the old one.
        record(1_500);
        let grown = agg.flush();
        assert_eq!(grown.series.len(), 1_500);
        assert_eq!(grown.series.capacity(), spare_capacity(1_500));
    }

    /// Every kind of series, several names with and without labels.
    fn mixed(agg: &Aggregator, now_ms: i64) {
        let summary = crate::point::SummaryValue {
            count: 1,
            sum: 2.0,
            quantiles: vec![],
        };
        for i in 0..40 {
            let v = (i % 7).to_string();
            let labels: &[(&str, &str)] = if i % 3 == 0 { &[] } else { &[("v", &v)] };
            let name = ["a", "a_b", "b", "ab"][i % 4];
            let sample = match i % 5 {
                0 => crate::Sample::Counter(1.5, crate::Temporality::Delta),
                1 => crate::Sample::Gauge(i as f64),
                2 => crate::Sample::Observe {
                    value: 1.0,
                    count: 2,
                },
                // Not a set: its count is stamped with the wall clock of each peek.
                3 => crate::Sample::GaugeDelta(2.0),
                _ => crate::Sample::Summary(&summary),
            };
            let name = format!("{name}_{}", i % 5);
            let _ = agg.record(&name, labels, sample, now_ms);
        }
    }

    /// The chunks of `peek_in_order` are a peek's entries in page order, whatever the
    /// chunk length, and the series keep exactly the references they had.
    #[test]
    fn peek_in_order_is_a_sorted_peek_and_gives_back_every_reference() {
        let agg = Aggregator::default();
        mixed(&agg, 1_000);
        agg.flush_at(1_000);
        mixed(&agg, 2_000);
        let mut peeked = agg.peek().series;
        peeked.sort_by(|a, b| a.key.cmp_by_name(&b.key));
        let want: Vec<_> = peeked
            .into_iter()
            .map(|s| (s.key.to_string(), s.value))
            .collect();
        let series: Vec<SharedSeries> = agg.shared.flusher.lock().unwrap().series.clone();
        let before: Vec<u32> = series.iter().map(Keyed::references).collect();
        for chunk_len in [0, 1, 3, 1_000] {
            let mut got = Vec::new();
            let sequence = agg.peek_in_order(chunk_len, |c| {
                assert!(c.series.len() <= chunk_len.max(1));
                assert_eq!((c.sequence, c.evicted), (1, 0));
                got.extend(
                    c.series
                        .iter()
                        .map(|s| (s.key.to_string(), s.value.clone())),
                );
            });
            assert_eq!(sequence, 1);
            assert_eq!(got, want, "chunks of {chunk_len}");
        }
        let after: Vec<u32> = series.iter().map(Keyed::references).collect();
        assert_eq!(after, before);
    }

    /// A flush between two chunks shows in the later one: the series it evicts are
    /// left out, and what it took is in the totals of the rest.
    #[test]
    fn peek_in_order_leaves_out_what_a_flush_between_chunks_evicted() {
        let agg = Aggregator::new(crate::AggregatorConfig {
            series_ttl: std::time::Duration::from_secs(60),
            ..crate::AggregatorConfig::default()
        });
        let add = |queues: &[&str], n: f64| {
            for q in queues {
                let sample = crate::Sample::Counter(n, crate::Temporality::Delta);
                agg.record("jobs_total", &[("q", q)], sample, 0).unwrap();
            }
        };
        add(&["a", "b", "c", "d"], 1.0);
        agg.flush_at(1_000);
        // Only `c` and `d` stay active.
        add(&["c", "d"], 2.0);
        let mut seen = Vec::new();
        let mut flushed = false;
        agg.peek_in_order(1, |c| {
            for s in c.live() {
                let FlushedValue::Counter { total, .. } = s.value else {
                    panic!("{:?}", s.value)
                };
                seen.push((s.key.to_string(), total));
            }
            if !flushed {
                // `b` idle past the TTL: evicted before the second chunk is read.
                assert_eq!(agg.flush_at(61_500).evicted_series().len(), 2);
                flushed = true;
            }
        });
        assert_eq!(
            seen,
            [
                (r#"jobs_total{q="a"}"#.to_string(), 1.0),
                (r#"jobs_total{q="c"}"#.to_string(), 3.0),
                (r#"jobs_total{q="d"}"#.to_string(), 3.0),
            ]
        );
    }

    /// Pages racing writers and flushes: each series' total in a page is never below
    /// the previous page's nor above what was written, and a final page after the
    /// writers stop shows everything.
    #[test]
    fn pages_racing_writers_and_flushes_are_monotonic_and_complete() {
        const SERIES: usize = 64;
        const ROUNDS: usize = 20_000;
        let agg = Aggregator::default();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut w = agg.writer();
                for _ in 0..ROUNDS {
                    for i in 0..SERIES {
                        let v = i.to_string();
                        w.record(
                            "n_total",
                            &[("i", &v)],
                            crate::Sample::Counter(1.0, crate::Temporality::Delta),
                            0,
                        )
                        .unwrap();
                    }
                }
                done.store(true, Ordering::SeqCst);
            });
            scope.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    agg.recycle(agg.flush());
                }
            });
            let mut last = std::collections::HashMap::new();
            for _ in 0..100_000 {
                agg.peek_in_order(7, |c| {
                    for s in c.live() {
                        let FlushedValue::Counter { total, .. } = s.value else {
                            panic!("{:?}", s.value)
                        };
                        assert!(total <= ROUNDS as f64, "{}: {total}", s.key);
                        let prev = last.insert(s.key.to_string(), total).unwrap_or(0.0);
                        assert!(total >= prev, "{}: {total} after {prev}", s.key);
                    }
                });
                if done.load(Ordering::SeqCst) {
                    break;
                }
            }
        });
        let mut n = 0;
        agg.peek_in_order(16, |c| {
            for s in c.live() {
                let FlushedValue::Counter { total, .. } = s.value else {
                    panic!("{:?}", s.value)
                };
                assert_eq!(total, ROUNDS as f64, "{}", s.key);
                n += 1;
            }
        });
        assert_eq!(n, SERIES);
    }
}
