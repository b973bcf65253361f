//! [`SeriesIndex`]: the shared map from canonical key bytes to series, one machine
//! word per slot, lock-free for lookups and inserts.
//!
//! Owns: finding a series by its key, inserting one unless its key is present,
//! removing one (the flusher), resizing the table, and when a removed series or an
//! outgrown table may be freed. Must never: hold two entries with equal keys, lose an
//! entry while the table is resized, make a lookup or an insert wait for the flusher,
//! or free anything that a concurrent lookup may still read.
//!
//! # Layout
//! Linear probing over a power-of-two array of 8-byte words, resized once more than
//! 3/4 of them are used (entries plus tombstones) into a table at most half full by
//! its live entries (3/8 when inserts alone filled it). A word is empty (0), a tombstone (a removed entry), or an entry: the
//! address of a series' allocation as [`Keyed::into_raw`] gives it up, with bits 48..64
//! of the key's hash stored in the address's unused top bits when it has them (bit 2
//! says so), so that most non-matching words are passed without reading their series.
//! Bit 0 marks a word frozen by a resize. That is 8 bytes per slot, 11–21 per series:
//! papaya's map, which this replaces, cost ~79 B per series at 1M (a heap node per
//! entry, its table slot, and the table it was growing out of).
//!
//! # Protocol
//! - **Insert** (any thread): probe from the key's hash; an entry with the key ends it
//!   (the existing series is returned); the first empty word is claimed with a CAS
//!   (losing it means reading what the winner stored, maybe the same key). Tombstones
//!   are passed, never reused, so a probe run only grows, and a key absent before the
//!   first empty word is absent.
//! - **Lookup** (any thread): the same probe without the CAS.
//! - **Resize** (under the resize lock, by the insert that takes the table past 3/4 if
//!   it gets the lock without waiting): a successor is published as the table's
//!   `next`, then every word is frozen (`fetch_or` of bit 0) and each entry copied
//!   into the successor, then the successor becomes current. A frozen word never
//!   changes again, so no insert lands in a table after its word was frozen. A probe
//!   that meets a frozen *empty* word goes on in `next`: its key is in no word it has
//!   not passed, so if the key is anywhere it is in `next`. Frozen entries and
//!   tombstones are read and passed as usual. A copy needs no key comparison: a key in
//!   the old table is found there by every insert of it, so no insert puts it into the
//!   successor. A successor that fills up during the copy is resized the same way, the
//!   copy going on in its own successor.
//! - **Remove** (only the flusher): under the resize lock, so no resize is under way
//!   and the word cannot be frozen under it: the word becomes a tombstone.
//!
//! Lookups and inserts never take the lock, except an insert that finds no empty word
//! at all, which waits for the resize under way (or runs one).
//!
//! # Reclamation
//! A lookup or insert holds an epoch guard (crossbeam-epoch) from loading the current
//! table until it has cloned the series it found. The index's own reference to a
//! removed series and every outgrown table are released through the epoch, so neither
//! is freed while a guard that may have read it is held. Under the `shuttle` feature
//! (the model test) they are kept until the index is dropped instead.

use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use foldhash::fast::RandomState;

use crate::key::Keyed;
use crate::sync::{AtomicPtr, AtomicUsize, Mutex, Ordering};

/// An empty word.
const EMPTY: usize = 0;
/// Bit 0: frozen by a resize.
const FROZEN: usize = 1;
/// A removed entry (bit 1; no entry has it, addresses being 8-aligned).
const TOMBSTONE: usize = 2;
/// Bit 2: the top 16 bits hold the key's hash tag, not address bits.
const TAGGED: usize = 4;
/// Where the tag starts: user-space addresses on 64-bit Linux fit in 48 bits.
const TAG_SHIFT: u32 = 48;
/// Smallest table, in words (8 in the model test, so that a few inserts resize it).
const MIN_WORDS: usize = if cfg!(feature = "shuttle") { 8 } else { 64 };

/// The entry word for the allocation at `addr`, tagged when its top bits are free.
fn entry_word(addr: usize, hash: u64) -> usize {
    let a = addr as u64;
    if usize::BITS == 64 && a >> TAG_SHIFT == 0 {
        ((a | (hash >> TAG_SHIFT << TAG_SHIFT)) as usize) | TAGGED
    } else {
        addr
    }
}

/// The address in an entry word (frozen or not).
fn word_addr(word: usize) -> usize {
    let a = if word & TAGGED != 0 {
        (word as u64 & ((1u64 << TAG_SHIFT) - 1)) as usize
    } else {
        word
    };
    a & !7
}

/// True if `word` (an entry) is tagged with a hash other than `hash`'s: another key.
fn other_tag(word: usize, hash: u64) -> bool {
    word & TAGGED != 0 && (word as u64) >> TAG_SHIFT != hash >> TAG_SHIFT
}

/// True if `word` holds an entry (frozen or not).
fn is_entry(word: usize) -> bool {
    word & !FROZEN != EMPTY && word & TOMBSTONE == 0
}

/// One generation of the table.
struct Table {
    /// A power of two of them.
    words: Box<[AtomicUsize]>,
    /// Words made non-empty (entries and tombstones). Relaxed: it only decides when
    /// to resize; the words themselves are the truth.
    used: AtomicUsize,
    /// The successor, once a resize began; set before any word is frozen.
    next: AtomicPtr<Table>,
}

impl Table {
    fn new(len: usize) -> Box<Table> {
        Box::new(Table {
            words: (0..len).map(|_| AtomicUsize::new(EMPTY)).collect(),
            used: AtomicUsize::new(0),
            next: AtomicPtr::new(std::ptr::null_mut()),
        })
    }

    fn mask(&self) -> usize {
        self.words.len() - 1
    }

    /// More words used than this calls for a resize.
    fn resize_at(&self) -> usize {
        self.words.len() / 4 * 3
    }

    /// The successor. Only called after a frozen word was read from this table with
    /// Acquire (or under the resize lock after a resize of it), which orders the
    /// successor's publication before.
    fn next(&self) -> &Table {
        // Acquire: pairs with the Release store in `SeriesIndex::grow`.
        let next = self.next.load(Ordering::Acquire);
        // SAFETY: `next` was stored before any word of this table was frozen (see the
        // doc) and is never null after that; a table is freed only through the epoch
        // after it left the chain that the caller's guard may still see.
        unsafe { &*next }
    }
}

/// What a probe found.
enum Probe {
    /// An entry with the key: this word.
    Found(usize),
    /// No entry with the key before the first empty word, at this slot.
    Empty(usize),
    /// A frozen empty word: go on in the successor.
    Frozen,
    /// Every word is an entry or a tombstone, none with the key.
    Full,
}

#[cfg(not(feature = "shuttle"))]
pub(super) type Guard = crossbeam_epoch::Guard;

/// Under shuttle nothing is freed before the index is dropped, so no guard is needed.
#[cfg(feature = "shuttle")]
pub(super) struct Guard;

pub(super) fn pin() -> Guard {
    #[cfg(not(feature = "shuttle"))]
    return crossbeam_epoch::pin();
    #[cfg(feature = "shuttle")]
    Guard
}

/// Frees what the index retired (its outgrown tables, its references to removed
/// series) as soon as no guard can reach it, instead of whenever the epoch collector
/// gets to it. A thread's retired objects wait in its own bag until 64 have gathered,
/// and a bag is freed only after the global epoch has advanced twice past it, which
/// the collector tries once per so many pins: a receiver thread that resized the
/// table once would keep the outgrown tables (together as large as the current one)
/// for a long time. So this hands the bag over and advances the epoch as far as the
/// threads pinned right now allow. Called by the inserter that resized, after it
/// dropped its own guard, and by the flusher after each flush; a no-op while this
/// thread is pinned (its own guard holds the epoch back) and under shuttle.
pub(super) fn reclaim() {
    #[cfg(not(feature = "shuttle"))]
    for _ in 0..3 {
        crossbeam_epoch::pin().flush();
    }
}

/// What the model test keeps instead of freeing it through the epoch.
#[cfg(feature = "shuttle")]
enum Retired<T> {
    Table(#[allow(dead_code)] Box<Table>),
    Entry(#[allow(dead_code)] Keyed<T>),
}

/// The map from canonical key bytes to `Keyed<T>` (the aggregator's series); see the
/// module doc.
pub(super) struct SeriesIndex<T: Send + Sync + 'static> {
    /// The newest table; never null.
    current: AtomicPtr<Table>,
    hasher: RandomState,
    /// Held by a resize and by a removal.
    resize: Mutex<()>,
    /// Entries held. Relaxed: it only sizes a resize's successor.
    live: AtomicUsize,
    #[cfg(feature = "shuttle")]
    retired: Mutex<Vec<Retired<T>>>,
    /// The index holds one reference to each entry's allocation.
    _entries: PhantomData<Keyed<T>>,
}

impl<T: Send + Sync + 'static> Default for SeriesIndex<T> {
    fn default() -> Self {
        SeriesIndex {
            current: AtomicPtr::new(Box::into_raw(Table::new(MIN_WORDS))),
            hasher: RandomState::default(),
            resize: Mutex::new(()),
            live: AtomicUsize::new(0),
            #[cfg(feature = "shuttle")]
            retired: Mutex::new(Vec::new()),
            _entries: PhantomData,
        }
    }
}

impl<T: Send + Sync + 'static> SeriesIndex<T> {
    fn current<'g>(&self, _guard: &'g Guard) -> &'g Table {
        // Acquire: pairs with the Release store that made it current (`resize_locked`).
        let t = self.current.load(Ordering::Acquire);
        // SAFETY: never null; an outgrown table is freed through the epoch, after every
        // guard that could have loaded it (ours lives for 'g) is gone.
        unsafe { &*t }
    }

    /// The reference behind an entry word (frozen or not).
    ///
    /// # Safety
    /// `word` holds an address that `Keyed::<T>::into_raw` gave up, whose reference
    /// has not been taken back; the result takes it back, unless the caller keeps it
    /// in a `ManuallyDrop`.
    unsafe fn entry_of(word: usize) -> Keyed<T> {
        // SAFETY: such an address is never null (caller's contract).
        unsafe { Keyed::<T>::from_raw(NonNull::new_unchecked(word_addr(word) as *mut u8)) }
    }

    /// Runs `f` on the entry in `word`, without touching its reference count.
    fn with_entry<R>(word: usize, f: impl FnOnce(&Keyed<T>) -> R) -> R {
        // SAFETY: `word` was read from a table under a guard: its address is one that
        // `Keyed::<T>::into_raw` gave up to the index, and the index releases that
        // reference only through the epoch (or at drop), so the allocation is alive;
        // `ManuallyDrop` keeps this borrow from releasing it.
        let entry = ManuallyDrop::new(unsafe { Self::entry_of(word) });
        f(&entry)
    }

    /// Probes `table` for `key` from its hash's slot.
    fn probe(table: &Table, key: &[u8], hash: u64) -> Probe {
        let mask = table.mask();
        let mut i = hash as usize & mask;
        for _ in 0..table.words.len() {
            // Acquire: pairs with the CAS that stored an entry, so its series (written
            // before) is visible; and with the freeze, so `next` is.
            let w = table.words[i].load(Ordering::Acquire);
            if w == EMPTY {
                return Probe::Empty(i);
            }
            if w == FROZEN {
                return Probe::Frozen;
            }
            if is_entry(w)
                && !other_tag(w, hash)
                && Self::with_entry(w, |e| e.key().as_bytes() == key)
            {
                return Probe::Found(w);
            }
            i = (i + 1) & mask;
        }
        Probe::Full
    }

    /// The entry whose key is `key`, if any.
    pub(super) fn get(&self, key: &[u8]) -> Option<Keyed<T>> {
        let hash = self.hasher.hash_one(key);
        let guard = pin();
        let mut table = self.current(&guard);
        loop {
            match Self::probe(table, key, hash) {
                Probe::Found(w) => return Some(Self::with_entry(w, Keyed::clone)),
                Probe::Empty(_) | Probe::Full => return None,
                Probe::Frozen => table = table.next(),
            }
        }
    }

    /// Inserts `entry` unless an entry with its key is present, which is returned.
    pub(super) fn insert(&self, entry: &Keyed<T>) -> Result<(), Keyed<T>> {
        let key = entry.key().as_bytes();
        let hash = self.hasher.hash_one(key);
        let guard = pin();
        let mut table = self.current(&guard);
        let word = entry_word(Keyed::into_raw(entry.clone()).as_ptr() as usize, hash);
        loop {
            match Self::probe(table, key, hash) {
                Probe::Found(w) => {
                    // SAFETY: `word` is the reference given up above, not stored anywhere.
                    drop(unsafe { Self::entry_of(word) });
                    return Err(Self::with_entry(w, Keyed::clone));
                }
                Probe::Frozen => table = table.next(),
                Probe::Full => {
                    // No empty word: wait for the resize under way, or run one if this
                    // is still the current table.
                    let _lock = self.lock();
                    if std::ptr::eq(self.current(&guard), table) {
                        self.resize_locked(true);
                    }
                    table = self.current(&guard);
                }
                // AcqRel on success: Release publishes the series to lookups, Acquire
                // is for the failure case, which reads the winner's word next round.
                Probe::Empty(i) => match table.words[i].compare_exchange(
                    EMPTY,
                    word,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.live.fetch_add(1, Ordering::Relaxed);
                        if table.used.fetch_add(1, Ordering::Relaxed) + 1 > table.resize_at()
                            && let Ok(lock) = self.resize.try_lock()
                        {
                            self.resize_locked(false);
                            drop(lock);
                            // Unpinned first: our own guard would hold the epoch back.
                            #[cfg_attr(feature = "shuttle", allow(clippy::drop_non_drop))]
                            drop(guard);
                            reclaim();
                        }
                        return Ok(());
                    }
                    // Taken, or frozen: the next probe reads what is there now.
                    Err(_) => continue,
                },
            }
        }
    }

    /// Removes `entry` (by identity) and releases the index's reference to it
    /// through the epoch. Only the flusher removes.
    pub(super) fn remove(&self, entry: &Keyed<T>) {
        let key = entry.key().as_bytes();
        let hash = self.hasher.hash_one(key);
        let addr = Keyed::as_raw(entry).as_ptr() as usize;
        let guard = pin();
        let _lock = self.lock();
        // Under the lock no resize is under way: the current table has no successor
        // and no frozen word.
        let table = self.current(&guard);
        let mask = table.mask();
        let mut i = hash as usize & mask;
        for _ in 0..table.words.len() {
            let slot = &table.words[i];
            // Relaxed: this thread only compares the address; removals are serialised
            // by the lock, and the entry's contents are not read through the word.
            let w = slot.load(Ordering::Relaxed);
            if w == EMPTY {
                return;
            }
            if is_entry(w) && word_addr(w) == addr {
                // Release: lookups that read the tombstone read nothing through it, but
                // the store must not move before the reads above.
                slot.store(TOMBSTONE, Ordering::Release);
                self.live.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: the word held the index's reference (given up by `insert`),
                // which is taken back once, here; the word no longer holds it.
                let owned = unsafe { Self::entry_of(w) };
                self.retire_entry(owned, &guard);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Takes the resize lock (a poisoned one too: the table is consistent between any
    /// two atomic steps, so a panic while it was held left nothing half done).
    fn lock(&self) -> impl Sized + '_ {
        self.resize.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resizes the current table if it is past 3/4 used, or if `full` (an insert found
    /// no empty word in it). The caller holds the resize lock.
    fn resize_locked(&self, full: bool) {
        let guard = pin();
        let old = self.current.load(Ordering::Acquire);
        // SAFETY: non-null, and only freed by a resize, which needs the lock we hold.
        let table = unsafe { &*old };
        if table.used.load(Ordering::Relaxed) <= table.resize_at() && !full {
            return;
        }
        self.grow(table);
        // The last table of the chain (a successor that filled up during the copy was
        // itself resized) becomes current; every table before it is retired.
        let mut t = table;
        let mut retired = vec![old];
        loop {
            let next = t.next.load(Ordering::Acquire);
            // SAFETY: non-null (see `Table::next`), and alive: we hold the lock.
            let n = unsafe { &*next };
            if n.next.load(Ordering::Acquire).is_null() {
                // Release: lookups that load it read its words' initial state.
                self.current.store(next, Ordering::Release);
                break;
            }
            retired.push(next);
            t = n;
        }
        for t in retired {
            self.retire_table(t, &guard);
        }
    }

    /// Freezes `table` and copies its entries into a new successor (see the module
    /// doc). Caller holds the lock.
    fn grow(&self, table: &Table) {
        // At most half full by the live entries: a table resized at 3/4 by inserts
        // doubles (3/8 full), one that filled up with tombstones keeps its size or
        // shrinks.
        let live = self.live.load(Ordering::Relaxed);
        let len = live.saturating_mul(2).max(MIN_WORDS).next_power_of_two();
        let next = Box::into_raw(Table::new(len));
        // Release: a probe that reads a frozen word (Acquire) then sees the successor.
        table.next.store(next, Ordering::Release);
        // SAFETY: just allocated; retired only after it was replaced, under the lock.
        let next = unsafe { &*next };
        for w in table.words.iter() {
            // AcqRel: Acquire reads the entry's series (its key, for the hash); Release
            // orders the `next` store before the frozen word.
            let prev = w.fetch_or(FROZEN, Ordering::AcqRel);
            if is_entry(prev) {
                self.place(next, prev);
            }
        }
    }

    /// Puts `word` (an entry moving out of a frozen table) into `table` or, where
    /// that is frozen or full, its successors.
    fn place(&self, mut table: &Table, word: usize) {
        let hash = Self::with_entry(word, |e| self.hasher.hash_one(e.key().as_bytes()));
        let word = word & !FROZEN;
        loop {
            let mask = table.mask();
            let mut i = hash as usize & mask;
            let mut left = table.words.len();
            while left > 0 {
                // AcqRel on success: Release publishes the entry as an insert does.
                match table.words[i].compare_exchange(
                    EMPTY,
                    word,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        table.used.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(FROZEN) => break,
                    Err(_) => {
                        i = (i + 1) & mask;
                        left -= 1;
                    }
                }
            }
            // Full: inserts filled the successor during the copy. Resize it too, unless
            // an earlier `place` already did (then it is frozen, full, with no empty
            // word to lead on, and its successor holds its entries already: a second
            // resize would copy them twice).
            if left == 0 && table.next.load(Ordering::Acquire).is_null() {
                self.grow(table);
            }
            table = table.next();
        }
    }

    fn retire_entry(&self, entry: Keyed<T>, guard: &Guard) {
        #[cfg(not(feature = "shuttle"))]
        guard.defer(move || drop(entry));
        #[cfg(feature = "shuttle")]
        {
            let _ = guard;
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Retired::Entry(entry));
        }
    }

    fn retire_table(&self, table: *mut Table, guard: &Guard) {
        #[cfg(not(feature = "shuttle"))]
        // SAFETY: `table` left the chain (it is no longer current, and no table points
        // to it), so only guards pinned before now can reach it; it is freed once they
        // are gone. Its words hold no references (they moved to the successor).
        unsafe {
            guard.defer_unchecked(move || drop(Box::from_raw(table)));
        }
        #[cfg(feature = "shuttle")]
        {
            let _ = guard;
            // SAFETY: as above; kept until the index is dropped.
            let table = unsafe { Box::from_raw(table) };
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Retired::Table(table));
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

impl<T: Send + Sync + 'static> Drop for SeriesIndex<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no lookup, insert or resize is running; the current
        // table is the only one not retired, and its entries hold the index's
        // references, each taken back once here.
        unsafe {
            let table = Box::from_raw(self.current.load(Ordering::Acquire));
            for w in table.words.iter() {
                let w = w.load(Ordering::Acquire);
                if is_entry(w) {
                    drop(Self::entry_of(w));
                }
            }
        }
    }
}

/// The tests' entries hold a number.
#[cfg(test)]
impl crate::key::KeyedValue for u32 {
    const KIND: u32 = 2;
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;

    fn entry(i: u32) -> Keyed<u32> {
        Keyed::new(format!("m{{i=\"{i}\"}}").as_bytes(), i)
    }

    fn table_len(index: &SeriesIndex<u32>) -> usize {
        let guard = pin();
        index.current(&guard).words.len()
    }

    #[test]
    fn an_address_and_its_tag_share_a_word() {
        let addr = 0x0000_7f12_3456_7890;
        let hash = 0xabcd_0000_0000_0001;
        let w = entry_word(addr, hash);
        assert_eq!(word_addr(w), addr);
        assert_eq!(word_addr(w | FROZEN), addr);
        assert!(is_entry(w) && is_entry(w | FROZEN));
        assert!(!other_tag(w, hash));
        assert!(other_tag(w, 0x1234_0000_0000_0001));
        // An address using the top bits is stored as it is and always compared.
        let high = 0xff00_0000_0000_1000;
        assert_eq!(word_addr(entry_word(high, hash)), high);
        assert!(!other_tag(entry_word(high, hash), 0));
        for w in [EMPTY, FROZEN, TOMBSTONE, TOMBSTONE | FROZEN] {
            assert!(!is_entry(w));
        }
    }

    /// Inserts, lookups and removals against a `HashMap`, through many resizes: the
    /// growth from empty to 20k entries, then churn that leaves tombstones behind.
    #[test]
    fn the_index_answers_like_a_map_through_resizes_and_churn() {
        let index = SeriesIndex::<u32>::default();
        let mut model: HashMap<u32, Keyed<u32>> = HashMap::new();
        for i in 0..20_000 {
            let e = entry(i);
            assert!(index.insert(&e).is_ok(), "{i} is new");
            model.insert(i, e);
            if i % 7 == 0 {
                let again = index.insert(&entry(i)).expect_err("present");
                assert_eq!(Keyed::as_raw(&again), Keyed::as_raw(&model[&i]));
            }
        }
        assert_eq!(index.len(), 20_000);
        // At most half full after a resize: twice the entries, rounded up.
        let bound = (2 * 20_000usize).next_power_of_two();
        assert!(table_len(&index) <= bound, "{}", table_len(&index));
        for (i, e) in &model {
            let got = index.get(e.key().as_bytes()).expect("present");
            assert_eq!(*got, *i);
            assert_eq!(Keyed::as_raw(&got), Keyed::as_raw(e));
        }
        assert!(index.get(b"m{i=\"absent\"}").is_none());
        // Churn: remove a series and add a new one, 200k times. Tombstones are never
        // reused, so they trigger resizes, which must keep the table at most twice the
        // live entries (rounded up to a power of two), not grow it round after round.
        for next in 20_000..220_000 {
            let e = model.remove(&(next - 20_000)).expect("the oldest is held");
            index.remove(&e);
            assert!(index.get(e.key().as_bytes()).is_none());
            let e = entry(next);
            assert!(index.insert(&e).is_ok());
            model.insert(next, e);
            assert!(
                table_len(&index) <= bound,
                "round {next}: {}",
                table_len(&index)
            );
        }
        assert_eq!(index.len(), model.len());
        for (i, e) in &model {
            assert_eq!(*index.get(e.key().as_bytes()).expect("present"), *i);
        }
    }

    #[test]
    fn dropping_the_index_releases_its_references() {
        let e = entry(1);
        let index = SeriesIndex::<u32>::default();
        assert!(index.insert(&e).is_ok());
        let probe = e.key().clone();
        drop(index);
        drop(e);
        // `probe` is now the only reference: dropping it frees (checked by Miri/ASan
        // runs; here it must simply not double-free or leak a live count).
        assert_eq!(probe.as_bytes(), b"m{i=\"1\"}");
    }

    /// Threads insert overlapping keys while one removes: every key has one entry
    /// that all inserters agree on, and what is left is what was not removed.
    #[test]
    fn concurrent_inserts_agree_on_one_entry_per_key() {
        const THREADS: u32 = 4;
        const KEYS: u32 = 30_000;
        let index = Arc::new(SeriesIndex::<u32>::default());
        let seen: Vec<Vec<(u32, usize)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let index = index.clone();
                    s.spawn(move || {
                        // Each thread walks the keys from another offset, so threads
                        // race on the same keys and on resizes.
                        (0..KEYS)
                            .map(|k| {
                                let i = (k + t * 7_919) % KEYS;
                                let e = entry(i);
                                let winner = match index.insert(&e) {
                                    Ok(()) => e,
                                    Err(existing) => existing,
                                };
                                (i, Keyed::as_raw(&winner).as_ptr() as usize)
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut owner: HashMap<u32, usize> = HashMap::new();
        for (i, addr) in seen.into_iter().flatten() {
            assert_eq!(
                *owner.entry(i).or_insert(addr),
                addr,
                "key {i} has two entries"
            );
        }
        assert_eq!(index.len(), KEYS as usize);
        // Remove the even keys while threads look up and insert the odd ones again.
        std::thread::scope(|s| {
            let remover = s.spawn(|| {
                for i in (0..KEYS).step_by(2) {
                    let e = index.get(entry(i).key().as_bytes()).expect("present");
                    index.remove(&e);
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for i in (1..KEYS).step_by(2) {
                        let existing = index.insert(&entry(i)).expect_err("present");
                        assert_eq!(*existing, i);
                    }
                });
            }
            remover.join().unwrap();
        });
        assert_eq!(index.len(), (KEYS / 2) as usize);
        for i in 0..KEYS {
            assert_eq!(index.get(entry(i).key().as_bytes()).is_some(), i % 2 == 1);
        }
    }
}

/// Model test under shuttle's scheduler: inserts race each other, a removal and the
/// resizes that a 4-word table needs after three entries. Run with
/// `cargo test -p weir-core --features shuttle --lib series_index::model`.
#[cfg(all(test, feature = "shuttle"))]
mod model {
    use std::sync::Arc;

    use shuttle::thread;

    use super::*;

    fn entry(k: &str) -> Keyed<u32> {
        Keyed::new(k.as_bytes(), k.len() as u32)
    }

    fn scenario() {
        let index = Arc::new(SeriesIndex::<u32>::default());
        // Two inserters share "c"; the third inserts and removes "f" and looks up "c".
        let inserters: Vec<_> = [["a", "b", "c"], ["c", "d", "e"]]
            .into_iter()
            .map(|keys| {
                let index = index.clone();
                thread::spawn(move || {
                    keys.map(|k| {
                        let e = entry(k);
                        let got = index.insert(&e).err().unwrap_or(e);
                        Keyed::as_raw(&got).as_ptr() as usize
                    })
                })
            })
            .collect();
        let remover = {
            let index = index.clone();
            thread::spawn(move || {
                let f = entry("f");
                assert!(index.insert(&f).is_ok());
                assert!(index.get(b"f").is_some());
                index.remove(&f);
                assert!(index.get(b"f").is_none());
                index.get(b"c").map(|c| Keyed::as_raw(&c).as_ptr() as usize)
            })
        };
        let seen: Vec<[usize; 3]> = inserters.into_iter().map(|t| t.join().unwrap()).collect();
        let c_seen_by_remover = remover.join().unwrap();
        assert_eq!(seen[0][2], seen[1][0], "both inserters of c got one entry");
        if let Some(c) = c_seen_by_remover {
            assert_eq!(c, seen[0][2], "a lookup finds the same entry");
        }
        assert_eq!(index.len(), 5);
        for k in ["a", "b", "c", "d", "e"] {
            let e = index.get(k.as_bytes()).expect("present");
            assert_eq!(e.key().as_bytes(), k.as_bytes());
        }
        assert!(index.get(b"f").is_none());
    }

    /// Three threads insert 19 distinct keys into an 8-word table: the resize at 7
    /// entries copies into a 16-word successor, which the other two threads can fill
    /// during the copy, so that the successor is resized in turn.
    fn successor_filled_during_the_copy() {
        let index = Arc::new(SeriesIndex::<u32>::default());
        let threads: Vec<_> = [("r", 7), ("x", 6), ("y", 6)]
            .into_iter()
            .map(|(prefix, n)| {
                let index = index.clone();
                thread::spawn(move || {
                    (0..n)
                        .map(|i| {
                            let e = entry(&format!("{prefix}{i}"));
                            assert!(index.insert(&e).is_ok(), "every key is new");
                            (e.key().clone(), Keyed::as_raw(&e).as_ptr() as usize)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let inserted: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(index.len(), 19);
        for (key, addr) in inserted {
            let e = index.get(key.as_bytes()).expect("present");
            assert_eq!(Keyed::as_raw(&e).as_ptr() as usize, addr, "{key}");
        }
    }

    #[test]
    fn a_successor_filled_during_the_copy_is_resized_in_turn() {
        shuttle::check_random(successor_filled_during_the_copy, 2_000);
        shuttle::check_pct(successor_filled_during_the_copy, 2_000, 3);
    }

    #[test]
    fn inserts_removals_and_resizes_keep_one_entry_per_key() {
        shuttle::check_random(scenario, 3_000);
    }

    #[test]
    fn inserts_removals_and_resizes_keep_one_entry_per_key_pct() {
        shuttle::check_pct(scenario, 3_000, 3);
    }
}
