//! The kept totals: the running totals of counter and histogram series evicted by
//! `series_ttl`, so that a series that comes back resumes where it was.
//!
//! Owns: the bounded table of evicted totals, its capacity and expiry. Must never: be
//! touched on the update path (only when a counter or histogram series is created and
//! when one is evicted), grow past `kept_totals_capacity`, or forget an entry without
//! counting it (a full table drops its oldest entry and counts it in
//! [`AggregatorStats::kept_totals_dropped`](super::AggregatorStats::kept_totals_dropped)).
//!
//! # Why
//! A counter's (or histogram's) cumulative value must never go back to a value the
//! backend has already seen unless the backend can tell it is a reset. A sparse counter
//! (one increment, silence longer than `series_ttl`, another increment) used to come
//! back as a new series whose total restarted at 0: the exposition endpoint and remote
//! write showed 1, then 1 again, and Prometheus `increase()` saw nothing. The table
//! keeps the evicted series' total and start time; the successor resumes from them, so
//! the cumulative view reads 1, then 2.
//!
//! An evicted series whose entry was dropped (table full) or expired (`kept_totals_ttl`)
//! restarts at 0 with a new start time (the later of the wall clock and the aggregator
//! clock at its creation), which OTLP cumulative output carries as `start_time_unix_nano`:
//! a reset the backend can see.
//!
//! # Memory
//! One entry holds the key (a copy of its own, made at eviction, so that the table does
//! not keep the evicted series' allocation and cell alive: the key's bytes plus an
//! 8-byte header), a hash-map slot (~80 bytes: key pointer, start,
//! eviction time, sequence, the counter total and its last cumulative input) and an
//! order-queue slot (24 bytes): about 120 bytes plus the key for a counter. A histogram
//! entry adds its boxed total and, if it is fed cumulative values, its last input:
//! each `8 × (buckets + 1)` bytes plus ~64. At the default 100,000 entries and 80-byte
//! keys that is ~20 MB for counters.
//!
//! # Concurrency
//! The table sits behind a mutex that only series creation (of counters and
//! histograms), eviction and the flush's expiry take; updates of existing series never
//! do. The flusher holds it from removing a
//! series from the index until the series' totals are in the table, and a creator holds
//! it from its second index lookup until its series is in the index, so a successor
//! created at any time after the removal finds the totals.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

use crate::key::SeriesKey;
use crate::point::HistogramValue;

/// What an evicted series leaves for its successor.
pub(super) struct Kept {
    /// The series' start time: the successor reports the same one.
    pub(super) start_ms: i64,
    pub(super) state: KeptState,
}

/// The running total and, for cumulative inputs, the last input and its start time,
/// so the successor's first cumulative input is a difference, not a new baseline.
pub(super) enum KeptState {
    Counter {
        total: f64,
        last_cumulative: Option<f64>,
        last_start_ms: i64,
    },
    Histogram {
        total: Box<HistogramValue>,
        last_cumulative: Option<Box<HistogramValue>>,
        last_start_ms: i64,
    },
}

struct Slot {
    /// Insertion number: tells a live queue entry from a stale one.
    seq: u64,
    evicted_at_ms: i64,
    kept: Kept,
}

/// The table: entries by key, and their keys in eviction order for dropping the
/// oldest and for expiry.
pub(super) struct KeptTable {
    slots: HashMap<SeriesKey, Slot, RandomState>,
    /// `(seq, key)` in insertion order; entries whose slot was taken or replaced are
    /// stale and skipped (and compacted away when they outnumber the live ones).
    order: VecDeque<(u64, SeriesKey)>,
    next_seq: u64,
    capacity: usize,
    ttl_ms: i64,
}

impl KeptTable {
    pub(super) fn new(capacity: usize, ttl_ms: i64) -> KeptTable {
        KeptTable {
            slots: HashMap::with_hasher(RandomState::default()),
            order: VecDeque::new(),
            next_seq: 0,
            capacity,
            ttl_ms,
        }
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Takes the entry for `key`, if any.
    pub(super) fn take(&mut self, key: &[u8]) -> Option<Kept> {
        self.slots.remove(key).map(|s| s.kept)
    }

    /// Keeps `kept` for `key`; returns how many older entries were dropped to make room
    /// (0 or 1; every entry when the capacity is 0, which keeps nothing).
    pub(super) fn insert(&mut self, key: SeriesKey, kept: Kept, now_ms: i64) -> u64 {
        if self.capacity == 0 {
            return 1;
        }
        let mut dropped = 0;
        while self.slots.len() >= self.capacity && self.pop_oldest().is_some() {
            dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.slots.insert(
            key,
            Slot {
                seq,
                evicted_at_ms: now_ms,
                kept,
            },
        );
        if self.order.len() > 2 * self.slots.len().max(1024) {
            let slots = &self.slots;
            self.order
                .retain(|(seq, key)| slots.get(key).is_some_and(|s| s.seq == *seq));
        }
        dropped
    }

    /// Drops entries older than the table's TTL; returns how many.
    pub(super) fn expire(&mut self, now_ms: i64) -> u64 {
        let mut expired = 0;
        while let Some((seq, key)) = self.order.front() {
            match self.slots.get(key) {
                Some(s) if s.seq == *seq => {
                    if now_ms - s.evicted_at_ms < self.ttl_ms {
                        break;
                    }
                    self.slots.remove(key);
                    expired += 1;
                }
                _ => {} // stale: its entry was taken or replaced
            }
            self.order.pop_front();
        }
        expired
    }

    fn pop_oldest(&mut self) -> Option<()> {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.slots.get(&key).is_some_and(|s| s.seq == seq) {
                self.slots.remove(&key);
                return Some(());
            }
        }
        None
    }
}
