"""A sparse counter across the series TTL, end to end: a StatsD counter incremented,
left idle until weir evicts its series, then incremented again, must go on counting
from its running total (weir keeps evicted counters' totals, see
`aggregation.kept_totals_capacity`) in every cumulative output: the exposition
endpoint, Prometheus through remote write, InfluxDB 1.x (cumulative). Were it to start
again from 0, each backend would see the total drop back to 1 (a counter reset to
Prometheus, a fall in InfluxDB) and the increments would be lost to `increase()`.

weir flushes every 200 ms with a short `series_ttl`; the test moves on by weir's own
counters and pages (an eviction counted in `weir_series_evicted_total`, a value on the
exposition page, a sample in a backend), each waited on with a deadline, never by
sleeping."""

import time

import pytest

from backends import http, labels_key
from weir_process import daemon_config, daemons, parse_exposition, pipeline_toml, send_statsd_lines  # noqa: F401 (daemons: a fixture)

# Short enough for three evictions in a few seconds, long enough (ten flushes) that
# every running total is on the exposition page for a while before its eviction.
SERIES_TTL = "2s"
FLUSH_INTERVAL = "200ms"
# Each wait ends well before this: TTL plus a flush plus weir's and the backends' lag.
DEADLINE_S = 15
POLL_S = 0.02

SERIES = ("sparse_errors", ())


def wait_until(probe, what, timeout=DEADLINE_S):
    """Calls `probe()` every POLL_S until it returns something other than None and
    returns that; fails the test after `timeout` seconds, saying `what` (a str, or a
    function giving one, called then)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"{what() if callable(what) else what}: not within {timeout} s")
        time.sleep(POLL_S)


def test_a_sparse_counter_keeps_its_total_across_the_series_ttl(tmp_path, prometheus, influxdb, daemons):
    pipelines = pipeline_toml("prom", "prometheus_remote_write", prometheus.remote_write_url) + pipeline_toml(
        "influx", "influxdb", influxdb.url, database="weir", temporality="cumulative"
    )
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipelines,
            exposition="127.0.0.1:0",
            flush_interval=FLUSH_INTERVAL,
            aggregation=f'series_ttl = "{SERIES_TTL}"\n',
        ),
    )
    page_url = f"http://{weir.exposition}/metrics"
    seen_on_page = []  # every value the exposition page showed, in order

    def page_value():
        status, body = http("GET", page_url)
        assert status == 200, body
        value = parse_exposition(body.decode()).get(SERIES)
        if value is not None and (not seen_on_page or seen_on_page[-1] != value):
            seen_on_page.append(value)
        return value

    def more_evicted(before):
        """`weir_series_evicted_total` once above `before`, else None."""
        value = weir.metric("weir_series_evicted_total")
        return value if value is not None and value > before else None

    evicted = weir.metric("weir_series_evicted_total") or 0
    for total in (1, 2, 3):
        send_statsd_lines(weir.statsd, ["sparse.errors:1|c"])
        # The running total, not a restart at 1.
        wait_until(
            lambda: True if page_value() == total else None,
            lambda: f"exposition shows {total} (it showed {seen_on_page})",
        )
        # Idle past the TTL: weir evicts the series (and keeps its total).
        evicted = wait_until(lambda: more_evicted(evicted), f"series evicted after total {total}")
        # Evicted: gone from the page until it comes back.
        wait_until(lambda: True if page_value() is None else None, f"page without the series after total {total}")
    assert seen_on_page == [1.0, 2.0, 3.0], seen_on_page

    # Prometheus (remote write): one sample per flush while the series lived; every
    # running total is there, in order, never going down (no reset for increase()).
    key = labels_key({"__name__": "sparse_errors"})

    def prom_samples():
        values = [v for _, v in prometheus.samples("sparse_errors", "5m").get(key, [])]
        return values if values and values[-1] == 3.0 else None

    values = wait_until(prom_samples, "Prometheus has the total 3")
    assert values == sorted(values), values
    assert sorted(set(values)) == [1.0, 2.0, 3.0], values
    assert prometheus.value("increase(sparse_errors[5m])") > 0
    resets = prometheus.value("resets(sparse_errors[5m])")
    assert resets == 0.0, resets

    # InfluxDB (cumulative): one row per flush while the series lived, the same.
    def influx_values():
        rows = influxdb.rows("SELECT value FROM sparse_errors", db="weir", epoch="ms")
        values = [r["value"] for r in rows]
        return values if values and values[-1] == 3.0 else None

    values = wait_until(influx_values, "InfluxDB has the total 3")
    assert values == sorted(values), values
    assert sorted(set(values)) == [1.0, 2.0, 3.0], values

    # The pipelines lost nothing on the way.
    for name in ("prom", "influx"):
        status = weir.pipeline_status(name)
        assert (status["failed_batches"], status["last_error"]) == (0, None), status
