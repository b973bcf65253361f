//! WAL recovery on arbitrary files (one or two segments, an optional ack file): open
//! and read never panic, what is read matches the stats, kept + cut bytes add up, and
//! the recovered WAL takes an append that survives a reopen.
//!
//! The check is `weir_core::testing::fuzz::check_target("wal", ..)`, which
//! `core/tests/fuzz_corpus.rs` also runs on every committed corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::testing::fuzz::check_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_target("wal", data) {
        panic!("wal: {e}");
    }
});
