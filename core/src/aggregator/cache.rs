//! [`RawCache`]: a writer's private map from raw identity bytes to series.
//!
//! Owns: the open-addressing table, its entry arena and the prefetch hints. Must never:
//! return a series for bytes other than the ones it was inserted under (keys are
//! compared in full; the hash only picks the slot), hold more than the writer's
//! capacity, or keep a series alive past the entry that holds it (each entry owns one
//! reference, given back when the entry goes).
//!
//! # Layout
//! Linear probing over a power-of-two array of 8-byte slots (eight per cache line), at
//! most 3/4 full. A slot holds 16 bits of the key's hash as a tag and where the entry
//! sits in one arena shared by all entries (offset and key length); the entry is the
//! series' address (one reference, as [`Keyed::into_raw`] gives it up) followed by the
//! key's bytes. So a hit reads one slot, then one arena line for short keys (address
//! and key together), then the series; and since the slot's address depends only on
//! the hash, a receiver that knows its next lines can prefetch the slots of all of
//! them first ([`RawCache::prefetch_slot`]), then their entries
//! ([`RawCache::prefetch_entry`]), then their series ([`RawCache::prefetch_series`]),
//! so those cache misses overlap instead of queueing one behind the other (at 100k
//! series and beyond every line is a few misses). The series' address sits in the
//! arena rather than in the slot because a slot array is at most 3/4 full and doubles:
//! at 1M entries it has 2^21 slots, and 8 bytes more per slot cost ~17 bytes per entry,
//! where in the arena they cost 8.
//!
//! Deletion (of a series found evicted) gives the entry's reference back and shifts
//! later entries of the probe run back, so no tombstones are needed; its bytes stay in
//! the arena until the next [`RawCache::clear`]. Keys longer than `u16::MAX` bytes are
//! never cached. This module's `unsafe` is the series addresses an owner stores
//! (`give_up`, `owned_series`, `take_series`: the arena here, and the writer's
//! [`SeriesSequence`](super::sequence::SeriesSequence), which stores them delta-coded).

use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use foldhash::fast::RandomState;

use super::series::{Series, SharedSeries};
use crate::hint::prefetch;
use crate::key::Keyed;

/// One table slot: empty when `entry` is [`Slot::EMPTY`].
#[derive(Clone, Copy)]
struct Slot {
    /// Start of the entry (the series' address, then the key's bytes) in the arena.
    entry: u32,
    /// The key's length in bytes.
    key_len: u16,
    /// Bits 48..64 of the key's hash: most non-matching slots fail on this alone.
    tag: u16,
}

impl Slot {
    /// No entry: no arena offset is `u32::MAX` (an entry there would not fit its address).
    const EMPTY: Slot = Slot {
        entry: u32::MAX,
        key_len: 0,
        tag: 0,
    };

    #[inline]
    fn is_empty(self) -> bool {
        self.entry == u32::MAX
    }
}

/// Bytes of a series address in the arena (an entry's first bytes).
const ADDR: usize = size_of::<usize>();

/// Gives up `series`' reference as an address, with its provenance exposed so that
/// [`owned_series`] and [`take_series`] may take it back from the integer. Whoever
/// stores the address owns that reference.
pub(super) fn give_up(series: SharedSeries) -> usize {
    Keyed::into_raw(series).as_ptr().expose_provenance()
}

/// The series at `addr`, an address [`give_up`] returned.
///
/// # Safety
/// The reference given up as `addr` has not been taken back ([`take_series`]), and is
/// not while the returned borrow lives: callers tie it to a borrow of the owner of the
/// stored address, whose `&mut` methods are the only ones that take references back.
#[inline]
pub(super) unsafe fn owned_series<'a>(addr: usize) -> Option<&'a Series> {
    let addr = NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(addr))?;
    // SAFETY: the address was given up by `Keyed::<Series>::into_raw` in `give_up`
    // and its owner still holds that reference (the caller's contract).
    // `ManuallyDrop` keeps this borrow from releasing it.
    let entry = ManuallyDrop::new(unsafe { Keyed::<Series>::from_raw(addr) });
    // SAFETY: `Keyed::as_ptr` points at the series, alive while the owner's reference
    // is, which the caller keeps for the borrow's life.
    Some(unsafe { &*Keyed::as_ptr(&entry) })
}

/// Takes back the reference [`give_up`] gave up as `addr`.
///
/// # Safety
/// At most once per reference given up, and no borrow from [`owned_series`] of it
/// lives.
pub(super) unsafe fn take_series(addr: usize) -> Option<SharedSeries> {
    let addr = NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(addr))?;
    // SAFETY: given up by `into_raw` in `give_up`, taken back once (the caller's
    // contract).
    Some(unsafe { Keyed::<Series>::from_raw(addr) })
}

/// Appends `series` to `arena` as its address (native-endian, unaligned, [`ADDR`]
/// bytes): the arena then owns that reference, which [`take_owned`] gives back once.
fn push_owned(arena: &mut Vec<u8>, series: SharedSeries) {
    arena.extend_from_slice(&give_up(series).to_ne_bytes());
}

/// The address stored at `at` in `arena` by [`push_owned`] (0 if there is none).
#[inline]
fn addr_at(arena: &[u8], at: usize) -> usize {
    arena
        .get(at..at + ADDR)
        .and_then(|b| b.try_into().ok())
        .map_or(0, usize::from_ne_bytes)
}

/// The series whose address [`push_owned`] stored at `at` in `arena`.
///
/// # Safety
/// As for [`owned_series`] of that address.
#[inline]
unsafe fn owned_at<'a>(arena: &[u8], at: usize) -> Option<&'a Series> {
    // SAFETY: the caller's contract.
    unsafe { owned_series(addr_at(arena, at)) }
}

/// Takes back the reference [`push_owned`] stored at `at` in `arena`.
///
/// # Safety
/// As for [`take_series`] of that address.
unsafe fn take_owned(arena: &[u8], at: usize) -> Option<SharedSeries> {
    // SAFETY: the caller's contract.
    unsafe { take_series(addr_at(arena, at)) }
}

/// The raw-identity cache of one [`Writer`](super::Writer); see the module doc.
/// Every `hash` argument must be [`RawCache::hash`] of the key it comes with (entries
/// are moved by rehashing their keys).
pub(super) struct RawCache<S = RandomState> {
    /// Length 0 (nothing cached yet) or a power of two.
    slots: Vec<Slot>,
    /// Occupied slots.
    len: usize,
    /// Every entry inserted since the last clear, back to back: a series address
    /// (native-endian, unaligned) and the key's bytes.
    arena: Vec<u8>,
    hasher: S,
    /// The arena's addresses are owned references: the cache is `Send` and `Sync` as
    /// the series are, and drops them.
    _owns: PhantomData<SharedSeries>,
}

/// Smallest table (slots) once anything is cached.
const MIN_SLOTS: usize = 64;

/// Smallest growth of the arena, in bytes (see `RawCache::reserve_entry`).
const ARENA_MIN_GROWTH: usize = 1024;

impl RawCache {
    pub(super) fn new() -> RawCache {
        RawCache::with_hasher(RandomState::default())
    }
}

/// The entries' series (no hashing needed, so also for `Drop`).
impl<S> RawCache<S> {
    /// The series of the occupied slot `s`.
    #[inline]
    fn series(&self, s: Slot) -> Option<&Series> {
        // SAFETY: `insert` pushed the entry's reference with `push_owned`, and only
        // `release` (from `remove` and `clear`, which take `&mut self`, so not while the
        // returned borrow of `self` lives) takes it back.
        unsafe { owned_at(&self.arena, s.entry as usize) }
    }

    /// Gives back the reference the occupied slot `s`'s entry owns; the caller then
    /// empties the slot.
    fn release(&mut self, s: Slot) {
        // SAFETY: as in `series`: this entry's reference, taken back once, here, as its
        // slot is emptied; `&mut self` means no borrow of it lives.
        drop(unsafe { take_owned(&self.arena, s.entry as usize) });
    }

    /// Gives back every entry's reference and empties every slot.
    fn release_all(&mut self) {
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if !s.is_empty() {
                self.release(s);
                self.slots[i] = Slot::EMPTY;
            }
        }
        self.len = 0;
    }
}

impl<S: BuildHasher> RawCache<S> {
    fn with_hasher(hasher: S) -> RawCache<S> {
        RawCache {
            slots: Vec::new(),
            len: 0,
            arena: Vec::new(),
            hasher,
            _owns: PhantomData,
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
            let s = self.slots[i];
            if s.is_empty() {
                return None;
            }
            if s.tag == tag && self.key(s) == raw {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn key(&self, s: Slot) -> &[u8] {
        let start = s.entry as usize + ADDR;
        self.arena
            .get(start..start + usize::from(s.key_len))
            .unwrap_or_default()
    }

    /// The series cached under `raw`; `hash` is [`RawCache::hash`] of `raw`.
    #[inline]
    pub(super) fn get(&self, raw: &[u8], hash: u64) -> Option<&Series> {
        let i = self.find(raw, hash)?;
        self.series(self.slots[i])
    }

    /// Caches `series` under `raw` (not cached yet: the caller just missed).
    pub(super) fn insert(&mut self, raw: &[u8], hash: u64, series: SharedSeries) {
        let (Ok(key_len), Some(entry)) = (
            u16::try_from(raw.len()),
            u32::try_from(self.arena.len())
                .ok()
                .filter(|&e| e != Slot::EMPTY.entry),
        ) else {
            return; // too long, or the arena is full: stays uncached
        };
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.reserve_entry(ADDR + raw.len());
        push_owned(&mut self.arena, series);
        self.arena.extend_from_slice(raw);
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while !self.slots[i].is_empty() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot {
            entry,
            key_len,
            tag: Self::tag(hash),
        };
        self.len += 1;
    }

    /// Makes room for an `n`-byte entry, growing the arena by a quarter (at least
    /// [`ARENA_MIN_GROWTH`]) rather than `Vec`'s doubling: an arena keeps its capacity
    /// for good (a clear keeps it for the refill), and with doubling it ended up to half
    /// empty, on average a quarter (at 1,000 scrape targets of 1,000 series, 64 MB of
    /// arenas held 40 MB of keys). Growing by a quarter copies each byte about four
    /// more times over the arena's life, once per new label set, beside the index work
    /// that every new label set costs anyway.
    fn reserve_entry(&mut self, n: usize) {
        let a = &mut self.arena;
        if a.capacity() - a.len() < n {
            a.reserve_exact(n.max(a.capacity() / 4).max(ARENA_MIN_GROWTH));
        }
    }

    /// Doubles the table and places every entry again (entries stay in the arena).
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot::EMPTY; n]);
        let mask = n - 1;
        for s in old.into_iter().filter(|s| !s.is_empty()) {
            let hash = self.hasher.hash_one(self.key(s));
            let mut i = hash as usize & mask;
            while !self.slots[i].is_empty() {
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
        self.release(self.slots[hole]);
        self.slots[hole] = Slot::EMPTY;
        self.len -= 1;
        // Backward-shift deletion: move later members of the probe run into the hole
        // when their home slot is at or before it (cyclically), so every entry stays
        // reachable from its home without tombstones.
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        while !self.slots[i].is_empty() {
            let home = self.hasher.hash_one(self.key(self.slots[i])) as usize & mask;
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
            self.release_all();
        }
        self.arena.clear();
    }

    /// Hint: loads the slot line `hash` starts probing at into the CPU cache.
    #[inline]
    pub(super) fn prefetch_slot(&self, hash: u64) {
        if let Some(s) = self.slots.get(hash as usize & self.mask()) {
            prefetch(std::ptr::from_ref(s).cast());
        }
    }

    /// The slot `hash` starts probing at, if it holds an entry with `hash`'s tag: the
    /// likely entry, for the prefetch hints (a hint that misses only costs a load).
    #[inline]
    fn tagged_home(&self, hash: u64) -> Option<Slot> {
        let s = *self.slots.get(hash as usize & self.mask())?;
        (!s.is_empty() && s.tag == Self::tag(hash)).then_some(s)
    }

    /// Hint: if the slot `hash` starts at holds a key with its tag, loads that entry's
    /// first bytes (its series' address and the key's start) into the CPU cache. Best
    /// after [`RawCache::prefetch_slot`] had time to land.
    #[inline]
    pub(super) fn prefetch_entry(&self, hash: u64) {
        if let Some(s) = self.tagged_home(hash)
            && let Some(e) = self.arena.get(s.entry as usize)
        {
            prefetch(std::ptr::from_ref(e));
        }
    }

    /// Hint: if the slot `hash` starts at holds a key with its tag, loads that entry's
    /// series into the CPU cache. Best after [`RawCache::prefetch_entry`] had time to
    /// land (this reads the series' address from the entry).
    #[inline]
    pub(super) fn prefetch_series(&self, hash: u64) {
        if let Some(s) = self.tagged_home(hash)
            && let Some(series) = self.series(s)
        {
            series.prefetch();
        }
    }
}

impl<S> Drop for RawCache<S> {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::aggregator::series::Series;
    use crate::aggregator::series::test_series as series;
    use crate::key::Keyed;

    fn id(s: &Series) -> u64 {
        s.test_id() as u64
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
    fn a_slot_is_8_bytes() {
        // Eight per cache line; at 1M entries the table has 2^21 of them (16 MB).
        assert_eq!(size_of::<Slot>(), 8);
    }

    /// Each entry owns one reference to its series, as an address in the arena: it
    /// must be given back when the entry is removed, cleared or dropped, once.
    #[test]
    fn every_entry_gives_its_series_reference_back_once() {
        let s = series(7);
        let refs = || Keyed::references(&s);
        let mut c = RawCache::new();
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        for k in &keys {
            // 100 entries: the table grows twice on the way.
            c.insert(k.as_bytes(), c.hash(k.as_bytes()), s.clone());
        }
        assert_eq!(refs(), 101);
        for k in &keys[..30] {
            c.remove(k.as_bytes(), c.hash(k.as_bytes()));
            c.remove(k.as_bytes(), c.hash(k.as_bytes()));
        }
        assert_eq!(refs(), 71);
        assert_eq!(c.get(b"k99", c.hash(b"k99")).map(id), Some(7));
        c.clear();
        assert_eq!(refs(), 1);
        for k in &keys[..10] {
            c.insert(k.as_bytes(), c.hash(k.as_bytes()), s.clone());
        }
        assert_eq!(refs(), 11);
        drop(c);
        assert_eq!(refs(), 1);
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
