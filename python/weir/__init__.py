"""weir: prometheus_client-style metrics, aggregated in-process by weir's lock-free core
and forwarded through WAL-backed pipelines (remote write, OTLP, InfluxDB).

Switching from prometheus_client is a change of import::

    from weir import Counter, Histogram, generate_latest, start_http_server

    REQUESTS = Counter("requests", "Requests served", ["path"])
    REQUESTS.labels("/").inc()

Differences from prometheus_client, all deliberate:

- There is no registry. Metrics live in a :class:`Instance` (the default one is created
  on first use, as prometheus_client's default registry is). Pass ``instance=`` (or a
  weir ``Instance`` as ``registry=``) to use another. Two metric objects with the same
  name and kind share their series; the same name with another kind is a ``ValueError``.
- Refusals by weir's limits (series limits, non-finite values) are never raised on the
  hot path: they are counted in ``Instance.self_metrics()``
  (``weir_rejected_total{reason=...}``) and the update is dropped. A negative counter
  increment raises ``ValueError``, as in prometheus_client.
- ``Summary`` keeps count and sum (as prometheus_client's does) and is stored as a
  histogram with a single ``+Inf`` bucket, so it aggregates and forwards like one.
- ``generate_latest()`` has no ``# HELP`` lines and no ``_created`` series.

Close the instances you create (``Instance.close()``): an instance that is garbage
collected without it closes itself (final flush, grace period) with the GIL held. The
default instance is closed at interpreter exit.

Fork: an instance's threads do not survive ``os.fork()``. In a child process every
weir object created before the fork (instances, metrics, bound children) raises
``RuntimeError`` when used; the child creates its own ``Instance`` (on a data directory
of its own when it has pipelines) and its own metrics. The default instance is
recreated in the child on first use. The parent is unaffected.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Type

from . import _weir

__all__ = [
    "CONTENT_TYPE_LATEST",
    "Counter",
    "Gauge",
    "Histogram",
    "Instance",
    "Summary",
    "default_instance",
    "generate_latest",
    "start_http_server",
]

#: The content type of :func:`generate_latest`'s output.
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

Instance = _weir.Instance

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_INF = float("inf")
_DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, _INF,
)

_default_lock = threading.Lock()
_default: Optional[Instance] = None


def default_instance() -> Instance:
    """The process's default instance (default configuration), created on first use
    and closed at interpreter exit."""
    global _default
    inst = _default
    if inst is None:
        with _default_lock:
            if _default is None:
                _default = Instance()
            inst = _default
    return inst


def _close_default() -> None:
    inst = _default
    if inst is not None:
        try:
            inst.close()
        except RuntimeError:
            pass  # a forked child's inherited instance: it belongs to the parent


def _after_fork_in_child() -> None:
    global _default, _default_lock
    _weir.after_fork_in_child()
    # The parent's default instance is unusable here; the child gets a fresh one.
    _default = None
    _default_lock = threading.Lock()


atexit.register(_close_default)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _instance_of(registry: Any, instance: Optional[Instance]) -> Instance:
    if instance is not None:
        return instance
    if isinstance(registry, Instance):
        return registry
    return default_instance()


def generate_latest(registry: Any = None) -> bytes:
    """The current values of every metric of an instance (default: the default
    instance) in the Prometheus text format, counters and histograms as running totals.
    Takes nothing from the flushes that feed the pipelines."""
    return _instance_of(registry, None).generate_latest()


def start_http_server(
    port: int, addr: str = "0.0.0.0", registry: Any = None
) -> Tuple[ThreadingHTTPServer, threading.Thread]:
    """Serves :func:`generate_latest` on ``http://addr:port/`` (any path) from a daemon
    thread; returns the server and its thread."""
    inst = _instance_of(registry, None)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = inst.generate_latest()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="weir-http", daemon=True)
    thread.start()
    return server, thread


class _Timer:
    """Context manager and decorator that passes the elapsed seconds to ``callback``."""

    def __init__(self, callback: Callable[[float], None]) -> None:
        self._callback = callback
        self._start = 0.0

    def __enter__(self) -> "_Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._callback(max(time.perf_counter() - self._start, 0.0))

    def __call__(self, f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with _Timer(self._callback):
                return f(*args, **kwargs)

        return wrapped


class _ExceptionCounter:
    """Context manager and decorator that counts exceptions of ``exception`` type."""

    def __init__(self, counter: "_CounterChild", exception: Any) -> None:
        self._counter = counter
        self._exception = exception

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, value: Any, tb: Any) -> bool:
        if isinstance(value, self._exception):
            self._counter.inc()
        return False

    def __call__(self, f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with _ExceptionCounter(self._counter, self._exception):
                return f(*args, **kwargs)

        return wrapped


class _InProgress:
    """Context manager and decorator that raises a gauge while a block runs."""

    def __init__(self, gauge: "_GaugeChild") -> None:
        self._gauge = gauge

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(self, *exc: Any) -> None:
        self._gauge.dec()

    def __call__(self, f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with _InProgress(self._gauge):
                return f(*args, **kwargs)

        return wrapped


class _CounterChild(_weir.CounterChild):
    """A counter's series for one set of label values."""

    def count_exceptions(self, exception: Any = Exception) -> _ExceptionCounter:
        """Counts exceptions of type ``exception`` raised in a block or function."""
        return _ExceptionCounter(self, exception)


class _GaugeChild(_weir.GaugeChild):
    """A gauge's series for one set of label values."""

    def track_inprogress(self) -> _InProgress:
        """Raises the gauge by one while a block or function runs."""
        return _InProgress(self)

    def time(self) -> _Timer:
        """Sets the gauge to the duration of a block or function, in seconds."""
        return _Timer(self.set)


class _ObserveChild(_weir.ObserveChild):
    """A histogram's or summary's series for one set of label values."""

    def time(self) -> _Timer:
        """Observes the duration of a block or function, in seconds."""
        return _Timer(self.observe)


class _Metric:
    _kind = ""
    _child_type: Type[Any] = object
    _child_methods: Tuple[str, ...] = ()
    _reserved_labels: Tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Any = None,
        instance: Optional[Instance] = None,
        _buckets: Optional[Sequence[float]] = None,
    ) -> None:
        full = "_".join(p for p in (namespace, subsystem, name) if p)
        if unit and not full.endswith("_" + unit):
            full += "_" + unit
        if not _METRIC_NAME.match(full):
            raise ValueError("Invalid metric name: " + full)
        labelnames = tuple(labelnames)
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError("Invalid label metric name: " + label)
            if label in self._reserved_labels:
                raise ValueError("Reserved label metric name: " + label)
        if len(set(labelnames)) != len(labelnames):
            raise ValueError("Duplicate label names")
        self._name = full
        self._documentation = documentation
        self._labelnames = labelnames
        self._family = _weir.Family(
            _instance_of(registry, instance),
            self._kind,
            self._exposed_name(full),
            list(labelnames),
            self._child_type,
            None if _buckets is None else [b for b in _buckets if b != _INF],
        )
        # Bound builtins as instance attributes: no Python frame on the hot path.
        if labelnames:
            self.labels = self._family.labels
        else:
            child = self._family.labels()
            for m in self._child_methods:
                setattr(self, m, getattr(child, m))

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        """The child for these label values (``ValueError`` for a wrong count or wrong
        names). A labelled metric replaces this method by the Rust one in ``__init__``."""
        raise ValueError(f"No label names were set when constructing {self!r}")

    def _exposed_name(self, full: str) -> str:
        return full

    def remove(self, *labelvalues: Any) -> None:
        """Forgets the child of these label values."""
        self._family.remove(*labelvalues)

    def clear(self) -> None:
        """Forgets every child."""
        self._family.clear()

    def _missing_labels(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"{self._name} metric is missing label values")

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self._name})"


class Counter(_Metric):
    """A monotonic counter, exposed as ``<name>_total``. Same arguments as
    prometheus_client's ``Counter``, plus ``instance=``."""

    _kind = "counter"
    _child_type = _CounterChild
    _child_methods = ("inc", "count_exceptions")

    def _exposed_name(self, full: str) -> str:
        if full.endswith("_total"):
            full = full[: -len("_total")]
            self._name = full
        return full + "_total"

    inc = _Metric._missing_labels
    count_exceptions = _Metric._missing_labels


class Gauge(_Metric):
    """A value that goes up and down. Same arguments as prometheus_client's ``Gauge``
    (``multiprocess_mode`` is accepted and ignored), plus ``instance=``."""

    _kind = "gauge"
    _child_type = _GaugeChild
    _child_methods = ("inc", "dec", "set", "set_to_current_time", "track_inprogress", "time")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Any = None,
        instance: Optional[Instance] = None,
        multiprocess_mode: str = "all",
    ) -> None:
        super().__init__(
            name, documentation, labelnames, namespace, subsystem, unit, registry, instance
        )

    inc = _Metric._missing_labels
    dec = _Metric._missing_labels
    set = _Metric._missing_labels
    set_to_current_time = _Metric._missing_labels
    track_inprogress = _Metric._missing_labels
    time = _Metric._missing_labels


class Histogram(_Metric):
    """Observations in buckets, with sum and count. Same arguments as
    prometheus_client's ``Histogram`` (``buckets=``), plus ``instance=``."""

    _kind = "histogram"
    _child_type = _ObserveChild
    _child_methods = ("observe", "time")
    _reserved_labels = ("le",)
    DEFAULT_BUCKETS = _DEFAULT_BUCKETS

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Any = None,
        instance: Optional[Instance] = None,
        buckets: Sequence[float] = _DEFAULT_BUCKETS,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != _INF:
            bounds.append(_INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        if any(b != b for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("Buckets must be distinct numbers")
        super().__init__(
            name, documentation, labelnames, namespace, subsystem, unit, registry, instance,
            _buckets=bounds,
        )

    observe = _Metric._missing_labels
    time = _Metric._missing_labels


class Summary(_Metric):
    """Count and sum of observations (no quantiles, as prometheus_client's Python
    ``Summary``). Same arguments as prometheus_client's, plus ``instance=``."""

    _kind = "summary"
    _child_type = _ObserveChild
    _child_methods = ("observe", "time")
    _reserved_labels = ("quantile",)

    observe = _Metric._missing_labels
    time = _Metric._missing_labels
