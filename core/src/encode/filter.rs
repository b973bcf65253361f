//! [`NameFilter`]: which metric names a pipeline sends, as include and exclude glob
//! patterns.
//!
//! Owns: pattern validation and matching. Patterns are globs over the metric name with
//! two wildcards only: `*` (any run of characters, also none) and `?` (exactly one).
//! Every other character matches itself, and must be one a metric name can contain
//! (`[a-zA-Z0-9_:]`), so a regular expression or a dotted OTLP name written by mistake
//! (`http\..*`, `http.server.*`) is refused when the config is read instead of silently
//! matching nothing. Must never: backtrack without bound (matching is
//! O(pattern × name)).

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string (it could only match an empty name, and no
    /// metric has one).
    #[error("empty metric name pattern")]
    Empty,
    /// The pattern holds a character no metric name contains.
    #[error(
        "metric name pattern {pattern:?}: {ch:?} cannot occur in a metric name \
         (patterns are [a-zA-Z0-9_:] plus the wildcards * and ?)"
    )]
    InvalidChar {
        /// The pattern as given.
        pattern: String,
        /// The first offending character.
        ch: char,
    },
}

/// Include and exclude patterns over metric names.
///
/// A name passes when the include list is empty or one include pattern matches it,
/// and no exclude pattern matches it.
///
/// ```
/// use weir_core::encode::NameFilter;
/// let f = NameFilter::new(&["http_*".into()], &["*_bucket".into(), "http_debug_?".into()]).unwrap();
/// assert!(f.matches("http_requests_total"));
/// assert!(!f.matches("http_debug_1"));
/// assert!(!f.matches("grpc_requests_total"));
/// assert!(NameFilter::all().matches("anything"));
/// assert!(NameFilter::new(&["http.*".into()], &[]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    /// Validated patterns (ASCII only).
    include: Vec<String>,
    /// Validated patterns (ASCII only).
    exclude: Vec<String>,
}

impl NameFilter {
    /// Validates the patterns and builds the filter.
    ///
    /// # Errors
    /// [`PatternError`] for the first empty pattern or character that no metric name
    /// can contain.
    pub fn new(include: &[String], exclude: &[String]) -> Result<NameFilter, PatternError> {
        for p in include.iter().chain(exclude) {
            validate(p)?;
        }
        Ok(NameFilter {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        })
    }

    /// The filter that passes every name.
    pub fn all() -> NameFilter {
        NameFilter::default()
    }

    /// True if `name` is sent: `(include is empty || an include pattern matches) &&
    /// no exclude pattern matches`.
    pub fn matches(&self, name: &str) -> bool {
        let n = name.as_bytes();
        (self.include.is_empty() || self.include.iter().any(|p| glob(p.as_bytes(), n)))
            && !self.exclude.iter().any(|p| glob(p.as_bytes(), n))
    }

    /// True if this filter passes every name (nothing to evaluate per series).
    pub(crate) fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

fn validate(p: &str) -> Result<(), PatternError> {
    if p.is_empty() {
        return Err(PatternError::Empty);
    }
    match p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*' | '?')))
    {
        Some(ch) => Err(PatternError::InvalidChar {
            pattern: p.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// True if `pattern` (`*` for any run of bytes, `?` for one, everything else
/// literal) matches all of `name`. Used for metric names here and for file names by
/// the collector's file-based scrape discovery.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    glob(pattern.as_bytes(), name.as_bytes())
}

/// Glob match of `pat` (`*`, `?`, literals) against all of `name`.
///
/// The classic two-pointer algorithm: on a mismatch, go back to just after the last
/// `*` seen and let it swallow one more byte of the name. Each `*` only ever moves
/// its restart point forward, so the work is bounded by `pat.len() * name.len()`.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // (pattern index after the last `*`, name index it is matched up to).
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pat[p.min(pat.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "abc", true),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abcd", "abc", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*c", "ac", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*_total", "http_requests_total", true),
            ("*_total", "http_requests_total_x", false),
            ("http_*_total", "http_requests_total", true),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("a**b", "ab", true),
            ("??", "a", false),
            ("?*", "a", true),
            ("*?", "", false),
        ];
        for &(p, n, want) in cases {
            assert_eq!(glob(p.as_bytes(), n.as_bytes()), want, "{p:?} on {n:?}");
        }
    }

    #[test]
    fn include_and_exclude_combine() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let f = NameFilter::new(&s(&["a_*", "b"]), &s(&["a_x*"])).unwrap();
        assert!(f.matches("a_1"));
        assert!(f.matches("b"));
        assert!(!f.matches("a_x1"));
        assert!(!f.matches("c"));
        let only_exclude = NameFilter::new(&[], &s(&["debug_*"])).unwrap();
        assert!(only_exclude.matches("c"));
        assert!(!only_exclude.matches("debug_1"));
        assert!(!only_exclude.is_all());
        assert!(NameFilter::all().is_all());
    }

    #[test]
    fn invalid_patterns_are_refused() {
        assert_eq!(
            NameFilter::new(&[String::new()], &[]),
            Err(PatternError::Empty)
        );
        assert_eq!(
            NameFilter::new(&[], &["http.server.*".into()]),
            Err(PatternError::InvalidChar {
                pattern: "http.server.*".into(),
                ch: '.'
            })
        );
        assert!(NameFilter::new(&["[ab]*".into()], &[]).is_err());
        assert!(NameFilter::new(&["é*".into()], &[]).is_err());
    }

    /// The two-pointer matcher stays linear-ish on the classic exponential case.
    #[test]
    fn pathological_pattern_is_fast() {
        let pat = "*a*a*a*a*a*a*a*a*a*a*a*b";
        let name = "a".repeat(4096);
        let t = std::time::Instant::now();
        assert!(!glob(pat.as_bytes(), name.as_bytes()));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
