//! The protobuf exposition decoder on arbitrary bodies: never a panic; every sample
//! it emits is counted in its report and accepted or refused with a reason by the
//! aggregator; and when it reports no error, it emitted exactly what prost's own
//! length-delimited decoding of the same body says the families hold (one sample per
//! series; a gauge histogram's buckets, `+Inf` included, plus `_gcount` and `_gsum`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::parse::exposition::parse_protobuf;
use weir_core::{Aggregator, AggregatorConfig};
use weir_proto::Message;
use weir_proto::client_model::{MetricFamily, MetricType};

fuzz_target!(|data: &[u8]| {
    let agg = Aggregator::new(AggregatorConfig {
        max_series: 256,
        ..Default::default()
    });
    let mut w = agg.writer();
    let mut emitted = 0u64;
    let r = parse_protobuf(data, &mut |n, l, s, ts| {
        emitted += 1;
        let _ = w.record(n, l, s, ts);
    });
    assert_eq!(r.samples, emitted);
    assert!(r.samples <= data.len() as u64);
    if r.total_errors() == 0 {
        let mut rest = data;
        let mut want = 0u64;
        while !rest.is_empty() {
            let f = MetricFamily::decode_length_delimited(&mut rest)
                .expect("no error reported, so every message decodes");
            for m in &f.metric {
                want += match f.r#type.unwrap_or(0) {
                    t if t == MetricType::GaugeHistogram as i32 => {
                        let h = m.histogram.as_ref().expect("no error, so a histogram");
                        let inf = h
                            .bucket
                            .iter()
                            .any(|b| b.upper_bound == Some(f64::INFINITY));
                        h.bucket.len() as u64 + u64::from(!inf) + 2
                    }
                    _ => 1,
                };
            }
        }
        assert_eq!(r.samples, want);
    }
    let _ = agg.flush();
});
