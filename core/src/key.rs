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

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
/// the canonical bytes (see the module doc).
///
/// ```
/// use weir_core::key::SeriesKey;
/// let a = SeriesKey::new("http_requests_total", &[("method", "GET"), ("code", "200")]).unwrap();
/// let b = SeriesKey::new("http_requests_total", &[("code", "200"), ("method", "GET")]).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), r#"http_requests_total{code="200",method="GET"}"#);
/// assert!(SeriesKey::new("x", &[("a", "1"), ("a", "2")]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    bytes: Arc<[u8]>,
}

impl SeriesKey {
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

    /// Builds a key from bytes already produced by [`SeriesKey::canonicalize`]; no
    /// other bytes may be given (`utf8` relies on it).
    pub(crate) fn from_canonical(bytes: &[u8]) -> SeriesKey {
        SeriesKey {
            bytes: Arc::from(bytes),
        }
    }

    /// The shared canonical bytes (see the module doc).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The 64-bit FNV-1a fingerprint of the canonical bytes.
    pub fn fingerprint(&self) -> u64 {
        fnv1a64(&self.bytes)
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == LABEL_SEP)
            .unwrap_or(self.bytes.len());
        utf8(&self.bytes[..end])
    }

    /// The labels as `(name, value)` pairs, sorted by name.
    pub fn labels(&self) -> Labels<'_> {
        let start = self
            .bytes
            .iter()
            .position(|&b| b == LABEL_SEP)
            .unwrap_or(self.bytes.len());
        Labels {
            rest: &self.bytes[start..],
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
        &self.bytes
    }
}

impl fmt::Display for SeriesKey {
    /// Prometheus text style: `name{a="1",b="x\"y"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        let mut first = true;
        for (k, v) in self.labels() {
            f.write_str(if first { "{" } else { "," })?;
            first = false;
            write!(f, "{k}=\"")?;
            for c in v.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        if !first {
            f.write_str("}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeriesKey({self})")
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
}
