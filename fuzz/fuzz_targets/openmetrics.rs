//! The OpenMetrics text 1.0 parser on arbitrary bodies: every emitted sample is
//! counted and taken or refused with a reason by the aggregator, and samples plus
//! skipped lines are at most the body's lines (plus a missing `# EOF`).
//!
//! The check is `weir_core::testing::fuzz::check_target("openmetrics", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("openmetrics", data) {
        panic!("openmetrics: {e}");
    }
});
