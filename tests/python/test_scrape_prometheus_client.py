"""weir scraping a real `prometheus_client` exposition server (the official Python
client) started by the test on a port of its own (port 0): counter increments between
scrapes arrive as exact deltas, histogram observations as exact counts.

The test moves on by weir's own scrape count (admin `GET /status`, which counts a
scrape when it starts; one target's scrapes never overlap), not by sleeping: the
increase is made once a scrape has finished (so the baseline was seen), and weir is
stopped once a scrape that started after the increase has finished."""

import json

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from backends import http, poll
from weir_process import WeirProcess, total

# Everything off but the scraper and the admin API (on a port of its own).
CONFIG = (
    '[aggregation]\nflush_interval = "200ms"\n'
    "[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n"
    '[exposition]\nenabled = false\n[admin]\naddress = "127.0.0.1:0"\n'
)


def test_prometheus_client_target(tmp_path):
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", ["queue"], registry=registry)
    latency = Histogram("job_seconds", "Job latency.", registry=registry, buckets=(0.1, 1.0))
    jobs.labels("mail").inc(100)  # before weir's first scrape: the baseline
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    weir = WeirProcess(
        tmp_path,
        CONFIG + f'[[scrape.targets]]\nurl = "{url}"\njob = "py"\ninterval = "100ms"\ntimeout = "90ms"\n',
    )
    try:
        admin = weir.wait_for("admin API listening")["address"]

        def target():
            status, body = http("GET", f"http://{admin}/status")
            assert status == 200, body
            (t,) = [t for t in json.loads(body)["scrape_targets"] if t["url"] == url]
            return t

        # Scrape 2 has started, so scrape 1 has finished: the baseline was seen.
        seen = poll(target, lambda t: t["scrapes"] >= 2, what="a first scrape done")
        assert seen["up"] and seen["failures"] == 0, seen
        jobs.labels("mail").inc(7)
        for v in (0.05, 0.5, 5.0):
            latency.observe(v)
        # Scrape `started` may have begun before the increase; scrape `started + 1`
        # began after it, and has finished once scrape `started + 2` begins.
        started = target()["scrapes"]
        done = poll(target, lambda t: t["scrapes"] >= started + 2, what="a scrape after the increase done")
        assert done["failures"] == 0, done
        events = weir.stop()
    finally:
        weir.kill()
        server.shutdown()
    # Only the increase after the baseline is a delta: the counter's 7 (the
    # histogram's observations are counted separately, its _created gauges too).
    assert total(events, "counter_delta_sum") == 7, events
    assert total(events, "histogram_observations") == 3, events
    assert not [e for e in events if e.get("message") == "scrape failed"], events


def test_a_counter_created_after_weir_started_counts_its_first_value(tmp_path):
    # prometheus_client answers weir's Accept in OpenMetrics, with a `_created` line per
    # counter: a counter that did not exist when weir started counted all its value
    # under weir's watch, so its first scrape is an increase, not a baseline.
    registry = CollectorRegistry()
    old = Counter("old_jobs", "Counted before weir started.", registry=registry)
    old.inc(100)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    weir = WeirProcess(
        tmp_path,
        CONFIG + f'[[scrape.targets]]\nurl = "{url}"\njob = "py"\ninterval = "100ms"\ntimeout = "90ms"\n',
    )
    try:
        admin = weir.wait_for("admin API listening")["address"]

        def target():
            status, body = http("GET", f"http://{admin}/status")
            assert status == 200, body
            (t,) = [t for t in json.loads(body)["scrape_targets"] if t["url"] == url]
            return t

        seen = poll(target, lambda t: t["scrapes"] >= 2, what="a first scrape done")
        assert seen["up"] and seen["failures"] == 0, seen
        # Created now, after weir started (its `_created` says so).
        new = Counter("new_jobs", "Counted after weir started.", registry=registry)
        new.inc(5)
        old.inc(2)
        started = target()["scrapes"]
        done = poll(target, lambda t: t["scrapes"] >= started + 2, what="a scrape after the increase done")
        assert done["failures"] == 0, done
        events = weir.stop()
    finally:
        weir.kill()
        server.shutdown()
    # The old counter's 100 is a baseline, its 2 an increase; the new one's 5 counts.
    assert total(events, "counter_delta_sum") == 2 + 5, events
    formats = [e for e in events if e.get("message") == "scrape format"]
    assert formats and formats[0]["format"] == "openmetrics", formats
