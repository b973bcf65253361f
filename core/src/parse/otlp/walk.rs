//! The borrowed walk: the Sum and Gauge metrics of an `ExportMetricsServiceRequest`
//! read straight from its bytes, attribute keys and string values borrowed from the
//! body, no `String` or `Vec` per data point; every other metric decoded by prost on
//! its own.
//!
//! Owns: reading the fields of the request, its resources, scopes, Sum and Gauge
//! metrics, number data points, exemplars and attributes (field numbers from
//! `opentelemetry/proto/{collector/metrics,metrics,common,resource}/v1/*.proto`) with
//! the primitives of [`crate::parse::wire`]. Must never: apply anything from a body
//! before all of it was read and found valid ([`Walk::read`] then [`Walk::apply`]),
//! accept a body prost's decoder would refuse, or read a field other than prost
//! would. A `Metric` it does not take on is decoded by prost alone, wrapped in a
//! `ScopeMetrics` and a `ResourceMetrics` of its own so that prost sees it exactly as
//! deep as in the request ([`decode_metric`]), and applied by the mapping's
//! `apply_metric` in its place; anything else it does not take on, or a metric prost
//! refuses, it declines whole, and [`super::apply_export_protobuf`] decodes the whole
//! body with prost. Elements of a repeated message field decode independently of
//! their siblings, so both paths give the same series, samples and report by
//! construction, and the property tests `walk_vs_prost` (parent module) and the
//! `otlp` fuzz target check it. Left to prost:
//! - per metric: a Histogram, ExponentialHistogram or Summary; a second data field
//!   (prost merges or replaces); an array or key-value list as the value of a data
//!   point attribute; any metric the walk cannot read (prost then says whether the
//!   request decodes);
//! - whole: a second `resource` in a `ResourceMetrics` (prost merges the two); an
//!   array or key-value list as the value of the resource attributes
//!   `service.name`, `service.namespace` or `service.instance.id` (elsewhere they are
//!   checked and ignored, as in the mapping); a second `value` in a `KeyValue` outside
//!   a metric; nesting deeper than [`MAX_NESTING`] (far below prost's recursion
//!   limit, so the walk never reaches it); any field in group encoding, and any byte
//!   prost would refuse.
//!
//! # Allocation
//! Four vectors per body (resources, metrics, points, attributes), grown as the body
//! is read; none per Sum or Gauge data point once the writer has cached its series.
//! A metric left to prost costs what prost's decode of it costs, plus one copy of its
//! bytes.

use std::ops::Range;

use weir_proto::Message as _;
use weir_proto::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use weir_proto::metrics::Metric;
use weir_proto::metrics_service::ExportMetricsServiceRequest;

use super::{
    Attribute, ExportReport, NumberKind, NumberPoint, OtlpRejection, PointScratch, Scalar, Target,
    apply_metric, resource_labels,
};
use crate::aggregator::Writer;
use crate::parse::statsd::sanitize_metric_name;
use crate::parse::wire::{
    Decline, Step, delimited, double, fields, fixed64, sixty_four, string, varint,
};

/// Deepest nesting of arrays and key-value lists the walk reads (each level is two
/// or three messages deep; prost refuses past 100 messages).
const MAX_NESTING: u32 = 16;

/// The resource attributes that become labels (see the parent module).
const LABEL_KEYS: [&str; 3] = ["service.name", "service.namespace", "service.instance.id"];

/// An attribute as read: its key and, when it has a value field, the value.
#[derive(Debug, Clone, Copy)]
struct WalkedAttr<'b> {
    key: &'b str,
    value: Option<Scalar<'b>>,
}

impl Attribute for WalkedAttr<'_> {
    fn key(&self) -> &str {
        self.key
    }
    fn string(&self) -> Option<&str> {
        match self.value? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
    fn has_value(&self) -> bool {
        self.value.is_some()
    }
    fn text(&self, out: &mut String) {
        if let Some(v) = self.value {
            v.text(out);
        }
    }
}

/// An `AnyValue` as read: a scalar, or an array or key-value list (checked, not kept).
#[derive(Clone, Copy)]
enum Value<'b> {
    Scalar(Scalar<'b>),
    Nested,
}

/// One `ResourceMetrics`.
struct WalkedResource {
    /// Its resource's attributes that may become labels, in [`Walk::attrs`].
    attrs: Range<usize>,
    /// Its metrics (over all its scopes, in order), in [`Walk::metrics`].
    metrics: Range<usize>,
}

/// One `Metric`.
struct WalkedMetric<'b> {
    name: &'b str,
    data: MetricData,
    /// Its data points, in [`Walk::points`] (none for a decoded metric).
    points: Range<usize>,
}

/// What a `Metric` holds.
#[derive(Clone, Copy)]
enum MetricData {
    /// No data field (or one of a kind this version does not know).
    Missing,
    /// A Sum or Gauge, walked.
    Number(NumberKind),
    /// Left to prost: the metric at this index of [`Walk::decoded`].
    Decoded(usize),
}

/// One `NumberDataPoint`.
struct WalkedPoint {
    /// Its attributes, in [`Walk::attrs`].
    attrs: Range<usize>,
    flags: u32,
    /// `(start_time_unix_nano, time_unix_nano)`.
    times: (u64, u64),
    value: Option<f64>,
}

/// A request as read by [`Walk::read`], everything borrowed from its body (`'b`).
#[derive(Default)]
pub(super) struct Walk<'b> {
    resources: Vec<WalkedResource>,
    metrics: Vec<WalkedMetric<'b>>,
    points: Vec<WalkedPoint>,
    attrs: Vec<WalkedAttr<'b>>,
    /// The metrics left to prost, decoded.
    decoded: Vec<Metric>,
}

/// A `Metric` message decoded by prost as it would be inside a request (as an element
/// of `ScopeMetrics.metrics` inside `ResourceMetrics.scope_metrics` inside the
/// request's `resource_metrics`), so that prost's recursion limit counts the same
/// depth; [`Decline`] when prost refuses it.
fn decode_metric(bytes: &[u8]) -> Step<Metric> {
    let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let scope = field_len(bytes.len());
    let resource = field_len(scope);
    let mut wrapped = Vec::with_capacity(field_len(resource));
    for (tag, len) in [(1, resource), (2, scope), (2, bytes.len())] {
        encode_key(tag, WireType::LengthDelimited, &mut wrapped);
        encode_varint(len as u64, &mut wrapped);
    }
    wrapped.extend_from_slice(bytes);
    let request = ExportMetricsServiceRequest::decode(&wrapped[..]).map_err(|_| Decline)?;
    request
        .resource_metrics
        .into_iter()
        .flat_map(|rm| rm.scope_metrics)
        .flat_map(|sm| sm.metrics)
        .next()
        .ok_or(Decline)
}

/// An `AnyValue`, `depth` arrays or lists deep. The last of its fields wins, as
/// prost's oneof reads it; an array or list is checked whole.
fn any_value(bytes: &[u8], depth: u32) -> Step<Value<'_>> {
    let mut v = Value::Scalar(Scalar::Empty);
    fields(bytes, |tag, wt, buf| {
        v = match tag {
            1 => Value::Scalar(Scalar::Str(string(wt, buf)?)),
            2 => Value::Scalar(Scalar::Bool(varint(wt, buf)? != 0)),
            3 => Value::Scalar(Scalar::Int(varint(wt, buf)? as i64)),
            4 => Value::Scalar(Scalar::Double(double(wt, buf)?)),
            5 => {
                nested(delimited(wt, buf)?, depth + 1, |item, depth| {
                    any_value(item, depth).map(drop)
                })?;
                Value::Nested
            }
            6 => {
                nested(delimited(wt, buf)?, depth + 1, |item, depth| {
                    key_value(item, depth).map(drop)
                })?;
                Value::Nested
            }
            7 => Value::Scalar(Scalar::Bytes(delimited(wt, buf)?)),
            // A profiles string table index (int32): no text.
            8 => {
                varint(wt, buf)?;
                Value::Scalar(Scalar::Empty)
            }
            _ => return Ok(false),
        };
        Ok(true)
    })?;
    Ok(v)
}

/// An `ArrayValue` or `KeyValueList`: every item of its field 1 read by `item`.
fn nested<'b>(bytes: &'b [u8], depth: u32, item: fn(&'b [u8], u32) -> Step<()>) -> Step<()> {
    if depth > MAX_NESTING {
        return Err(Decline);
    }
    fields(bytes, |tag, wt, buf| {
        if tag != 1 {
            return Ok(false);
        }
        item(delimited(wt, buf)?, depth)?;
        Ok(true)
    })
}

/// A `KeyValue`: its key and value (`None` without a value field). A second value
/// field is declined (prost merges the two).
fn key_value(bytes: &[u8], depth: u32) -> Step<(&str, Option<Value<'_>>)> {
    let (mut key, mut value) = ("", None);
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 => key = string(wt, buf)?,
            2 if value.is_some() => return Err(Decline),
            2 => value = Some(any_value(delimited(wt, buf)?, depth)?),
            // key_strindex (int32).
            3 => {
                varint(wt, buf)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((key, value))
}

/// A `KeyValue` that is checked and ignored (scope attributes, metric metadata,
/// exemplar attributes).
fn ignored_key_value(wt: WireType, buf: &mut &[u8]) -> Step<()> {
    key_value(delimited(wt, buf)?, 0).map(drop)
}

/// An `InstrumentationScope`, checked and ignored.
fn scope(bytes: &[u8]) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 | 2 => {
                string(wt, buf)?;
            }
            3 => ignored_key_value(wt, buf)?,
            4 => {
                varint(wt, buf)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// An `EntityRef` of a resource, checked and ignored.
fn entity_ref(bytes: &[u8]) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        if !(1..=4).contains(&tag) {
            return Ok(false);
        }
        string(wt, buf)?;
        Ok(true)
    })
}

/// An `Exemplar`, checked and ignored.
fn exemplar(bytes: &[u8]) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        match tag {
            7 => ignored_key_value(wt, buf)?,
            2 | 3 | 6 => {
                sixty_four(wt, buf)?;
            }
            4 | 5 => {
                delimited(wt, buf)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

impl<'b> Walk<'b> {
    /// Reads a whole request into `self`; [`Decline`] leaves it for prost.
    pub(super) fn read(&mut self, body: &'b [u8]) -> Step<()> {
        fields(body, |tag, wt, buf| {
            if tag != 1 {
                return Ok(false);
            }
            self.resource_metrics(delimited(wt, buf)?)?;
            Ok(true)
        })
    }

    fn resource_metrics(&mut self, bytes: &'b [u8]) -> Step<()> {
        let metrics = self.metrics.len();
        let mut attrs = None;
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 if attrs.is_some() => return Err(Decline),
                1 => {
                    let start = self.attrs.len();
                    self.resource(delimited(wt, buf)?)?;
                    attrs = Some(start..self.attrs.len());
                }
                2 => self.scope_metrics(delimited(wt, buf)?)?,
                3 => {
                    string(wt, buf)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        self.resources.push(WalkedResource {
            attrs: attrs.unwrap_or(0..0),
            metrics: metrics..self.metrics.len(),
        });
        Ok(())
    }

    /// A `Resource`: the attributes that may become labels kept (an array or list
    /// under another key is never looked at, so not kept).
    fn resource(&mut self, bytes: &'b [u8]) -> Step<()> {
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 => match key_value(delimited(wt, buf)?, 0)? {
                    (key, Some(Value::Nested)) if LABEL_KEYS.contains(&key) => {
                        return Err(Decline);
                    }
                    (_, Some(Value::Nested)) => {}
                    (key, value) => self.attrs.push(WalkedAttr {
                        key,
                        value: value.map(scalar),
                    }),
                },
                2 => {
                    varint(wt, buf)?;
                }
                3 => entity_ref(delimited(wt, buf)?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn scope_metrics(&mut self, bytes: &'b [u8]) -> Step<()> {
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 => scope(delimited(wt, buf)?)?,
                2 => self.metric(delimited(wt, buf)?)?,
                3 => {
                    string(wt, buf)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// A `Metric`: walked when it is a Sum or Gauge the walk reads, else decoded by
    /// prost alone (declined when prost refuses it).
    fn metric(&mut self, bytes: &'b [u8]) -> Step<()> {
        let (points, attrs) = (self.points.len(), self.attrs.len());
        let metric = match self.number_metric(bytes) {
            Ok((name, data)) => WalkedMetric {
                name,
                data,
                points: points..self.points.len(),
            },
            Err(Decline) => {
                self.points.truncate(points);
                self.attrs.truncate(attrs);
                self.decoded.push(decode_metric(bytes)?);
                WalkedMetric {
                    name: "",
                    data: MetricData::Decoded(self.decoded.len() - 1),
                    points: points..points,
                }
            }
        };
        self.metrics.push(metric);
        Ok(())
    }

    /// A Sum, Gauge or data-less `Metric`: its name and data, its points in `self`.
    fn number_metric(&mut self, bytes: &'b [u8]) -> Step<(&'b str, MetricData)> {
        let (mut name, mut kind) = ("", None);
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 => name = string(wt, buf)?,
                2 | 3 => {
                    string(wt, buf)?;
                }
                12 => ignored_key_value(wt, buf)?,
                // A second data field: prost merges or replaces; left to it.
                5 | 7 if kind.is_some() => return Err(Decline),
                5 => {
                    self.gauge(delimited(wt, buf)?)?;
                    kind = Some(NumberKind::Gauge);
                }
                7 => kind = Some(self.sum(delimited(wt, buf)?)?),
                // Histogram, ExponentialHistogram, Summary: prost's path.
                9..=11 => return Err(Decline),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((name, kind.map_or(MetricData::Missing, MetricData::Number)))
    }

    fn gauge(&mut self, bytes: &'b [u8]) -> Step<()> {
        fields(bytes, |tag, wt, buf| {
            if tag != 1 {
                return Ok(false);
            }
            self.number_point(delimited(wt, buf)?)?;
            Ok(true)
        })
    }

    fn sum(&mut self, bytes: &'b [u8]) -> Step<NumberKind> {
        let (mut temporality, mut monotonic) = (0, false);
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 => self.number_point(delimited(wt, buf)?)?,
                // An enum reads as the varint's low 32 bits, as prost reads it.
                2 => temporality = varint(wt, buf)? as i32,
                3 => monotonic = varint(wt, buf)? != 0,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(NumberKind::Sum {
            temporality,
            monotonic,
        })
    }

    fn number_point(&mut self, bytes: &'b [u8]) -> Step<()> {
        let start = self.attrs.len();
        let mut p = WalkedPoint {
            attrs: start..start,
            flags: 0,
            times: (0, 0),
            value: None,
        };
        let attrs = &mut self.attrs;
        fields(bytes, |tag, wt, buf| {
            match tag {
                7 => match key_value(delimited(wt, buf)?, 0)? {
                    (_, Some(Value::Nested)) => return Err(Decline),
                    (key, value) => attrs.push(WalkedAttr {
                        key,
                        value: value.map(scalar),
                    }),
                },
                2 => p.times.0 = fixed64(wt, buf)?,
                3 => p.times.1 = fixed64(wt, buf)?,
                // The value oneof: the last of as_double and as_int wins.
                4 => p.value = Some(double(wt, buf)?),
                6 => p.value = Some(i64::from_le_bytes(sixty_four(wt, buf)?) as f64),
                5 => exemplar(delimited(wt, buf)?)?,
                // uint32: the varint's low 32 bits, as prost reads it.
                8 => p.flags = varint(wt, buf)? as u32,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        p.attrs.end = self.attrs.len();
        self.points.push(p);
        Ok(())
    }

    /// Applies what [`Walk::read`] read, as [`super::apply_export`] applies the
    /// decoded request.
    pub(super) fn apply(&self, writer: &mut Writer) -> ExportReport {
        let mut report = ExportReport::default();
        let mut name = String::new();
        let mut scratch = PointScratch::default();
        for rm in &self.resources {
            let base = resource_labels(&self.attrs[rm.attrs.clone()]);
            scratch.set_base(&base);
            for m in &self.metrics[rm.metrics.clone()] {
                let kind = match m.data {
                    MetricData::Decoded(i) => {
                        let Some(decoded) = self.decoded.get(i) else {
                            continue;
                        };
                        sanitize_metric_name(&decoded.name, &mut name);
                        let (w, s, r) = (&mut *writer, &mut scratch, &mut report);
                        apply_metric(decoded, &name, &base, w, s, r);
                        continue;
                    }
                    MetricData::Missing => None,
                    MetricData::Number(kind) => Some(kind),
                };
                sanitize_metric_name(m.name, &mut name);
                let mut to = Target {
                    writer: &mut *writer,
                    name: &name,
                    base: &base,
                    scratch: &mut scratch,
                    report: &mut report,
                };
                let Some(kind) = kind else {
                    to.reject_metric(OtlpRejection::MissingData, 1);
                    continue;
                };
                let points = self.points[m.points.clone()].iter().map(|p| NumberPoint {
                    attrs: &self.attrs[p.attrs.clone()],
                    flags: p.flags,
                    times: p.times,
                    value: p.value,
                });
                to.number_metric(kind, points);
            }
        }
        report
    }
}

/// The scalar of a value known not to be nested.
fn scalar(v: Value<'_>) -> Scalar<'_> {
    match v {
        Value::Scalar(s) => s,
        Value::Nested => Scalar::Empty,
    }
}
