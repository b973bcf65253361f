//! OTLP/JSON: an `ExportMetricsServiceRequest` from the JSON encoding OTLP/HTTP
//! senders use (`Content-Type: application/json`), shared by the daemon and the
//! bindings.
//!
//! Owns: the mapping of the JSON document onto the protobuf types, following the
//! proto3 JSON mapping with OTLP's own rules. Must never: panic on any body, or accept
//! a document whose values do not have the types the schema gives them (that is an
//! error naming the field, and the request is refused whole, as a protobuf body that
//! does not decode is).
//!
//! # What is accepted
//! The proto3 JSON mapping lets writers choose among several spellings; every one is
//! read, since the OpenTelemetry SDKs and protobuf's own JSON printers differ:
//! - field names in lowerCamelCase (`timeUnixNano`) or as in the `.proto` file
//!   (`time_unix_nano`); `null` is the field's default;
//! - enums (`aggregationTemporality`) as their number or their name
//!   (`"AGGREGATION_TEMPORALITY_CUMULATIVE"`); an unknown name reads as
//!   `UNSPECIFIED`, which [`super::apply_export`] refuses as `invalid_temporality`,
//!   like an unknown number;
//! - 64-bit integers (timestamps, `asInt`, `count`, `bucketCounts`, `zeroCount`) as
//!   strings (`"5"`) or numbers (`5`, or `5.0`/`5e0`: a float with no fraction that
//!   the type can hold); 32-bit integers likewise;
//! - doubles as numbers or strings, including `"NaN"`, `"Infinity"` and `"-Infinity"`;
//! - `bytesValue` attribute values as base64 (standard or URL-safe alphabet, padding
//!   optional).
//!
//! Unknown fields are ignored, as OTLP requires of receivers. Exemplars, metric
//! `metadata` and resource entity references are not read: weir does not use them.

use serde_json::{Map, Value};
use weir_proto::common::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use weir_proto::metrics::exponential_histogram_data_point::Buckets;
use weir_proto::metrics::summary_data_point::ValueAtQuantile;
use weir_proto::metrics::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, metric::Data, number_data_point,
};
use weir_proto::metrics_service::ExportMetricsServiceRequest;
use weir_proto::resource::Resource;

/// Why an OTLP/JSON body was refused.
#[derive(Debug, thiserror::Error)]
pub enum OtlpJsonError {
    /// The body is not a JSON document (or nests deeper than 128 levels).
    #[error("not JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    /// A field holds a value of the wrong type, e.g. a string where a list belongs.
    #[error("{path}: expected {expected}")]
    Field {
        /// Where, e.g. `resourceMetrics[0].scopeMetrics[1].metrics[2].sum.dataPoints[0].asInt`.
        path: String,
        /// What the schema wants there.
        expected: &'static str,
    },
}

/// Decodes an OTLP/JSON export request (see the module doc for what is accepted).
///
/// ```
/// use weir_core::parse::otlp::decode_json;
/// let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"jobs",
///   "sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true,
///   "dataPoints":[{"asInt":"5","timeUnixNano":"1700000000000000000"}]}}]}]}]}"#;
/// let req = decode_json(body).unwrap();
/// let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
/// assert_eq!(m.name, "jobs");
/// assert!(decode_json(br#"{"resourceMetrics": 7}"#).is_err());
/// ```
///
/// # Errors
/// The body is not JSON, or a field holds a value of the wrong type.
pub fn decode_json(body: &[u8]) -> Result<ExportMetricsServiceRequest, OtlpJsonError> {
    let doc: Value = serde_json::from_slice(body).map_err(OtlpJsonError::Syntax)?;
    request(&doc).map_err(|e| OtlpJsonError::Field {
        path: e.path(),
        expected: e.expected,
    })
}

/// A type error, with the path to it gathered on the way out (innermost first).
struct Wrong {
    expected: &'static str,
    path: Vec<Segment>,
}

enum Segment {
    Field(&'static str),
    Index(usize),
}

impl Wrong {
    fn new(expected: &'static str) -> Wrong {
        Wrong {
            expected,
            path: Vec::new(),
        }
    }

    fn path(&self) -> String {
        let mut out = String::new();
        for s in self.path.iter().rev() {
            match s {
                Segment::Field(f) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(f);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            out.push_str("(document)");
        }
        out
    }
}

type R<T> = Result<T, Wrong>;

/// Adds a field name to an error's path.
fn at(field: &'static str) -> impl FnOnce(Wrong) -> Wrong {
    move |mut e| {
        e.path.push(Segment::Field(field));
        e
    }
}

fn object(v: &Value) -> R<&Map<String, Value>> {
    v.as_object().ok_or_else(|| Wrong::new("an object"))
}

/// A field by its lowerCamelCase or its `.proto` name; `null` reads as absent.
fn get<'a>(o: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

/// A field read by `read`, the type's default when absent; `path` names it in errors.
fn field<T: Default>(
    o: &Map<String, Value>,
    camel: &'static str,
    snake: &'static str,
    read: impl FnOnce(&Value) -> R<T>,
) -> R<T> {
    get(o, camel, snake).map_or(Ok(T::default()), |v| read(v).map_err(at(camel)))
}

/// An optional field (`optional double`, a message).
fn opt<T>(
    o: &Map<String, Value>,
    camel: &'static str,
    snake: &'static str,
    read: impl FnOnce(&Value) -> R<T>,
) -> R<Option<T>> {
    get(o, camel, snake)
        .map(|v| read(v).map_err(at(camel)))
        .transpose()
}

fn list<T>(v: &Value, mut read: impl FnMut(&Value) -> R<T>) -> R<Vec<T>> {
    let items = v.as_array().ok_or_else(|| Wrong::new("a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            read(item).map_err(|mut e| {
                e.path.push(Segment::Index(i));
                e
            })
        })
        .collect()
}

fn string(v: &Value) -> R<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| Wrong::new("a string"))
}

fn boolean(v: &Value) -> R<bool> {
    v.as_bool().ok_or_else(|| Wrong::new("true or false"))
}

/// A whole number as a number or a decimal string, within `lo..hi` (as f64 bounds
/// for the float spellings: `hi` is exclusive and a power of two, so exact).
fn whole(v: &Value, lo: f64, hi: f64) -> Option<WholeNumber> {
    let float = |f: f64| (f.fract() == 0.0 && f >= lo && f < hi).then_some(f);
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(WholeNumber::Unsigned(u))
            } else if let Some(i) = n.as_i64() {
                Some(WholeNumber::Signed(i))
            } else {
                float(n.as_f64()?).map(WholeNumber::Float)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                Some(WholeNumber::Unsigned(u))
            } else if let Ok(i) = s.parse::<i64>() {
                Some(WholeNumber::Signed(i))
            } else {
                // Exponent forms ("1e3"); never "NaN" or "Infinity" (not whole).
                float(s.parse::<f64>().ok()?).map(WholeNumber::Float)
            }
        }
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum WholeNumber {
    Unsigned(u64),
    Signed(i64),
    /// Integral and within the bounds asked for.
    Float(f64),
}

const TWO_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

fn uint64(v: &Value) -> R<u64> {
    let expected = || Wrong::new("an unsigned 64-bit integer (number or string)");
    match whole(v, 0.0, TWO_64).ok_or_else(expected)? {
        WholeNumber::Unsigned(u) => Ok(u),
        WholeNumber::Signed(i) => u64::try_from(i).map_err(|_| expected()),
        WholeNumber::Float(f) => Ok(f as u64),
    }
}

fn int64(v: &Value) -> R<i64> {
    let expected = || Wrong::new("a 64-bit integer (number or string)");
    match whole(v, -TWO_63, TWO_63).ok_or_else(expected)? {
        WholeNumber::Unsigned(u) => i64::try_from(u).map_err(|_| expected()),
        WholeNumber::Signed(i) => Ok(i),
        WholeNumber::Float(f) => Ok(f as i64),
    }
}

fn uint32(v: &Value) -> R<u32> {
    u32::try_from(uint64(v)?).map_err(|_| Wrong::new("an unsigned 32-bit integer"))
}

fn int32(v: &Value) -> R<i32> {
    i32::try_from(int64(v)?).map_err(|_| Wrong::new("a 32-bit integer"))
}

fn double(v: &Value) -> R<f64> {
    let expected = || Wrong::new("a number, \"NaN\", \"Infinity\" or \"-Infinity\"");
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(expected),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s.trim().parse::<f64>().map_err(|_| expected()),
        },
        _ => Err(expected()),
    }
}

/// `aggregationTemporality`: the number, or the enum value's name.
fn temporality(v: &Value) -> R<i32> {
    if let Some(name) = v.as_str() {
        if let Some(t) = AggregationTemporality::from_str_name(name) {
            return Ok(t as i32);
        }
        // A number in a string is still a number; an unknown name is UNSPECIFIED.
        return Ok(name.trim().parse::<i32>().unwrap_or(0));
    }
    int32(v).map_err(|_| Wrong::new("an AggregationTemporality name or number"))
}

/// Standard or URL-safe base64, padding optional.
fn base64(v: &Value) -> R<Vec<u8>> {
    let expected = || Wrong::new("base64 text");
    let s = v.as_str().ok_or_else(expected)?;
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let six = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(expected()),
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn request(doc: &Value) -> R<ExportMetricsServiceRequest> {
    let o = object(doc)?;
    Ok(ExportMetricsServiceRequest {
        resource_metrics: field(o, "resourceMetrics", "resource_metrics", |v| {
            list(v, resource_metrics)
        })?,
    })
}

fn resource_metrics(v: &Value) -> R<ResourceMetrics> {
    let o = object(v)?;
    Ok(ResourceMetrics {
        resource: opt(o, "resource", "resource", resource)?,
        scope_metrics: field(o, "scopeMetrics", "scope_metrics", |v| {
            list(v, scope_metrics)
        })?,
        schema_url: field(o, "schemaUrl", "schema_url", string)?,
    })
}

fn resource(v: &Value) -> R<Resource> {
    let o = object(v)?;
    Ok(Resource {
        attributes: field(o, "attributes", "attributes", attributes)?,
        dropped_attributes_count: field(
            o,
            "droppedAttributesCount",
            "dropped_attributes_count",
            uint32,
        )?,
        ..Default::default()
    })
}

fn scope_metrics(v: &Value) -> R<ScopeMetrics> {
    let o = object(v)?;
    Ok(ScopeMetrics {
        scope: opt(o, "scope", "scope", scope)?,
        metrics: field(o, "metrics", "metrics", |v| list(v, metric))?,
        schema_url: field(o, "schemaUrl", "schema_url", string)?,
    })
}

fn scope(v: &Value) -> R<InstrumentationScope> {
    let o = object(v)?;
    Ok(InstrumentationScope {
        name: field(o, "name", "name", string)?,
        version: field(o, "version", "version", string)?,
        attributes: field(o, "attributes", "attributes", attributes)?,
        dropped_attributes_count: field(
            o,
            "droppedAttributesCount",
            "dropped_attributes_count",
            uint32,
        )?,
    })
}

fn attributes(v: &Value) -> R<Vec<KeyValue>> {
    list(v, key_value)
}

fn key_value(v: &Value) -> R<KeyValue> {
    let o = object(v)?;
    Ok(KeyValue {
        key: field(o, "key", "key", string)?,
        value: opt(o, "value", "value", any_value)?,
        ..Default::default()
    })
}

fn any_value(v: &Value) -> R<AnyValue> {
    use any_value::Value as V;
    let o = object(v)?;
    let value = if let Some(s) = opt(o, "stringValue", "string_value", string)? {
        Some(V::StringValue(s))
    } else if let Some(b) = opt(o, "boolValue", "bool_value", boolean)? {
        Some(V::BoolValue(b))
    } else if let Some(i) = opt(o, "intValue", "int_value", int64)? {
        Some(V::IntValue(i))
    } else if let Some(d) = opt(o, "doubleValue", "double_value", double)? {
        Some(V::DoubleValue(d))
    } else if let Some(a) = opt(o, "arrayValue", "array_value", |v| {
        let o = object(v)?;
        Ok(ArrayValue {
            values: field(o, "values", "values", |v| list(v, any_value))?,
        })
    })? {
        Some(V::ArrayValue(a))
    } else if let Some(kv) = opt(o, "kvlistValue", "kvlist_value", |v| {
        let o = object(v)?;
        Ok(KeyValueList {
            values: field(o, "values", "values", attributes)?,
        })
    })? {
        Some(V::KvlistValue(kv))
    } else {
        opt(o, "bytesValue", "bytes_value", base64)?.map(V::BytesValue)
    };
    Ok(AnyValue { value })
}

fn metric(v: &Value) -> R<Metric> {
    let o = object(v)?;
    let data = if let Some(g) = opt(o, "gauge", "gauge", gauge)? {
        Some(Data::Gauge(g))
    } else if let Some(s) = opt(o, "sum", "sum", sum)? {
        Some(Data::Sum(s))
    } else if let Some(h) = opt(o, "histogram", "histogram", histogram)? {
        Some(Data::Histogram(h))
    } else if let Some(e) = opt(
        o,
        "exponentialHistogram",
        "exponential_histogram",
        exponential_histogram,
    )? {
        Some(Data::ExponentialHistogram(e))
    } else {
        opt(o, "summary", "summary", summary)?.map(Data::Summary)
    };
    Ok(Metric {
        name: field(o, "name", "name", string)?,
        description: field(o, "description", "description", string)?,
        unit: field(o, "unit", "unit", string)?,
        data,
        ..Default::default()
    })
}

fn gauge(v: &Value) -> R<Gauge> {
    let o = object(v)?;
    Ok(Gauge {
        data_points: field(o, "dataPoints", "data_points", |v| list(v, number_point))?,
    })
}

fn sum(v: &Value) -> R<Sum> {
    let o = object(v)?;
    Ok(Sum {
        data_points: field(o, "dataPoints", "data_points", |v| list(v, number_point))?,
        aggregation_temporality: field(
            o,
            "aggregationTemporality",
            "aggregation_temporality",
            temporality,
        )?,
        is_monotonic: field(o, "isMonotonic", "is_monotonic", boolean)?,
    })
}

fn histogram(v: &Value) -> R<Histogram> {
    let o = object(v)?;
    Ok(Histogram {
        data_points: field(o, "dataPoints", "data_points", |v| list(v, histogram_point))?,
        aggregation_temporality: field(
            o,
            "aggregationTemporality",
            "aggregation_temporality",
            temporality,
        )?,
    })
}

fn exponential_histogram(v: &Value) -> R<ExponentialHistogram> {
    let o = object(v)?;
    Ok(ExponentialHistogram {
        data_points: field(o, "dataPoints", "data_points", |v| {
            list(v, exponential_point)
        })?,
        aggregation_temporality: field(
            o,
            "aggregationTemporality",
            "aggregation_temporality",
            temporality,
        )?,
    })
}

fn summary(v: &Value) -> R<Summary> {
    let o = object(v)?;
    Ok(Summary {
        data_points: field(o, "dataPoints", "data_points", |v| list(v, summary_point))?,
    })
}

/// The fields every kind of data point has.
struct Common {
    attributes: Vec<KeyValue>,
    start_time_unix_nano: u64,
    time_unix_nano: u64,
    flags: u32,
}

fn common(o: &Map<String, Value>) -> R<Common> {
    Ok(Common {
        attributes: field(o, "attributes", "attributes", attributes)?,
        start_time_unix_nano: field(o, "startTimeUnixNano", "start_time_unix_nano", uint64)?,
        time_unix_nano: field(o, "timeUnixNano", "time_unix_nano", uint64)?,
        flags: field(o, "flags", "flags", uint32)?,
    })
}

fn number_point(v: &Value) -> R<NumberDataPoint> {
    let o = object(v)?;
    let c = common(o)?;
    let value = if let Some(d) = opt(o, "asDouble", "as_double", double)? {
        Some(number_data_point::Value::AsDouble(d))
    } else {
        opt(o, "asInt", "as_int", int64)?.map(number_data_point::Value::AsInt)
    };
    Ok(NumberDataPoint {
        attributes: c.attributes,
        start_time_unix_nano: c.start_time_unix_nano,
        time_unix_nano: c.time_unix_nano,
        flags: c.flags,
        value,
        ..Default::default()
    })
}

fn histogram_point(v: &Value) -> R<HistogramDataPoint> {
    let o = object(v)?;
    let c = common(o)?;
    Ok(HistogramDataPoint {
        attributes: c.attributes,
        start_time_unix_nano: c.start_time_unix_nano,
        time_unix_nano: c.time_unix_nano,
        flags: c.flags,
        count: field(o, "count", "count", uint64)?,
        sum: opt(o, "sum", "sum", double)?,
        bucket_counts: field(o, "bucketCounts", "bucket_counts", |v| list(v, uint64))?,
        explicit_bounds: field(o, "explicitBounds", "explicit_bounds", |v| list(v, double))?,
        min: opt(o, "min", "min", double)?,
        max: opt(o, "max", "max", double)?,
        ..Default::default()
    })
}

fn buckets(v: &Value) -> R<Buckets> {
    let o = object(v)?;
    Ok(Buckets {
        offset: field(o, "offset", "offset", int32)?,
        bucket_counts: field(o, "bucketCounts", "bucket_counts", |v| list(v, uint64))?,
    })
}

fn exponential_point(v: &Value) -> R<ExponentialHistogramDataPoint> {
    let o = object(v)?;
    let c = common(o)?;
    Ok(ExponentialHistogramDataPoint {
        attributes: c.attributes,
        start_time_unix_nano: c.start_time_unix_nano,
        time_unix_nano: c.time_unix_nano,
        flags: c.flags,
        count: field(o, "count", "count", uint64)?,
        sum: opt(o, "sum", "sum", double)?,
        scale: field(o, "scale", "scale", int32)?,
        zero_count: field(o, "zeroCount", "zero_count", uint64)?,
        positive: opt(o, "positive", "positive", buckets)?,
        negative: opt(o, "negative", "negative", buckets)?,
        min: opt(o, "min", "min", double)?,
        max: opt(o, "max", "max", double)?,
        zero_threshold: field(o, "zeroThreshold", "zero_threshold", double)?,
        ..Default::default()
    })
}

fn summary_point(v: &Value) -> R<SummaryDataPoint> {
    let o = object(v)?;
    let c = common(o)?;
    Ok(SummaryDataPoint {
        attributes: c.attributes,
        start_time_unix_nano: c.start_time_unix_nano,
        time_unix_nano: c.time_unix_nano,
        flags: c.flags,
        count: field(o, "count", "count", uint64)?,
        sum: field(o, "sum", "sum", double)?,
        quantile_values: field(o, "quantileValues", "quantile_values", |v| {
            list(v, |v| {
                let o = object(v)?;
                Ok(ValueAtQuantile {
                    quantile: field(o, "quantile", "quantile", double)?,
                    value: field(o, "value", "value", double)?,
                })
            })
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregator::Aggregator;
    use crate::flush::FlushedValue;
    use crate::key::SeriesKey;
    use crate::parse::otlp::apply_export;

    /// As protobuf's JSON printers write it (Go `protojson`, Java `JsonFormat`, Python
    /// `json_format.MessageToJson`): lowerCamelCase, enum names, 64-bit integers as
    /// strings, non-finite doubles as strings.
    const PRINTER: &str = r#"{
      "resourceMetrics": [{
        "resource": {"attributes": [
          {"key": "service.name", "value": {"stringValue": "checkout"}},
          {"key": "host.cores", "value": {"intValue": "8"}}
        ]},
        "scopeMetrics": [{
          "scope": {"name": "io.opentelemetry.example", "version": "1.0"},
          "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
          "metrics": [
            {"name": "requests", "unit": "1", "sum": {
              "dataPoints": [{
                "attributes": [{"key": "route", "value": {"stringValue": "/a"}}],
                "startTimeUnixNano": "1699999990000000000",
                "timeUnixNano": "1700000000000000000",
                "asInt": "5"
              }],
              "aggregationTemporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
              "isMonotonic": true
            }},
            {"name": "temperature", "gauge": {"dataPoints": [
              {"timeUnixNano": "1700000000000000000", "asDouble": 21.5}
            ]}},
            {"name": "latency", "histogram": {
              "dataPoints": [{
                "timeUnixNano": "1700000000000000000",
                "count": "3", "sum": 0.6,
                "bucketCounts": ["1", "2", "0"],
                "explicitBounds": [0.1, 0.5],
                "min": 0.05, "max": "Infinity"
              }],
              "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA"
            }},
            {"name": "sizes", "exponentialHistogram": {
              "dataPoints": [{
                "timeUnixNano": "1700000000000000000",
                "count": "3", "sum": 7, "scale": 0, "zeroCount": "1",
                "positive": {"offset": 1, "bucketCounts": ["2"]},
                "exemplars": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "asDouble": 3}]
              }],
              "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA"
            }},
            {"name": "rpc", "summary": {"dataPoints": [{
              "timeUnixNano": "1700000000000000000", "count": "2", "sum": 3,
              "quantileValues": [{"quantile": 0.5, "value": 1}, {"quantile": 1, "value": 2}]
            }]}}
          ]
        }]
      }]
    }"#;

    /// The same request as Python's `MessageToJson(preserving_proto_field_name=True)`
    /// and the OpenTelemetry Collector write it: `.proto` field names, enums as
    /// numbers, 64-bit integers as numbers, plus fields weir does not know.
    const SNAKE: &str = r#"{
      "resource_metrics": [{
        "resource": {"attributes": [
          {"key": "service.name", "value": {"string_value": "checkout"}},
          {"key": "host.cores", "value": {"int_value": 8}}
        ], "dropped_attributes_count": 0, "some_future_field": {"x": [1, 2]}},
        "scope_metrics": [{
          "scope": {"name": "io.opentelemetry.example", "version": "1.0"},
          "schema_url": "https://opentelemetry.io/schemas/1.21.0",
          "metrics": [
            {"name": "requests", "unit": "1", "sum": {
              "data_points": [{
                "attributes": [{"key": "route", "value": {"string_value": "/a"}}],
                "start_time_unix_nano": 1699999990000000000,
                "time_unix_nano": 1700000000000000000,
                "as_int": 5
              }],
              "aggregation_temporality": 2,
              "is_monotonic": true
            }},
            {"name": "temperature", "gauge": {"data_points": [
              {"time_unix_nano": 1.7e18, "as_double": "21.5"}
            ]}},
            {"name": "latency", "histogram": {
              "data_points": [{
                "time_unix_nano": "1700000000000000000",
                "count": 3, "sum": 0.6,
                "bucket_counts": [1, 2, 0],
                "explicit_bounds": [0.1, 0.5],
                "min": 0.05, "max": "Infinity", "flags": 0
              }],
              "aggregation_temporality": 1
            }},
            {"name": "sizes", "exponential_histogram": {
              "data_points": [{
                "time_unix_nano": 1700000000000000000,
                "count": 3, "sum": 7, "scale": "0", "zero_count": 1,
                "positive": {"offset": 1, "bucket_counts": [2]},
                "negative": null
              }],
              "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"
            }},
            {"name": "rpc", "summary": {"data_points": [{
              "time_unix_nano": 1700000000000000000, "count": 2, "sum": 3,
              "quantile_values": [{"quantile": 0.5, "value": 1}, {"quantile": 1, "value": 2}]
            }]}}
          ]
        }]
      }]
    }"#;

    #[test]
    fn printer_and_snake_case_spellings_decode_to_one_request() {
        let printer = decode_json(PRINTER.as_bytes()).unwrap();
        let snake = decode_json(SNAKE.as_bytes()).unwrap();
        assert_eq!(printer, snake);
        let m = &printer.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Sum(s)) = &m[0].data else {
            panic!("{:?}", m[0])
        };
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(s.data_points[0].time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(5))
        );
        let Some(Data::Histogram(h)) = &m[2].data else {
            panic!("{:?}", m[2])
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![1, 2, 0]);
        assert_eq!(h.data_points[0].max, Some(f64::INFINITY));
    }

    #[test]
    fn enum_names_and_string_integers_are_recorded_not_dropped() {
        let req = decode_json(PRINTER.as_bytes()).unwrap();
        let agg = Aggregator::default();
        let mut w = agg.writer();
        let r = apply_export(&req, &mut w);
        assert_eq!((r.accepted, r.rejected), (5, 0), "{:?}", r.message());
        let b = agg.flush();
        let key = |name: &str, extra: &[(&str, &str)]| {
            let mut l = vec![("job", "checkout")];
            l.extend_from_slice(extra);
            SeriesKey::new(name, &l).unwrap()
        };
        let value = |k: SeriesKey| b.find(&k).next().map(|s| s.value.clone());
        // A first cumulative value is the series' baseline.
        assert!(matches!(
            value(key("requests", &[("route", "/a")])),
            Some(FlushedValue::Counter { total: 5.0, .. })
        ));
        assert!(matches!(
            value(key("temperature", &[])),
            Some(FlushedValue::Gauge { value: 21.5, .. })
        ));
        let Some(FlushedValue::Histogram { delta, .. }) = value(key("latency", &[])) else {
            panic!("latency missing")
        };
        assert_eq!((delta.counts.clone(), delta.count), (vec![1, 2, 0], 3));
        assert!(value(key("sizes", &[])).is_some());
        assert!(value(key("rpc", &[])).is_some());
    }

    /// Real exports of the OpenTelemetry Python SDK (see `testdata/generate.py`): the
    /// protobuf body and protobuf's JSON printer's two spellings of it.
    const SDK: [(&str, &[u8], &str, &str); 3] = [
        (
            "cumulative",
            include_bytes!("testdata/sdk-cumulative.pb"),
            include_str!("testdata/sdk-cumulative.json"),
            include_str!("testdata/sdk-cumulative-snake.json"),
        ),
        (
            "delta",
            include_bytes!("testdata/sdk-delta.pb"),
            include_str!("testdata/sdk-delta.json"),
            include_str!("testdata/sdk-delta-snake.json"),
        ),
        (
            "exponential",
            include_bytes!("testdata/sdk-exponential.pb"),
            include_str!("testdata/sdk-exponential.json"),
            include_str!("testdata/sdk-exponential-snake.json"),
        ),
    ];

    #[test]
    fn sdk_exports_as_json_decode_to_the_protobuf_request_and_every_point_is_taken() {
        use weir_proto::Message;
        for (name, pb, camel, snake) in SDK {
            let want = ExportMetricsServiceRequest::decode(pb).unwrap();
            assert_eq!(decode_json(camel.as_bytes()).unwrap(), want, "{name}");
            assert_eq!(decode_json(snake.as_bytes()).unwrap(), want, "{name}");
            let agg = Aggregator::default();
            let r = apply_export(&want, &mut agg.writer());
            assert_eq!(r.rejected, 0, "{name}: {:?}", r.message());
            assert_eq!(r.accepted, crate::parse::otlp::data_points(&want), "{name}");
            assert!(r.accepted >= 6, "{name}: {r:?}");
        }
    }

    #[test]
    fn every_attribute_value_kind_decodes() {
        let body = br#"{"resourceMetrics":[{"resource":{"attributes":[
          {"key":"s","value":{"stringValue":"x"}},
          {"key":"b","value":{"boolValue":true}},
          {"key":"i","value":{"intValue":"-4"}},
          {"key":"d","value":{"doubleValue":"NaN"}},
          {"key":"a","value":{"arrayValue":{"values":[{"intValue":1},{"stringValue":"y"}]}}},
          {"key":"k","value":{"kvlistValue":{"values":[{"key":"z","value":{"boolValue":false}}]}}},
          {"key":"y","value":{"bytesValue":"3q2+7w=="}},
          {"key":"u","value":{"bytesValue":"3q2-7w"}},
          {"key":"e","value":{}},
          {"key":"n"}
        ]}}]}"#;
        let req = decode_json(body).unwrap();
        let attrs = &req.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        use any_value::Value as V;
        let v = |i: usize| attrs[i].value.as_ref().and_then(|v| v.value.clone());
        assert_eq!(v(0), Some(V::StringValue("x".into())));
        assert_eq!(v(1), Some(V::BoolValue(true)));
        assert_eq!(v(2), Some(V::IntValue(-4)));
        assert!(matches!(v(3), Some(V::DoubleValue(d)) if d.is_nan()));
        let Some(V::ArrayValue(a)) = v(4) else {
            panic!()
        };
        assert_eq!(a.values.len(), 2);
        let Some(V::KvlistValue(kv)) = v(5) else {
            panic!()
        };
        assert_eq!(kv.values[0].key, "z");
        assert_eq!(v(6), Some(V::BytesValue(vec![0xde, 0xad, 0xbe, 0xef])));
        assert_eq!(v(7), Some(V::BytesValue(vec![0xde, 0xad, 0xbe, 0xef])));
        assert_eq!(v(8), None);
        assert!(attrs[9].value.is_none());
    }

    #[test]
    fn numbers_take_every_proto3_spelling_within_range() {
        let ok: &[(&str, u64)] = &[
            ("5", 5),
            ("\"5\"", 5),
            ("5.0", 5),
            ("\"5e2\"", 500),
            ("18446744073709551615", u64::MAX),
            ("\"18446744073709551615\"", u64::MAX),
        ];
        for (text, want) in ok {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(uint64(&v).ok(), Some(*want), "{text}");
        }
        for bad in [
            "-1",
            "5.5",
            "\"x\"",
            "true",
            "[]",
            "1.8446744073709552e19",
            "\"NaN\"",
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(uint64(&v).is_err(), "{bad}");
        }
        let v: Value = serde_json::from_str("\"-9223372036854775808\"").unwrap();
        assert_eq!(int64(&v).ok(), Some(i64::MIN));
        let v: Value = serde_json::from_str("9223372036854775808").unwrap();
        assert!(int64(&v).is_err());
        for (text, want) in [
            ("\"Infinity\"", f64::INFINITY),
            ("\"-Infinity\"", f64::NEG_INFINITY),
            ("1.5", 1.5),
            ("\"1.5\"", 1.5),
            ("-3", -3.0),
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(double(&v).ok(), Some(want), "{text}");
        }
        let v: Value = serde_json::from_str("\"NaN\"").unwrap();
        assert!(double(&v).is_ok_and(f64::is_nan));
    }

    #[test]
    fn unknown_temporality_names_and_numbers_are_refused_with_a_reason() {
        use crate::parse::otlp::OtlpRejection;
        let body = |t: &str| {
            format!(
                r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"c","sum":{{"aggregationTemporality":{t},"isMonotonic":true,"dataPoints":[{{"asInt":"1"}},{{"asInt":"2"}}]}}}}]}}]}}]}}"#
            )
        };
        for t in [
            "\"AGGREGATION_TEMPORALITY_SOMETIMES\"",
            "\"AGGREGATION_TEMPORALITY_UNSPECIFIED\"",
            "0",
            "7",
            "null",
        ] {
            let req = decode_json(body(t).as_bytes()).unwrap();
            let agg = Aggregator::default();
            let r = apply_export(&req, &mut agg.writer());
            assert_eq!((r.accepted, r.rejected), (0, 2), "{t}");
            assert_eq!(r.rejected_for(OtlpRejection::InvalidTemporality), 2, "{t}");
            assert!(
                r.message()
                    .is_some_and(|m| m.contains("invalid_temporality"))
            );
        }
    }

    #[test]
    fn wrong_types_are_refused_with_the_path_to_them() {
        let cases: &[(&str, &str)] = &[
            (r#"{"resourceMetrics": 7}"#, "resourceMetrics"),
            (r#"[1]"#, "(document)"),
            (
                r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[{"asInt":"five"}]}}]}]}]}"#,
                "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].asInt",
            ),
            (
                r#"{"resource_metrics":[{"scope_metrics":[{"metrics":[{"name":3}]}]}]}"#,
                "resourceMetrics[0].scopeMetrics[0].metrics[0].name",
            ),
            (
                r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"k","value":{"bytesValue":"*"}}]}}]}"#,
                "resourceMetrics[0].resource.attributes[0].value.bytesValue",
            ),
        ];
        for (body, path) in cases {
            match decode_json(body.as_bytes()) {
                Err(OtlpJsonError::Field { path: p, .. }) => assert_eq!(p, *path, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_json(b"{\"resourceMetrics\": [").unwrap_err(),
            OtlpJsonError::Syntax(_)
        ));
        // Nesting past serde_json's limit is an error, not a stack overflow.
        let deep = format!(
            "{{\"resourceMetrics\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"k\",\"value\":{}1{}}}]}}}}]}}",
            "{\"arrayValue\":{\"values\":[".repeat(200),
            "]}}".repeat(200)
        );
        assert!(decode_json(deep.as_bytes()).is_err());
        assert_eq!(
            decode_json(b"{}").unwrap(),
            ExportMetricsServiceRequest::default()
        );
    }
}
