"""The same operations given to prometheus_client and to weir yield the same values."""

import random

import prometheus_client
import pytest

import weir
from conftest import samples

BUCKETS = [0.1, 0.5, 1.0, 2.5, 10.0]


def run(lib, **where):
    """A fixed, pseudo-random sequence of operations on one library's metrics.
    Amounts are multiples of 0.25, so float sums are exact whatever the order."""
    rng = random.Random(20261130)
    c = lib.Counter("parity_requests", "Requests.", ["path", "code"], **where)
    u = lib.Counter("parity_ticks_total", "Ticks.", **where)
    g = lib.Gauge("parity_depth", "Depth.", ["queue"], **where)
    h = lib.Histogram("parity_latency_seconds", "Latency.", ["path"], buckets=BUCKETS, **where)
    d = lib.Histogram("parity_default_seconds", "Default buckets.", **where)
    s = lib.Summary("parity_size_bytes", "Size.", ["path"], **where)
    paths = ["/", "/api", "/static"]
    for _ in range(3000):
        op = rng.randrange(9)
        path = rng.choice(paths)
        amount = rng.randrange(0, 40) / 4
        if op == 0:
            c.labels(path, str(rng.choice([200, 404, 500]))).inc()
        elif op == 1:
            c.labels(code="200", path=path).inc(amount)
        elif op == 2:
            u.inc()
        elif op == 3:
            g.labels(path).set(amount - 5)
        elif op == 4:
            g.labels(path).inc(amount)
        elif op == 5:
            g.labels(path).dec(amount)
        elif op == 6:
            # Bucket bounds themselves included: `le` is inclusive in both.
            h.labels(path).observe(rng.choice([0.1, 0.5, 1.0, 10.0, 0.25, 3.0, 50.0, amount]))
        elif op == 7:
            d.observe(amount / 8)
        else:
            s.labels(path).observe(amount - 1)
    with h.labels("/timed").time():
        pass
    with pytest.raises(KeyError):
        with c.labels("/", "500").count_exceptions(KeyError):
            raise KeyError("x")


def test_prometheus_client_and_weir_agree_on_every_value(instance):
    registry = prometheus_client.CollectorRegistry()
    run(prometheus_client, registry=registry)
    run(weir, instance=instance)
    theirs = samples(prometheus_client.generate_latest(registry))
    ours = samples(instance.generate_latest())
    # The timed block's duration differs between the two runs; its count does not.
    timed = ("parity_latency_seconds_sum", frozenset({("path", "/timed")}))
    assert abs(theirs.pop(timed) - ours.pop(timed)) < 1.0
    missing = set(theirs) - set(ours)
    assert not missing, f"series weir does not expose: {sorted(missing)[:5]}"
    different = {k: (theirs[k], ours[k]) for k in theirs if theirs[k] != ours[k]}
    assert not different
    # weir's summary has one +Inf bucket on top of prometheus_client's count and sum;
    # nothing else is extra.
    extra = {k[0] for k in set(ours) - set(theirs)}
    assert extra == {"parity_size_bytes_bucket"}
