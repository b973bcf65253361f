//! weir-proto: the protobuf types weir speaks.
//!
//! OTLP metrics come from the `opentelemetry-proto` crate (kept by the OpenTelemetry
//! project, generated from the official .proto files, on the same prost/tonic
//! versions as weir), re-exported here under short names so the rest of weir does not
//! depend on its module layout. The `grpc` feature adds the tonic service.
//!
//! Prometheus remote write 1.0 ([`prometheus`]) is declared here by hand with prost's
//! derive: four small messages, no `protoc`. So is the protobuf exposition format the
//! scraper reads ([`client_model`], `io.prometheus.client`).
#![forbid(unsafe_code)]

pub use prost::{DecodeError, Message};

/// prost's wire-format primitives (`decode_key`, `decode_varint`, `skip_field`,
/// `WireType`), for decoders that walk a message's bytes without building it (the
/// protobuf exposition parser of weir-core), so that they read keys, varints and
/// unknown fields exactly as the derived decoders do.
pub use prost::encoding;

pub mod client_model;
pub mod prometheus;

/// OTLP metrics data model (`opentelemetry.proto.metrics.v1`).
pub use opentelemetry_proto::tonic::metrics::v1 as metrics;

/// OTLP common types (`opentelemetry.proto.common.v1`): attributes and values.
pub use opentelemetry_proto::tonic::common::v1 as common;

/// OTLP resource (`opentelemetry.proto.resource.v1`).
pub use opentelemetry_proto::tonic::resource::v1 as resource;

/// The metrics collector service (`opentelemetry.proto.collector.metrics.v1`):
/// `ExportMetricsServiceRequest` and its response, plus the tonic server and client
/// with the `grpc` feature.
pub use opentelemetry_proto::tonic::collector::metrics::v1 as metrics_service;
