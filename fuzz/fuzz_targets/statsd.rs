//! The StatsD decoder on arbitrary datagrams: every non-empty line is applied or
//! counted as one parse error, and every value of an applied line is taken or refused
//! exactly once.
//!
//! The check is `weir_core::testing::fuzz::check_target("statsd", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("statsd", data) {
        panic!("statsd: {e}");
    }
});
