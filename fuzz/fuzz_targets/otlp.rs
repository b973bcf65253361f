//! OTLP on arbitrary bytes, read as a protobuf request, as an OTLP/JSON body and as the
//! recipe of a structured request: every data point is accepted or rejected with a
//! reason (accepted + rejected == data points), a structured request round-trips
//! through protobuf with the same report, and the borrowed walk of the protobuf bytes
//! (the receivers' path) gives what prost's decoding gives: the same error, or the
//! same reports and flush.
//!
//! The check is `weir_core::testing::fuzz::check_target("otlp", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("otlp", data) {
        panic!("otlp: {e}");
    }
});
