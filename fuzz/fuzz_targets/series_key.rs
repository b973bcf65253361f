//! `SeriesKey::new` on arbitrary text: a clear error, or a key whose name and sorted
//! labels read back exactly.
//!
//! The check is `weir_core::testing::fuzz::check_target("series_key", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("series_key", data) {
        panic!("series_key: {e}");
    }
});
