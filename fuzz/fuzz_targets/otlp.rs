//! The OTLP decode path: arbitrary bytes as an `ExportMetricsServiceRequest`; what
//! decodes is applied without a panic and every point is accepted or counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::parse::otlp::apply_export;
use weir_core::{Aggregator, AggregatorConfig};
use weir_proto::Message;
use weir_proto::metrics_service::ExportMetricsServiceRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ExportMetricsServiceRequest::decode(data) else {
        return;
    };
    let agg = Aggregator::new(AggregatorConfig {
        max_series: 256,
        ..Default::default()
    });
    let mut w = agg.writer();
    let _ = apply_export(&req, &mut w);
    let _ = agg.flush();
});
