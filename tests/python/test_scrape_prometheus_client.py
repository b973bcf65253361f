"""weir scraping a real `prometheus_client` exposition server (the official Python
client) started by the test on a free port: counter increments between scrapes arrive
as exact deltas, histogram observations as exact counts."""

import socket
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from weir_process import QUIET, WeirProcess, total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_client_target(tmp_path):
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", ["queue"], registry=registry)
    latency = Histogram("job_seconds", "Job latency.", registry=registry, buckets=(0.1, 1.0))
    jobs.labels("mail").inc(100)  # before weir's first scrape: the baseline
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    weir = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        + QUIET
        + f'[[scrape.targets]]\nurl = "http://127.0.0.1:{port}/metrics"\n'
        'job = "py"\ninterval = "100ms"\ntimeout = "90ms"\n',
    )
    try:
        weir.wait_for("scrape target")
        time.sleep(0.6)  # a few scrapes see the baseline
        jobs.labels("mail").inc(7)
        for v in (0.05, 0.5, 5.0):
            latency.observe(v)
        time.sleep(0.6)  # a few scrapes see the increase
        events = weir.stop()
    finally:
        weir.kill()
        server.shutdown()
    # Only the increase after the baseline is a delta: the counter's 7 (the
    # histogram's observations are counted separately, its _created gauges too).
    assert total(events, "counter_delta_sum") == 7, events
    assert total(events, "histogram_observations") == 3, events
    assert not [e for e in events if e.get("message") == "scrape failed"], events
