//! StatsD / DogStatsD line protocol: datagram bytes in, aggregator updates out.
//!
//! Owns: splitting a datagram into lines, parsing each line
//! (`name:value[:value...]|type[|@rate][|#tag:val,tag2][|c:container][|T<unix_seconds>]`),
//! the mapping of StatsD types onto weir's kinds, and name sanitising for StatsD input.
//! Must never: panic or stop at a bad line (it is skipped and counted by a stable
//! reason, the rest of the datagram still counts), or allocate for a line whose series
//! the writer has already cached.
//!
//! # Mapping
//! | type | weir sample |
//! |---|---|
//! | `c` | counter delta, value ÷ sample rate; a negative one (`decr`) is refused as `invalid_value`, as statsd_exporter does, since weir's counters are monotonic |
//! | `g` | gauge set; `+N` / `-N` adjust the current value |
//! | `ms` | one observation in seconds (value ÷ 1000) into a histogram, weighted 1 ÷ rate |
//! | `h`, `d` | one observation as is into a histogram, weighted 1 ÷ rate |
//! | `s` | set: the whole value is one member; the series reports, per flush, the number of distinct members as a gauge |
//!
//! Metric names are sanitised to Prometheus rules (every character outside
//! `[a-zA-Z0-9_:]` becomes `_`, a leading digit gets a `_` prefix), tag names likewise
//! with `[a-zA-Z0-9_]`; tag values are kept as sent. A tag without a value (`#canary`)
//! becomes a label with an empty value. A DogStatsD container field (`|c:abc`) becomes
//! the label `container_id`; a timestamp field (`|T1700000000`) timestamps gauges.

use crate::aggregator::{RawHash, Rejected, Writer};
use crate::point::{Sample, Temporality};

/// Why a line was skipped. Stable names for `weir_statsd_parse_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineError {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// No `:` between name and value.
    MissingValue,
    /// Nothing before the `:`.
    EmptyName,
    /// No `|type` after the value.
    MissingType,
    /// A type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    UnknownType,
    /// A value that is not a finite number (or a relative value on a non-gauge).
    MalformedValue,
    /// `@rate` that is not a number in (0, 1].
    MalformedSampleRate,
    /// A tag with an empty name.
    MalformedTag,
    /// `T` followed by something other than whole Unix seconds.
    MalformedTimestamp,
    /// A `|` section this parser does not know.
    UnknownField,
}

impl LineError {
    /// All reasons, in a stable order (for exporting zeros).
    pub const ALL: [LineError; 10] = [
        LineError::InvalidUtf8,
        LineError::MissingValue,
        LineError::EmptyName,
        LineError::MissingType,
        LineError::UnknownType,
        LineError::MalformedValue,
        LineError::MalformedSampleRate,
        LineError::MalformedTag,
        LineError::MalformedTimestamp,
        LineError::UnknownField,
    ];

    /// The reason's position in [`LineError::ALL`].
    pub fn index(self) -> usize {
        // The variants are declared in the order of `ALL` (a test checks it).
        self as usize
    }

    /// Short, stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            LineError::InvalidUtf8 => "invalid_utf8",
            LineError::MissingValue => "missing_value",
            LineError::EmptyName => "empty_name",
            LineError::MissingType => "missing_type",
            LineError::UnknownType => "unknown_type",
            LineError::MalformedValue => "malformed_value",
            LineError::MalformedSampleRate => "malformed_sample_rate",
            LineError::MalformedTag => "malformed_tag",
            LineError::MalformedTimestamp => "malformed_timestamp",
            LineError::UnknownField => "unknown_field",
        }
    }
}

/// A StatsD metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsdType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`
    Timer,
    /// `h`
    Histogram,
    /// `d` (DogStatsD distribution)
    Distribution,
    /// `s`
    Set,
}

/// One parsed line, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric name as sent (not sanitised).
    pub name: &'a str,
    /// The value section: one value, or several separated by `:`. Checked by
    /// [`parse_line`]; read them with [`Line::values`].
    values: &'a str,
    /// The value, parsed once by [`parse_line`], when the line has exactly one and is
    /// not a set; `None` otherwise (a multi-value line is parsed again by
    /// [`Line::values`]).
    single: Option<Value>,
    /// The type.
    pub kind: StatsdType,
    /// `@rate`, 1.0 when absent.
    pub sample_rate: f64,
    /// The tag section without its `#`, as sent (empty when absent).
    pub tags: &'a str,
    /// The DogStatsD container field, if any.
    pub container: Option<&'a str>,
    /// The DogStatsD timestamp field in Unix seconds, if any.
    pub timestamp_s: Option<i64>,
}

/// One value of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A plain number.
    Number(f64),
    /// A gauge adjustment (`+N` or `-N`).
    Relative(f64),
}

impl<'a> Line<'a> {
    /// The line's values (several for DogStatsD multi-value lines like `x:1:2:3|c`).
    pub fn values(&self) -> impl Iterator<Item = Value> + 'a {
        let gauge = self.kind == StatsdType::Gauge;
        // A single value was parsed by `parse_line`; several are parsed here again.
        // Every value was checked by `parse_line`, so `parse_value` cannot fail here;
        // `filter_map` keeps this free of panics all the same.
        let several = match self.single {
            Some(_) => None,
            None => Some(Fields::new(self.values, b':')),
        };
        self.single.into_iter().chain(
            several
                .into_iter()
                .flatten()
                .filter_map(move |v| parse_value(v, gauge).ok()),
        )
    }
}

/// Splits a datagram into its non-empty lines (`\n` separated, a trailing `\r` dropped).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    // The ranges are in bounds and ordered, so `get` never answers `None`.
    LineRanges::new(datagram).filter_map(|(a, b)| datagram.get(a..b))
}

/// The byte ranges of a datagram's non-empty lines, without their `\n` or `\r\n`.
///
/// The datagram's newlines are found 64 bytes at a time ([`newline_bits`]: four
/// [`window_flags`]), one bit per byte, and each line end is then the next set bit:
/// a few instructions per line instead of a scan of every line's bytes.
struct LineRanges<'a> {
    bytes: &'a [u8],
    /// Where the next line starts; past the end once the last one was returned.
    pos: usize,
    /// Start of the 64-byte block `newlines` describes.
    block: usize,
    /// The block's newlines at or after `pos`: bit `i` is byte `block + i`.
    newlines: u64,
}

impl<'a> LineRanges<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineRanges {
            bytes,
            pos: 0,
            block: 0,
            newlines: newline_bits(bytes),
        }
    }

    /// The index of the first `\n` at or after `pos`, or the datagram's length.
    #[inline]
    fn next_newline(&mut self) -> usize {
        while self.newlines == 0 {
            self.block += 64;
            let Some(rest) = self.bytes.get(self.block..).filter(|r| !r.is_empty()) else {
                return self.bytes.len();
            };
            self.newlines = newline_bits(rest);
        }
        let at = self.block + self.newlines.trailing_zeros() as usize;
        self.newlines &= self.newlines - 1; // this newline is passed
        at
    }
}

impl Iterator for LineRanges<'_> {
    type Item = (usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize)> {
        while self.pos <= self.bytes.len() {
            let start = self.pos;
            let newline = self.next_newline();
            self.pos = newline + 1;
            let mut end = newline;
            if end > start && self.bytes.get(end - 1) == Some(&b'\r') {
                end -= 1;
            }
            if end > start {
                return Some((start, end));
            }
        }
        None
    }
}

/// The `\n` bytes among the first 64 of `bytes` (fewer at the end), one bit per byte:
/// bit `i` is set when `bytes[i]` is a `\n`.
#[inline]
fn newline_bits(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<64>() {
        Some(block) => block_newline_bits(block),
        None => {
            // The datagram's last bytes: zeros after them are no newlines.
            let mut block = [0u8; 64];
            block[..bytes.len()].copy_from_slice(bytes);
            block_newline_bits(&block)
        }
    }
}

/// [`newline_bits`] of a whole block: four [`window_flags`].
#[inline(always)]
fn block_newline_bits(block: &[u8; 64]) -> u64 {
    let mut bits = 0u64;
    for (k, w) in block.as_chunks::<WINDOW>().0.iter().enumerate() {
        let [newlines] = window_flags(w, [b'\n']);
        bits |= u64::from(newlines) << (WINDOW * k);
    }
    bits
}

fn parse_value(v: &str, gauge: bool) -> Result<Value, LineError> {
    let relative = gauge && (v.starts_with('+') || v.starts_with('-'));
    let n: f64 = v.parse().map_err(|_| LineError::MalformedValue)?;
    if !n.is_finite() {
        return Err(LineError::MalformedValue);
    }
    Ok(if relative {
        Value::Relative(n)
    } else {
        Value::Number(n)
    })
}

/// Parses one line.
///
/// # Errors
/// The [`LineError`] naming what is wrong.
///
/// ```
/// use weir_core::parse::statsd::{parse_line, StatsdType, Value};
/// let l = parse_line(b"api.latency:12|ms|@0.5|#route:/users,canary").unwrap();
/// assert_eq!((l.name, l.kind, l.sample_rate, l.tags), ("api.latency", StatsdType::Timer, 0.5, "route:/users,canary"));
/// assert_eq!(l.values().collect::<Vec<_>>(), vec![Value::Number(12.0)]);
/// ```
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    let line = std::str::from_utf8(line).map_err(|_| LineError::InvalidUtf8)?;
    parse_text(line)
}

/// Parses one line known to be UTF-8, in one left-to-right pass: each section is
/// scanned once, sixteen bytes at a time, and a plain decimal value or rate is converted while
/// it is scanned (see [`scan_decimal`]). Anything unusual (an exponent, `inf`, a long
/// mantissa, several values) goes to the general parsers, so the result is the same
/// as splitting the line at every separator and parsing each piece with `str::parse`.
///
/// Precedence of errors, as the rules are checked: the head (`name:values`), then the
/// type, then each later section in order, and the values last.
fn parse_text(line: &str) -> Result<Line<'_>, LineError> {
    let b = line.as_bytes();
    let len = b.len();
    // Every index below is either `len` or that of an ASCII separator (or one past
    // it), so each `line[..]` slice falls on char boundaries.
    let colon = find_either(b, 0, b':', b'|');
    if colon == len || b[colon] == b'|' {
        return Err(LineError::MissingValue); // no `:` before the first `|`
    }
    if colon == 0 {
        return Err(LineError::EmptyName);
    }
    let values_start = colon + 1;
    let (fast, stop) = scan_decimal(b, values_start);
    let (mut single, values_end) = match b.get(stop) {
        None | Some(b'|') => (fast, stop),
        // A second value, an exponent, a set member...: find the section's end.
        Some(_) => (None, find_byte(b, stop, b'|')),
    };
    if values_end == values_start {
        return Err(LineError::MissingValue);
    }
    if values_end == len {
        return Err(LineError::MissingType);
    }
    let (kind, mut pos) = scan_type(b, values_end + 1)?;
    let mut parsed = Line {
        name: cut(line, 0, colon),
        values: cut(line, values_start, values_end),
        single: None,
        kind,
        sample_rate: 1.0,
        tags: "",
        container: None,
        timestamp_s: None,
    };
    // `pos` is at a `|` or at the end.
    while pos < len {
        let start = pos + 1;
        match b.get(start) {
            Some(b'@') => {
                let (fast, stop) = scan_decimal(b, start + 1);
                let end = find_byte(b, stop, b'|');
                let r = match fast {
                    Some(r) if end == stop => r,
                    _ => line[start + 1..end]
                        .parse()
                        .map_err(|_| LineError::MalformedSampleRate)?,
                };
                if !(r > 0.0 && r <= 1.0) {
                    return Err(LineError::MalformedSampleRate);
                }
                parsed.sample_rate = r;
                pos = end;
            }
            Some(b'#') => {
                let (end, malformed) = scan_tags(b, start + 1);
                if malformed {
                    return Err(LineError::MalformedTag);
                }
                parsed.tags = cut(line, start + 1, end);
                pos = end;
            }
            Some(b'c') if b.get(start + 1) == Some(&b':') => {
                let end = find_byte(b, start + 2, b'|');
                parsed.container = Some(cut(line, start + 2, end));
                pos = end;
            }
            Some(b'T') => {
                let end = find_byte(b, start + 1, b'|');
                let ts: i64 = line[start + 1..end]
                    .parse()
                    .map_err(|_| LineError::MalformedTimestamp)?;
                if !(0..=i64::MAX / 1000).contains(&ts) {
                    return Err(LineError::MalformedTimestamp);
                }
                parsed.timestamp_s = Some(ts);
                pos = end;
            }
            // Anything else, including an empty section (`x:1|c|`).
            _ => return Err(LineError::UnknownField),
        }
    }
    if kind == StatsdType::Set {
        return Ok(parsed); // any text is a member
    }
    let gauge = kind == StatsdType::Gauge;
    if single.is_none() {
        // The general path: every value through `str::parse`.
        let mut count = 0;
        for v in Fields::new(parsed.values, b':') {
            let v = parse_value(v, gauge)?;
            if count == 0 {
                single = Some(match v {
                    Value::Number(n) | Value::Relative(n) => n,
                });
            }
            count += 1;
        }
        if count > 1 {
            return Ok(parsed);
        }
    }
    parsed.single = single.map(|n| {
        if gauge && matches!(b[values_start], b'+' | b'-') {
            Value::Relative(n)
        } else {
            Value::Number(n)
        }
    });
    Ok(parsed)
}

/// `&line[a..b]` for `a` and `b` that [`parse_text`] found: each is 0, the line's
/// length, or the index of an ASCII separator or one past it, so both fall on char
/// boundaries and the char-boundary checks of `&line[a..b]` (a call per slice) can
/// go. The range is still checked against the line (an empty text if it were out of
/// it, which it never is).
#[inline(always)]
fn cut(line: &str, a: usize, b: usize) -> &str {
    debug_assert!(line.is_char_boundary(a) && line.is_char_boundary(b));
    match line.as_bytes().get(a..b) {
        // SAFETY: `line` is UTF-8 and `a` and `b` are char boundaries (see above), so
        // the bytes between them are UTF-8 too.
        Some(bytes) => unsafe { std::str::from_utf8_unchecked(bytes) },
        None => "",
    }
}

/// The type section starting at `start`: the type and the index just after it (a `|`
/// or the end).
#[inline]
fn scan_type(b: &[u8], start: usize) -> Result<(StatsdType, usize), LineError> {
    let ends_at = |i: usize| matches!(b.get(i), None | Some(b'|'));
    let kind = match b.get(start) {
        None | Some(b'|') => return Err(LineError::MissingType),
        Some(b'm') if b.get(start + 1) == Some(&b's') && ends_at(start + 2) => {
            return Ok((StatsdType::Timer, start + 2));
        }
        _ if !ends_at(start + 1) => return Err(LineError::UnknownType),
        Some(b'c') => StatsdType::Counter,
        Some(b'g') => StatsdType::Gauge,
        Some(b'h') => StatsdType::Histogram,
        Some(b'd') => StatsdType::Distribution,
        Some(b's') => StatsdType::Set,
        Some(_) => return Err(LineError::UnknownType),
    };
    Ok((kind, start + 1))
}

/// `10^i` for the exact decimal conversion of [`scan_decimal`].
const POW10: [f64; 20] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19,
];

/// Reads `[+-]digits[.digits]` from `b[i..]`, as far as it goes, and returns the
/// number with the index where reading stopped. The number is `None` when there were
/// no digits or the text needs the general parser: more than 19 digits, or a mantissa
/// above 2^53. Otherwise the mantissa and the power of ten are both exact `f64`s, so
/// one correctly rounded division gives exactly what `str::parse::<f64>` gives for
/// the same text (the "fast path" of decimal-to-float conversion). The caller decides
/// whether the text stopped where a value may end.
#[inline]
fn scan_decimal(b: &[u8], mut i: usize) -> (Option<f64>, usize) {
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        // Wrapping: past 19 digits the result is discarded below.
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        digits += 1;
        i += 1;
    }
    let mut fraction = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
            fraction += 1;
            i += 1;
        }
    }
    let total = digits + fraction;
    if total == 0 || total > 19 || mantissa > 1 << 53 {
        return (None, i);
    }
    let v = match fraction {
        // Whole numbers, the usual case, skip the division (~15 cycles' latency).
        0 => mantissa as f64,
        _ => match POW10.get(fraction) {
            Some(scale) => mantissa as f64 / scale,
            None => return (None, i),
        },
    };
    (Some(if negative { -v } else { v }), i)
}

/// Byte search sixteen bytes at a time: a window of the line is compared with each
/// separator at once (SSE2 on x86_64, a word-at-a-time bit trick elsewhere), giving
/// one bit per byte, so a scan costs a few instructions per sixteen bytes. The last
/// bytes of a line (fewer than sixteen left) are read as the line's last sixteen
/// bytes, with the ones already scanned masked off; only a line shorter than sixteen
/// bytes is copied into a zero-padded window (a zero is no separator).
const WINDOW: usize = 16;

/// The window a scan at `i` (`i < b.len()`) reads next, and how many of its leading
/// bytes come before `i` (already scanned; non-zero only in a line's last window).
#[inline(always)]
fn window(b: &[u8], i: usize) -> ([u8; WINDOW], usize) {
    if let Some(w) = b.get(i..).and_then(|r| r.first_chunk::<WINDOW>()) {
        return (*w, 0);
    }
    if let Some(w) = b.last_chunk::<WINDOW>() {
        return (*w, i + WINDOW - b.len());
    }
    let mut w = [0u8; WINDOW];
    let rest = b.get(i..).unwrap_or_default();
    w[..rest.len()].copy_from_slice(rest);
    (w, 0)
}

/// For each of `targets`, the bytes of `w` equal to it: bit `j` set when `w[j]` is.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn window_flags<const N: usize>(w: &[u8; WINDOW], targets: [u8; N]) -> [u32; N] {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: `_mm_loadu_si128` reads the 16 bytes of `w` (no alignment required).
    // SSE2, which every intrinsic here needs, is part of the x86_64 baseline.
    let v = unsafe { _mm_loadu_si128(w.as_ptr().cast()) };
    targets.map(|t| {
        // SAFETY: as above (SSE2 only); `movemask` sets only the low 16 bits.
        (unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(t as i8))) }) as u32
    })
}

/// [`window_flags`] on other architectures: [`window_flags_words`].
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn window_flags<const N: usize>(w: &[u8; WINDOW], targets: [u8; N]) -> [u32; N] {
    window_flags_words(w, targets)
}

/// [`window_flags`] without SIMD: per 8-byte word, the "has a zero byte" trick flags
/// the high bit of each matching byte, and one multiplication gathers the eight
/// flags into eight bits.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn window_flags_words<const N: usize>(w: &[u8; WINDOW], targets: [u8; N]) -> [u32; N] {
    targets.map(|t| {
        let mut bits = 0u32;
        for (k, word) in w.as_chunks::<8>().0.iter().enumerate() {
            let flags = eq_mask(u64::from_le_bytes(*word), t) >> 7; // bit 8j for byte j
            // Bits 8j (j < 8) times this constant land on bit 56 + j, carry-free.
            let byte = flags.wrapping_mul(0x0102_0408_1020_4080) >> 56;
            bits |= (byte as u32) << (8 * k);
        }
        bits
    })
}

/// A one in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that equals `byte`, and no other bit.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn eq_mask(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    // Per byte, no carries: (x & 0x7f) + 0x7f has its high bit set iff the low seven
    // bits are not all zero; or-ing `x` adds the high bit itself.
    !(((x & !HIGHS) + !HIGHS) | x) & HIGHS
}

/// The first index at or after `i` holding `x` or `y` (pass the same byte twice to
/// look for one), or `b.len()`.
#[inline]
fn find_either(b: &[u8], mut i: usize, x: u8, y: u8) -> usize {
    while i < b.len() {
        let (w, skip) = window(b, i);
        let [xs, ys] = window_flags(&w, [x, y]);
        let m = (xs | ys) >> skip;
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += WINDOW - skip;
    }
    b.len()
}

/// The first index at or after `i` holding `x`, or `b.len()`.
#[inline(always)]
fn find_byte(b: &[u8], i: usize, x: u8) -> usize {
    find_either(b, i, x, x)
}

/// Scans a tag section starting at `i`: returns where it ends (the next `|` or the
/// end) and whether a tag in it starts with `:` (an empty tag name: at the start or
/// right after a `,`).
#[inline]
fn scan_tags(b: &[u8], mut i: usize) -> (usize, bool) {
    let mut malformed = b.get(i) == Some(&b':');
    // Bit 0 set when the byte before the current window is a `,`.
    let mut comma_before = 0u32;
    while i < b.len() {
        let (w, skip) = window(b, i);
        let [pipes, commas, colons] = window_flags(&w, [b'|', b',', b':']);
        // Only bytes from `i` on; the ones before it were scanned (and a comma just
        // before `i`, in the window too, is seen by the shift below).
        let live = u32::MAX << skip;
        let pipes = pipes & live;
        // A `:` right after a `,`: the comma's flag moved up one byte.
        let pairs = ((commas << 1) | comma_before) & colons & live;
        if pipes != 0 {
            // Only pairs below the first `|` belong to this section.
            let below = (pipes & pipes.wrapping_neg()) - 1;
            let end = i - skip + pipes.trailing_zeros() as usize;
            return (end, malformed || pairs & below != 0);
        }
        malformed |= pairs != 0;
        comma_before = (commas >> (WINDOW - 1)) & 1;
        i += WINDOW - skip;
    }
    (b.len(), malformed)
}

/// Splits text at an ASCII separator byte with an inline byte scan: the general path
/// for multi-value lines and the tag iterator.
struct Fields<'a> {
    /// What is left; `None` once the last field was returned.
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Fields<'a> {
    fn new(s: &'a str, sep: u8) -> Self {
        Fields { rest: Some(s), sep }
    }

    /// Everything after the fields returned so far, if anything is left.
    fn rest(self) -> Option<&'a str> {
        self.rest
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.bytes().position(|b| b == self.sep) {
            // `i` indexes an ASCII byte, so both slices fall on char boundaries.
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// The tags of a tag section as `(name, value)` pairs, as sent; a tag without `:` has
/// an empty value. Empty entries (`a:1,,b:2`) are skipped.
pub fn tags(section: &str) -> impl Iterator<Item = (&str, &str)> {
    Fields::new(section, b',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let mut kv = Fields::new(t, b':');
            let k = kv.next().unwrap_or("");
            (k, kv.rest().unwrap_or(""))
        })
}

/// Writes `raw` sanitised to a Prometheus metric name into `out` (cleared first).
pub fn sanitize_metric_name(raw: &str, out: &mut String) {
    sanitize(raw, out, true);
}

/// Writes `raw` sanitised to a Prometheus label name into `out` (cleared first).
pub fn sanitize_label_name(raw: &str, out: &mut String) {
    sanitize(raw, out, false);
}

/// The one place StatsD names become Prometheus names.
fn sanitize(raw: &str, out: &mut String, colon_ok: bool) {
    out.clear();
    if raw.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(raw.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon_ok && c == ':') {
            c
        } else {
            '_'
        }
    }));
    if out.is_empty() {
        out.push('_');
    }
}

/// What one datagram did: lines applied, and lines skipped per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatagramReport {
    /// Lines that parsed (each gives one sample per value).
    pub lines: u64,
    /// Samples the aggregator took.
    pub samples: u64,
    /// Lines skipped by the parser, by reason (indexed like [`LineError::ALL`]).
    pub parse_errors: [u64; LineError::ALL.len()],
    /// Samples the aggregator refused (its own counters say why).
    pub rejected: u64,
}

impl DatagramReport {
    /// Adds `other`'s counts to this one's.
    pub fn merge(&mut self, other: &DatagramReport) {
        self.lines += other.lines;
        self.samples += other.samples;
        self.rejected += other.rejected;
        for (sum, n) in self.parse_errors.iter_mut().zip(other.parse_errors) {
            *sum += n;
        }
    }

    /// The count for one parse error reason.
    pub fn parse_errors(&self, reason: LineError) -> u64 {
        self.parse_errors[reason.index()]
    }
}

/// Applies StatsD datagrams to a [`Writer`], reusing its buffers across lines so a
/// line of an already cached series allocates nothing. One per receiving thread.
///
/// Once the writer caches more than `BATCH_ABOVE` label sets, lines are applied in
/// batches of up to `BATCH`: every line of a batch is parsed and its identity hashed
/// first (which asks the CPU for the writer's cache slot), then every line's cache
/// entry (its series' address and key bytes) is prefetched, then every line's series,
/// then the lines are applied in order. At 100k series and more each line's lookup is
/// a few cache misses; the batch lets those of different lines overlap instead of
/// waiting one after another.
/// Lines still apply in datagram order, so the result is the one of line-by-line
/// application.
pub struct Decoder {
    /// Batch lines once the writer caches this many label sets ([`BATCH_ABOVE`]
    /// unless set with [`Decoder::batching_from`]).
    batch_above: usize,
    /// The identities (`name|tags|container` as sent: the key of the writer's cache)
    /// of the current batch's lines, back to back.
    identities: Vec<u8>,
    /// The sanitised metric name (on a cache miss).
    name: String,
    /// Sanitised tag names, concatenated (on a cache miss).
    keys: String,
    /// Byte ranges of each tag name in `keys`.
    key_ends: Vec<usize>,
    /// One sanitised tag name (on a cache miss).
    key: String,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            batch_above: BATCH_ABOVE,
            identities: Vec::new(),
            name: String::new(),
            keys: String::new(),
            key_ends: Vec::new(),
            key: String::new(),
        }
    }
}

/// Most lines parsed ahead of their application (see [`Decoder`]): enough lines for
/// the prefetches to land, few enough to stay in the L1 cache.
const BATCH: usize = 16;

/// Label sets a writer must have cached before its lines are batched. Below it the
/// cache, its keys and its series mostly sit in the CPU caches, the prefetches have
/// little to hide and the batch's bookkeeping is a loss: with everything cached, the
/// batch measured 1.3x slower per line at 10k series and 2x faster at 100k
/// (`statsd_scale` in `benches/benches/parse.rs`).
const BATCH_ABOVE: usize = 32_768;

/// A parsed line waiting in a batch: where its identity is in `Decoder::identities`
/// and its hash in the writer's cache.
struct Pending<'a> {
    line: Line<'a>,
    identity: (usize, usize),
    hash: RawHash,
}

/// The lines of one batch, on the stack: a datagram's batches allocate nothing (a
/// `Vec` of them cost a ~2 KB allocation per datagram, too large for the allocator's
/// per-thread cache).
struct Batch<'a> {
    lines: [Option<Pending<'a>>; BATCH],
    len: usize,
}

impl<'a> Batch<'a> {
    fn new() -> Batch<'a> {
        Batch {
            lines: [const { None }; BATCH],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Queues a line; the batch must not be full.
    fn push(&mut self, p: Pending<'a>) {
        self.lines[self.len] = Some(p);
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Pending<'a>> {
        self.lines[..self.len].iter().flatten()
    }

    /// Empties the batch. The lines stay in their slots, unread, until pushed over:
    /// taking each out would move ~140 bytes per line twice.
    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Counts `parsed` into `report` (a line, or a parse error by reason); the line if it
/// parsed.
#[inline]
fn counted<'a>(
    parsed: Result<Line<'a>, LineError>,
    report: &mut DatagramReport,
) -> Option<Line<'a>> {
    match parsed {
        Ok(line) => {
            report.lines += 1;
            Some(line)
        }
        Err(e) => {
            report.parse_errors[e.index()] += 1;
            None
        }
    }
}

/// Appends a line's raw identity, the writer cache's key: `name|tags[|container]`.
#[inline]
fn push_identity(out: &mut Vec<u8>, line: &Line<'_>) {
    out.extend_from_slice(line.name.as_bytes());
    out.push(b'|');
    out.extend_from_slice(line.tags.as_bytes());
    if let Some(c) = line.container {
        out.push(b'|');
        out.extend_from_slice(c.as_bytes());
    }
}

/// Calls `f` with each non-empty line of `datagram`, raw and parsed, in order.
#[inline]
fn for_each_line<'a>(datagram: &'a [u8], mut f: impl FnMut(&'a [u8], Result<Line<'a>, LineError>)) {
    match std::str::from_utf8(datagram) {
        // The usual case: checked once for the whole datagram, so each line (cut at an
        // ASCII `\n` or `\r`) is UTF-8 too.
        Ok(text) => {
            for (a, b) in LineRanges::new(datagram) {
                f(
                    datagram.get(a..b).unwrap_or_default(),
                    parse_text(&text[a..b]),
                );
            }
        }
        Err(_) => {
            for raw in lines(datagram) {
                f(raw, parse_line(raw));
            }
        }
    }
}

/// With `SET_ASIDE`, a gauge line goes to `gauges` and `None` is returned; any other
/// line (or parse error) comes back to be applied (or counted) now.
#[inline(always)]
fn set_aside<'a, const SET_ASIDE: bool>(
    raw: &[u8],
    parsed: Result<Line<'a>, LineError>,
    gauges: &mut Vec<u8>,
) -> Option<Result<Line<'a>, LineError>> {
    match &parsed {
        Ok(line) if SET_ASIDE && line.kind == StatsdType::Gauge => {
            gauges.extend_from_slice(raw);
            gauges.push(b'\n');
            None
        }
        _ => Some(parsed),
    }
}

impl Decoder {
    /// Applies lines in batches once the writer caches at least `cached` label sets
    /// instead of the default 32,768; 0 batches always. For tests and benchmarks: the
    /// result is the same either way, only the speed differs.
    ///
    /// ```
    /// use weir_core::{Aggregator, parse::statsd::Decoder};
    /// let agg = Aggregator::default();
    /// let mut w = agg.writer();
    /// let report = Decoder::default().batching_from(0).ingest(b"a:1|c\nb:2|c", &mut w);
    /// assert_eq!(report.samples, 2);
    /// ```
    pub fn batching_from(mut self, cached: usize) -> Decoder {
        self.batch_above = cached;
        self
    }

    /// Parses `datagram` and applies every good line through `writer`.
    pub fn ingest(&mut self, datagram: &[u8], writer: &mut Writer) -> DatagramReport {
        self.ingest_lines::<false>(datagram, writer, &mut Vec::new())
    }

    /// [`Decoder::ingest`] for a thread that applies batches of datagrams alongside
    /// other threads: every line except gauges is applied (and counted) now, in
    /// order; each gauge line (`|g`, a set or an adjustment) is appended to `gauges`
    /// as sent, followed by a `\n`, for the caller to ingest once the gauges of every
    /// earlier batch are in. Counters, timers, histograms, distributions and sets
    /// come out the same whatever order their lines are applied in (sums, counts,
    /// bounds, unions); a gauge keeps its last value, so only gauge lines must be
    /// applied in the order they arrived.
    pub fn ingest_except_gauges(
        &mut self,
        datagram: &[u8],
        writer: &mut Writer,
        gauges: &mut Vec<u8>,
    ) -> DatagramReport {
        self.ingest_lines::<true>(datagram, writer, gauges)
    }

    /// [`Decoder::ingest`], gauge lines set aside into `gauges` if `SET_ASIDE` (a
    /// constant: the plain path has no check per line).
    #[inline]
    fn ingest_lines<const SET_ASIDE: bool>(
        &mut self,
        datagram: &[u8],
        writer: &mut Writer,
        gauges: &mut Vec<u8>,
    ) -> DatagramReport {
        let mut report = DatagramReport::default();
        if writer.cached() < self.batch_above {
            for_each_line(datagram, |raw, parsed| {
                if let Some(parsed) = set_aside::<SET_ASIDE>(raw, parsed, gauges) {
                    self.apply_now(parsed, writer, &mut report);
                }
            });
            return report;
        }
        let mut batch = Batch::new();
        for_each_line(datagram, |raw, parsed| {
            if let Some(parsed) = set_aside::<SET_ASIDE>(raw, parsed, gauges) {
                self.push(parsed, writer, &mut batch, &mut report);
                if batch.is_full() {
                    self.apply_batch(&mut batch, writer, &mut report);
                }
            }
        });
        self.apply_batch(&mut batch, writer, &mut report);
        report
    }

    /// Counts a parsed line into `report` and applies it.
    #[inline]
    fn apply_now(
        &mut self,
        parsed: Result<Line<'_>, LineError>,
        writer: &mut Writer,
        report: &mut DatagramReport,
    ) {
        let Some(line) = counted(parsed, report) else {
            return;
        };
        let mut identities = std::mem::take(&mut self.identities);
        identities.clear();
        push_identity(&mut identities, &line);
        let hash = writer.raw_hash(&identities);
        self.apply(&line, &identities, hash, writer, report);
        identities.clear();
        self.identities = identities;
    }

    /// Counts a parsed line into `report` and queues it with its identity and hash.
    #[inline]
    fn push<'a>(
        &mut self,
        parsed: Result<Line<'a>, LineError>,
        writer: &Writer,
        batch: &mut Batch<'a>,
        report: &mut DatagramReport,
    ) {
        let Some(line) = counted(parsed, report) else {
            return;
        };
        let start = self.identities.len();
        push_identity(&mut self.identities, &line);
        let identity = (start, self.identities.len());
        let hash = writer.prefetch_slot(&self.identities[start..]);
        batch.push(Pending {
            line,
            identity,
            hash,
        });
    }

    /// Prefetches every queued line's cache entry, then every line's series (whose
    /// address is in the entry), then applies the lines in order.
    fn apply_batch(
        &mut self,
        batch: &mut Batch<'_>,
        writer: &mut Writer,
        report: &mut DatagramReport,
    ) {
        for p in batch.iter() {
            writer.prefetch_entry(p.hash);
        }
        for p in batch.iter() {
            writer.prefetch_series(p.hash);
        }
        let identities = std::mem::take(&mut self.identities);
        for p in batch.iter() {
            let identity = identities
                .get(p.identity.0..p.identity.1)
                .unwrap_or_default();
            self.apply(&p.line, identity, p.hash, writer, report);
        }
        batch.clear();
        self.identities = identities;
        self.identities.clear();
    }

    fn apply(
        &mut self,
        line: &Line<'_>,
        identity: &[u8],
        hash: RawHash,
        writer: &mut Writer,
        report: &mut DatagramReport,
    ) {
        let at = Target {
            identity,
            hash,
            ts: line.timestamp_s.map_or(0, |s| s * 1000),
        };
        if line.kind == StatsdType::Set {
            match self.record(line, &at, Sample::SetMember(line.values), writer) {
                Ok(()) => report.samples += 1,
                Err(_) => report.rejected += 1,
            }
            return;
        }
        // Sampled observations count 1/rate times; rounding keeps counts integral.
        // (Most lines are unsampled: skip the `round` call, which is not inlined.)
        let weight = if line.sample_rate == 1.0 {
            1
        } else {
            (1.0 / line.sample_rate).round().max(1.0) as u64
        };
        // The usual single value goes straight in; several go through the iterator
        // (built only then: it copies the line).
        match line.single {
            Some(v) => self.record_value(line, &at, v, weight, writer, report),
            None => {
                for v in line.values() {
                    self.record_value(line, &at, v, weight, writer, report);
                }
            }
        }
    }

    #[inline]
    fn record_value(
        &mut self,
        line: &Line<'_>,
        at: &Target<'_>,
        v: Value,
        weight: u64,
        writer: &mut Writer,
        report: &mut DatagramReport,
    ) {
        let sample = match (line.kind, v) {
            (StatsdType::Counter, Value::Number(n)) if line.sample_rate == 1.0 => {
                Sample::Counter(n, Temporality::Delta)
            }
            (StatsdType::Counter, Value::Number(n)) => {
                Sample::Counter(n / line.sample_rate, Temporality::Delta)
            }
            (StatsdType::Gauge, Value::Number(n)) => Sample::Gauge(n),
            (StatsdType::Gauge, Value::Relative(d)) => Sample::GaugeDelta(d),
            (StatsdType::Timer, Value::Number(n)) => Sample::Observe {
                value: n / 1000.0,
                count: weight,
            },
            (StatsdType::Histogram | StatsdType::Distribution, Value::Number(n)) => {
                Sample::Observe {
                    value: n,
                    count: weight,
                }
            }
            // Relative values only parse for gauges; sets are recorded by `apply`.
            _ => return,
        };
        match self.record(line, at, sample, writer) {
            Ok(()) => report.samples += 1,
            Err(_) => report.rejected += 1,
        }
    }

    fn record(
        &mut self,
        line: &Line<'_>,
        at: &Target<'_>,
        sample: Sample<'_>,
        writer: &mut Writer,
    ) -> Result<(), Rejected> {
        if writer.record_cached_hashed(at.identity, at.hash, sample, at.ts)? {
            return Ok(());
        }
        // A miss: sanitise the name and tags and resolve through the index.
        sanitize_metric_name(line.name, &mut self.name);
        self.keys.clear();
        self.key_ends.clear();
        for (k, _) in tags(line.tags) {
            sanitize_label_name(k, &mut self.key);
            self.keys.push_str(&self.key);
            self.key_ends.push(self.keys.len());
        }
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(self.key_ends.len() + 1);
        let mut start = 0;
        for ((_, v), &end) in tags(line.tags).zip(&self.key_ends) {
            labels.push((&self.keys[start..end], v));
            start = end;
        }
        if let Some(c) = line.container {
            labels.push(("container_id", c));
        }
        writer.record_with_raw_hashed(at.identity, at.hash, &self.name, &labels, sample, at.ts)
    }
}

/// Where a line's samples go: its identity, that identity's cache hash, and its
/// timestamp (0: now).
struct Target<'a> {
    identity: &'a [u8],
    hash: RawHash,
    ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregator::Aggregator;
    use crate::flush::FlushedValue;
    use crate::key::SeriesKey;

    #[test]
    fn good_lines_parse_into_their_parts() {
        let l = parse_line(b"a.b:1.5|c|@0.25|#env:prod,canary|c:abc123|T1700000000").unwrap();
        assert_eq!(l.name, "a.b");
        assert_eq!(l.kind, StatsdType::Counter);
        assert_eq!(l.sample_rate, 0.25);
        assert_eq!(l.tags, "env:prod,canary");
        assert_eq!(l.container, Some("abc123"));
        assert_eq!(l.timestamp_s, Some(1_700_000_000));
        assert_eq!(l.values().collect::<Vec<_>>(), vec![Value::Number(1.5)]);
        let cases: &[(&[u8], StatsdType, &[Value])] = &[
            (b"x:1|c", StatsdType::Counter, &[Value::Number(1.0)]),
            (
                b"x:1:2:3|c",
                StatsdType::Counter,
                &[Value::Number(1.0), Value::Number(2.0), Value::Number(3.0)],
            ),
            (b"x:-5|g", StatsdType::Gauge, &[Value::Relative(-5.0)]),
            (b"x:+5|g", StatsdType::Gauge, &[Value::Relative(5.0)]),
            (b"x:5|g", StatsdType::Gauge, &[Value::Number(5.0)]),
            (b"x:320|ms", StatsdType::Timer, &[Value::Number(320.0)]),
            (b"x:1e3|h", StatsdType::Histogram, &[Value::Number(1000.0)]),
            (b"x:0.5|d", StatsdType::Distribution, &[Value::Number(0.5)]),
            (b"x:-1|c", StatsdType::Counter, &[Value::Number(-1.0)]),
            (b"x:+1|c", StatsdType::Counter, &[Value::Number(1.0)]),
        ];
        for (line, kind, values) in cases {
            let l = parse_line(line).unwrap();
            assert_eq!(l.kind, *kind, "{}", String::from_utf8_lossy(line));
            assert_eq!(l.values().collect::<Vec<_>>(), values.to_vec());
        }
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        let cases: &[(&[u8], LineError)] = &[
            (b"\xff\xfe:1|c", LineError::InvalidUtf8),
            (b"novalue", LineError::MissingValue),
            (b"x:|c", LineError::MissingValue),
            (b":1|c", LineError::EmptyName),
            (b"x:1", LineError::MissingType),
            (b"x:1|", LineError::MissingType),
            (b"x:1|q", LineError::UnknownType),
            (b"x:1|C", LineError::UnknownType),
            (b"x:abc|c", LineError::MalformedValue),
            (b"x:1::2|c", LineError::MalformedValue),
            (b"x:nan|g", LineError::MalformedValue),
            (b"x:inf|c", LineError::MalformedValue),
            (b"x:1|c|@0", LineError::MalformedSampleRate),
            (b"x:1|c|@1.5", LineError::MalformedSampleRate),
            (b"x:1|c|@x", LineError::MalformedSampleRate),
            (b"x:1|c|#:v", LineError::MalformedTag),
            (b"x:1|c|Tsoon", LineError::MalformedTimestamp),
            (b"x:1|c|T-5", LineError::MalformedTimestamp),
            (b"x:1|c|zzz", LineError::UnknownField),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_line(line),
                Err(*want),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn reasons_index_in_the_order_of_all() {
        for (i, r) in LineError::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn word_scans_find_what_a_byte_loop_finds() {
        // Every position of the target, in and across 8-byte words, and bytes that
        // differ from it only in the high bit (0x80 | b) or by one (b ± 1).
        for len in 0..40usize {
            for at in 0..=len {
                let mut b = vec![b'|' ^ 0x80; len];
                for (i, x) in b.iter_mut().enumerate() {
                    *x = [b'|' ^ 0x80, b'|' + 1, b'|' - 1, b'a'][i % 4];
                }
                if at < len {
                    b[at] = b'|';
                }
                for from in 0..=at.min(len) {
                    assert_eq!(
                        find_byte(&b, from, b'|'),
                        at,
                        "len {len} at {at} from {from}"
                    );
                    assert_eq!(find_either(&b, from, b'#', b'|'), at);
                    // Matches before `from` (a scan resumes past a separator) must
                    // not leak into the bytes after them (`}` is `|` + 1: a borrow
                    // out of a matching byte below would flag it).
                    let mut before = b.clone();
                    for x in before.iter_mut().take(from) {
                        *x = b'|';
                    }
                    if from < at {
                        before[from] = b'}';
                    }
                    assert_eq!(
                        find_byte(&before, from, b'|'),
                        at,
                        "len {len} at {at} from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn tag_scans_find_empty_names_anywhere_in_a_word() {
        for len in 1..30usize {
            for at in 0..len {
                // `,:` with the comma at `at - 1` (or `:` first), then a `|` and more.
                let mut tags = vec![b'a'; len];
                tags[at] = b':';
                if at > 0 {
                    tags[at - 1] = b',';
                }
                let mut line = tags.clone();
                line.extend_from_slice(b"|x,:y");
                assert_eq!(
                    scan_tags(&line, 0),
                    (len, true),
                    "{}",
                    String::from_utf8_lossy(&line)
                );
                // The same pair after the `|` is not this section's.
                let mut line = vec![b'a'; len];
                line.push(b'|');
                line.extend_from_slice(&tags);
                assert_eq!(scan_tags(&line, 0), (len, false));
                assert_eq!(scan_tags(&tags, 0), (len, true));
            }
        }
    }

    #[test]
    fn fast_decimals_equal_the_general_parser_bit_for_bit() {
        let mut taken = 0;
        for text in [
            "0",
            "-0",
            "+0",
            "1",
            "-1",
            "0.5",
            ".5",
            "5.",
            "+.5",
            "-.5",
            "0.1",
            "0.3",
            "123.456",
            "9007199254740992",
            "9007199254740993",
            "1234567890123456789",
            "0.0000000000000000001",
            "12345678901234567890",
            "3.14159265358979",
            "1e3",
            "inf",
            ".",
            "+",
            "-",
            "",
            "1.2.3",
        ] {
            let (fast, stop) = scan_decimal(text.as_bytes(), 0);
            let general = text.parse::<f64>().ok();
            assert!(stop <= text.len(), "{text}");
            match fast {
                // Read to the end: exactly the general parser's answer.
                Some(v) if stop == text.len() => {
                    assert_eq!(Some(v.to_bits()), general.map(f64::to_bits), "{text}");
                    taken += 1;
                }
                // Stopped early (`1e3`, `1.2.3`): the caller hands the whole value
                // to the general parser. `None`: not a number, or left to it too.
                _ => {}
            }
        }
        assert_eq!(taken, 15, "the fast path is taken where it should be");
    }

    /// The parser as it was before the single-pass one: split at every separator,
    /// parse every piece with `str::parse`. The differential tests below hold the new
    /// one to it.
    mod reference {
        use super::super::{Fields, LineError, StatsdType, Value, parse_value};

        /// The public parts of a parsed line and its values.
        pub type Parsed<'a> = (
            &'a str,
            StatsdType,
            u64,
            &'a str,
            Option<&'a str>,
            Option<i64>,
            Vec<(bool, u64)>,
        );

        pub fn parse_line(line: &[u8]) -> Result<Parsed<'_>, LineError> {
            let line = std::str::from_utf8(line).map_err(|_| LineError::InvalidUtf8)?;
            let mut sections = Fields::new(line, b'|');
            let head = sections.next().unwrap_or("");
            let mut head_parts = Fields::new(head, b':');
            let name = head_parts.next().unwrap_or("");
            let values = head_parts.rest().ok_or(LineError::MissingValue)?;
            if name.is_empty() {
                return Err(LineError::EmptyName);
            }
            if values.is_empty() {
                return Err(LineError::MissingValue);
            }
            let kind = match sections.next().ok_or(LineError::MissingType)? {
                "c" => StatsdType::Counter,
                "g" => StatsdType::Gauge,
                "ms" => StatsdType::Timer,
                "h" => StatsdType::Histogram,
                "d" => StatsdType::Distribution,
                "s" => StatsdType::Set,
                "" => return Err(LineError::MissingType),
                _ => return Err(LineError::UnknownType),
            };
            let (mut rate, mut tags, mut container, mut ts_s) = (1.0f64, "", None, None);
            for section in sections {
                if let Some(r) = section.strip_prefix('@') {
                    let r: f64 = r.parse().map_err(|_| LineError::MalformedSampleRate)?;
                    if !(r > 0.0 && r <= 1.0) {
                        return Err(LineError::MalformedSampleRate);
                    }
                    rate = r;
                } else if let Some(t) = section.strip_prefix('#') {
                    if Fields::new(t, b',').any(|t| t.starts_with(':')) {
                        return Err(LineError::MalformedTag);
                    }
                    tags = t;
                } else if let Some(c) = section.strip_prefix("c:") {
                    container = Some(c);
                } else if let Some(ts) = section.strip_prefix('T') {
                    let ts: i64 = ts.parse().map_err(|_| LineError::MalformedTimestamp)?;
                    if !(0..=i64::MAX / 1000).contains(&ts) {
                        return Err(LineError::MalformedTimestamp);
                    }
                    ts_s = Some(ts);
                } else {
                    return Err(LineError::UnknownField);
                }
            }
            let gauge = kind == StatsdType::Gauge;
            if kind != StatsdType::Set {
                for v in Fields::new(values, b':') {
                    parse_value(v, gauge)?;
                }
            }
            let vals = Fields::new(values, b':')
                .filter_map(|v| parse_value(v, gauge).ok())
                .map(bits)
                .collect();
            Ok((name, kind, rate.to_bits(), tags, container, ts_s, vals))
        }

        pub fn bits(v: Value) -> (bool, u64) {
            match v {
                Value::Number(n) => (false, n.to_bits()),
                Value::Relative(n) => (true, n.to_bits()),
            }
        }
    }

    fn new_parser(line: &[u8]) -> Result<reference::Parsed<'_>, LineError> {
        parse_line(line).map(|l| {
            let vals = l.values().map(reference::bits).collect();
            (
                l.name,
                l.kind,
                l.sample_rate.to_bits(),
                l.tags,
                l.container,
                l.timestamp_s,
                vals,
            )
        })
    }

    /// A datagram's non-empty lines the plain way: split at every `\n`, a trailing
    /// `\r` dropped.
    fn plain_split(data: &[u8]) -> Vec<&[u8]> {
        data.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect()
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn single_pass_parser_agrees_with_the_reference_on_statsd_like_text(
            text in "[a-z.:]{0,6}(:[-+0-9.eE]{0,22}|:inf|:nan|:1e400){0,3}(\\|(c|g|ms|m|s|h|d|x|cc|@[-+0-9.e]{0,6}|#[a-z0-9:,]{0,20}|T[-+0-9]{0,21}|c:[a-z]{0,3}|c|)){0,4}(\\|)?"
        ) {
            prop_assert_eq!(new_parser(text.as_bytes()), reference::parse_line(text.as_bytes()), "{}", text);
        }

        #[test]
        fn single_pass_parser_agrees_with_the_reference_on_any_bytes(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b':'), Just(b'|'), Just(b','), Just(b'#'), Just(b'1'), Just(b'.')],
                0..64,
            )
        ) {
            prop_assert_eq!(new_parser(&data), reference::parse_line(&data));
        }

        #[test]
        fn lines_are_a_plain_split_at_newlines(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b'a')],
                0..400,
            )
        ) {
            prop_assert_eq!(lines(&data).collect::<Vec<_>>(), plain_split(&data));
        }

        #[test]
        fn newline_blocks_flag_every_newline_and_nothing_else(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\n' | 0x80), Just(b'\n' + 1)],
                64,
            )
        ) {
            let block: &[u8; 64] = data.first_chunk().unwrap();
            let want = data
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, &b)| m | (u64::from(b == b'\n') << i));
            prop_assert_eq!(block_newline_bits(block), want);
            for (k, w) in block.as_chunks::<WINDOW>().0.iter().enumerate() {
                let [flags] = window_flags_words(w, [b'\n']);
                prop_assert_eq!(u64::from(flags), (want >> (WINDOW * k)) & 0xffff);
                let separators = [b'|', b',', b':', b'\n' + 1];
                prop_assert_eq!(window_flags(w, separators), window_flags_words(w, separators));
            }
            for len in [0, 1, 17, 63] {
                prop_assert_eq!(newline_bits(&data[..len]), want & ((1u64 << len) - 1));
            }
        }

        #[test]
        fn decimal_values_convert_exactly(
            int in "[0-9]{0,20}", frac in proptest::option::of("[0-9]{0,20}"), sign in "[-+]?"
        ) {
            let text = format!("{sign}{int}{}", frac.map(|f| format!(".{f}")).unwrap_or_default());
            let (fast, stop) = scan_decimal(text.as_bytes(), 0);
            prop_assert_eq!(stop, text.len());
            if let Some(v) = fast {
                prop_assert_eq!(Some(v.to_bits()), text.parse::<f64>().ok().map(f64::to_bits), "{}", text);
            }
        }

    }

    proptest! {
        // Each case builds an aggregator: fewer cases keep this under a few seconds.
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn datagram_ingest_counts_like_line_by_line_parsing(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b':'), Just(b'|'), Just(b'c'), Just(b'1')],
                0..200,
            )
        ) {
            let agg = Aggregator::new(crate::AggregatorConfig { max_series: 64, ..Default::default() });
            let mut w = agg.writer();
            let r = Decoder::default().ingest(&data, &mut w);
            let mut want = [0u64; LineError::ALL.len()];
            let mut ok = 0;
            let split = plain_split(&data);
            prop_assert_eq!(lines(&data).collect::<Vec<_>>(), split.clone());
            for l in split {
                match reference::parse_line(l) {
                    Ok(_) => ok += 1,
                    Err(e) => want[e.index()] += 1,
                }
            }
            prop_assert_eq!(r.lines, ok);
            prop_assert_eq!(r.parse_errors, want);
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            parse_line(&[0xff, b':', b'1', b'|', b'c']),
            Err(LineError::InvalidUtf8)
        );
    }

    #[test]
    fn tags_without_values_are_empty_labels() {
        let got: Vec<_> = tags("a:1,,canary,b:x:y").collect();
        assert_eq!(got, vec![("a", "1"), ("canary", ""), ("b", "x:y")]);
    }

    #[test]
    fn names_are_sanitised_in_one_place() {
        let mut out = String::new();
        for (raw, metric, label) in [
            ("api.req-count", "api_req_count", "api_req_count"),
            ("9lives", "_9lives", "_9lives"),
            ("a:b", "a:b", "a_b"),
            ("héllo", "h_llo", "h_llo"),
        ] {
            sanitize_metric_name(raw, &mut out);
            assert_eq!(out, metric);
            sanitize_label_name(raw, &mut out);
            assert_eq!(out, label);
        }
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(name, labels).unwrap()
    }

    fn only(batch: &crate::flush::FlushBatch, k: &SeriesKey) -> FlushedValue {
        batch
            .find(k)
            .next()
            .unwrap_or_else(|| panic!("{k} missing"))
            .value
            .clone()
    }

    #[test]
    fn a_datagram_aggregates_line_by_line_and_skips_bad_lines() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        let datagram =
            b"hits:1|c|#route:/a\nhits:2|c|#route:/a\r\nbogus\n\nhits:1|c|@0.1|#route:/a\n\
temp:20|g\ntemp:-5|g\ntemp:+1|g\nlat:250|ms|@0.5\nsize:3:4|h\nhits:x|c\nu:ann|s\nu:bob|s\nu:ann|s\n";
        let r = d.ingest(datagram, &mut w);
        assert_eq!(r.samples, 12);
        assert_eq!(r.rejected, 0);
        assert_eq!(r.parse_errors(LineError::MissingValue), 1);
        assert_eq!(r.parse_errors(LineError::MalformedValue), 1);
        let b = agg.flush();
        assert_eq!(
            only(&b, &key("hits", &[("route", "/a")])),
            FlushedValue::Counter {
                delta: 13.0,
                total: 13.0
            }
        );
        assert!(matches!(
            only(&b, &key("temp", &[])),
            FlushedValue::Gauge { value: 16.0, .. }
        ));
        let FlushedValue::Histogram { delta, .. } = only(&b, &key("lat", &[])) else {
            panic!()
        };
        assert_eq!(
            (delta.count, delta.sum),
            (2, 0.5),
            "250 ms at rate 0.5 = 2 x 0.25 s"
        );
        assert!(
            matches!(
                only(&b, &key("u", &[])),
                FlushedValue::Gauge { value: 2.0, .. }
            ),
            "two distinct members"
        );
        let FlushedValue::Histogram { delta, .. } = only(&b, &key("size", &[])) else {
            panic!()
        };
        assert_eq!((delta.count, delta.sum), (2, 7.0));
    }

    #[test]
    fn dogstatsd_fields_become_labels_and_timestamps() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        let r = d.ingest(b"my.gauge:3|g|#host:h1,canary|c:ctr1|T1700000000", &mut w);
        assert_eq!(r.samples, 1);
        let b = agg.flush();
        let k = key(
            "my_gauge",
            &[("host", "h1"), ("canary", ""), ("container_id", "ctr1")],
        );
        assert_eq!(
            only(&b, &k),
            FlushedValue::Gauge {
                value: 3.0,
                timestamp_ms: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn aggregator_refusals_are_reported_not_parse_errors() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        // A negative counter parses but the aggregator refuses it; so does a type
        // conflict and a duplicate tag.
        let r = d.ingest(b"c:-1|c\nc:1|c\nc:1|g\nt:1|c|#a:1,a:2", &mut w);
        assert_eq!((r.samples, r.rejected), (1, 3));
        assert_eq!(r.parse_errors.iter().sum::<u64>(), 0);
        let stats = agg.stats();
        assert_eq!(stats.rejected("invalid_value"), 1);
        assert_eq!(stats.rejected("type_conflict"), 1);
        assert_eq!(stats.rejected("duplicate_label"), 1);
    }

    #[test]
    fn cached_lines_reuse_the_series() {
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let mut d = Decoder::default();
        for _ in 0..10 {
            d.ingest(b"x.y:1|c|#b:2,a:1", &mut w);
        }
        assert_eq!(w.cache_misses(), 1);
        assert_eq!(agg.flush().counter_delta_sum(), 10.0);
    }
}
