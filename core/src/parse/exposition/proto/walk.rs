//! The borrowed walk: counter, gauge and untyped families read straight from a
//! `MetricFamily` message's bytes, each sample identified by its family name and the
//! raw bytes of its label fields (see [`EmitIdentified`]).
//!
//! Owns: reading the fields of those three kinds of family (the field numbers are in
//! [`weir_proto::client_model`]'s module doc) with the field primitives of
//! [`crate::parse::wire`], and the identity of their samples ([`PROTO_IDENT`]). Must never:
//! emit anything from a message before all of it was read and found valid, or accept
//! a message prost's decoder would refuse. Whatever it does not take on (a histogram
//! or summary family or field, a family without a name or of an unknown type, an
//! unknown field in group encoding, any byte prost would refuse) it declines, and the
//! caller decodes that message with prost as before; so both paths emit the same
//! samples with the same report by construction of the decline, and the property
//! test in the parent module checks it.
//!
//! # Allocation
//! None per sample once a body's first families have sized the reused vectors
//! ([`Walk`]); label names and values are borrowed from the body.

use std::ops::Range;

use weir_proto::client_model::MetricType;
use weir_proto::encoding::encode_varint;

use super::{EmitIdentified, ExpositionError, ParseReport, start_ms};
use crate::parse::wire::{Decline, Step, delimited, double, fields, string, varint};
use crate::point::{Sample, Temporality};

/// The first byte of a protobuf sample's identity: `0xFF` occurs in no UTF-8 text, so
/// no text identity (which starts with the sample's name) begins with it.
pub(super) const PROTO_IDENT: u8 = 0xFF;

/// A counter's fields as read so far: its value and its `created_timestamp` as
/// `(seconds, nanos)`, each `None` while absent. Occurrences of the field merge, as
/// prost merges them.
#[derive(Clone, Copy, Default)]
struct CounterFields {
    value: Option<f64>,
    created: Option<(i64, i32)>,
}

/// One `Metric` of the family being walked.
struct Series {
    /// Its labels, in [`Walk::labels`].
    labels: Range<usize>,
    /// Its label fields' payloads, each after its length, in [`Walk::ident`].
    ident: Range<usize>,
    /// A label pair without a name (or with an empty one): `malformed_labels`.
    bad_label: bool,
    counter: Option<CounterFields>,
    /// `Some` when the field is present; the inner value `None` when it holds none.
    gauge: Option<Option<f64>>,
    untyped: Option<Option<f64>>,
    timestamp_ms: Option<i64>,
}

/// The reused buffers of a walk over one body's families; everything borrowed from
/// the body (`'b`).
#[derive(Default)]
pub(super) struct Walk<'b> {
    labels: Vec<(&'b str, &'b str)>,
    ident: Vec<u8>,
    series: Vec<Series>,
    /// The identity of the sample being emitted.
    key: Vec<u8>,
}

/// A `LabelPair`: its name and value, each `None` when absent (the last occurrence
/// of a field wins).
fn label_pair(bytes: &[u8]) -> Step<(Option<&str>, Option<&str>)> {
    let (mut name, mut value) = (None, None);
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 => name = Some(string(wt, buf)?),
            2 => value = Some(string(wt, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((name, value))
}

/// A `google.protobuf.Timestamp`, merged into `into` (`(seconds, nanos)`).
fn timestamp(bytes: &[u8], into: &mut (i64, i32)) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 => into.0 = varint(wt, buf)? as i64,
            // int32: the varint's low 32 bits, as prost reads it.
            2 => into.1 = varint(wt, buf)? as i32,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// An `Exemplar`, checked and ignored.
fn exemplar(bytes: &[u8]) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 => {
                label_pair(delimited(wt, buf)?)?;
            }
            2 => {
                double(wt, buf)?;
            }
            3 => timestamp(delimited(wt, buf)?, &mut (0, 0))?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// A `Gauge` or `Untyped`: its value merged into `into`.
fn single_value(bytes: &[u8], into: &mut Option<f64>) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        if tag != 1 {
            return Ok(false);
        }
        *into = Some(double(wt, buf)?);
        Ok(true)
    })
}

/// A `Counter`, merged into `into`.
fn counter(bytes: &[u8], into: &mut CounterFields) -> Step<()> {
    fields(bytes, |tag, wt, buf| {
        match tag {
            1 => into.value = Some(double(wt, buf)?),
            2 => exemplar(delimited(wt, buf)?)?,
            3 => timestamp(delimited(wt, buf)?, into.created.get_or_insert((0, 0)))?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

impl<'b> Walk<'b> {
    /// Reads one `MetricFamily` message and, when the walk takes it on (see the
    /// module doc), emits its samples and returns true; false leaves `emit` and
    /// `report` untouched, for the caller to decode the message with prost.
    pub(super) fn family(
        &mut self,
        message: &'b [u8],
        emit: &mut EmitIdentified<'_>,
        report: &mut ParseReport,
    ) -> bool {
        match self.read(message) {
            Ok((name, kind)) => {
                self.emit(name, kind, emit, report);
                true
            }
            Err(Decline) => false,
        }
    }

    /// The family's name and type, its series in `self`.
    fn read(&mut self, message: &'b [u8]) -> Step<(&'b str, MetricType)> {
        self.labels.clear();
        self.ident.clear();
        self.series.clear();
        let (mut name, mut kind) = (None, 0i32);
        fields(message, |tag, wt, buf| {
            match tag {
                1 => name = Some(string(wt, buf)?),
                2 => {
                    string(wt, buf)?;
                }
                // An enum reads as the varint's low 32 bits, as prost reads it.
                3 => kind = varint(wt, buf)? as i32,
                4 => {
                    let metric = delimited(wt, buf)?;
                    self.metric(metric)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let name = name.filter(|n| !n.is_empty()).ok_or(Decline)?;
        match MetricType::try_from(kind) {
            Ok(k @ (MetricType::Counter | MetricType::Gauge | MetricType::Untyped)) => {
                Ok((name, k))
            }
            _ => Err(Decline),
        }
    }

    /// Reads one `Metric` into `self.series`.
    fn metric(&mut self, bytes: &'b [u8]) -> Step<()> {
        let mut s = Series {
            labels: self.labels.len()..self.labels.len(),
            ident: self.ident.len()..self.ident.len(),
            bad_label: false,
            counter: None,
            gauge: None,
            untyped: None,
            timestamp_ms: None,
        };
        let (labels, ident) = (&mut self.labels, &mut self.ident);
        fields(bytes, |tag, wt, buf| {
            match tag {
                1 => {
                    let pair = delimited(wt, buf)?;
                    match label_pair(pair)? {
                        (Some(k), v) if !k.is_empty() => labels.push((k, v.unwrap_or(""))),
                        _ => s.bad_label = true,
                    }
                    encode_varint(pair.len() as u64, ident);
                    ident.extend_from_slice(pair);
                }
                2 => single_value(delimited(wt, buf)?, s.gauge.get_or_insert(None))?,
                3 => counter(delimited(wt, buf)?, s.counter.get_or_insert_default())?,
                5 => single_value(delimited(wt, buf)?, s.untyped.get_or_insert(None))?,
                6 => s.timestamp_ms = Some(varint(wt, buf)? as i64),
                // A summary or histogram in a metric: prost's path decodes it.
                4 | 7 => return Err(Decline),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        s.labels.end = self.labels.len();
        s.ident.end = self.ident.len();
        self.series.push(s);
        Ok(())
    }

    /// Emits the series read by [`Walk::read`] as the prost path would, each with its
    /// identity: [`PROTO_IDENT`], the name's length and bytes, then each label field's
    /// payload after its length. Every part is self-delimiting, so equal identities
    /// mean equal names and label pairs.
    fn emit(
        &mut self,
        name: &str,
        kind: MetricType,
        emit: &mut EmitIdentified<'_>,
        report: &mut ParseReport,
    ) {
        self.key.clear();
        self.key.push(PROTO_IDENT);
        encode_varint(name.len() as u64, &mut self.key);
        self.key.extend_from_slice(name.as_bytes());
        let prefix = self.key.len();
        for s in &self.series {
            if s.bad_label {
                report.count(ExpositionError::MalformedLabels);
                continue;
            }
            let value = match kind {
                MetricType::Counter => s.counter.map(|c| {
                    (
                        Sample::Counter(c.value.unwrap_or(0.0), Temporality::Cumulative),
                        start_ms(c.created),
                    )
                }),
                MetricType::Gauge => s.gauge.map(|v| (Sample::Gauge(v.unwrap_or(0.0)), 0)),
                _ => s.untyped.map(|v| (Sample::Gauge(v.unwrap_or(0.0)), 0)),
            };
            let Some((sample, start)) = value else {
                report.count(ExpositionError::MalformedValue);
                continue;
            };
            self.key.truncate(prefix);
            self.key.extend_from_slice(&self.ident[s.ident.clone()]);
            emit(
                Some(&self.key),
                name,
                &self.labels[s.labels.clone()],
                sample,
                s.timestamp_ms.unwrap_or(0),
                start,
            );
            report.samples += 1;
        }
    }
}
