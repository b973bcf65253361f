//! The aggregator against a `HashMap` model: every result and every flushed series
//! must match (see `weir_core::testing`). The proptest `core/tests/model.rs` runs the
//! same check in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::{check_against_model, ops_from_bytes};

fuzz_target!(|data: &[u8]| {
    let ops = ops_from_bytes(data);
    if let Err(diff) = check_against_model(&ops) {
        panic!("aggregator differs from the model: {diff}");
    }
});
