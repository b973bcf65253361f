//! [`RawCache`]: a writer's private map from raw identity bytes to series.
//!
//! Owns: the open-addressing table, its key arena and the prefetch hints. Must never:
//! return a series for bytes other than the ones it was inserted under (keys are
//! compared in full; the hash only picks the slot), or hold more than the writer's
//! capacity.
//!
//! # Layout
//! Linear probing over a power-of-two array of 16-byte slots (four per cache line),
//! at most 3/4 full. A slot holds the series itself (one `Arc` pointer), 16 bits of
//! the key's hash as a tag, and where the key's bytes sit in one arena shared by all
//! entries (offset and length). So a hit reads one slot, the key's bytes (one arena
//! line for short keys) and the series; and since the slot's address depends only on
//! the hash, a receiver that knows its next lines can prefetch the slots of all of
//! them first ([`RawCache::prefetch_slot`]) and then their keys and series
//! ([`RawCache::prefetch_entry`]), so those cache misses overlap instead of queueing
//! one behind the other (at 100k series and beyond every line is a few misses).
//!
//! Deletion (of a series found evicted) shifts later entries of the probe run back,
//! so no tombstones are needed; its key bytes stay in the arena until the next
//! [`RawCache::clear`]. Keys longer than `u16::MAX` bytes are never cached.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use super::series::SharedSeries;
use crate::hint::prefetch;

/// One table slot: empty when `series` is `None`.
#[derive(Clone, Default)]
struct Slot {
    series: Option<SharedSeries>,
    /// Start of the key's bytes in the arena.
    key_off: u32,
    /// The key's length in bytes.
    key_len: u16,
    /// Bits 48..64 of the key's hash: most non-matching slots fail on this alone.
    tag: u16,
}

/// The raw-identity cache of one [`Writer`](super::Writer); see the module doc.
/// Every `hash` argument must be [`RawCache::hash`] of the key it comes with (entries
/// are moved by rehashing their keys).
pub(super) struct RawCache<S = RandomState> {
    /// Length 0 (nothing cached yet) or a power of two.
    slots: Vec<Slot>,
    /// Occupied slots.
    len: usize,
    /// Key bytes of every entry inserted since the last clear, back to back.
    arena: Vec<u8>,
    hasher: S,
}

/// Smallest table (slots) once anything is cached.
const MIN_SLOTS: usize = 64;

/// Smallest growth of the key arena, in bytes (see `RawCache::reserve_key`).
const ARENA_MIN_GROWTH: usize = 1024;

impl RawCache {
    pub(super) fn new() -> RawCache {
        RawCache::with_hasher(RandomState::default())
    }
}

impl<S: BuildHasher> RawCache<S> {
    fn with_hasher(hasher: S) -> RawCache<S> {
        RawCache {
            slots: Vec::new(),
            len: 0,
            arena: Vec::new(),
            hasher,
        }
    }

    /// The hash [`RawCache::get`] and the prefetch hints take for `raw`.
    #[inline]
    pub(super) fn hash(&self, raw: &[u8]) -> u64 {
        self.hasher.hash_one(raw)
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[inline]
    fn tag(hash: u64) -> u16 {
        (hash >> 48) as u16
    }

    /// The slot holding `raw`, if cached.
    #[inline]
    fn find(&self, raw: &[u8], hash: u64) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let tag = Self::tag(hash);
        let mut i = hash as usize & mask;
        // Bounded: the table is at most 3/4 full, so a probe meets an empty slot.
        loop {
            let s = &self.slots[i];
            s.series.as_ref()?;
            if s.tag == tag && self.key(s) == raw {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn key(&self, s: &Slot) -> &[u8] {
        let start = s.key_off as usize;
        self.arena
            .get(start..start + usize::from(s.key_len))
            .unwrap_or_default()
    }

    /// The series cached under `raw`; `hash` is [`RawCache::hash`] of `raw`.
    #[inline]
    pub(super) fn get(&self, raw: &[u8], hash: u64) -> Option<&SharedSeries> {
        let i = self.find(raw, hash)?;
        self.slots[i].series.as_ref()
    }

    /// Caches `series` under `raw` (not cached yet: the caller just missed).
    pub(super) fn insert(&mut self, raw: &[u8], hash: u64, series: SharedSeries) {
        let (Ok(key_len), Ok(key_off)) =
            (u16::try_from(raw.len()), u32::try_from(self.arena.len()))
        else {
            return; // too long, or the arena is full: stays uncached
        };
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.reserve_key(raw.len());
        self.arena.extend_from_slice(raw);
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while self.slots[i].series.is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot {
            series: Some(series),
            key_off,
            key_len,
            tag: Self::tag(hash),
        };
        self.len += 1;
    }

    /// Makes room for `n` more key bytes, growing the arena by a quarter (at least
    /// [`ARENA_MIN_GROWTH`]) rather than `Vec`'s doubling: an arena keeps its capacity
    /// for good (a clear keeps it for the refill), and with doubling it ended up to half
    /// empty, on average a quarter (at 1,000 scrape targets of 1,000 series, 64 MB of
    /// arenas held 40 MB of keys). Growing by a quarter copies each byte about four
    /// more times over the arena's life, once per new label set, beside the index work
    /// that every new label set costs anyway.
    fn reserve_key(&mut self, n: usize) {
        let a = &mut self.arena;
        if a.capacity() - a.len() < n {
            a.reserve_exact(n.max(a.capacity() / 4).max(ARENA_MIN_GROWTH));
        }
    }

    /// Doubles the table and places every entry again (keys stay in the arena).
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); n]);
        let mask = n - 1;
        for s in old.into_iter().filter(|s| s.series.is_some()) {
            let hash = self.hasher.hash_one(self.key(&s));
            let mut i = hash as usize & mask;
            while self.slots[i].series.is_some() {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// Forgets `raw` (its series was found evicted).
    pub(super) fn remove(&mut self, raw: &[u8], hash: u64) {
        let Some(mut hole) = self.find(raw, hash) else {
            return;
        };
        self.slots[hole] = Slot::default();
        self.len -= 1;
        // Backward-shift deletion: move later members of the probe run into the hole
        // when their home slot is at or before it (cyclically), so every entry stays
        // reachable from its home without tombstones.
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        while self.slots[i].series.is_some() {
            let home = self.hasher.hash_one(self.key(&self.slots[i])) as usize & mask;
            // Distance from home to i, and from home to the hole, along the probe.
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots.swap(hole, i);
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Drops every entry; keeps the table's and the arena's allocations.
    pub(super) fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(Slot::default());
        }
        self.len = 0;
        self.arena.clear();
    }

    /// Hint: loads the slot line `hash` starts probing at into the CPU cache.
    #[inline]
    pub(super) fn prefetch_slot(&self, hash: u64) {
        if let Some(s) = self.slots.get(hash as usize & self.mask()) {
            prefetch(std::ptr::from_ref(s).cast());
        }
    }

    /// Hint: if the slot `hash` starts at holds a key with its tag, loads that key's
    /// first bytes and its series into the CPU cache. Best after
    /// [`RawCache::prefetch_slot`] had time to land.
    #[inline]
    pub(super) fn prefetch_entry(&self, hash: u64) {
        let Some(s) = self.slots.get(hash as usize & self.mask()) else {
            return;
        };
        if let Some(series) = &s.series
            && s.tag == Self::tag(hash)
        {
            if let Some(k) = self.arena.get(s.key_off as usize) {
                prefetch(std::ptr::from_ref(k));
            }
            // Taking the fields' addresses reads only the pointer, not the series.
            prefetch(std::ptr::from_ref(&series.cell).cast());
            prefetch(std::ptr::from_ref(&series.touched_ms).cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicI64;

    use proptest::prelude::*;

    use super::*;
    use crate::aggregator::series::{Cell, Counter, Series};
    use crate::cell::CounterCell;
    use crate::key::Keyed;

    fn series(i: usize) -> SharedSeries {
        Keyed::new(
            format!("s{i}").as_bytes(),
            Series {
                start_ms: i as i64,
                touched_ms: AtomicI64::new(0),
                cell: Cell::counter(Counter::new(CounterCell::default(), 0.0)),
            },
        )
    }

    fn id(s: &SharedSeries) -> u64 {
        s.start_ms as u64
    }

    /// Hashes a key to one of four values (its last byte mod 4) in the top and bottom
    /// bits, so that probe runs are long, share tags and wrap around the table.
    #[derive(Clone, Default)]
    struct FourHomes;

    struct FourHomesHasher(u64);

    impl std::hash::Hasher for FourHomesHasher {
        fn finish(&self) -> u64 {
            let h = self.0 % 4;
            h << 62 | (h * 31 + 63)
        }
        fn write(&mut self, bytes: &[u8]) {
            if let Some(b) = bytes.iter().rev().find(|b| **b != 0xff) {
                self.0 = u64::from(*b);
            }
        }
    }

    impl BuildHasher for FourHomes {
        type Hasher = FourHomesHasher;
        fn build_hasher(&self) -> FourHomesHasher {
            FourHomesHasher(0)
        }
    }

    fn colliding() -> RawCache<FourHomes> {
        RawCache::with_hasher(FourHomes)
    }

    #[test]
    fn keys_with_one_hash_are_told_apart_by_their_bytes() {
        let mut c = colliding();
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}/")).collect();
        assert!(keys.iter().all(|k| c.hash(k.as_bytes()) == c.hash(b"/")));
        for (i, k) in keys.iter().enumerate() {
            c.insert(k.as_bytes(), c.hash(k.as_bytes()), series(i));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                c.get(k.as_bytes(), c.hash(k.as_bytes())).map(id),
                Some(i as u64)
            );
        }
        assert!(c.get(b"k10/", c.hash(b"/")).is_none());
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn removal_inside_a_probe_run_that_wraps_keeps_the_rest_reachable() {
        let mut c = colliding();
        // 60 keys, 15 per home: the table grows from 64 to 128 slots on the way, where
        // the homes are slots 63, 94, 125 and 28; the run from 125 wraps to slot 0.
        let keys: Vec<String> = (0..60).map(|i| format!("k{i}{}", i % 4)).collect();
        for (i, k) in keys.iter().enumerate() {
            c.insert(k.as_bytes(), c.hash(k.as_bytes()), series(i));
        }
        for k in keys.iter().step_by(3) {
            c.remove(k.as_bytes(), c.hash(k.as_bytes()));
        }
        for (i, k) in keys.iter().enumerate() {
            let got = c.get(k.as_bytes(), c.hash(k.as_bytes())).map(id);
            assert_eq!(got, (i % 3 != 0).then_some(i as u64), "{k}");
        }
        assert_eq!(c.len(), 40);
    }

    #[test]
    fn the_key_arena_grows_by_a_quarter_not_by_doubling() {
        let mut c = RawCache::new();
        let series = series(0);
        for i in 0..5_000 {
            let k = format!("http_requests_total{{path=\"/p/{i}\",code=\"200\"}}");
            c.insert(k.as_bytes(), c.hash(k.as_bytes()), series.clone());
            let (len, cap) = (c.arena.len(), c.arena.capacity());
            assert!(
                cap <= len + (len / 4).max(ARENA_MIN_GROWTH),
                "{len} in {cap}"
            );
        }
        assert_eq!(c.len(), 5_000);
        // And every key is still found.
        let k = "http_requests_total{path=\"/p/4321\",code=\"200\"}";
        assert!(c.get(k.as_bytes(), c.hash(k.as_bytes())).is_some());
    }

    #[test]
    fn a_cleared_cache_holds_nothing_and_fills_again() {
        let mut c = RawCache::new();
        c.insert(b"a", c.hash(b"a"), series(1));
        c.clear();
        assert_eq!(c.len(), 0);
        assert!(c.get(b"a", c.hash(b"a")).is_none());
        c.insert(b"b", c.hash(b"b"), series(2));
        assert_eq!(c.get(b"b", c.hash(b"b")).map(id), Some(2));
    }

    #[test]
    fn a_key_too_long_to_cache_is_not_cached() {
        let mut c = RawCache::new();
        let long = vec![b'x'; usize::from(u16::MAX) + 1];
        c.insert(&long, c.hash(&long), series(1));
        assert_eq!(c.len(), 0);
        assert!(c.get(&long, c.hash(&long)).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Remove(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => any::<u8>().prop_map(Op::Insert),
            3 => any::<u8>().prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    /// Key `k`: a length and bytes that vary with `k`, ending in `k`.
    fn key(k: u8) -> Vec<u8> {
        let mut v = vec![b'k'; usize::from(k % 7) + 1];
        v.push(k);
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The cache against a `HashMap` model, with a hasher of four values (so that
        /// probe runs are long, collide and wrap) and with the real one.
        #[test]
        fn the_cache_answers_like_a_map(
            ops in proptest::collection::vec(op(), 1..400),
            real in any::<bool>(),
        ) {
            if real {
                check(RawCache::new(), ops)?;
            } else {
                check(colliding(), ops)?;
            }
        }
    }

    fn check<S: BuildHasher>(mut c: RawCache<S>, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(k) => {
                    let key = key(k);
                    if let std::collections::hash_map::Entry::Vacant(e) = model.entry(key) {
                        c.insert(e.key(), c.hash(e.key()), series(n));
                        e.insert(n as u64);
                    }
                }
                Op::Remove(k) => {
                    let key = key(k);
                    c.remove(&key, c.hash(&key));
                    model.remove(&key);
                }
                Op::Clear => {
                    c.clear();
                    model.clear();
                }
            }
            prop_assert_eq!(c.len(), model.len());
            for k in 0..=255u8 {
                let key = key(k);
                prop_assert_eq!(c.get(&key, c.hash(&key)).map(id), model.get(&key).copied());
            }
        }
        Ok(())
    }
}
