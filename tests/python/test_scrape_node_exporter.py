"""weir scraping a real Prometheus node exporter (Debian's `prometheus-node-exporter`,
installed by scripts/test) started by the test on a free port of 127.0.0.1.

Only the textfile collector runs, reading a file the test writes, and the exporter's
own go_*/process_* metrics are off, so every value is known: the textfile's counter,
gauge and histogram, the collector's gauges, and two handler error counters that stay
at 0. node_exporter answers weir's Accept
header in the protobuf exposition format, gzip-compressed; the test checks that weir
logged that format, that `up` is 1, and the exact values weir aggregated."""

import os

import pytest

from backends import BackendProcess, http, poll
from weir_process import WeirProcess, flushes, parse_exposition, total

TEXTFILE = """# HELP weir_ne_jobs_total Jobs done.
# TYPE weir_ne_jobs_total counter
weir_ne_jobs_total{{queue="mail"}} {jobs}
# HELP weir_ne_temperature_celsius A temperature.
# TYPE weir_ne_temperature_celsius gauge
weir_ne_temperature_celsius{{room="lab"}} {temperature}
# HELP weir_ne_latency_seconds A latency.
# TYPE weir_ne_latency_seconds histogram
weir_ne_latency_seconds_bucket{{le="0.1"}} {fast}
weir_ne_latency_seconds_bucket{{le="1"}} {slow}
weir_ne_latency_seconds_bucket{{le="+Inf"}} {count}
weir_ne_latency_seconds_sum {sum}
weir_ne_latency_seconds_count {count}
"""


class NodeExporter(BackendProcess):
    """`prometheus-node-exporter` with only the textfile collector, on `self.port`."""

    binary = "prometheus-node-exporter"
    package = "prometheus-node-exporter"
    ready_path = "/metrics"

    def __init__(self, tmp_path):
        super().__init__(tmp_path, "node-exporter")
        self.textfile_dir = self.dir / "textfile"
        self.textfile_dir.mkdir(parents=True, exist_ok=True)

    def args(self):
        return [
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.disable-exporter-metrics",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={self.textfile_dir}",
            *self.web_args(),
        ]

    def write_textfile(self, **values):
        """Replaces the textfile atomically (the exporter reads it at every scrape)."""
        tmp = self.textfile_dir / "weir.prom.tmp"
        tmp.write_text(TEXTFILE.format(**values))
        os.replace(tmp, self.textfile_dir / "weir.prom")


@pytest.fixture
def node_exporter(tmp_path):
    exporter = NodeExporter(tmp_path)
    exporter.write_textfile(jobs=100, temperature=21.5, fast=1, slow=2, count=3, sum=1.25)
    exporter.start()
    yield exporter
    exporter.stop()


def test_node_exporter_target(tmp_path, node_exporter):
    instance = f"127.0.0.1:{node_exporter.port}"
    weir = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        "[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n"
        '[exposition]\naddress = "127.0.0.1:0"\n[admin]\nenabled = false\n'
        f'[[scrape.targets]]\nurl = "http://{instance}/metrics"\n'
        'job = "node"\ninterval = "100ms"\ntimeout = "90ms"\n',
    )
    labels = (("instance", instance), ("job", "node"))

    def page():
        status, body = http("GET", f"http://{exposition}/metrics")
        assert status == 200, body
        return parse_exposition(body.decode())

    def value(p, name, *extra):
        return p.get((name, tuple(sorted(labels + extra))))

    try:
        exposition = weir.wait_for("exposition endpoint listening")["address"]
        fmt = weir.wait_for("scrape format")
        # The baseline: the first scrapes' values reached the exposition page.
        poll(
            page,
            lambda p: value(p, "weir_ne_jobs_total", ("queue", "mail")) == 100,
            what="baseline scraped",
        )
        node_exporter.write_textfile(jobs=130, temperature=19.0, fast=2, slow=6, count=9, sum=7.5)
        after = poll(
            page,
            lambda p: value(p, "weir_ne_jobs_total", ("queue", "mail")) == 130
            and value(p, "weir_ne_latency_seconds_count") == 9,
            what="increase scraped",
        )
        events = weir.stop()
    finally:
        weir.kill()

    assert fmt["format"] == "protobuf", fmt
    assert fmt["gzip"] is True, fmt
    assert fmt["url"] == f"http://{instance}/metrics", fmt
    assert [e for e in events if e.get("message") == "scrape format"] == [fmt], "logged once"

    assert value(after, "weir_ne_temperature_celsius", ("room", "lab")) == 19.0
    buckets = {le: value(after, "weir_ne_latency_seconds_bucket", ("le", le)) for le in ("0.1", "1", "+Inf")}
    assert buckets == {"0.1": 2, "1": 6, "+Inf": 9}, buckets
    assert value(after, "weir_ne_latency_seconds_sum") == 7.5
    assert value(after, "node_textfile_scrape_error") == 0
    assert value(after, "node_scrape_collector_success", ("collector", "textfile")) == 1
    assert value(after, "up") == 1
    # Everything the exporter serves: the textfile's three families, its mtime, the
    # scrape error gauge, the collector's duration and success, the build info and
    # the handler's two error counters (which stay 0).
    assert value(after, "scrape_samples_scraped") == 10

    # The only counter went 100 -> 130 and the histogram 3 -> 9 observations: the
    # deltas after the baseline, exactly.
    assert total(events, "counter_delta_sum") == 30, flushes(events)
    assert total(events, "histogram_observations") == 6, flushes(events)
    assert not [e for e in events if e.get("message") in ("scrape failed", "scrape: malformed lines skipped")], events
