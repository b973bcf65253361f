//! `weir._weir`: the Rust half of the `weir` Python package. A thin layer over the
//! embedded weir runtime ([`weir_collector::instance::Instance`]); the Pythonic API
//! (`Counter`, `Gauge`, `Histogram`, `Summary`, `generate_latest`, ...) is in
//! `weir/__init__.py`, which builds on the classes here.
//!
//! Owns: the Python objects of an instance ([`Instance`]), of a metric family
//! ([`Family`]: name, kind, label names and the cache of bound children) and of a bound
//! child ([`CounterChild`], [`GaugeChild`], [`ObserveChild`]: one pre-resolved
//! [`SeriesHandle`] each, so an update is one call into Rust and one atomic operation;
//! while a series limit refuses the series, each update tries again and each refusal
//! is counted).
//! Must never: hold the GIL while flushing, encoding, closing or starting an instance
//! (all of them may wait for disk or the network), raise on the hot path for a
//! refusal by weir's limits (those are counted in the instance's self-metrics), or
//! let a forked child use its parent's instance silently (see `after_fork_in_child`).
//!
//! Fork: an instance's threads do not exist in a child process. The package registers
//! `after_fork_in_child` with `os.register_at_fork`; it bumps a process generation,
//! and every object created before the fork then raises `RuntimeError` when used, while
//! objects created in the child work. A parent's instance inherited by a child is
//! never closed there (its threads are gone; closing would wait for them forever).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use weir_collector::instance::{Instance as Runtime, InstanceError};
use weir_core::point::Sample;
use weir_core::{Aggregator, FlushBatch, FlushedValue, MetricKind, Rejected, SeriesHandle};

/// Most bound children one family caches; past it, `labels()` resolves new label sets
/// each time (correct, slower) so that a program with unbounded label values does not
/// grow the cache without limit. The aggregator's own limits still apply.
const CHILD_CACHE_CAPACITY: usize = 100_000;

/// Bumped in a child process right after `fork` (see [`after_fork_in_child`]). Objects
/// remember the value they were created under. Relaxed: the hook runs in the child
/// while it has one thread; threads started later see it through thread creation.
static GENERATION: AtomicU64 = AtomicU64::new(0);

const FORK_MESSAGE: &str = "this weir object was created before os.fork() and belongs to the \
parent process (its flush and forwarding threads do not exist here); create a new \
weir.Instance (with its own data_dir) and new metrics in the child";

fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

#[inline]
fn check_fork(created_in: u64) -> PyResult<()> {
    if generation() == created_in {
        Ok(())
    } else {
        Err(PyRuntimeError::new_err(FORK_MESSAGE))
    }
}

/// Marks every weir object created so far as belonging to the parent. Registered by
/// the package with `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn instance_error(e: InstanceError) -> PyErr {
    match e {
        InstanceError::Config(_) | InstanceError::UnsupportedSection(_) => {
            PyValueError::new_err(e.to_string())
        }
        InstanceError::Pipeline(_) | InstanceError::Runtime(_) => PyOSError::new_err(e.to_string()),
    }
}

/// An embedded weir runtime: aggregator, periodic flush, forwarding pipelines.
#[pyclass(frozen, module = "weir._weir")]
pub struct Instance {
    /// `None` once closed.
    runtime: Mutex<Option<Runtime>>,
    aggregator: Aggregator,
    generation: u64,
}

impl Instance {
    fn runtime<T>(&self, f: impl FnOnce(&Runtime) -> T) -> PyResult<T> {
        check_fork(self.generation)?;
        let guard = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(rt) => Ok(f(rt)),
            None => Err(PyRuntimeError::new_err("this weir.Instance is closed")),
        }
    }
}

#[pymethods]
impl Instance {
    /// Starts an instance from TOML text in the daemon's schema (`None`: defaults).
    #[new]
    #[pyo3(signature = (config_toml=None))]
    fn new(py: Python<'_>, config_toml: Option<&str>) -> PyResult<Self> {
        let text = config_toml.unwrap_or("");
        // WAL recovery and thread start-up: no GIL.
        let runtime = py
            .detach(|| Runtime::from_toml(text))
            .map_err(instance_error)?;
        Ok(Instance {
            aggregator: runtime.aggregator().clone(),
            runtime: Mutex::new(Some(runtime)),
            generation: generation(),
        })
    }

    /// Flushes now into every pipeline; returns the flushed series as dicts.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        check_fork(self.generation)?;
        let batch = py.detach(|| self.runtime(|rt| rt.flush()))?;
        batch_to_py(py, &batch)
    }

    /// The current values in the Prometheus text format, taking nothing from flushes.
    fn generate_latest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        check_fork(self.generation)?;
        let agg = &self.aggregator;
        let (_, text) = py.detach(|| weir_core::encode::prometheus_page(agg));
        Ok(PyBytes::new(py, text.as_bytes()))
    }

    /// weir's own metrics of this instance, in the Prometheus text format.
    fn self_metrics(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.runtime(|rt| rt.self_metrics()))
    }

    /// Final flush into the WALs, then up to `grace_seconds` (default: the config's
    /// `[shutdown] grace_period`) for sending. Idempotent.
    #[pyo3(signature = (grace_seconds=None))]
    fn close(&self, py: Python<'_>, grace_seconds: Option<f64>) -> PyResult<()> {
        check_fork(self.generation)?;
        let grace = match grace_seconds {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(_) => {
                return Err(PyValueError::new_err(
                    "grace_seconds must be a finite number >= 0",
                ));
            }
            None => None,
        };
        let taken = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rt) = taken {
            py.detach(move || {
                if let Some(g) = grace {
                    rt.close(g);
                }
                // Dropping closes with the config's grace period if not closed yet.
                drop(rt);
            });
        }
        Ok(())
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let rt = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if generation() != self.generation {
            // A parent's instance in a forked child: its threads are gone, and
            // closing it would wait for them forever.
            std::mem::forget(rt);
        }
    }
}

/// Renders a flushed batch for Python: one dict per series.
fn batch_to_py<'py>(py: Python<'py>, batch: &FlushBatch) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for s in &batch.series {
        let d = PyDict::new(py);
        d.set_item("name", s.key.name())?;
        let labels = PyDict::new(py);
        for (k, v) in s.key.labels() {
            labels.set_item(k, v)?;
        }
        d.set_item("labels", labels)?;
        d.set_item("evicted", batch.is_evicted(s))?;
        match &s.value {
            FlushedValue::Counter { delta, total } => {
                d.set_item("kind", "counter")?;
                d.set_item("delta", delta)?;
                d.set_item("total", total)?;
            }
            FlushedValue::Gauge { value, .. } => {
                d.set_item("kind", "gauge")?;
                d.set_item("value", value)?;
            }
            FlushedValue::Histogram { delta, total } => {
                d.set_item("kind", "histogram")?;
                d.set_item("bounds", total.bounds.to_vec())?;
                d.set_item("delta_counts", delta.counts.clone())?;
                d.set_item("delta_count", delta.count)?;
                d.set_item("delta_sum", delta.sum)?;
                d.set_item("counts", total.counts.clone())?;
                d.set_item("count", total.count)?;
                d.set_item("sum", total.sum)?;
            }
            FlushedValue::Summary(v) => {
                d.set_item("kind", "summary")?;
                d.set_item("count", v.count)?;
                d.set_item("sum", v.sum)?;
            }
        }
        out.append(d)?;
    }
    Ok(out)
}

/// What a family's children update.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// prometheus_client's Summary (count and sum): a histogram with one `+Inf` bucket.
    Summary,
}

/// One metric: its name, kind, label names and the cache of bound children.
#[pyclass(frozen, module = "weir._weir")]
pub struct Family {
    aggregator: Aggregator,
    generation: u64,
    name: String,
    kind: Kind,
    labelnames: Vec<String>,
    bounds: Option<Arc<[f64]>>,
    cache: Py<PyDict>,
    /// The Python class of the children (a subclass of one of the child classes).
    child_type: Py<PyAny>,
}

#[pymethods]
impl Family {
    /// A family on `instance`. `name` is the exposed series name (a counter's ends in
    /// `_total`); `buckets` are a histogram's upper bounds without `+Inf`.
    #[new]
    #[pyo3(signature = (instance, kind, name, labelnames, child_type, buckets=None))]
    fn new(
        py: Python<'_>,
        instance: &Bound<'_, Instance>,
        kind: &str,
        name: String,
        labelnames: Vec<String>,
        child_type: Py<PyAny>,
        buckets: Option<Vec<f64>>,
    ) -> PyResult<Self> {
        let inst = instance.get();
        check_fork(inst.generation)?;
        let kind = match kind {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            other => return Err(PyValueError::new_err(format!("unknown kind {other:?}"))),
        };
        let bounds = match kind {
            Kind::Histogram => buckets.map(Arc::from),
            Kind::Summary => Some(Arc::from(&[] as &[f64])),
            _ => None,
        };
        Ok(Family {
            aggregator: inst.aggregator.clone(),
            generation: inst.generation,
            name,
            kind,
            labelnames,
            bounds,
            cache: PyDict::new(py).unbind(),
            child_type,
        })
    }

    /// The bound child for these label values (positional, or all by name).
    #[pyo3(signature = (*values, **kwargs))]
    fn labels<'py>(
        slf: &Bound<'py, Self>,
        values: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let key = match kwargs {
            Some(kw) if !kw.is_empty() => {
                if !values.is_empty() {
                    return Err(PyValueError::new_err("Can't pass both *args and **kwargs"));
                }
                if kw.len() != this.labelnames.len() {
                    return Err(PyValueError::new_err("Incorrect label names"));
                }
                let mut ordered = Vec::with_capacity(this.labelnames.len());
                for n in &this.labelnames {
                    match kw.get_item(n)? {
                        Some(v) => ordered.push(v),
                        None => return Err(PyValueError::new_err("Incorrect label names")),
                    }
                }
                PyTuple::new(py, ordered)?
            }
            _ => values.clone(),
        };
        let cache = this.cache.bind(py);
        if let Some(child) = cache.get_item(&key)? {
            return Ok(child);
        }
        if key.len() != this.labelnames.len() {
            return Err(PyValueError::new_err("Incorrect label count"));
        }
        let mut strs = Vec::with_capacity(key.len());
        for v in key.iter() {
            strs.push(v.str()?.to_string());
        }
        let child = this
            .child_type
            .bind(py)
            .call1((slf, PyTuple::new(py, strs)?))?;
        if cache.len() < CHILD_CACHE_CAPACITY {
            cache.set_item(key, &child)?;
        }
        Ok(child)
    }

    /// Forgets the child of these label values (its series then ages out by the TTL).
    #[pyo3(signature = (*values))]
    fn remove(&self, py: Python<'_>, values: &Bound<'_, PyTuple>) -> PyResult<()> {
        if values.len() != self.labelnames.len() {
            return Err(PyValueError::new_err("Incorrect label count"));
        }
        let cache = self.cache.bind(py);
        // Cached under the values as given; match them by their string forms.
        let mut wanted = Vec::with_capacity(values.len());
        for v in values.iter() {
            wanted.push(v.str()?.to_string());
        }
        let mut doomed = Vec::new();
        for (k, _) in cache.iter() {
            let k = k.cast_into::<PyTuple>()?;
            let mut same = true;
            for (a, b) in k.iter().zip(&wanted) {
                if a.str()?.to_cow()?.as_ref() != b.as_str() {
                    same = false;
                    break;
                }
            }
            if same {
                doomed.push(k);
            }
        }
        for k in doomed {
            cache.del_item(k)?;
        }
        Ok(())
    }

    /// Forgets every child.
    fn clear(&self, py: Python<'_>) {
        self.cache.bind(py).clear();
    }

    /// The exposed series name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
}

/// How to resolve a child's series again while weir's limits refuse it.
struct Retry {
    aggregator: Aggregator,
    name: String,
    labels: Vec<(String, String)>,
    kind: Kind,
    bounds: Option<Arc<[f64]>>,
}

impl Retry {
    fn resolve(&self) -> Result<SeriesHandle, Rejected> {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agg = &self.aggregator;
        match (&self.bounds, self.kind) {
            (Some(b), _) => agg.histogram_handle(&self.name, &labels, b.clone()),
            (None, Kind::Counter) => agg.handle(&self.name, &labels, MetricKind::Counter),
            (None, Kind::Gauge) => agg.handle(&self.name, &labels, MetricKind::Gauge),
            (None, Kind::Histogram | Kind::Summary) => {
                agg.handle(&self.name, &labels, MetricKind::Histogram)
            }
        }
    }
}

/// One child's series: its handle once resolved. While weir's limits refuse the series
/// (a series limit), every update tries again, so each dropped update is counted
/// (`weir_rejected_total`, `weir_cardinality_limit_exceeded_total`) and updates land
/// as soon as there is room.
struct Target {
    handle: OnceLock<SeriesHandle>,
    retry: Retry,
    generation: u64,
}

impl Target {
    fn new(
        family: &Bound<'_, Family>,
        values: &Bound<'_, PyTuple>,
        want: &[Kind],
    ) -> PyResult<Self> {
        let f = family.get();
        check_fork(f.generation)?;
        if !want.contains(&f.kind) {
            return Err(PyValueError::new_err(
                "child class does not match the family's kind",
            ));
        }
        let mut labels = Vec::with_capacity(values.len());
        for (k, v) in f.labelnames.iter().zip(values.iter()) {
            labels.push((k.clone(), v.str()?.to_string()));
        }
        let target = Target {
            handle: OnceLock::new(),
            retry: Retry {
                aggregator: f.aggregator.clone(),
                name: f.name.clone(),
                labels,
                kind: f.kind,
                bounds: f.bounds.clone(),
            },
            generation: f.generation,
        };
        match target.retry.resolve() {
            Ok(h) => {
                let _ = target.handle.set(h);
            }
            Err(
                Rejected::MetricLimit(_) | Rejected::GlobalLimit | Rejected::EvictedDuringUpdate,
            ) => {}
            Err(e) => return Err(PyValueError::new_err(format!("{}: {e}", f.name))),
        }
        Ok(target)
    }

    /// The series to update, or `None` while a limit refuses it (counted).
    #[inline]
    fn get(&self) -> PyResult<Option<&SeriesHandle>> {
        check_fork(self.generation)?;
        if let Some(h) = self.handle.get() {
            return Ok(Some(h));
        }
        Ok(match self.retry.resolve() {
            Ok(h) => {
                let _ = self.handle.set(h);
                self.handle.get()
            }
            Err(_) => None,
        })
    }
}

/// A counter's bound child: one series.
#[pyclass(frozen, subclass, module = "weir._weir")]
pub struct CounterChild {
    target: Target,
}

#[pymethods]
impl CounterChild {
    #[new]
    fn new(family: &Bound<'_, Family>, values: &Bound<'_, PyTuple>) -> PyResult<Self> {
        Ok(CounterChild {
            target: Target::new(family, values, &[Kind::Counter])?,
        })
    }

    /// Adds `amount` (>= 0; a non-finite amount is refused and counted).
    #[pyo3(signature = (amount=1.0))]
    fn inc(&self, amount: f64) -> PyResult<()> {
        if amount < 0.0 {
            return Err(PyValueError::new_err(
                "Counters can only be incremented by non-negative amounts.",
            ));
        }
        if let Some(h) = self.target.get()? {
            // A refusal (non-finite amount) is counted by the aggregator.
            let _ = if amount == 1.0 {
                h.increment(1)
            } else {
                h.add(amount)
            };
        }
        Ok(())
    }
}

/// A gauge's bound child: one series.
#[pyclass(frozen, subclass, module = "weir._weir")]
pub struct GaugeChild {
    target: Target,
}

impl GaugeChild {
    #[inline]
    fn apply(&self, sample: Sample<'_>) -> PyResult<()> {
        if let Some(h) = self.target.get()? {
            // A refusal (non-finite adjustment) is counted by the aggregator.
            let _ = h.record(sample, 0);
        }
        Ok(())
    }
}

#[pymethods]
impl GaugeChild {
    #[new]
    fn new(family: &Bound<'_, Family>, values: &Bound<'_, PyTuple>) -> PyResult<Self> {
        Ok(GaugeChild {
            target: Target::new(family, values, &[Kind::Gauge])?,
        })
    }

    /// Adds `amount`.
    #[pyo3(signature = (amount=1.0))]
    fn inc(&self, amount: f64) -> PyResult<()> {
        self.apply(Sample::GaugeDelta(amount))
    }

    /// Subtracts `amount`.
    #[pyo3(signature = (amount=1.0))]
    fn dec(&self, amount: f64) -> PyResult<()> {
        self.apply(Sample::GaugeDelta(-amount))
    }

    /// Sets the value.
    fn set(&self, value: f64) -> PyResult<()> {
        self.apply(Sample::Gauge(value))
    }

    /// Sets the value to the current Unix time in seconds.
    fn set_to_current_time(&self) -> PyResult<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.apply(Sample::Gauge(now))
    }
}

/// A histogram's or summary's bound child: one series.
#[pyclass(frozen, subclass, module = "weir._weir")]
pub struct ObserveChild {
    target: Target,
}

#[pymethods]
impl ObserveChild {
    #[new]
    fn new(family: &Bound<'_, Family>, values: &Bound<'_, PyTuple>) -> PyResult<Self> {
        Ok(ObserveChild {
            target: Target::new(family, values, &[Kind::Histogram, Kind::Summary])?,
        })
    }

    /// Records one observation (NaN is refused and counted).
    fn observe(&self, amount: f64) -> PyResult<()> {
        if let Some(h) = self.target.get()? {
            // A refusal (NaN) is counted by the aggregator.
            let _ = h.observe(amount);
        }
        Ok(())
    }
}

/// The extension module.
#[pymodule]
#[pyo3(name = "_weir")]
fn weir_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Instance>()?;
    m.add_class::<Family>()?;
    m.add_class::<CounterChild>()?;
    m.add_class::<GaugeChild>()?;
    m.add_class::<ObserveChild>()?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    Ok(())
}
