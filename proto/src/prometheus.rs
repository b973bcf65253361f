//! Prometheus remote write 1.0 (`prometheus` package of prompb's `remote.proto` and
//! `types.proto`), written by hand with prost's derive (no `protoc` needed).
//!
//! Only the messages and fields a remote write 1.0 sender fills in are declared:
//! `WriteRequest.timeseries`, `TimeSeries.labels` / `samples`, `Label`, `Sample`.
//! Field numbers are those of the upstream files:
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; /* 3: metadata, unused */ }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
//!                        /* 3: exemplars, 4: native histograms, unused */ }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; /* ms since epoch */ }
//! ```
//!
//! Fields left out (metadata, exemplars, native histograms) are skipped by prost when
//! decoding a request that carries them, so these types also read what Prometheus
//! sends. weir-core's encoder writes the same wire format directly (without building
//! these structs, to avoid an allocation per label); its tests decode through these
//! types, which keeps the two in step.

/// A remote write request: the body of `POST /api/v1/write`, before snappy block
/// compression.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One series: its full label set (metric name as `__name__`) and samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Labels sorted by name (byte order), names unique, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples in increasing timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// One label of a series.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Label {
    /// Label name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Label value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// One sample of a series.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The bytes follow from the field numbers in the module doc, worked out by hand:
    /// key = (field << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
    #[test]
    fn field_numbers_give_the_spec_wire_bytes() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "a".into(),
                    value: "b".into(),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
            }],
        };
        let label = [0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
        let mut sample = vec![0x09];
        sample.extend_from_slice(&1.0f64.to_le_bytes());
        sample.extend_from_slice(&[0x10, 0x05]);
        let mut series = vec![0x0a, label.len() as u8];
        series.extend_from_slice(&label);
        series.extend_from_slice(&[0x12, sample.len() as u8]);
        series.extend_from_slice(&sample);
        let mut want = vec![0x0a, series.len() as u8];
        want.extend_from_slice(&series);
        assert_eq!(req.encode_to_vec(), want);
        assert_eq!(WriteRequest::decode(&want[..]).unwrap(), req);
    }
}
