//! Reading a Prometheus text exposition page (weir's exposition endpoint, collectd's
//! write_prometheus) back into numbers the harness compares with what it sent.
//!
//! Owns: sample-line parsing (name, label text, value; a trailing timestamp ignored).
//! Must never: fail on a line it does not understand (it is skipped).

/// One sample line: metric name, the label text between the braces (empty if none),
/// and the value.
pub fn samples(page: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    page.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let close = line.rfind('}')?;
            (&line[name_end + 1..close], &line[close + 1..])
        } else {
            ("", &line[name_end..])
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((name, labels, value))
    })
}

/// The number of samples and the sum of their values, over the samples `keep` accepts.
pub fn count_and_sum(page: &str, mut keep: impl FnMut(&str, &str) -> bool) -> (u64, f64) {
    samples(page)
        .filter(|(n, l, _)| keep(n, l))
        .fold((0, 0.0), |(c, s), (_, _, v)| (c + 1, s + v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_timestamps_and_comments_are_read() {
        let page = "# HELP x y\n# TYPE x counter\nx_total 3\n\
                    collectd_statsd_derive_total{statsd=\"a.b\",instance=\"h\"} 7 1700000000000\n\
                    broken\n";
        let got: Vec<_> = samples(page).collect();
        assert_eq!(
            got,
            vec![
                ("x_total", "", 3.0),
                (
                    "collectd_statsd_derive_total",
                    "statsd=\"a.b\",instance=\"h\"",
                    7.0
                )
            ]
        );
        assert_eq!(
            count_and_sum(page, |n, _| n.starts_with("collectd")),
            (1, 7.0)
        );
    }
}
