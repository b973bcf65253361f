"""weir vs prometheus_client (and the OpenTelemetry SDK when installed), side by side
in one run: nanoseconds per operation, best of several repeats, and each weir number as
a ratio to prometheus_client's.

    python benches/python/bench_clients.py [--quick]

Run it against a release build of the package (`pip install ./python`); a dev-profile
wheel (the one scripts/test builds) is several times slower.
"""

import sys
import threading
import time
import timeit

import prometheus_client

import weir

QUICK = "--quick" in sys.argv
N = 20_000 if QUICK else 200_000
REPEAT = 3 if QUICK else 5
THREADS = 4


def per_op(stmt, n=N):
    """Best nanoseconds per call of `stmt` (a no-argument callable running `n` ops)."""
    best = min(timeit.repeat(stmt, number=1, repeat=REPEAT))
    return best / n * 1e9


def loop(f, *args):
    def run():
        for _ in range(N):
            f(*args)

    return run


def labelled_inc(counter):
    def run():
        labels = counter.labels
        for _ in range(N):
            labels("GET", "/api").inc()

    return run


def threaded(counter):
    """THREADS threads, N ops each, on one labelled counter: wall ns per op in all."""

    def run():
        child = counter.labels("GET", "/api")
        start = threading.Barrier(THREADS)

        def work():
            start.wait()
            for _ in range(N):
                child.inc()

        ts = [threading.Thread(target=work) for _ in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return min(timeit.repeat(run, number=1, repeat=REPEAT)) / (N * THREADS) * 1e9


def suite(lib, **where):
    c = lib.Counter("bench_requests", "Requests.", ["method", "path"], **where)
    g = lib.Gauge("bench_depth", "Depth.", **where)
    h = lib.Histogram("bench_latency_seconds", "Latency.", **where)
    bound = c.labels("GET", "/api")
    return {
        ".labels(...).inc()": per_op(labelled_inc(c)),
        "bound .inc()": per_op(loop(bound.inc)),
        "Gauge.set()": per_op(loop(g.set, 3.5)),
        "Histogram.observe()": per_op(loop(h.observe, 0.3)),
        f"{THREADS} threads, one labelled counter": threaded(c),
    }


def otel_suite():
    try:
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError:
        return None
    meter = MeterProvider().get_meter("bench")
    c = meter.create_counter("bench_requests")
    h = meter.create_histogram("bench_latency_seconds")
    attrs = {"method": "GET", "path": "/api"}
    return {
        ".labels(...).inc()": per_op(loop(c.add, 1, attrs)),
        "Histogram.observe()": per_op(loop(h.record, 0.3, attrs)),
    }


def main():
    theirs = suite(prometheus_client, registry=prometheus_client.CollectorRegistry())
    inst = weir.Instance('[aggregation]\nflush_interval = "1h"\n')
    ours = suite(weir, instance=inst)
    otel = otel_suite()
    print(f"{N} ops per run, best of {REPEAT}; ns per op (threads: wall ns per op in all)")
    header = f"{'operation':40} {'prometheus_client':>18} {'weir':>10} {'ratio':>7}"
    if otel:
        header += f" {'otel-sdk':>10}"
    print(header)
    for op, t in theirs.items():
        line = f"{op:40} {t:18.0f} {ours[op]:10.0f} {ours[op] / t:6.2f}x"
        if otel:
            o = otel.get(op)
            line += f" {o:10.0f}" if o else f" {'-':>10}"
        print(line)
    inst.close(0)
    print(time.strftime("run at %Y-%m-%d %H:%M:%S"))


if __name__ == "__main__":
    main()
