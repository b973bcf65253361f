//! Differential checking of the aggregator against a plain `HashMap` model, shared by
//! the proptest in `tests/model.rs` (runs in CI) and the cargo-fuzz target
//! `fuzz/fuzz_targets/aggregator_model.rs` (longer runs).
//!
//! Owns: the byte-to-operation decoding and the model, and (in [`fuzz`]) the property
//! of every fuzz target, shared with the replay of the committed corpora in
//! `core/tests/fuzz_corpus.rs`, and [`TempDir`], the temporary directory every
//! test that writes files uses. Must never be used by production code; it is public
//! only so the drivers can share it.

use std::collections::HashMap;

pub mod fuzz;
mod temp_dir;

pub use temp_dir::TempDir;

use crate::aggregator::{Aggregator, AggregatorConfig};
use crate::flush::FlushedValue;
use crate::key::SeriesKey;
use crate::point::{Sample, Temporality};

/// Names the operations draw from; the last one is invalid.
const NAMES: [&str; 4] = ["a_total", "b", "c_seconds", "9bad"];
/// Label sets the operations draw from, in arrival order; the last has a duplicate.
const LABELS: [&[(&str, &str)]; 5] = [
    &[],
    &[("x", "1")],
    &[("x", "1"), ("y", "2")],
    &[("y", "2"), ("x", "1")],
    &[("x", "1"), ("x", "2")],
];
const BOUNDS: [f64; 2] = [1.0, 10.0];

/// One step of a scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// A point for series `name`/`labels` (indices into the tables above).
    Record {
        /// Index into the name table.
        name: u8,
        /// Index into the label-set table.
        labels: u8,
        /// What to record.
        sample: ModelSample,
    },
    /// A flush, compared against the model.
    Flush,
}

/// The samples a scenario can record (integral values keep f64 sums exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelSample {
    /// Counter delta (negative ones must be rejected).
    Delta(i16),
    /// Cumulative counter value (negative ones must be rejected).
    Cumulative(i16),
    /// Gauge set.
    Gauge(i16),
    /// Gauge adjustment.
    GaugeDelta(i16),
    /// One histogram observation.
    Observe(u8),
}

/// Decodes bytes into operations (4 bytes each; a trailing flush is always added).
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let mut ops: Vec<Op> = data
        .chunks_exact(4)
        .map(|c| {
            let v = i16::from_le_bytes([c[2], c[3]]);
            let sample = match c[0] % 6 {
                0 => ModelSample::Delta(v),
                1 => ModelSample::Cumulative(v),
                2 => ModelSample::Gauge(v),
                3 => ModelSample::GaugeDelta(v),
                4 => ModelSample::Observe(c[2]),
                _ => return Op::Flush,
            };
            Op::Record {
                name: c[1] % NAMES.len() as u8,
                labels: (c[1] / 4) % LABELS.len() as u8,
                sample,
            }
        })
        .collect();
    ops.push(Op::Flush);
    ops
}

#[derive(Debug, Clone, PartialEq)]
enum Model {
    Counter {
        delta: f64,
        total: f64,
        last: Option<f64>,
    },
    Gauge(f64),
    Histogram {
        delta: Vec<u64>,
        total: Vec<u64>,
    },
}

impl Model {
    fn kind(&self) -> u8 {
        match self {
            Model::Counter { .. } => 0,
            Model::Gauge(_) => 1,
            Model::Histogram { .. } => 2,
        }
    }
}

fn sample_kind(s: ModelSample) -> u8 {
    match s {
        ModelSample::Delta(_) | ModelSample::Cumulative(_) => 0,
        ModelSample::Gauge(_) | ModelSample::GaugeDelta(_) => 1,
        ModelSample::Observe(_) => 2,
    }
}

/// Runs `ops` through a fresh aggregator (no eviction) and the model, comparing every
/// result and every flushed series.
///
/// # Errors
/// A description of the first difference.
pub fn check_against_model(ops: &[Op]) -> Result<(), String> {
    let agg = Aggregator::new(AggregatorConfig {
        series_ttl: std::time::Duration::ZERO,
        writer_cache_capacity: 3,
        histogram_bounds: BOUNDS.to_vec().into(),
        ..Default::default()
    });
    let mut w = agg.writer();
    let mut model: HashMap<SeriesKey, Model> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Record {
                name,
                labels,
                sample,
            } => {
                let (name, labels) = (NAMES[name as usize], LABELS[labels as usize]);
                let got = match sample {
                    ModelSample::Delta(v) => Sample::Counter(v.into(), Temporality::Delta),
                    ModelSample::Cumulative(v) => {
                        Sample::Counter(v.into(), Temporality::Cumulative)
                    }
                    ModelSample::Gauge(v) => Sample::Gauge(v.into()),
                    ModelSample::GaugeDelta(v) => Sample::GaugeDelta(v.into()),
                    ModelSample::Observe(v) => Sample::Observe {
                        value: v.into(),
                        count: 1,
                    },
                };
                let got = w.record(name, labels, got, 0);
                let want = model_apply(&mut model, name, labels, sample);
                if got.as_ref().err().map(|e| e.as_str()) != want.err() {
                    return Err(format!("step {step} {op:?}: got {got:?}, model {want:?}"));
                }
            }
            Op::Flush => {
                let batch = agg.flush();
                if batch.series.len() != model.len() {
                    return Err(format!(
                        "step {step}: {} series flushed, model has {}",
                        batch.series.len(),
                        model.len()
                    ));
                }
                for s in &batch.series {
                    let m = model
                        .get_mut(&s.key)
                        .ok_or_else(|| format!("step {step}: unexpected {}", s.key))?;
                    let ok = match (&mut *m, &s.value) {
                        (
                            Model::Counter { delta, total, .. },
                            FlushedValue::Counter { delta: d, total: t },
                        ) => {
                            let ok = *delta == *d && *total == *t;
                            *delta = 0.0;
                            ok
                        }
                        (Model::Gauge(v), FlushedValue::Gauge { value, .. }) => *v == *value,
                        (
                            Model::Histogram { delta, total },
                            FlushedValue::Histogram { delta: d, total: t },
                        ) => {
                            let ok = *delta == d.counts
                                && *total == t.counts
                                && d.count == delta.iter().sum::<u64>();
                            delta.iter_mut().for_each(|c| *c = 0);
                            ok
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(format!(
                            "step {step}: {} is {:?}, model {m:?}",
                            s.key, s.value
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The model's answer for one point: `Err(reason)` when it must be rejected.
fn model_apply(
    model: &mut HashMap<SeriesKey, Model>,
    name: &str,
    labels: &[(&str, &str)],
    sample: ModelSample,
) -> Result<(), &'static str> {
    let invalid = match sample {
        ModelSample::Delta(v) | ModelSample::Cumulative(v) => v < 0,
        _ => false,
    };
    if invalid {
        return Err("invalid_value");
    }
    let key = SeriesKey::new(name, labels).map_err(|e| e.as_str())?;
    let entry = model
        .entry(key)
        .or_insert_with(|| match sample_kind(sample) {
            0 => Model::Counter {
                delta: 0.0,
                total: 0.0,
                last: None,
            },
            1 => Model::Gauge(0.0),
            _ => Model::Histogram {
                delta: vec![0; 3],
                total: vec![0; 3],
            },
        });
    if entry.kind() != sample_kind(sample) {
        return Err("type_conflict");
    }
    match (entry, sample) {
        (Model::Counter { delta, total, .. }, ModelSample::Delta(v)) => {
            *delta += f64::from(v);
            *total += f64::from(v);
        }
        (Model::Counter { delta, total, last }, ModelSample::Cumulative(v)) => {
            let v = f64::from(v);
            let d = match *last {
                None => {
                    *total += v; // baseline
                    0.0
                }
                Some(p) if v >= p => v - p,
                Some(_) => v,
            };
            *delta += d;
            *total += d;
            *last = Some(v);
        }
        (Model::Gauge(g), ModelSample::Gauge(v)) => *g = f64::from(v),
        (Model::Gauge(g), ModelSample::GaugeDelta(v)) => *g += f64::from(v),
        (Model::Histogram { delta, total }, ModelSample::Observe(v)) => {
            let i = BOUNDS.partition_point(|b| *b < f64::from(v));
            delta[i] += 1;
            total[i] += 1;
        }
        // Kinds were compared just above.
        _ => {}
    }
    Ok(())
}
