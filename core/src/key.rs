//! Series identity: [`SeriesKey`] (metric name plus labels sorted by key) and its
//! 64-bit FNV-1a fingerprint ([`SeriesKey::fingerprint`], [`fnv1a64`]).
//!
//! Owns: validation of metric and label names (Prometheus rules), the canonical byte
//! encoding of a series, and the fingerprint over it.
//!
//! Canonical encoding: the name, then per label (sorted by key) the byte `0xFF`, the key,
//! the byte `0xFE` and the value. Neither `0xFE` nor `0xFF` can occur in UTF-8 text, so
//! the encoding is unambiguous for any label value by construction: `{a="b,c"}` and
//! `{a="b", c=""}` have different bytes. Equality of keys is equality of these bytes,
//! so two keys that share a fingerprint are still two keys: the fingerprint is never
//! used as identity.
//!
//! Must never: allocate while encoding into a caller's buffer beyond that buffer's
//! growth, or accept a name that a Prometheus-compatible backend would reject.
//!
//! # Representation
//! A [`SeriesKey`] is one pointer to an 8-byte header (a 32-bit reference count, and
//! the byte length with the kind of value stored before the header) that the canonical
//! bytes follow. A key built on its own is just that: one allocation of 8 bytes plus
//! the key. The aggregator stores each series *with* its key (`Keyed<Series>`): one
//! allocation holding the series, then the header, then the bytes, with one reference
//! count for both, so that a key cloned out of a series (every flush does so per
//! series) shares the series' allocation and count and touches no second allocation.
//! Either way equality, ordering and hashing are those of the bytes, so the two kinds
//! of key are interchangeable.
//!
//! The count follows `std::sync::Arc`'s rules (Relaxed increment, Release decrement,
//! an Acquire fence before the last holder frees) and its overflow guard (a clone past
//! `i32::MAX` references aborts). The value's kind (`KeyedValue::KIND`, 0 for none)
//! names the release function registered for its type when the first such allocation
//! was made, which is what lets a plain `SeriesKey` drop the value stored with it
//! without knowing its type; a function pointer in every header would cost 8 more bytes
//! per series. This module holds all of that `unsafe`: `alloc_keyed`, `release`,
//! `SeriesKey::as_bytes` and `Keyed`'s `Deref`. Two `unsafe fn`s leave the count to
//! their callers, whose `unsafe` blocks say why it holds: `Keyed::from_raw` (the
//! addresses the writer caches store) and `SeriesKey::uncounted_copy` (the keys a
//! flush's chunks lend their consumer).

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::any::TypeId;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering, fence};

/// Separates one label from what precedes it in the canonical encoding.
pub(crate) const LABEL_SEP: u8 = 0xFF;
/// Separates a label's key from its value in the canonical encoding.
pub(crate) const VALUE_SEP: u8 = 0xFE;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a over `bytes`.
///
/// ```
/// assert_eq!(weir_core::key::fnv1a64(b""), 0xcbf29ce484222325);
/// assert_eq!(weir_core::key::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Why a name and label set cannot form a [`SeriesKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName(String),
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`, or is the reserved `__name__`.
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]* and not be __name__")]
    InvalidLabelName(String),
    /// The same label name appears twice.
    #[error("duplicate label name {0:?}")]
    DuplicateLabel(String),
}

impl KeyError {
    /// Short, stable reason for counters (`weir_rejected_total{reason=...}`).
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyError::InvalidMetricName(_) => "invalid_metric_name",
            KeyError::InvalidLabelName(_) => "invalid_label_name",
            KeyError::DuplicateLabel(_) => "duplicate_label",
        }
    }
}

/// True if `name` is a valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b':' => {}
        _ => return false,
    }
    b[1..]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

/// True if `name` is a valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not `__name__`.
pub fn is_valid_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    name != "__name__"
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Appends the raw encoding of `name` and `labels` *in the order given* to `out`.
///
/// This is the canonical encoding when `labels` are sorted by key and distinct; the
/// return value says whether they were. Nothing is validated here.
pub(crate) fn encode_raw(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)]) -> bool {
    out.clear();
    out.extend_from_slice(name.as_bytes());
    let mut sorted = true;
    let mut prev: Option<&str> = None;
    for &(k, v) in labels {
        if let Some(p) = prev {
            sorted &= p < k;
        }
        prev = Some(k);
        push_label(out, k, v);
    }
    sorted
}

/// Appends one label in the encoding of the module doc.
fn push_label(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(LABEL_SEP);
    out.extend_from_slice(key.as_bytes());
    out.push(VALUE_SEP);
    out.extend_from_slice(value.as_bytes());
}

/// The identity of a series: a metric name and its labels, sorted by label name.
///
/// Cheap to clone (one reference count). Equality, ordering and hashing are those of
/// the canonical bytes (see the module doc), whichever allocation holds them.
///
/// One pointer (8 bytes on 64-bit targets) to the key's `Header`, which the key
/// bytes follow. A key built on its own ([`SeriesKey::new`]) is that header and the
/// bytes alone; the key of an aggregator series sits in the series' own allocation
/// (`Keyed`) and shares its reference count, so cloning it out of a series (as every
/// flush does per series) touches nothing but the series.
///
/// ```
/// use weir_core::key::SeriesKey;
/// let a = SeriesKey::new("http_requests_total", &[("method", "GET"), ("code", "200")]).unwrap();
/// let b = SeriesKey::new("http_requests_total", &[("code", "200"), ("method", "GET")]).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), r#"http_requests_total{code="200",method="GET"}"#);
/// assert!(SeriesKey::new("x", &[("a", "1"), ("a", "2")]).is_err());
/// ```
pub struct SeriesKey {
    /// Owns one of the allocation's references. Points at a live, initialised
    /// [`Header`] built by [`alloc_keyed`], with the header's `len` key bytes
    /// following it, for as long as this value exists.
    header: NonNull<Header>,
}

// SAFETY: the allocation behind a key is its header (an atomic count and immutable
// fields), immutable bytes, and a value that `Keyed::new` only accepts when it is
// `Send + Sync`; the count is only changed atomically. So keys may move to and be
// shared between threads as `Arc<[u8]>` (the former representation) could.
unsafe impl Send for SeriesKey {}
// SAFETY: see `Send` above: nothing behind a key is mutated except through atomics.
unsafe impl Sync for SeriesKey {}

/// The start of a key's bytes: its reference count, its length and what to free with
/// it. `#[repr(C)]` so that the bytes start right after it, at offset 8; aligned to 8
/// so that its address (what [`Keyed::into_raw`] gives) has three low bits to spare.
#[repr(C, align(8))]
struct Header {
    /// References ([`SeriesKey`]s, each [`Keyed`] holds one) to the allocation.
    count: AtomicU32,
    /// The number of key bytes following the header in bits 0..[`LEN_BITS`], and above
    /// them the [`KeyedValue::KIND`] of the value stored before the header (0: none).
    /// Immutable.
    len_and_kind: u32,
}

impl Header {
    fn len(&self) -> usize {
        (self.len_and_kind & LEN_MASK) as usize
    }

    fn kind(&self) -> usize {
        (self.len_and_kind >> LEN_BITS) as usize
    }
}

/// Bits of [`Header::len_and_kind`] that hold the key's length: keys of up to 512 MiB,
/// far beyond what any receiver takes in.
const LEN_BITS: u32 = 29;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;
/// Kinds a header can name: 0 (no value) and `1..KINDS`.
const KINDS: usize = 1 << (32 - LEN_BITS);

/// A type stored with keys in one allocation ([`Keyed`]), named in their headers by
/// `KIND` so that the last reference, which may be a plain [`SeriesKey`], frees it as
/// that type.
pub(crate) trait KeyedValue: Send + Sync + 'static {
    /// In `1..KINDS` and not shared with another type: [`Keyed::new`] asserts both.
    const KIND: u32;
}

/// Drops the value stored before a header and frees the allocation ([`release`] for
/// the value's type).
type Release = unsafe fn(NonNull<Header>);

/// The type and release function of each kind of value (index: `KeyedValue::KIND`),
/// set by the first allocation of that kind; a kind's allocations exist only after it
/// is set, so their last reference finds it.
static RELEASES: [OnceLock<(TypeId, Release)>; KINDS] = [const { OnceLock::new() }; KINDS];

/// Most references to one key, as `std::sync::Arc` bounds its own: past it a clone
/// aborts the process rather than let the count wrap (which would free the key while
/// in use). Far beyond anything weir holds: each reference is a batch entry, a cache
/// slot, a handle or a table entry.
const MAX_REFS: u32 = i32::MAX as u32;

/// Offset of the header in the allocation of a key stored with a `T`: right after the
/// `T` (which sits at offset 0), rounded up to the header's alignment.
const fn header_offset<T>() -> usize {
    size_of::<T>().next_multiple_of(align_of::<Header>())
}

/// The allocation of a `T` with a `len`-byte key: the `T`, the header, the bytes.
/// `None` only if the size overflows `isize`.
fn keyed_layout<T>(len: usize) -> Option<Layout> {
    let size = header_offset::<T>()
        .checked_add(size_of::<Header>())?
        .checked_add(len)?;
    let align = align_of::<T>().max(align_of::<Header>());
    Layout::from_size_align(size, align)
        .ok()
        .map(|l| l.pad_to_align())
}

/// Allocates `value` (of kind `kind`, 0 for `()`) with a copy of `bytes` behind a
/// header whose count is 1.
///
/// Aborts, as `Arc::from` does, when memory runs out; also for a key longer than
/// [`LEN_MASK`] bytes (512 MiB), which no input reaches (every receiver bounds its
/// bodies and datagrams far below that).
fn alloc_keyed<T: Send + Sync + 'static>(value: T, kind: u32, bytes: &[u8]) -> NonNull<Header> {
    let too_big = Layout::new::<Header>();
    let len = u32::try_from(bytes.len()).ok().filter(|&n| n <= LEN_MASK);
    let (Some(len), Some(layout)) = (len, keyed_layout::<T>(bytes.len())) else {
        handle_alloc_error(too_big)
    };
    // SAFETY: `layout` has a non-zero size (it contains a `Header`).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        handle_alloc_error(layout)
    }
    // SAFETY: `base` is a fresh allocation of `layout`: the `T` at offset 0 is aligned
    // (layout align >= align of `T`), the header at `header_offset::<T>()` is aligned
    // (a multiple of its alignment, as is the base) and in bounds, and the `len` bytes
    // after it end at or before the layout's size. Nothing else refers to it yet.
    unsafe {
        base.cast::<T>().write(value);
        let header = base.add(header_offset::<T>()).cast::<Header>();
        header.write(Header {
            count: AtomicU32::new(1),
            len_and_kind: len | kind << LEN_BITS,
        });
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), header.add(1).cast::<u8>(), bytes.len());
        NonNull::new_unchecked(header)
    }
}

/// Drops the `T` stored before `header` and frees the allocation.
///
/// # Safety
/// `header` comes from `alloc_keyed::<T>` and no reference to the allocation is left:
/// its count just reached 0.
unsafe fn release<T>(header: NonNull<Header>) {
    // SAFETY: the header is live until the deallocation below (caller's contract).
    let len = unsafe { header.as_ref() }.len();
    let Some(layout) = keyed_layout::<T>(len) else {
        // Unreachable: `alloc_keyed` built this allocation with the same layout. Leak
        // rather than free with a wrong one.
        return;
    };
    // SAFETY: `alloc_keyed::<T>` placed the header `header_offset::<T>()` bytes into
    // the allocation, whose base it therefore is, with the `T` there; nothing refers
    // to either any more, so the value is dropped once and the memory freed with the
    // layout it was allocated with.
    unsafe {
        let base = header.as_ptr().cast::<u8>().sub(header_offset::<T>());
        std::ptr::drop_in_place(base.cast::<T>());
        dealloc(base, layout);
    }
}

impl SeriesKey {
    fn header(&self) -> &Header {
        // SAFETY: the header lives as long as this key holds its reference.
        unsafe { self.header.as_ref() }
    }
    /// Validates `name` and `labels`, sorts the labels by name and builds the key.
    ///
    /// # Errors
    /// [`KeyError`] for an invalid metric or label name or a duplicate label name.
    pub fn new(name: &str, labels: &[(&str, &str)]) -> Result<SeriesKey, KeyError> {
        let mut buf = Vec::new();
        Self::canonicalize(name, labels, &mut buf, &mut Vec::new())?;
        Ok(SeriesKey::from_canonical(&buf))
    }

    /// Validates and writes the canonical encoding of `name` and `labels` into `out`.
    /// `order` is scratch space; with both buffers reused nothing is allocated once
    /// they have grown.
    pub(crate) fn canonicalize(
        name: &str,
        labels: &[(&str, &str)],
        out: &mut Vec<u8>,
        order: &mut Vec<usize>,
    ) -> Result<(), KeyError> {
        if !is_valid_metric_name(name) {
            return Err(KeyError::InvalidMetricName(name.to_owned()));
        }
        for (k, _) in labels {
            if !is_valid_label_name(k) {
                return Err(KeyError::InvalidLabelName((*k).to_owned()));
            }
        }
        if encode_raw(out, name, labels) {
            return Ok(());
        }
        order.clear();
        order.extend(0..labels.len());
        order.sort_unstable_by(|&a, &b| labels[a].0.cmp(labels[b].0));
        if let Some(w) = order.windows(2).find(|w| labels[w[0]].0 == labels[w[1]].0) {
            return Err(KeyError::DuplicateLabel(labels[w[0]].0.to_owned()));
        }
        out.clear();
        out.extend_from_slice(name.as_bytes());
        for &i in order.iter() {
            push_label(out, labels[i].0, labels[i].1);
        }
        Ok(())
    }

    /// References to the key's allocation (its count), for tests of code that holds
    /// keys uncounted or as raw addresses.
    #[cfg(test)]
    pub(crate) fn references(&self) -> u32 {
        self.header().count.load(Ordering::Relaxed)
    }

    /// A second `SeriesKey` for this key's allocation that holds no reference of its
    /// own: no count is taken now, so none may be given back. It reads, compares and
    /// clones (a clone takes a counted reference) like any key.
    ///
    /// # Safety
    /// The copy must never be dropped (forget it: `mem::forget`, a destructuring that
    /// forgets the key), and must not be used after the last counted reference to the
    /// allocation is gone: the caller keeps one alive for the copy's whole use.
    pub(crate) unsafe fn uncounted_copy(&self) -> SeriesKey {
        SeriesKey {
            header: self.header,
        }
    }

    /// Builds a key from bytes already produced by [`SeriesKey::canonicalize`]; no
    /// other bytes may be given (`utf8` relies on it).
    pub(crate) fn from_canonical(bytes: &[u8]) -> SeriesKey {
        SeriesKey {
            header: alloc_keyed((), 0, bytes),
        }
    }

    /// The shared canonical bytes (see the module doc).
    pub fn as_bytes(&self) -> &[u8] {
        let len = self.header().len();
        // SAFETY: `alloc_keyed` wrote `len` bytes right after the header, in the same
        // allocation, and never changes them; they live as long as `self` holds its
        // reference, which the returned borrow cannot outlive.
        unsafe { std::slice::from_raw_parts(self.header.as_ptr().add(1).cast::<u8>(), len) }
    }

    /// Asks the CPU for the key's header and the cache line after it (all of a key of
    /// up to ~120 bytes), without reading them: a walk over many keys calls it a few
    /// keys ahead of the one it reads.
    pub(crate) fn prefetch(&self) {
        let p = self.header.as_ptr().cast::<u8>();
        crate::hint::prefetch(p);
        crate::hint::prefetch(p.wrapping_add(64));
    }

    /// The 64-bit FNV-1a fingerprint of the canonical bytes.
    pub fn fingerprint(&self) -> u64 {
        fnv1a64(self.as_bytes())
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        let bytes = self.as_bytes();
        let end = bytes
            .iter()
            .position(|&b| b == LABEL_SEP)
            .unwrap_or(bytes.len());
        utf8(&bytes[..end])
    }

    /// The labels as `(name, value)` pairs, sorted by name.
    pub fn labels(&self) -> Labels<'_> {
        let bytes = self.as_bytes();
        let start = bytes
            .iter()
            .position(|&b| b == LABEL_SEP)
            .unwrap_or(bytes.len());
        Labels {
            rest: &bytes[start..],
        }
    }
}

/// A name, label name or label value cut out of a key's bytes, as the `&str` it was
/// built from, without checking it again: every reader of a key's labels (the
/// encoders, the exposition page) would otherwise re-validate UTF-8 for every label of
/// every series on every flush (8–10 % of each encoder's profile).
fn utf8(b: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(b).is_ok(), "key component is not UTF-8");
    // SAFETY: a key's bytes come only from `canonicalize` (`new` calls it, and
    // `from_canonical`, crate-private, is only given its output), which writes `&str`s
    // joined by `LABEL_SEP` and `VALUE_SEP`. Neither byte occurs in UTF-8, and `name`
    // and `Labels::next` cut only at those bytes and at the key's ends, so every slice
    // given here is exactly the bytes of one of those `&str`s.
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// Iterator over a key's labels, from [`SeriesKey::labels`].
pub struct Labels<'a> {
    /// Remaining bytes; empty or starting with [`LABEL_SEP`].
    rest: &'a [u8],
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let body = self.rest.strip_prefix(&[LABEL_SEP])?;
        let end = body
            .iter()
            .position(|&b| b == LABEL_SEP)
            .unwrap_or(body.len());
        let (pair, rest) = body.split_at(end);
        self.rest = rest;
        let mid = pair
            .iter()
            .position(|&b| b == VALUE_SEP)
            .unwrap_or(pair.len());
        let value = pair.get(mid + 1..).unwrap_or(&[]);
        Some((utf8(&pair[..mid]), utf8(value)))
    }
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must equal `<[u8] as Hash>::hash` so maps keyed by `SeriesKey` can be
        // looked up with borrowed canonical bytes.
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for SeriesKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Writes `{k="v",...}` for `labels` as the Prometheus text format does (backslash,
/// double quote and newline escaped in values); nothing at all when there are none.
///
/// ```
/// let mut s = String::new();
/// weir_core::key::write_labels(&mut s, [("a", "x\"y"), ("b", "1")].into_iter()).unwrap();
/// assert_eq!(s, r#"{a="x\"y",b="1"}"#);
/// ```
pub fn write_labels<'a>(
    w: &mut impl fmt::Write,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    let mut first = true;
    for (k, v) in labels {
        w.write_str(if first { "{" } else { "," })?;
        first = false;
        w.write_str(k)?;
        w.write_str("=\"")?;
        write_escaped(w, v)?;
        w.write_str("\"")?;
    }
    if !first {
        w.write_str("}")?;
    }
    Ok(())
}

/// Writes a label value as the Prometheus text format quotes it (without the quotes):
/// backslash, double quote and newline escaped, every other character as it is. Runs
/// between escapes are written whole.
fn write_escaped(w: &mut impl fmt::Write, v: &str) -> fmt::Result {
    let mut rest = v;
    while let Some(i) = rest.bytes().position(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        w.write_str(&rest[..i])?;
        w.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        // Byte `i` is ASCII, so `i + 1` is a character boundary.
        rest = &rest[i + 1..];
    }
    w.write_str(rest)
}

impl fmt::Display for SeriesKey {
    /// Prometheus text style: `name{a="1",b="x\"y"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        write_labels(f, self.labels())
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeriesKey({self})")
    }
}

impl Clone for SeriesKey {
    fn clone(&self) -> SeriesKey {
        // Relaxed, as `Arc::clone`: the new reference is made from an existing one, which
        // keeps the allocation alive meanwhile; no other memory is published by it.
        let old = self.header().count.fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            std::process::abort();
        }
        SeriesKey {
            header: self.header,
        }
    }
}

impl Drop for SeriesKey {
    fn drop(&mut self) {
        // Release, as `Arc`'s drop: this holder's uses of the allocation (and of the
        // value stored with the key) happen before the last holder frees it.
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Acquire: pairs with every other holder's Release decrement above, so their
        // uses happen before the drop and free below.
        fence(Ordering::Acquire);
        let release = match self.header().kind() {
            0 => release::<()>,
            kind => match RELEASES[kind].get() {
                Some(&(_, release)) => release,
                // Unreachable: `Keyed::new` registered the kind before allocating. Leak
                // rather than free as a wrong type.
                None => return,
            },
        };
        // SAFETY: the count reached 0, so this was the last reference; `release` is the
        // one for the value's type: `()` for kind 0 (`from_canonical`), else the one
        // registered for the kind, which only that type has (`Keyed::new`).
        unsafe { release(self.header) }
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header || self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SeriesKey {}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SeriesKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl SeriesKey {
    /// Orders keys as an exposition page lists them: by metric name, then by labels
    /// (each by name, then value), a name or value before every longer one it begins;
    /// so all series of one name are adjacent, whether or not they have labels. (The
    /// plain [`Ord`] of the canonical bytes splits `a` from `a{x="1"}` by `a_b`.)
    ///
    /// ```
    /// use weir_core::SeriesKey;
    /// let k = |name, labels: &[(&str, &str)]| SeriesKey::new(name, labels).unwrap();
    /// let mut keys = vec![k("a", &[("x", "1")]), k("a_b", &[]), k("a", &[])];
    /// keys.sort_by(|a, b| a.cmp_by_name(b));
    /// assert_eq!(keys, [k("a", &[]), k("a", &[("x", "1")]), k("a_b", &[])]);
    /// ```
    pub fn cmp_by_name(&self, other: &SeriesKey) -> std::cmp::Ordering {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        // The canonical bytes compared with the two separators below every byte of a
        // name or value: `LABEL_SEP` and `VALUE_SEP` end a name or value just as the
        // key's end does (neither occurs in UTF-8, and at the first difference both
        // keys are in the same part, so the two never meet each other).
        let rank = |b: u8| b.wrapping_add(2);
        match first_difference(a, b) {
            Some(i) => rank(a[i]).cmp(&rank(b[i])),
            None => a.len().cmp(&b.len()),
        }
    }
}

/// The first index where `a` and `b` differ, within the shorter one's length. Eight
/// bytes at a time: the keys of one family share their name and label names.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("chunks of 8"));
        let diff = word(x) ^ word(y);
        if diff != 0 {
            // Little-endian: the lowest set bit is in the first differing byte.
            return Some(i + (diff.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    (i..n).find(|&j| a[j] != b[j])
}

/// A value stored in one allocation with a key, shared like an `Arc<T>`: the
/// aggregator keeps each series as a `Keyed<Series>`, so that a series and its key are
/// one allocation with one reference count, and [`Keyed::key`] hands out the key as a
/// plain [`SeriesKey`] that keeps the whole allocation (and the value) alive.
///
/// Layout: the `T` at offset 0, then the key's 8-byte header at the `T`'s size rounded
/// up to 8, then the key bytes; one `malloc` block.
pub(crate) struct Keyed<T> {
    /// One of the allocation's references; its header is `header_offset::<T>()` bytes
    /// after a live `T` (built only by [`Keyed::new`]).
    key: SeriesKey,
    /// Owns a `T` as far as drop checking and auto traits go.
    _value: PhantomData<T>,
}

impl<T: KeyedValue> Keyed<T> {
    /// Stores `value` and a copy of `bytes` in one new allocation. `bytes` must be
    /// output of [`SeriesKey::canonicalize`], as for [`SeriesKey::from_canonical`].
    ///
    /// # Panics
    /// If another type claimed `T::KIND` first (a bug, found at its first value).
    pub(crate) fn new(bytes: &[u8], value: T) -> Keyed<T> {
        const { assert!(T::KIND > 0 && (T::KIND as usize) < KINDS) };
        let (ty, _) = RELEASES[T::KIND as usize].get_or_init(|| (TypeId::of::<T>(), release::<T>));
        assert!(
            *ty == TypeId::of::<T>(),
            "two types stored with keys claim kind {}",
            T::KIND
        );
        Keyed {
            key: SeriesKey {
                header: alloc_keyed(value, T::KIND, bytes),
            },
            _value: PhantomData,
        }
    }
}

impl<T> Keyed<T> {
    /// The key; clone it for a key that shares this allocation.
    pub(crate) fn key(&self) -> &SeriesKey {
        &self.key
    }

    /// The address of the value (for prefetching).
    pub(crate) fn as_ptr(this: &Keyed<T>) -> *const T {
        // In bounds: the header sits `header_offset::<T>()` bytes after the value's
        // start (`Keyed::new`). Raw pointer arithmetic keeps the allocation's provenance.
        this.key
            .header
            .as_ptr()
            .cast::<u8>()
            .wrapping_sub(header_offset::<T>())
            .cast::<T>()
    }

    /// Bytes from the value's start to the end of the key's header: the part of the
    /// allocation that a clone (the count) and a read of the value touch.
    pub(crate) const VALUE_AND_HEADER: usize = header_offset::<T>() + size_of::<Header>();

    /// Gives up this reference as an address (8-aligned, never null), for a table that
    /// stores one machine word per entry. [`Keyed::from_raw`] takes it back.
    pub(crate) fn into_raw(this: Keyed<T>) -> NonNull<u8> {
        let header = this.key.header;
        std::mem::forget(this);
        header.cast()
    }

    /// References to the allocation (the key's count), for tests of code that holds
    /// references as raw addresses.
    #[cfg(test)]
    pub(crate) fn references(this: &Keyed<T>) -> u32 {
        this.key.references()
    }

    /// The address [`Keyed::into_raw`] would give, keeping the reference.
    pub(crate) fn as_raw(this: &Keyed<T>) -> NonNull<u8> {
        this.key.header.cast()
    }

    /// The reference that [`Keyed::into_raw`] gave up.
    ///
    /// # Safety
    /// `raw` comes from `Keyed::<T>::into_raw` and that reference has not been taken
    /// back yet (each address given up is taken back once).
    pub(crate) unsafe fn from_raw(raw: NonNull<u8>) -> Keyed<T> {
        Keyed {
            key: SeriesKey { header: raw.cast() },
            _value: PhantomData,
        }
    }
}

impl<T> Clone for Keyed<T> {
    fn clone(&self) -> Keyed<T> {
        Keyed {
            key: self.key.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> std::ops::Deref for Keyed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `Keyed::new` stored a `T` at this address, which lives while `self`
        // holds its reference; it is only ever shared (`&T`), never mutated through here.
        unsafe { &*Keyed::as_ptr(self) }
    }
}

/// A reusable vector of borrowed label pairs, for callers that build a label set per
/// point from borrowed strings (a scraped line's labels merged with its target's) and
/// must not allocate per point: the allocation outlives every borrow it held.
///
/// ```
/// use weir_core::key::LabelBuf;
/// let mut buf = LabelBuf::default();
/// for line in ["a=1", "b=2"] {
///     let owned = line.to_owned(); // a borrow that lives for this iteration only
///     let n = buf.with(|labels| {
///         labels.push(owned.split_once('=').unwrap());
///         labels.len()
///     });
///     assert_eq!(n, 1); // emptied between uses
/// }
/// ```
#[derive(Default)]
pub struct LabelBuf(Vec<(&'static str, &'static str)>);

impl LabelBuf {
    /// Runs `fill` on the buffer, empty, with borrows of any lifetime; empties it again
    /// afterwards and keeps its allocation.
    pub fn with<'x, R>(&mut self, fill: impl FnOnce(&mut Vec<(&'x str, &'x str)>) -> R) -> R {
        let mut v = relabel(std::mem::take(&mut self.0));
        let r = fill(&mut v);
        self.0 = relabel(v);
        r
    }
}

/// `v` emptied, with its allocation, as a vector of borrows of another lifetime. The
/// standard library collects a `vec::IntoIter` of a type into a `Vec` of a type of the
/// same size and alignment in place, so this does not allocate (checked by a test).
// `filter` cannot change the element type, which is the point here.
#[allow(clippy::unnecessary_filter_map)]
fn relabel<'x, 'y>(mut v: Vec<(&'x str, &'x str)>) -> Vec<(&'y str, &'y str)> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn labels_are_sorted_and_round_trip() {
        let k = SeriesKey::new("m", &[("z", "1"), ("a", ""), ("m", "x=y,z")]).unwrap();
        assert_eq!(k.name(), "m");
        let got: Vec<_> = k.labels().collect();
        assert_eq!(got, vec![("a", ""), ("m", "x=y,z"), ("z", "1")]);
    }

    #[test]
    fn key_without_labels_has_no_braces() {
        let k = SeriesKey::new("up", &[]).unwrap();
        assert_eq!(k.to_string(), "up");
        assert_eq!(k.labels().count(), 0);
    }

    #[test]
    fn separators_make_lookalike_label_sets_distinct() {
        let a = SeriesKey::new("m", &[("a", "b,c")]).unwrap();
        let b = SeriesKey::new("m", &[("a", "b"), ("c", "")]).unwrap();
        let c = SeriesKey::new("m", &[("a", "b=c")]).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn invalid_names_and_duplicates_are_rejected() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("", &[], "invalid_metric_name"),
            ("1abc", &[], "invalid_metric_name"),
            ("a.b", &[], "invalid_metric_name"),
            ("a-b", &[], "invalid_metric_name"),
            ("ok", &[("", "v")], "invalid_label_name"),
            ("ok", &[("a:b", "v")], "invalid_label_name"),
            ("ok", &[("__name__", "v")], "invalid_label_name"),
            ("ok", &[("9a", "v")], "invalid_label_name"),
            (
                "ok",
                &[("b", "1"), ("a", "2"), ("b", "3")],
                "duplicate_label",
            ),
        ];
        for (name, labels, reason) in cases {
            let err = SeriesKey::new(name, labels).unwrap_err();
            assert_eq!(err.as_str(), *reason, "{name} {labels:?}");
        }
        assert!(SeriesKey::new("a:b_c9", &[("_x", "\u{0}\u{1F600}")]).is_ok());
    }

    #[test]
    fn display_escapes_values() {
        let k = SeriesKey::new("m", &[("a", "q\"b\\n\n")]).unwrap();
        assert_eq!(k.to_string(), r#"m{a="q\"b\\n\n"}"#);
    }

    proptest::proptest! {
        /// Whatever the value, the escaped text has no raw newline or unescaped quote,
        /// and undoing the three escapes gives the value back.
        #[test]
        fn escaping_round_trips(v in "(\\PC|[\\\\\"\n])*") {
            let mut out = String::new();
            write_escaped(&mut out, &v).unwrap();
            proptest::prop_assert!(!out.contains('\n'));
            let mut back = String::new();
            let mut chars = out.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => back.push('\n'),
                        Some(e @ ('\\' | '"')) => back.push(e),
                        other => proptest::prop_assert!(false, "bad escape {:?}", other),
                    },
                    '"' => proptest::prop_assert!(false, "unescaped quote"),
                    c => back.push(c),
                }
            }
            proptest::prop_assert_eq!(back, v);
        }
    }

    proptest::proptest! {
        /// `cmp_by_name` is the order of (name, [(label, value), ..]) as strings.
        #[test]
        fn page_order_is_name_then_labels(
            a in ("[ab_]{1,9}", proptest::collection::btree_map("[ab]{1,3}", "[ab\u{e9}]{0,9}", 0..3)),
            b in ("[ab_]{1,9}", proptest::collection::btree_map("[ab]{1,3}", "[ab\u{e9}]{0,9}", 0..3)),
        ) {
            let key = |(name, labels): &(String, std::collections::BTreeMap<String, String>)| {
                let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                SeriesKey::new(name, &l).unwrap()
            };
            let tuple = |(name, labels): &(String, std::collections::BTreeMap<String, String>)| {
                (name.clone(), labels.clone().into_iter().collect::<Vec<_>>())
            };
            proptest::prop_assert_eq!(key(&a).cmp_by_name(&key(&b)), tuple(&a).cmp(&tuple(&b)));
        }
    }

    #[test]
    fn raw_encoding_of_sorted_labels_is_canonical() {
        let mut raw = Vec::new();
        assert!(encode_raw(&mut raw, "m", &[("a", "1"), ("b", "2")]));
        let k = SeriesKey::new("m", &[("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(raw, k.as_bytes());
        assert!(!encode_raw(&mut raw, "m", &[("b", "2"), ("a", "1")]));
        assert!(!encode_raw(&mut raw, "m", &[("a", "2"), ("a", "1")]));
    }

    #[test]
    fn a_label_buffer_keeps_its_allocation_between_uses() {
        let mut buf = LabelBuf::default();
        let first = buf.with(|v| {
            v.extend([("a", "1"); 8]);
            v.as_ptr() as usize
        });
        for round in 0..3 {
            let owned = format!("{round}");
            let (ptr, len) = buf.with(|v| {
                let len = v.len();
                v.extend([("a", owned.as_str()); 8]);
                (v.as_ptr() as usize, len)
            });
            assert_eq!((ptr, len), (first, 0), "round {round}");
        }
    }

    /// Counts drops of the value stored with a key, to see when the allocation goes.
    struct Tracked(Arc<AtomicUsize>);

    impl KeyedValue for Tracked {
        const KIND: u32 = 3;
    }

    impl KeyedValue for u8 {
        const KIND: u32 = 4;
    }

    impl KeyedValue for [u64; 11] {
        const KIND: u32 = 5;
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(7).hash_one(v)
    }

    #[test]
    fn a_key_stored_with_a_value_equals_hashes_and_orders_as_a_standalone_key() {
        let keys = [
            SeriesKey::new("m", &[("a", "1")]).unwrap(),
            SeriesKey::new("m", &[("a", "2")]).unwrap(),
            SeriesKey::new("m", &[("a", "10")]).unwrap(),
            SeriesKey::new("m_long", &[]).unwrap(),
            SeriesKey::from_canonical(b""),
        ];
        for a in &keys {
            let inline = Keyed::new(a.as_bytes(), [7u64; 11]);
            let k = inline.key();
            assert_eq!(k, a);
            assert_eq!(a, k);
            assert_eq!(k.as_bytes(), a.as_bytes());
            assert_eq!(hash_of(k), hash_of(a));
            assert_eq!(hash_of(k), hash_of(a.as_bytes()), "Borrow<[u8]> lookups");
            assert_eq!(k.fingerprint(), a.fingerprint());
            assert_eq!(k.to_string(), a.to_string());
            assert_eq!(*inline, [7u64; 11]);
            for b in &keys {
                assert_eq!(k.cmp(b), a.cmp(b), "{a} vs {b}");
                assert_eq!(k.cmp(b), a.as_bytes().cmp(b.as_bytes()));
                assert_eq!(k == b, a.as_bytes() == b.as_bytes());
            }
        }
    }

    #[test]
    fn a_key_is_one_pointer_and_its_value_sits_before_the_header() {
        assert_eq!(size_of::<SeriesKey>(), size_of::<usize>());
        assert_eq!(size_of::<Option<SeriesKey>>(), size_of::<usize>());
        assert_eq!(size_of::<Header>(), 8);
        let v = Keyed::new(b"abc", 5u8);
        let value = Keyed::as_ptr(&v) as usize;
        let bytes = v.key().as_bytes().as_ptr() as usize;
        assert_eq!(
            bytes - value,
            8 + 8,
            "u8 value, rounded to 8, then the header"
        );
        assert_eq!(keyed_layout::<u8>(3).map(|l| l.size()), Some(24));
    }

    #[test]
    fn a_second_type_claiming_a_kind_is_refused_before_anything_is_allocated() {
        struct Impostor;
        impl KeyedValue for Impostor {
            const KIND: u32 = <u8 as KeyedValue>::KIND;
        }
        let first = Keyed::new(b"k", 1u8);
        let second = std::panic::catch_unwind(|| Keyed::new(b"k", Impostor));
        assert!(second.is_err());
        // The kind still frees its own type.
        let k = first.key().clone();
        drop(first);
        assert_eq!(k.as_bytes(), b"k");
    }

    #[test]
    fn a_key_taken_from_a_keyed_value_keeps_the_value_until_the_last_reference_drops() {
        let drops = Arc::new(AtomicUsize::new(0));
        let v = Keyed::new(b"k", Tracked(drops.clone()));
        let k = v.key().clone();
        let v2 = v.clone();
        drop(v);
        drop(v2);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert_eq!(k.as_bytes(), b"k");
        let k2 = k.clone();
        drop(k);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(k2);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn clones_dropped_on_many_threads_free_the_value_exactly_once() {
        for round in 0..20 {
            let drops = Arc::new(AtomicUsize::new(0));
            let v = Keyed::new(format!("series_{round}").as_bytes(), Tracked(drops.clone()));
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let mine = v.clone();
                    std::thread::spawn(move || {
                        let mut held = Vec::new();
                        for i in 0..2_000 {
                            held.push(mine.key().clone());
                            if i % 3 == t % 3
                                && let Some(k) = held.first().cloned()
                            {
                                held.push(k);
                            }
                            if held.len() > 8 {
                                held.drain(..4);
                            }
                        }
                        let last = mine.key().clone();
                        drop(mine);
                        (held, last)
                    })
                })
                .collect();
            let kept: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(drops.load(Ordering::SeqCst), 0, "round {round}");
            drop(v);
            assert_eq!(drops.load(Ordering::SeqCst), 0, "round {round}");
            // The last references go on other threads, in parallel.
            let droppers: Vec<_> = kept
                .into_iter()
                .map(|k| std::thread::spawn(move || drop(k)))
                .collect();
            for d in droppers {
                d.join().unwrap();
            }
            assert_eq!(drops.load(Ordering::SeqCst), 1, "round {round}");
        }
    }
}
