//! [`SeriesSequence`]: a writer's memory of the series one source sent in its last
//! body, in the order it sent them.
//!
//! Owns: that sequence, the cursor through it while a body is read, and its rewrite
//! when a body differs. Must never: return a series for an identity other than the
//! one it was recorded under (identities are compared in full), keep a series alive
//! past its entry (each entry owns one reference, given back when the entry goes), or
//! hold more entries than the writer's capacity.
//!
//! # Why a sequence
//! A scrape target serves the same lines in the same order, scrape after scrape. A
//! hash table from identity to series ([`RawCache`](super::cache::RawCache)) costs a
//! slot and a full copy of the identity per series: ~55 bytes per scraped series at
//! 1,000 series per target, 55 MB at 1M. The sequence instead keeps the last body's
//! series in order and checks each sample against the entry expected next. Each
//! identity is stored as what it adds to its predecessor's (`m{id="17"}` after
//! `m{id="16"}` is 3 bytes), and so is its address, so an entry is a few bytes, and
//! a hit reads the arena front to back, which the CPU prefetches; the series of the
//! entry after it is prefetched too.
//!
//! # Layout
//! One arena: per entry the series' address (an owned reference, see
//! `cache::give_up`) as its difference to the previous entry's address (zigzag, then
//! LEB128: series created one after another lie close, so ~2 bytes instead of 8),
//! then the identity as a delta on the previous entry's: the length of the prefix the
//! two share and the length of the rest (both LEB128), then the rest. The first
//! entry's predecessor is address 0 and the empty identity.
//!
//! # A body that differs
//! A sample that is not the expected entry is checked against the entry after it (the
//! expected one is gone from the body); if it is neither, the caller resolves it
//! through the shared index and [`SeriesSequence::push`]es it. From the first
//! difference on, the sequence is rewritten into a new arena: entries that still
//! match are moved over, new ones appended, dropped ones released, and the new arena
//! replaces the old when the body ends. So a body equal to the last one writes
//! nothing, one with a line added or removed costs one rewrite, and a body in a new
//! order costs a trip to the index per sample once. (A source that shuffled its lines
//! at every body would pay that trip, ~0.5 µs, for most samples every time; the
//! Prometheus client libraries sort their output or keep its order.) A series found
//! evicted is dropped ([`SeriesSequence::skip_expected`]) and found again through the
//! index like a new one.

use super::cache::{give_up, owned_series, take_series};
use super::series::{Series, SharedSeries};

/// The series of a source's last body in order; see the module doc.
#[derive(Default)]
pub(super) struct SeriesSequence {
    /// The entries (see the module doc). While a body is read and no rewrite is under
    /// way, those before `at` are the ones this body matched (or appended).
    arena: Vec<u8>,
    /// Entries in `arena` when no body is being read.
    len: usize,
    /// Whether a body is being read ([`SeriesSequence::begin`] was called last).
    reading: bool,
    /// Offset in `arena` of the entry expected next; `arena.len()` when none is left.
    at: usize,
    /// Offset of the entry after the expected one.
    after: usize,
    /// Entries before `at` (when no rewrite is under way).
    taken: usize,
    /// The identity of the entry at `at`.
    expected: Vec<u8>,
    /// The series address of the entry at `at`.
    expected_addr: usize,
    /// The identity of the entry before `at` (what `expected` was decoded from).
    behind: Vec<u8>,
    /// The series address of the entry before `at` (0 for none).
    behind_addr: usize,
    /// The identity of the entry after the expected one, once decoded by `find`.
    peek: Vec<u8>,
    /// The new sequence, from the body's first difference on.
    rewrite: Option<Rewrite>,
}

/// A sequence being rewritten while a body is read.
struct Rewrite {
    arena: Vec<u8>,
    len: usize,
    /// The identity of the last entry in `arena`.
    last: Vec<u8>,
    /// The series address of the last entry in `arena` (0 for none).
    last_addr: usize,
}

/// Where [`SeriesSequence::find`] found an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// The entry expected next.
    Expected,
    /// The entry after it: the expected one is gone from the body.
    AfterExpected,
}

/// Appends `n` as LEB128.
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 length at `*at`, moving `*at` past it.
fn get_len(arena: &[u8], at: &mut usize) -> usize {
    let mut n = 0usize;
    let mut shift = 0;
    while let Some(&b) = arena.get(*at) {
        *at += 1;
        if shift < usize::BITS {
            n |= usize::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    n
}

/// Appends `addr` as its difference to `base` (zigzag, LEB128).
fn put_addr(out: &mut Vec<u8>, addr: usize, base: usize) {
    let d = addr.wrapping_sub(base) as isize;
    put_len(out, ((d << 1) ^ (d >> (isize::BITS - 1))) as usize);
}

/// Reads an address stored by [`put_addr`] against `base` at `*at`, moving `*at`
/// past it.
fn get_addr(arena: &[u8], at: &mut usize, base: usize) -> usize {
    let z = get_len(arena, at);
    let d = ((z >> 1) as isize) ^ -((z & 1) as isize);
    base.wrapping_add(d as usize)
}

/// Appends an entry for `series` under `ident`, stored as deltas on the previous
/// entry's address `base_addr` and identity `base`; returns the series' address.
fn push_entry(
    arena: &mut Vec<u8>,
    series: SharedSeries,
    ident: &[u8],
    base: &[u8],
    base_addr: usize,
) -> usize {
    let addr = give_up(series);
    push_existing(arena, addr, ident, base, base_addr);
    addr
}

/// Appends an entry for the reference at `addr` (which moves to `arena`).
fn push_existing(arena: &mut Vec<u8>, addr: usize, ident: &[u8], base: &[u8], base_addr: usize) {
    put_addr(arena, addr, base_addr);
    let shared = ident.iter().zip(base).take_while(|(a, b)| a == b).count();
    put_len(arena, shared);
    put_len(arena, ident.len() - shared);
    arena.extend_from_slice(&ident[shared..]);
}

/// Decodes the entry at `at` (whose predecessor's identity and address are `base` and
/// `base_addr`): its identity into `out`; returns its address and the offset of the
/// entry after it.
fn decode(
    arena: &[u8],
    at: usize,
    base: &[u8],
    base_addr: usize,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let mut i = at;
    let addr = get_addr(arena, &mut i, base_addr);
    let shared = get_len(arena, &mut i);
    let rest = get_len(arena, &mut i);
    out.clear();
    out.extend_from_slice(base.get(..shared).unwrap_or(base));
    let end = i.saturating_add(rest).min(arena.len());
    out.extend_from_slice(arena.get(i..end).unwrap_or_default());
    (addr, end)
}

/// The address of the entry at `at` (its predecessor's is `base_addr`) and the offset
/// of the entry after it, without decoding its identity.
fn skip(arena: &[u8], at: usize, base_addr: usize) -> (usize, usize) {
    let mut i = at;
    let addr = get_addr(arena, &mut i, base_addr);
    let _shared = get_len(arena, &mut i);
    let rest = get_len(arena, &mut i);
    (addr, i.saturating_add(rest).min(arena.len()))
}

/// Gives back the reference of every entry in `arena[from..]` (the predecessor of the
/// entry at `from` has address `base_addr`).
fn release_from(arena: &[u8], from: usize, base_addr: usize) {
    let (mut at, mut addr) = (from, base_addr);
    while at < arena.len() {
        (addr, at) = skip(arena, at, addr);
        // SAFETY: every entry's reference in `arena[from..]` is still owned (callers
        // pass the part no entry was moved out of) and taken back once, here; the
        // callers hold `&mut` of the sequence, so no borrow of an entry lives.
        drop(unsafe { take_series(addr) });
    }
}

impl SeriesSequence {
    /// Entries held (those of the last complete body, while the next is read).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Starts reading a body: the first entry is expected first. Ends a body still
    /// being read.
    pub(super) fn begin(&mut self) {
        if self.reading {
            self.end();
        }
        self.reading = true;
        self.at = 0;
        self.taken = 0;
        self.behind.clear();
        self.behind_addr = 0;
        self.expect();
    }

    /// Decodes the entry at `at` into `expected` (and prefetches its series).
    fn expect(&mut self) {
        if self.at < self.arena.len() {
            (self.expected_addr, self.after) = decode(
                &self.arena,
                self.at,
                &self.behind,
                self.behind_addr,
                &mut self.expected,
            );
            // SAFETY: the entry at `at` is owned by the arena (not yet moved or
            // released: `at` only moves forward past those), and the borrow ends here.
            if let Some(s) = unsafe { owned_series(self.expected_addr) } {
                s.prefetch();
            }
        }
    }

    /// Whether `ident` is the identity of the entry expected next or of the one after
    /// it; nothing moves until [`SeriesSequence::take_expected`] or
    /// [`SeriesSequence::skip_expected`].
    #[inline]
    pub(super) fn find(&mut self, ident: &[u8]) -> Option<Found> {
        if !self.reading || self.at >= self.arena.len() {
            return None;
        }
        if self.expected == ident {
            return Some(Found::Expected);
        }
        if self.after < self.arena.len() {
            decode(
                &self.arena,
                self.after,
                &self.expected,
                self.expected_addr,
                &mut self.peek,
            );
            if self.peek == ident {
                return Some(Found::AfterExpected);
            }
        }
        None
    }

    /// The series of the entry expected next.
    #[inline]
    pub(super) fn expected_series(&self) -> Option<&Series> {
        if !self.reading || self.at >= self.arena.len() {
            return None;
        }
        // SAFETY: the entry at `at` is owned by the arena (see `expect`); references
        // are taken back only by `&mut self` methods, so not while this borrow lives.
        unsafe { owned_series(self.expected_addr) }
    }

    /// Moves past the expected entry, which stays in the sequence.
    #[inline]
    pub(super) fn take_expected(&mut self) {
        if !self.reading || self.at >= self.arena.len() {
            return;
        }
        if let Some(r) = &mut self.rewrite {
            // The entry's reference moves to the new arena, and the old arena's entry
            // is never released (it lies before `at`).
            push_existing(
                &mut r.arena,
                self.expected_addr,
                &self.expected,
                &r.last,
                r.last_addr,
            );
            r.last.clone_from(&self.expected);
            r.last_addr = self.expected_addr;
            r.len += 1;
        } else {
            self.taken += 1;
        }
        self.advance();
    }

    /// Drops the expected entry (gone from the body, or its series found evicted: the
    /// caller then resolves the sample through the index and pushes the successor) and
    /// expects the one after it.
    pub(super) fn skip_expected(&mut self) {
        if !self.reading || self.at >= self.arena.len() {
            return;
        }
        self.start_rewrite();
        // SAFETY: the entry at `at` is still owned by the old arena (`at` only moves
        // forward past entries moved or released) and is released once, here, before
        // `advance` moves past it; `&mut self` means no borrow of it lives.
        drop(unsafe { take_series(self.expected_addr) });
        self.advance();
    }

    /// Moves `at` to the next entry.
    fn advance(&mut self) {
        std::mem::swap(&mut self.behind, &mut self.expected);
        self.behind_addr = self.expected_addr;
        self.at = self.after;
        self.expect();
    }

    /// Starts the new arena with the entries before `at` (their references move).
    fn start_rewrite(&mut self) {
        if self.rewrite.is_none() {
            let mut arena = Vec::with_capacity(self.arena.len() + 64);
            arena.extend_from_slice(&self.arena[..self.at]);
            self.rewrite = Some(Rewrite {
                arena,
                len: self.taken,
                last: self.behind.clone(),
                last_addr: self.behind_addr,
            });
        }
    }

    /// Appends `series`, resolved for `ident`, which was not found: at the end of the
    /// sequence, or into the rewrite. Beyond `capacity` entries the series is not kept
    /// (the source's later samples go through the index every time).
    pub(super) fn push(&mut self, ident: &[u8], series: SharedSeries, capacity: usize) {
        if !self.reading {
            return;
        }
        if self.rewrite.is_none() && self.at >= self.arena.len() {
            if self.taken >= capacity {
                return;
            }
            self.behind_addr = push_entry(
                &mut self.arena,
                series,
                ident,
                &self.behind,
                self.behind_addr,
            );
            self.behind.clear();
            self.behind.extend_from_slice(ident);
            self.at = self.arena.len();
            self.after = self.at;
            self.taken += 1;
            return;
        }
        self.start_rewrite();
        if let Some(r) = &mut self.rewrite
            && r.len < capacity
        {
            r.last_addr = push_entry(&mut r.arena, series, ident, &r.last, r.last_addr);
            r.last.clear();
            r.last.extend_from_slice(ident);
            r.len += 1;
        }
    }

    /// Ends the body: entries it did not match are released, and the sequence is
    /// what the body matched or added, in its order.
    pub(super) fn end(&mut self) {
        if !self.reading {
            return;
        }
        self.reading = false;
        release_from(&self.arena, self.at, self.behind_addr);
        match self.rewrite.take() {
            Some(mut r) => {
                r.arena.shrink_to_fit();
                self.arena = r.arena;
                self.len = r.len;
            }
            None => {
                self.arena.truncate(self.at);
                self.len = self.taken;
                // A first body grew the arena by doubling; bodies like it add nothing.
                if self.arena.capacity() - self.arena.len() > self.arena.len() / 8 {
                    self.arena.shrink_to_fit();
                }
            }
        }
        self.expected.clear();
        self.behind.clear();
        self.peek.clear();
    }
}

impl Drop for SeriesSequence {
    fn drop(&mut self) {
        self.end();
        release_from(&self.arena, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::aggregator::series::test_series as series;
    use crate::key::Keyed;

    /// Reads one body of identities the way `Writer` does: a found entry is taken
    /// (after skipping the expected one if need be), a new one is pushed with a fresh
    /// series. Returns, per identity, the series' id (its `start_ms`) and whether it
    /// was found.
    fn read(
        seq: &mut SeriesSequence,
        body: &[String],
        made: &mut Vec<SharedSeries>,
    ) -> Vec<(i64, bool)> {
        seq.begin();
        let out = body
            .iter()
            .map(|ident| match seq.find(ident.as_bytes()) {
                Some(f) => {
                    if f == Found::AfterExpected {
                        seq.skip_expected();
                    }
                    let id = seq.expected_series().map(|s| s.test_id()).unwrap();
                    seq.take_expected();
                    (id, true)
                }
                None => {
                    let s = series(made.len());
                    made.push(s.clone());
                    seq.push(ident.as_bytes(), s, usize::MAX);
                    (made.len() as i64 - 1, false)
                }
            })
            .collect();
        seq.end();
        out
    }

    #[test]
    fn a_body_like_the_last_is_found_entry_by_entry_and_writes_nothing() {
        let body: Vec<String> = (0..100).map(|i| format!("m{{id=\"{i}\"}}")).collect();
        let mut seq = SeriesSequence::default();
        let mut made = Vec::new();
        let first = read(&mut seq, &body, &mut made);
        assert!(first.iter().all(|(_, found)| !found));
        let bytes = seq.arena.len();
        // Each address is stored as its distance from the previous entry's (LEB128 of
        // its zigzag): ~2 bytes for series made one after another, more when other
        // tests' threads allocate from the same heap meanwhile, so it is recomputed
        // from the actual addresses here. Each identity is stored as what it does not
        // share with the previous one: 5-6 bytes here, against 9-10 whole.
        let mut addresses = Vec::new();
        let mut base = 0;
        for s in &made {
            let addr = Keyed::as_raw(s).as_ptr().expose_provenance();
            put_addr(&mut addresses, addr, base);
            base = addr;
        }
        let identities = bytes.checked_sub(addresses.len());
        assert!(identities.is_some_and(|n| n <= 100 * 6), "{identities:?}");
        let ptr = seq.arena.as_ptr();
        let second = read(&mut seq, &body, &mut made);
        assert!(second.iter().all(|(_, found)| *found));
        assert_eq!(
            first.iter().map(|e| e.0).collect::<Vec<_>>(),
            second.iter().map(|e| e.0).collect::<Vec<_>>()
        );
        assert_eq!(
            (seq.arena.as_ptr(), seq.arena.len(), seq.len()),
            (ptr, bytes, 100)
        );
    }

    #[test]
    fn addresses_are_stored_as_differences_in_either_direction() {
        let cases = [
            (0, 0, 1),
            (0x7f00_0000_1000, 0x7f00_0000_10a0, 2),
            (0x7f00_0000_10a0, 0x7f00_0000_1000, 2),
            (0, usize::MAX, 1),
            (usize::MAX, 0, 1),
            (0, 0x7fff_ffff_fff0, 7),
            (0x5555_0000_0000, 0x7fff_ffff_fff0, 7),
        ];
        for (base, addr, len) in cases {
            let mut out = Vec::new();
            put_addr(&mut out, addr, base);
            assert_eq!(out.len(), len, "{base:x} -> {addr:x}");
            let mut at = 0;
            assert_eq!(get_addr(&out, &mut at, base), addr);
            assert_eq!(at, out.len());
        }
    }

    #[test]
    fn every_entry_gives_its_series_reference_back_once() {
        let s = series(7);
        {
            let mut seq = SeriesSequence::default();
            seq.begin();
            for (i, id) in ["a", "b", "c"].iter().enumerate() {
                seq.push(id.as_bytes(), s.clone(), usize::MAX);
                assert_eq!(Keyed::references(&s), 2 + i as u32);
            }
            seq.end();
            // b is dropped from the next body, d is new: one rewrite.
            seq.begin();
            for id in ["a", "c", "d"] {
                match seq.find(id.as_bytes()) {
                    Some(f) => {
                        if f == Found::AfterExpected {
                            seq.skip_expected();
                        }
                        seq.take_expected();
                    }
                    None => seq.push(id.as_bytes(), s.clone(), usize::MAX),
                }
            }
            seq.end();
            assert_eq!(Keyed::references(&s), 4);
            // A body cut short releases the rest; one left unended is ended on drop.
            seq.begin();
            seq.take_expected();
            seq.end();
            assert_eq!(Keyed::references(&s), 2);
            seq.begin();
        }
        assert_eq!(Keyed::references(&s), 1);
    }

    #[test]
    fn entries_past_the_capacity_are_not_kept() {
        let s = series(1);
        let mut seq = SeriesSequence::default();
        seq.begin();
        for id in ["a", "b", "c"] {
            seq.push(id.as_bytes(), s.clone(), 2);
        }
        seq.end();
        assert_eq!((seq.len(), Keyed::references(&s)), (2, 3));
    }

    /// Identities from a small alphabet, so that bodies share, repeat and reorder them.
    fn body() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("m\\{a=\"[a-d]{0,2}\"\\}|[a-c]{1,3}", 0..24)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a model (the series each identity was pushed with; a body that
        /// repeats an identity pushes it twice, and the index would give both pushes
        /// the same series): over any bodies (repeated, reordered, added and dropped identities),
        /// a found identity gives that series, the sequence ends as the body's
        /// identities in order, and every reference is given back.
        #[test]
        fn a_found_identity_is_always_a_series_it_was_pushed_with(
            bodies in proptest::collection::vec(body(), 1..6),
        ) {
            let mut seq = SeriesSequence::default();
            let mut given: std::collections::HashMap<String, Vec<i64>> = Default::default();
            let mut made = Vec::new();
            for body in &bodies {
                for (ident, (id, found)) in body.iter().zip(read(&mut seq, body, &mut made)) {
                    if found {
                        let pushed = given.get(ident).map_or(&[][..], Vec::as_slice);
                        prop_assert!(pushed.contains(&id), "{} {} {:?}", ident, id, pushed);
                    } else {
                        given.entry(ident.clone()).or_default().push(id);
                    }
                }
                let (mut at, mut addr) = (0, 0);
                let mut base = Vec::new();
                let mut held = Vec::new();
                while at < seq.arena.len() {
                    let mut id = Vec::new();
                    (addr, at) = decode(&seq.arena, at, &base, addr, &mut id);
                    // SAFETY: the sequence owns the entry's reference while `seq` lives.
                    let s = unsafe { owned_series(addr) }.unwrap();
                    let pushed = given.get(&String::from_utf8(id.clone()).unwrap());
                    prop_assert!(pushed.is_some_and(|p| p.contains(&s.test_id())));
                    held.push(String::from_utf8(id.clone()).unwrap());
                    base = id;
                }
                prop_assert_eq!(&held, body);
                prop_assert_eq!(seq.len(), body.len());
            }
            drop(seq);
            prop_assert!(made.iter().all(|s| Keyed::references(s) == 1));
        }
    }
}
