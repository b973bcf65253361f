//! Properties of the text parsers on arbitrary input (the CI stand-in for the
//! `exposition` and `openmetrics` fuzz targets, with their check,
//! `weir_core::testing::fuzz::check_exposition`): every emitted sample is counted and
//! taken or refused with a reason, samples and skipped lines add up to at most the
//! body's lines; and generated bodies round-trip.

use proptest::prelude::*;
use weir_core::parse::exposition::{Format, parse_text};
use weir_core::point::Sample;
use weir_core::testing::fuzz::check_exposition;

fn check_both(data: &[u8]) -> Result<(), TestCaseError> {
    for format in [Format::Text, Format::OpenMetrics] {
        check_exposition(format, data)
            .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_account_for_every_sample(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_both(&data)?;
    }

    #[test]
    fn exposition_looking_text_accounts_for_every_line(
        text in "((# (TYPE|HELP|EOF) [a-z_]{0,4}( (counter|gauge|histogram|summary|info|x))?|[a-z_]{0,9}(\\{([a-z]{0,2}=\"[a-z\\\\\"+I0-9.]{0,4}\",?){0,3}\\}?)?( [-+0-9.eInfNa]{0,5}){0,3})\n){0,8}"
    ) {
        check_both(text.as_bytes())?;
    }

    #[test]
    fn generated_gauges_and_counters_round_trip(
        series in proptest::collection::btree_map(
            "[a-z][a-z_]{0,6}",
            (0u32..1_000_000, proptest::collection::btree_map("[a-z]{1,3}", "[ -~]{0,6}", 0..3), proptest::bool::ANY),
            1..6,
        )
    ) {
        let mut body = String::new();
        for (name, (value, labels, counter)) in &series {
            if *counter {
                body.push_str(&format!("# TYPE {name} counter\n"));
            }
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            body.push_str(&format!("{name}{{{}}} {value}\n", l.join(",")));
            if *counter {
                body.push_str("# TYPE reset_family gauge\n");
            }
        }
        let mut got = Vec::new();
        let r = parse_text(body.as_bytes(), &mut |n, l, s, _, _| {
            let owned: Vec<(String, String)> = l.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            got.push((n.to_owned(), owned, s.clone_value()));
        });
        prop_assert_eq!(r.errors.iter().sum::<u64>(), 0, "{}", body);
        prop_assert_eq!(got.len(), series.len());
        for ((name, (value, labels, counter)), (gn, gl, gv)) in series.iter().zip(&got) {
            prop_assert_eq!(name, gn);
            let want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&want, gl);
            prop_assert_eq!(*gv, if *counter { (f64::from(*value), true) } else { (f64::from(*value), false) });
        }
    }
}

/// The value of a counter or gauge sample and whether it is a counter.
trait CloneValue {
    fn clone_value(&self) -> (f64, bool);
}

impl CloneValue for Sample<'_> {
    fn clone_value(&self) -> (f64, bool) {
        match self {
            Sample::Counter(v, _) => (*v, true),
            Sample::Gauge(v) => (*v, false),
            _ => (f64::NAN, false),
        }
    }
}
