"""weir vs prometheus_client and the OpenTelemetry Python SDK, side by side in one
process: nanoseconds per operation, best of several repeats, and each weir number as a
ratio to each of the others measured in the same run.

    python benches/python/bench_clients.py [--quick] [--json]

`--json` prints one JSON object instead of the table (what `weir-bench in-process`
reads). The OpenTelemetry SDK (`opentelemetry-sdk`) is optional: without it its column
says "not installed" and the rest runs. Run it against a release build of the package
(`pip install ./python`); a dev-profile wheel (the one scripts/test builds) is several
times slower.

The same operations on every side:

| operation | prometheus_client / weir | OpenTelemetry SDK |
|---|---|---|
| labelled inc | `c.labels("GET", "/api").inc()` | `c.add(1, {"method": "GET", "path": "/api"})` |
| bound inc | `child.inc()` on a child made once | `c.add(1, attrs)` with one attributes dict made once (the SDK has no bound instruments) |
| gauge inc | `g.inc()` | `UpDownCounter.add(1)` |
| gauge set | `g.set(3.5)` | synchronous `Gauge.set(3.5)` |
| histogram | `h.observe(0.3)` | `Histogram.record(0.3)` (default explicit buckets) |
| 4 threads | 4 threads on one labelled child | 4 threads, `c.add(1, attrs)` |

The SDK runs with an `InMemoryMetricReader` and no exporter: nothing leaves the process
and no collection runs while timing. After timing, every library's counter is read back
once and must hold exactly the increments made (a check that the work was done, not a
timing).
"""

import json
import platform
import sys
import threading
import time
import timeit
from importlib import metadata

import prometheus_client

import weir

QUICK = "--quick" in sys.argv
AS_JSON = "--json" in sys.argv
N = 20_000 if QUICK else 200_000
REPEAT = 3 if QUICK else 5
THREADS = 4

LABELLED = ".labels(...).inc()"
BOUND = "bound .inc()"
GAUGE_INC = "Gauge.inc()"
GAUGE_SET = "Gauge.set()"
OBSERVE = "Histogram.observe()"
THREADED = f"{THREADS} threads, one labelled counter"
OPS = [LABELLED, BOUND, GAUGE_INC, GAUGE_SET, OBSERVE, THREADED]


def per_op(run, ops=N):
    """Best nanoseconds per op of `run` (a no-argument callable doing `ops` ops)."""
    return min(timeit.repeat(run, number=1, repeat=REPEAT)) / ops * 1e9


def loop(f, *args):
    def run():
        for _ in range(N):
            f(*args)

    return run


def in_threads(f, *args):
    """THREADS threads, N calls of f(*args) each: wall ns per op in all."""

    def run():
        start = threading.Barrier(THREADS)

        def work():
            start.wait()
            for _ in range(N):
                f(*args)

        ts = [threading.Thread(target=work) for _ in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return per_op(run, N * THREADS)


def labelled_inc(counter):
    def run():
        labels = counter.labels
        for _ in range(N):
            labels("GET", "/api").inc()

    return run


def increments():
    """The counter increments one suite makes: labelled, bound and threaded runs."""
    return REPEAT * N * (2 + THREADS)


def suite(lib, **where):
    """prometheus_client and weir share an API; returns (ns per op, the counter child)."""
    c = lib.Counter("bench_requests", "Requests.", ["method", "path"], **where)
    g = lib.Gauge("bench_depth", "Depth.", **where)
    h = lib.Histogram("bench_latency_seconds", "Latency.", **where)
    bound = c.labels("GET", "/api")
    return {
        LABELLED: per_op(labelled_inc(c)),
        BOUND: per_op(loop(bound.inc)),
        GAUGE_INC: per_op(loop(g.inc)),
        GAUGE_SET: per_op(loop(g.set, 3.5)),
        OBSERVE: per_op(loop(h.observe, 0.3)),
        THREADED: in_threads(bound.inc),
    }


def otel_suite():
    """The OpenTelemetry SDK's numbers, or (None, why) when it is not installed."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError as e:
        return None, f"not installed ({e.name or e})"
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("bench")
    c = meter.create_counter("bench_requests")
    u = meter.create_up_down_counter("bench_depth_updown")
    h = meter.create_histogram("bench_latency_seconds")
    attrs = {"method": "GET", "path": "/api"}

    def labelled():
        add = c.add
        for _ in range(N):
            add(1, {"method": "GET", "path": "/api"})

    got = {
        LABELLED: per_op(labelled),
        BOUND: per_op(loop(c.add, 1, attrs)),
        GAUGE_INC: per_op(loop(u.add, 1)),
        OBSERVE: per_op(loop(h.record, 0.3)),
        THREADED: in_threads(c.add, 1, attrs),
    }
    # The synchronous Gauge is newer than the rest of the metrics API.
    if hasattr(meter, "create_gauge"):
        g = meter.create_gauge("bench_depth")
        got[GAUGE_SET] = per_op(loop(g.set, 3.5))
    total = sum(
        p.value
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "bench_requests"
        for p in m.data.data_points
    )
    check("OpenTelemetry SDK", total, increments())
    provider.shutdown()
    return got, None


def check(lib, got, want):
    if got != want:
        sys.exit(f"{lib}: its counter holds {got}, expected {want}: the benchmark did not do the work it timed")


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main():
    registry = prometheus_client.CollectorRegistry()
    theirs = suite(prometheus_client, registry=registry)
    check(
        "prometheus_client",
        registry.get_sample_value("bench_requests_total", {"method": "GET", "path": "/api"}),
        increments(),
    )
    inst = weir.Instance('[aggregation]\nflush_interval = "1h"\n')
    ours = suite(weir, instance=inst)
    weir_total = sum(
        s["total"]
        for s in inst.flush()
        if s.get("kind") == "counter" and s.get("name", "").startswith("bench_requests")
    )
    inst.close(0)
    check("weir", weir_total, increments())
    otel, otel_missing = otel_suite()
    rows = [
        {
            "operation": op,
            "prometheus_client": theirs[op],
            "weir": ours[op],
            "otel": (otel or {}).get(op),
        }
        for op in OPS
    ]
    result = {
        "ops_per_run": N,
        "repeat": REPEAT,
        "threads": THREADS,
        "python": platform.python_version(),
        "versions": {
            "weir": version("weir"),
            "prometheus_client": version("prometheus_client"),
            "opentelemetry-sdk": version("opentelemetry-sdk"),
        },
        "otel_missing": otel_missing,
        "rows": rows,
        "run_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if AS_JSON:
        print(json.dumps(result))
        return
    print(f"{N} ops per run, best of {REPEAT}; ns per op (threads: wall ns per op in all)")
    print(
        f"{'operation':36} {'prometheus_client':>18} {'weir':>8} {'ratio':>7} {'otel-sdk':>14} {'ratio':>7}"
    )
    for r in rows:
        prom, w, o = r["prometheus_client"], r["weir"], r["otel"]
        if o is not None:
            otel_cells = f"{o:14.0f} {w / o:6.2f}x"
        else:
            otel_cells = f"{(otel_missing or '-')[:14]:>14} {'-':>7}"
        print(f"{r['operation']:36} {prom:18.0f} {w:8.0f} {w / prom:6.2f}x {otel_cells}")
    print(f"run at {result['run_at']}")


if __name__ == "__main__":
    main()
