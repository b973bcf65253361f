//! `SeriesKey::new` on arbitrary text: either a clear error, or a key whose name and
//! sorted labels read back exactly and whose display form parses back to the same
//! label count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::SeriesKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Fields separated by '\n': the name, then alternating label names and values.
    let mut parts = text.split('\n');
    let name = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let labels: Vec<(&str, &str)> = rest.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    match SeriesKey::new(name, &labels) {
        Ok(key) => {
            assert_eq!(key.name(), name);
            let mut want = labels.clone();
            want.sort();
            assert_eq!(key.labels().collect::<Vec<_>>(), want);
            assert_eq!(SeriesKey::new(name, &want).as_ref(), Ok(&key));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
