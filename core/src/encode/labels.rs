//! A series' outgoing label set: its own labels merged with the external labels.
//!
//! Owns: the merge rule of the encoders (see the parent module doc). Must never:
//! allocate (it fills the caller's reused vector with borrowed pairs) or return labels
//! out of byte order.

use crate::key::SeriesKey;

/// Fills `out` with `key`'s labels and the `external` ones (both sorted by name) merged
/// in name order: on equal names the series' label wins unless its value is empty;
/// labels with an empty value are left out (Prometheus reads an empty value as no label, line protocol forbids
/// empty tag values); labels named in `skip` are left out (a label the encoder sets
/// itself, like `le`).
pub(crate) fn merge<'a>(
    key: &'a SeriesKey,
    external: &'a [(String, String)],
    skip: &[&str],
    out: &mut Vec<(&'a str, &'a str)>,
) {
    out.clear();
    let mut ext = external
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .peekable();
    for (k, v) in key.labels() {
        while let Some(&(ek, ev)) = ext.peek() {
            if ek >= k {
                break;
            }
            push(out, ek, ev, skip);
            ext.next();
        }
        match ext.next_if(|&(ek, _)| ek == k) {
            // An empty value is no label: the external one applies.
            Some((ek, ev)) if v.is_empty() => push(out, ek, ev, skip),
            _ => push(out, k, v, skip),
        }
    }
    for (ek, ev) in ext {
        push(out, ek, ev, skip);
    }
}

fn push<'a>(out: &mut Vec<(&'a str, &'a str)>, k: &'a str, v: &'a str, skip: &[&str]) {
    if !v.is_empty() && !skip.contains(&k) {
        out.push((k, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn merges_in_order_series_wins_empty_and_skipped_dropped() {
        let key = SeriesKey::new(
            "m",
            &[
                ("b", "series"),
                ("d", ""),
                ("e", ""),
                ("le", "x"),
                ("z", "1"),
            ],
        )
        .unwrap();
        let e = ext(&[("a", "1"), ("b", "ext"), ("c", ""), ("e", "5"), ("zz", "9")]);
        // `e` is empty on the series, so the external value applies.
        let mut out = Vec::new();
        merge(&key, &e, &["le"], &mut out);
        assert_eq!(
            out,
            vec![
                ("a", "1"),
                ("b", "series"),
                ("e", "5"),
                ("z", "1"),
                ("zz", "9")
            ]
        );
        let bare = SeriesKey::new("m", &[]).unwrap();
        let mut out = Vec::new();
        merge(&bare, &[], &[], &mut out);
        assert!(out.is_empty());
    }
}
