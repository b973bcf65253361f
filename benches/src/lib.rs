//! weir-benches: shared helpers for the criterion benchmarks in `benches/benches/`,
//! and [`harness`], the library of the `weir-bench` binary.
//!
//! - [`label_sets`] / [`labels_of`]: the series shape every benchmark uses: the metric
//!   [`METRIC`] with four labels given *unsorted*, for a canonical key of ~80 bytes.
//! - [`MutexMap`] and [`StripedMap`]: the baseline maps the aggregator is compared with.
//!   They do the same job as a [`weir_core::Writer`] cache hit (find a counter by the
//!   label set encoded in arrival order, add to it) behind one lock, or behind one of
//!   256 locks.
//! - [`harness`]: weir-bench's load generators, peers, scenarios and reports.

pub mod harness;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Mutex;

use foldhash::fast::FixedState;

/// The metric name of every benchmark series.
pub const METRIC: &str = "http_requests_total";

/// Label names in the order the benchmarks pass them (not sorted: the canonical order
/// is `instance, method, service, status`).
pub const LABEL_NAMES: [&str; 4] = ["status", "method", "service", "instance"];

const STATUS: [&str; 8] = ["200", "201", "204", "301", "400", "404", "500", "503"];
const METHOD: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// One label set, in arrival (unsorted) order, as a receiver would hand it over.
pub type Labels = [(&'static str, &'static str); 4];

/// The label values of series `i` (`status, method, service, instance`), written into
/// `out` (cleared first). Distinct for every `i < 32_000_000`.
///
/// The canonical key is `http_requests_total` plus
/// `instance=host-NNNNNN, method=GET|POST|PUT|DELETE, service=svc-NNNN, status=NNN`:
/// 80 bytes on average (78 to 82).
pub fn labels_of(i: usize, out: &mut [String; 4]) {
    for s in out.iter_mut() {
        s.clear();
    }
    out[0].push_str(STATUS[i % 8]);
    out[1].push_str(METHOD[(i / 8) % 4]);
    // Writing to a String cannot fail.
    let _ = write!(out[2], "svc-{:04}", (i / 32) % 1000);
    let _ = write!(out[3], "host-{:06}", i / 32);
}

/// `n` distinct label sets for series `0..n`, with their strings in one leaked arena
/// (the benchmarks build this once per process; ~90 bytes per set).
pub fn label_sets(n: usize) -> Vec<Labels> {
    let mut parts: [String; 4] = Default::default();
    let mut arena = String::with_capacity(n * 27);
    let mut ends = Vec::with_capacity(n * 4);
    for i in 0..n {
        labels_of(i, &mut parts);
        for p in &parts {
            arena.push_str(p);
            ends.push(arena.len());
        }
    }
    let arena: &'static str = arena.leak();
    let mut start = 0;
    let mut out = Vec::with_capacity(n);
    for e in ends.chunks_exact(4) {
        let mut set: Labels = [("", ""); 4];
        for (j, &end) in e.iter().enumerate() {
            set[j] = (LABEL_NAMES[j], &arena[start..end]);
            start = end;
        }
        out.push(set);
    }
    out
}

/// Appends `name` and `labels` in the order given to `out` (cleared first), with the
/// separators of weir's canonical encoding (`0xFF` before each label, `0xFE` between
/// name and value). This is what a [`weir_core::Writer`] does to look up its cache.
#[inline]
pub fn encode_raw(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)]) {
    out.clear();
    out.extend_from_slice(name.as_bytes());
    for &(k, v) in labels {
        out.push(0xFF);
        out.extend_from_slice(k.as_bytes());
        out.push(0xFE);
        out.extend_from_slice(v.as_bytes());
    }
}

/// A counter map shared by threads, keyed by encoded label-set bytes.
pub trait CounterMap: Sync {
    /// Creates the counter for `key` (at zero) if it does not exist.
    fn insert(&self, key: &[u8]);
    /// Adds `v` to the counter for `key`; false if there is none.
    fn add(&self, key: &[u8], v: f64) -> bool;
    /// The number of counters.
    fn len(&self) -> usize;
    /// True if there are no counters.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Inner = HashMap<Vec<u8>, f64, FixedState>;

/// Baseline 1: every counter in one `Mutex<HashMap<Vec<u8>, f64>>` (foldhash, the
/// same hash as the writer cache). Each update takes the one lock.
#[derive(Default)]
pub struct MutexMap {
    map: Mutex<Inner>,
}

impl MutexMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CounterMap for MutexMap {
    fn insert(&self, key: &[u8]) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(key) {
            m.insert(key.to_vec(), 0.0);
        }
    }

    #[inline]
    fn add(&self, key: &[u8], v: f64) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(key) {
            Some(c) => {
                *c += v;
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

/// Number of stripes of a [`StripedMap`].
pub const STRIPES: usize = 256;

/// One stripe, on its own cache line so two stripes' locks never share one.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(Mutex<Inner>);

/// Baseline 2: 256 `Mutex<HashMap<Vec<u8>, f64>>` stripes; the stripe is chosen by the
/// top bits of a foldhash of the key, so two threads rarely take the same lock. The
/// key is hashed twice (once for the stripe, once inside the stripe's map: std's
/// `HashMap` has no stable API to pass a precomputed hash), ~5 ns extra per update.
pub struct StripedMap {
    stripes: Box<[Stripe]>,
    hasher: FixedState,
}

impl Default for StripedMap {
    fn default() -> Self {
        StripedMap {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            // A different seed from the maps inside, so the stripe bits and the
            // in-map bucket bits are independent.
            hasher: FixedState::with_seed(0x9e37_79b9_7f4a_7c15),
        }
    }
}

impl StripedMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn stripe(&self, key: &[u8]) -> &Mutex<Inner> {
        let h = self.hasher.hash_one(key);
        &self.stripes[(h >> 56) as usize % STRIPES].0
    }
}

impl CounterMap for StripedMap {
    fn insert(&self, key: &[u8]) {
        let mut m = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(key) {
            m.insert(key.to_vec(), 0.0);
        }
    }

    #[inline]
    fn add(&self, key: &[u8], v: f64) -> bool {
        let mut m = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(key) {
            Some(c) => {
                *c += v;
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.0.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

/// A per-thread front end to a [`CounterMap`] that works like a [`weir_core::Writer`]
/// cache hit: encode the label set in arrival order into a reused buffer, look that up.
pub struct MapWriter<'a, M: CounterMap> {
    map: &'a M,
    raw: Vec<u8>,
}

impl<'a, M: CounterMap> MapWriter<'a, M> {
    /// A writer over `map`.
    pub fn new(map: &'a M) -> Self {
        MapWriter {
            map,
            raw: Vec::with_capacity(256),
        }
    }

    /// Creates the counter for `name` + `labels` if it does not exist.
    pub fn insert(&mut self, name: &str, labels: &[(&str, &str)]) {
        encode_raw(&mut self.raw, name, labels);
        self.map.insert(&self.raw);
    }

    /// Adds `v` to the counter for `name` + `labels`; false if it does not exist.
    #[inline]
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], v: f64) -> bool {
        encode_raw(&mut self.raw, name, labels);
        self.map.add(&self.raw, v)
    }
}

/// Mean canonical key length (bytes) over the first `n` label sets.
pub fn mean_key_len(sets: &[Labels]) -> f64 {
    let total: usize = sets
        .iter()
        .map(|l| weir_core::SeriesKey::new(METRIC, l).map_or(0, |k| k.as_bytes().len()))
        .sum();
    total as f64 / sets.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_about_80_bytes_distinct_and_unsorted() {
        let sets = label_sets(64_000);
        let mean = mean_key_len(&sets);
        assert!((79.0..=81.0).contains(&mean), "mean key length {mean}");
        let mut raw = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for l in &sets {
            let k = weir_core::SeriesKey::new(METRIC, l).unwrap();
            encode_raw(&mut raw, METRIC, l);
            assert_ne!(raw, k.as_bytes(), "labels must arrive unsorted");
            assert_eq!(raw.len(), k.as_bytes().len());
            assert!(seen.insert(k));
        }
    }

    #[test]
    fn baseline_maps_add_to_existing_counters_only() {
        fn check(m: &impl CounterMap) {
            let sets = label_sets(1000);
            let mut w = MapWriter::new(m);
            for l in &sets {
                w.insert(METRIC, l);
            }
            assert_eq!(m.len(), 1000);
            assert!(w.add(METRIC, &sets[7], 1.0));
            assert!(!w.add(METRIC, &[("a", "b")], 1.0));
        }
        check(&MutexMap::new());
        check(&StripedMap::new());
    }
}
