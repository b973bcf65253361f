//! The OTLP mapping on arbitrary input (the CI stand-in for the `otlp` fuzz target,
//! with the same check, `weir_core::testing::fuzz::check_otlp`): arbitrary bytes as a
//! protobuf request, as an OTLP/JSON body and as the recipe of a structured request;
//! in every case each data point is accepted or rejected with a reason, exactly:
//! `accepted + rejected == data_points(request)`.

use proptest::prelude::*;
use weir_core::testing::fuzz::{check_otlp, check_otlp_request, otlp_request_from_bytes};

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_account_for_every_data_point(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Err(e) = check_otlp(&data) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn structured_requests_account_for_every_data_point(data in proptest::collection::vec(any::<u8>(), 1..256)) {
        let req = otlp_request_from_bytes(&data);
        let r = check_otlp_request(&req).map_err(TestCaseError::fail)?;
        prop_assert_eq!(r.accepted + r.rejected, weir_core::parse::otlp::data_points(&req));
    }
}
