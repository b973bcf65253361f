"""Type stubs of the extension module `weir._weir` (see `weir/__init__.py` for the
public API built on it)."""

from typing import Any, Dict, List, Optional, Tuple, Type

class Instance:
    """An embedded weir runtime: aggregator, periodic flush, forwarding pipelines.

    ``config_toml`` uses the daemon's TOML schema; only ``data_dir``, ``[aggregation]``,
    ``[[pipelines]]``, ``[shutdown]`` and ``[log]`` apply (a source or listener section
    is a ``ValueError``). Starting replays what the pipelines' WALs hold. Raises
    ``ValueError`` for an invalid config, ``OSError`` when a pipeline or the threads
    cannot start.
    """

    def __init__(self, config_toml: Optional[str] = None) -> None: ...
    def flush(self) -> List[Dict[str, Any]]:
        """Flushes now into every pipeline (GIL released); returns the flushed series,
        one dict each (``name``, ``labels``, ``kind``, and ``delta``/``total`` for
        counters, ``value`` for gauges, ``counts``/``count``/``sum`` (totals) and
        ``delta_counts``/``delta_count``/``delta_sum`` for histograms)."""
    def generate_latest(self) -> bytes:
        """The current values in the Prometheus text format, counters and histograms
        as running totals. Takes nothing from the flushes (GIL released)."""
    def self_metrics(self) -> str:
        """weir's own metrics of this instance (``weir_rejected_total{reason}``,
        ``weir_cardinality_limit_exceeded_total{metric}``, pipeline and WAL counters)."""
    def close(self, grace_seconds: Optional[float] = None) -> None:
        """Final flush into the WALs, then up to ``grace_seconds`` (default: the
        config's ``[shutdown] grace_period``) for sending; what is not sent stays in the
        WALs for the next start on the same ``data_dir``. Idempotent; GIL released."""
    @property
    def closed(self) -> bool: ...

class Family:
    """One metric: exposed name, kind, label names and the cache of bound children."""

    def __init__(
        self,
        instance: Instance,
        kind: str,
        name: str,
        labelnames: List[str],
        child_type: Type[Any],
        buckets: Optional[List[float]] = None,
    ) -> None: ...
    def labels(self, *values: Any, **kwargs: Any) -> Any:
        """The bound child of these label values (``ValueError`` for a wrong count or
        wrong names)."""
    def remove(self, *values: Any) -> None:
        """Forgets the child of these label values."""
    def clear(self) -> None:
        """Forgets every child."""
    @property
    def name(self) -> str: ...

class CounterChild:
    """A counter's series for one set of label values."""

    def __init__(self, family: Family, values: Tuple[str, ...]) -> None: ...
    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount``: ``ValueError`` if negative; non-finite is refused and
        counted."""

class GaugeChild:
    """A gauge's series for one set of label values."""

    def __init__(self, family: Family, values: Tuple[str, ...]) -> None: ...
    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount`` (non-finite: refused and counted)."""
    def dec(self, amount: float = 1.0) -> None:
        """Subtracts ``amount`` (non-finite: refused and counted)."""
    def set(self, value: float) -> None:
        """Sets the value."""
    def set_to_current_time(self) -> None:
        """Sets the value to the current Unix time in seconds."""

class ObserveChild:
    """A histogram's or summary's series for one set of label values."""

    def __init__(self, family: Family, values: Tuple[str, ...]) -> None: ...
    def observe(self, amount: float) -> None:
        """Records one observation (NaN: refused and counted)."""

def after_fork_in_child() -> None:
    """Marks every weir object created so far as belonging to the parent process."""
