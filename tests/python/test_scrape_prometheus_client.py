"""weir scraping a real `prometheus_client` exposition server (the official Python
client) started by the test on a free port: counter increments between scrapes arrive
as exact deltas, histogram observations as exact counts."""

import json
import pathlib
import signal
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from test_statsd_clients import TIMEOUT_S, WEIR


def free_port():
    import socket

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
    config = tmp_path / "weir.toml"
    config.write_text(
        '[aggregation]\nflush_interval = "200ms"\n'
        "[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n"
        f'[[scrape.targets]]\nurl = "http://127.0.0.1:{port}/metrics"\n'
        'job = "py"\ninterval = "100ms"\ntimeout = "90ms"\n'
        '[log]\nformat = "json"\n'
    )
    proc = subprocess.Popen(
        [str(WEIR), "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(0.6)  # a few scrapes see the baseline
        jobs.labels("mail").inc(7)
        for v in (0.05, 0.5, 5.0):
            latency.observe(v)
        time.sleep(0.6)  # a few scrapes see the increase
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.shutdown()
    assert proc.returncode == 0, out
    events = [json.loads(l) for l in out.splitlines() if l.strip()]
    flushes = [e for e in events if e.get("message") in ("flush", "final flush")]
    # Only the increase after the baseline is a delta: the counter's 7 (the
    # histogram's observations are counted separately, its _created gauges too).
    assert sum(e["counter_delta_sum"] for e in flushes) == 7, events
    assert sum(e["histogram_observations"] for e in flushes) == 3, events
    assert not [e for e in events if e.get("message") == "scrape failed"], events
