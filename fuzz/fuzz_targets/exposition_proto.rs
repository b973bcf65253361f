//! The protobuf exposition decoder on arbitrary bodies: every emitted sample is
//! counted and taken or refused with a reason, and a body it reports no error for
//! yields exactly the samples prost's own delimited decoding says it holds; the
//! borrowed walk of counter, gauge and untyped families emits exactly what decoding
//! them with prost does.
//!
//! The check is `weir_core::testing::fuzz::check_target("exposition_proto", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("exposition_proto", data) {
        panic!("exposition_proto: {e}");
    }
});
