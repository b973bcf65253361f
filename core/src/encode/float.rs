//! Float text for the text formats: Prometheus' spelling of `le` / `quantile` label
//! values, and a compact spelling of line protocol field values.
//!
//! Owns: both spellings, and [`BucketNames`] (a histogram's bounds spelled once).
//! Must never: print a value that does not parse back to the same
//! `f64` (both use Rust's shortest round-trip digits), or allocate (they append to the
//! caller's buffer; [`BucketNames`] only when the bounds change).

use std::fmt::Write as _;

/// Appends `v` as Prometheus and its Go client libraries print bucket bounds and
/// quantiles (Go's `strconv.FormatFloat(v, 'g', -1, 64)`): shortest round-trip digits,
/// positional for decimal exponents -4..=5 (`0.0001`, `0.1`, `1`, `2.5`, `100000`),
/// exponent form otherwise (`1e-05`, `1e+06`, `1.5e+07`: sign and at least two exponent
/// digits); `+Inf`, `-Inf`, `NaN`.
///
/// Series names built from these (`le="1e+06"`) match those of a Go client scraped by
/// Prometheus 2, so weir's series line up with theirs.
pub(crate) fn prometheus(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let a = v.abs();
        // Exact thresholds: a double below 1e-4 (or at/above 1e6) has its shortest
        // decimal below 0.0001 (at/above 1000000) too, since 1e-4 and 1e6 themselves
        // are the nearest doubles to those decimals.
        if a == 0.0 || (1e-4..1e6).contains(&a) {
            positional(out, v);
        } else {
            exponent_form(out, v, true);
        }
    }
}

/// Appends a finite `v` as a line protocol float: positional (Rust's shortest
/// round-trip digits) for magnitudes in `[1e-5, 1e16)` and zero, else exponent form
/// (`1e-7`, `1.5e+20`), which InfluxDB parses as a float too. Integral values print
/// without a decimal point (`3`): line protocol reads a bare number as a float (an
/// integer needs an `i` suffix).
pub(crate) fn line_protocol(out: &mut String, v: f64) {
    let a = v.abs();
    if a == 0.0 || (1e-5..1e16).contains(&a) {
        positional(out, v);
    } else {
        exponent_form(out, v, false);
    }
}

/// Appends a finite `v` as `{v}` does (shortest round-trip digits, positional), but
/// an integral `v` below 2^53 in magnitude, the common counter total and gauge, by
/// integer formatting: the same digits (every integer in that range is a double of
/// its own, so its shortest round-trip digits are its decimal digits), at a fraction
/// of the float formatter's cost.
pub(crate) fn positional(out: &mut String, v: f64) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    // A cast round trip, not `v.fract()` (a libm call on baseline x86-64). `-0.0` is
    // integral too, but `{v}` spells it `-0`: it takes the float path.
    let i = v as i64;
    if v.abs() < EXACT && i as f64 == v && !(i == 0 && v.is_sign_negative()) {
        let _ = write!(out, "{i}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `{:e}` (`1.5e7`, `1e-7`) rewritten with an explicit exponent sign, and with `pad`
/// at least two exponent digits (Go's `%e` style: `1.5e+07`, `1e-07`).
fn exponent_form(out: &mut String, v: f64, pad: bool) {
    let start = out.len();
    let _ = write!(out, "{v:e}");
    let Some(e) = out[start..].rfind('e').map(|i| start + i) else {
        return;
    };
    let (negative, digits_at) = match out.as_bytes().get(e + 1) {
        Some(b'-') => (true, e + 2),
        _ => (false, e + 1),
    };
    let digits_len = out.len() - digits_at;
    // At most 3 exponent digits for an f64: copy them to a small stack buffer.
    let mut digits = [0u8; 3];
    let n = digits_len.min(3);
    digits[..n].copy_from_slice(&out.as_bytes()[digits_at..digits_at + n]);
    out.truncate(e + 1);
    out.push(if negative { '-' } else { '+' });
    if pad && n < 2 {
        out.push('0');
    }
    for &d in &digits[..n] {
        out.push(char::from(d));
    }
}

/// The spelled upper bounds (each bound, then `+Inf`) of the last bucket layout seen,
/// as [`prometheus`] spells them: histograms of one batch nearly always share their
/// bounds, so they are spelled once per batch, not once per series.
#[derive(Default)]
pub(crate) struct BucketNames {
    bounds: Vec<f64>,
    /// One per bound, then `+Inf`; empty until the first call.
    names: Vec<String>,
}

impl BucketNames {
    /// The names for `bounds` (recomputed only when they differ from the last call's).
    pub(crate) fn get(&mut self, bounds: &[f64]) -> &[String] {
        let same = self.names.len() == bounds.len() + 1
            && self
                .bounds
                .iter()
                .zip(bounds)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            self.bounds.clear();
            self.bounds.extend_from_slice(bounds);
            self.names.clear();
            for &b in bounds.iter().chain(&[f64::INFINITY]) {
                let mut name = String::new();
                prometheus(&mut name, b);
                self.names.push(name);
            }
        }
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(v: f64) -> String {
        let mut s = String::new();
        prometheus(&mut s, v);
        s
    }

    fn lp(v: f64) -> String {
        let mut s = String::new();
        line_protocol(&mut s, v);
        s
    }

    fn positional_of(v: f64) -> String {
        let mut s = String::new();
        positional(&mut s, v);
        s
    }

    #[test]
    fn positional_spells_integers_as_the_float_formatter_does() {
        let exact = 9_007_199_254_740_992.0; // 2^53
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            11.0,
            1e15,
            123_456_789.0,
            exact - 1.0,
            exact,
            exact + 2.0,
            -(exact - 1.0),
            -exact,
            1e300,
            0.5,
            -2.5,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(positional_of(v), format!("{v}"), "{v:e}");
        }
    }

    proptest! {
        #[test]
        fn positional_is_the_float_formatter(bits in any::<u64>(), int in any::<i64>()) {
            for v in [f64::from_bits(bits), int as f64, (int >> 11) as f64] {
                if v.is_finite() {
                    prop_assert_eq!(positional_of(v), format!("{v}"));
                }
            }
        }
    }

    /// Expected strings are what Go's `strconv.FormatFloat(v, 'g', -1, 64)` prints.
    #[test]
    fn prometheus_spelling_matches_go_g_format() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (0.1, "0.1"),
            (0.005, "0.005"),
            (2.5, "2.5"),
            (10.0, "10"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000015, "1.5e-05"),
            (100000.0, "100000"),
            (999999.5, "999999.5"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (1e21, "1e+21"),
            (1e-300, "1e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-2.5e-7, "-2.5e-07"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for &(v, want) in cases {
            assert_eq!(p(v), want, "{v:e}");
        }
    }

    #[test]
    fn line_protocol_spelling_is_compact_and_round_trips() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (3.0, "3"),
            (-1.5, "-1.5"),
            (0.00001, "0.00001"),
            (0.000001, "1e-6"),
            (1234567.0, "1234567"),
            (1e16, "1e+16"),
            (-1.5e20, "-1.5e+20"),
        ];
        for &(v, want) in cases {
            assert_eq!(lp(v), want, "{v:e}");
        }
        for v in [
            1e-300,
            0.1 + 0.2,
            123456789.123,
            9.999e15,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(lp(v).parse::<f64>().unwrap(), v);
            assert_eq!(p(v).parse::<f64>().unwrap(), v);
        }
    }
}
