//! The StatsD decoder on arbitrary datagrams: never a panic, and every non-empty line
//! is either applied or counted as exactly one parse error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::parse::statsd::{Decoder, lines};
use weir_core::{Aggregator, AggregatorConfig};

fuzz_target!(|data: &[u8]| {
    let agg = Aggregator::new(AggregatorConfig {
        max_series: 256,
        ..Default::default()
    });
    let mut w = agg.writer();
    let r = Decoder::default().ingest(data, &mut w);
    let errors: u64 = r.parse_errors.iter().sum();
    assert_eq!(r.lines + errors, lines(data).count() as u64);
    assert!(r.samples + r.rejected >= r.lines);
    let _ = agg.flush();
});
