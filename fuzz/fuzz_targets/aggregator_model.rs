//! The aggregator against a `HashMap` model: every result and every flushed series
//! must match.
//!
//! The check is `weir_core::testing::fuzz::check_target("aggregator_model", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("aggregator_model", data) {
        panic!("aggregator_model: {e}");
    }
});
