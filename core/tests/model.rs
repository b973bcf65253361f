//! Property tests that run in CI: the aggregator against a `HashMap` model on random
//! operation sequences (the same check the cargo-fuzz target runs longer), and series
//! keys on arbitrary strings.

use proptest::prelude::*;
use weir_core::SeriesKey;
use weir_core::testing::{check_against_model, ops_from_bytes};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn aggregator_matches_the_model(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let ops = ops_from_bytes(&data);
        prop_assert_eq!(check_against_model(&ops), Ok(()));
    }

    #[test]
    fn any_strings_give_a_key_or_a_clear_error(
        name in ".{0,12}",
        labels in proptest::collection::vec((".{0,6}", ".{0,8}"), 0..5),
    ) {
        let borrowed: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match SeriesKey::new(&name, &borrowed) {
            Ok(key) => {
                prop_assert_eq!(key.name(), name.as_str());
                let mut want = borrowed.clone();
                want.sort();
                let got: Vec<_> = key.labels().collect();
                prop_assert_eq!(got, want);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn different_label_sets_have_different_keys(
        a in proptest::collection::btree_map("[a-c]{1,2}", "[a-c=,{}\"\\\\]{0,3}", 0..4),
        b in proptest::collection::btree_map("[a-c]{1,2}", "[a-c=,{}\"\\\\]{0,3}", 0..4),
    ) {
        let la: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let lb: Vec<(&str, &str)> = b.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ka = SeriesKey::new("m", &la).unwrap();
        let kb = SeriesKey::new("m", &lb).unwrap();
        prop_assert_eq!(ka == kb, a == b);
        prop_assert_eq!(ka.to_string() == kb.to_string(), a == b);
    }
}
