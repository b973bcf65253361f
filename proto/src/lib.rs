//! weir-proto: generated protobuf types for OTLP, Prometheus remote write and the
//! protobuf exposition format.
//!
//! Status: empty. The receivers (issue 4) and pipelines (issue 5) add the types they
//! use; nothing here pretends to work before then.
#![forbid(unsafe_code)]
