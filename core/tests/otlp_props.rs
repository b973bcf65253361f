//! The OTLP mapping on arbitrary protobuf bytes (the CI stand-in for the `otlp` fuzz
//! target): whatever decodes is applied without a panic, and every data point is
//! either accepted or counted as rejected.

use proptest::prelude::*;
use weir_core::parse::otlp::apply_export;
use weir_core::{Aggregator, AggregatorConfig};
use weir_proto::Message;
use weir_proto::metrics::metric::Data;
use weir_proto::metrics_service::ExportMetricsServiceRequest;

fn points(req: &ExportMetricsServiceRequest) -> u64 {
    let mut n = 0;
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                n += match &m.data {
                    Some(Data::Sum(s)) => s.data_points.iter().filter(|p| p.flags & 1 == 0).count(),
                    Some(Data::Gauge(g)) => {
                        g.data_points.iter().filter(|p| p.flags & 1 == 0).count()
                    }
                    Some(Data::Histogram(h)) => {
                        h.data_points.iter().filter(|p| p.flags & 1 == 0).count()
                    }
                    Some(Data::Summary(s)) => {
                        s.data_points.iter().filter(|p| p.flags & 1 == 0).count()
                    }
                    Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
                    None => 0,
                } as u64;
            }
        }
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let Ok(req) = ExportMetricsServiceRequest::decode(&data[..]) else { return Ok(()) };
        let agg = Aggregator::new(AggregatorConfig { max_series: 128, ..Default::default() });
        let mut w = agg.writer();
        let r = apply_export(&req, &mut w);
        prop_assert_eq!(r.accepted + r.rejected, points(&req));
        let _ = agg.flush();
    }
}
