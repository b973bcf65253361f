//! The text exposition parser on arbitrary bodies: never a panic, and everything it
//! emits is accepted or refused with a reason by the aggregator (no panic there
//! either).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::parse::exposition::parse_text;
use weir_core::{Aggregator, AggregatorConfig};

fuzz_target!(|data: &[u8]| {
    let agg = Aggregator::new(AggregatorConfig {
        max_series: 256,
        ..Default::default()
    });
    let mut w = agg.writer();
    let r = parse_text(data, &mut |n, l, s, ts| {
        let _ = w.record(n, l, s, ts);
    });
    assert!(r.samples <= data.len() as u64);
    let _ = agg.flush();
});
