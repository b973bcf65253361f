"""weir driven by real StatsD client libraries: the Python `statsd` package (Etsy
protocol) and Datadog's `DogStatsd` (tags, distributions). Each test starts the real
`weir` binary on a free UDP port (port 0, read back from its log), sends known traffic,
stops it with SIGTERM and checks the totals in its JSON flush log lines exactly.

Per-series values come through the exposition endpoint once it exists; until then the
flush lines' totals (series, counter deltas, histogram observations) are what an
operator can see, so that is what is checked.
"""

import os
import shutil
import socket
import stat
import tempfile

import pytest
import statsd
from datadog.dogstatsd import DogStatsd

from weir_process import QUIET, WeirProcess, event, flushes, total


@pytest.fixture
def weir(tmp_path):
    """weir with only StatsD on, on an ephemeral port."""
    w = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        + QUIET.replace('[receivers.statsd]\nenabled = false', '[receivers.statsd]\naddress = "127.0.0.1:0"'),
    )
    host, port = w.wait_for("statsd receiver listening")["address"].rsplit(":", 1)
    w.host, w.port = host, int(port)
    yield w
    w.kill()


def stopped(events):
    return event(events, "statsd receiver stopped")


def test_statsd_client_counters_gauges_and_timers(weir):
    c = statsd.StatsClient(weir.host, weir.port, prefix="shop")
    for i in range(100):
        c.incr("orders")  # +1
        c.incr("revenue", 5)  # +5
        c.gauge("queue", i)  # last value wins
        c.timing("checkout", 120)  # ms, observed as 0.12 s
    c.decr("orders", 10)  # a negative counter increment: refused and counted
    with c.pipeline() as pipe:  # several lines in one datagram
        pipe.incr("orders", 3)
        pipe.gauge("queue", 5, delta=True)
    for user in ("alice", "bob", "alice"):
        c.set("visitors", user)  # a set: 2 distinct members
    events = weir.stop()
    assert total(events, "counter_delta_sum") == 100 * 1 + 100 * 5 + 3
    assert total(events, "histogram_observations") == 100
    s = stopped(events)
    assert s["samples"] == 100 * 4 + 2 + 3
    assert s["rejected"] == 1
    assert s["parse_errors"] == 0
    last = flushes(events)[-1]
    # shop_orders, shop_revenue, shop_queue, shop_checkout, shop_visitors
    assert last["active_series"] == 5
    assert "invalid_value=1" in last["rejected_reasons"]


def test_dogstatsd_tags_distributions_and_multiple_series(weir):
    d = DogStatsd(host=weir.host, port=weir.port, disable_telemetry=True)
    for i in range(50):
        d.increment("api.requests", tags=[f"route:/r{i % 5}", "env:prod"])
        d.histogram("api.latency", 0.25, tags=["env:prod"])
        d.distribution("api.payload", 512, tags=["env:prod"])
        d.gauge("api.inflight", i, tags=["env:prod", "canary"])
    d.flush()
    events = weir.stop()
    assert total(events, "counter_delta_sum") == 50
    assert total(events, "histogram_observations") == 100
    s = stopped(events)
    assert s["samples"] == 200
    assert s["rejected"] == 0 and s["parse_errors"] == 0
    # 5 routes of api_requests, plus api_latency, api_payload, api_inflight.
    assert flushes(events)[-1]["active_series"] == 8


def test_malformed_lines_are_skipped_and_counted_not_fatal(weir):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"good:1|c\nbad line\nworse:x|c\nsets:alice|s\ngood:2|c\n", (weir.host, weir.port))
    events = weir.stop()
    assert total(events, "counter_delta_sum") == 3
    s = stopped(events)
    assert s["lines"] == 3 and s["parse_errors"] == 2
    warn = [e for e in events if e.get("message") == "statsd: malformed lines skipped"]
    assert warn, events
    assert "missing_value=1" in warn[-1]["since_start"]
    assert "malformed_value=1" in warn[-1]["since_start"]


@pytest.fixture
def short_dir():
    """A directory with a short path: a Unix socket path has at most 107 bytes."""
    d = tempfile.mkdtemp(prefix="weir-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_dogstatsd_over_a_unix_datagram_socket(tmp_path, short_dir):
    path = os.path.join(short_dir, "dsd.socket")
    w = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        + QUIET
        + f'[receivers.statsd_unix]\nenabled = true\npath = "{path}"\nmode = "0600"\n',
    )
    try:
        w.wait_for("statsd receiver listening (Unix datagram)")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # socket_timeout: the client waits when the socket's queue is full
        # (net.unix.max_dgram_qlen datagrams, 10 by default) instead of dropping
        # the datagram on EAGAIN, its default.
        d = DogStatsd(socket_path=path, disable_telemetry=True, socket_timeout=10)
        for i in range(50):
            d.increment("uds.requests", 2, tags=[f"route:/r{i % 5}"])
            d.gauge("uds.inflight", i, tags=["env:prod"])
            d.distribution("uds.payload", 512)
        d.flush()
        assert d.packets_dropped_writer == 0
        d.close_socket()
        events = w.stop()
    finally:
        w.kill()
    assert total(events, "counter_delta_sum") == 100
    assert total(events, "histogram_observations") == 50
    s = event(events, "statsd unix receiver stopped")
    assert s["samples"] == 150 and s["lines"] == 150
    assert s["rejected"] == 0 and s["parse_errors"] == 0
    # 5 routes of uds_requests, uds_inflight, uds_payload.
    assert flushes(events)[-1]["active_series"] == 7
    assert not os.path.exists(path), "the socket file is removed on stop"


def test_statsd_tcp_client_over_tcp(tmp_path):
    w = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        + QUIET
        + '[receivers.statsd_tcp]\nenabled = true\naddress = "127.0.0.1:0"\n',
    )
    try:
        host, port = w.wait_for("statsd receiver listening (TCP)")["address"].rsplit(":", 1)
        c = statsd.TCPStatsClient(host, int(port), prefix="tcp")
        for i in range(100):
            c.incr("orders")  # +1
            c.incr("revenue", 5)  # +5
            c.gauge("queue", i)
            c.timing("checkout", 120)
        with c.pipeline() as pipe:  # several lines in one write
            pipe.incr("orders", 3)
            pipe.gauge("queue", 5, delta=True)
        c.close()
        # A raw connection: one line split across two writes, then an over-long line
        # that is skipped without losing the next one.
        raw = socket.create_connection((host, int(port)))
        raw.sendall(b"tcp.split:")
        raw.sendall(b"7|c\n")
        raw.sendall(b"tcp.long:1|c|#pad:" + b"x" * 70000 + b"\ntcp.after:2|c\n")
        raw.close()
        events = w.stop()
    finally:
        w.kill()
    assert total(events, "counter_delta_sum") == 100 * 1 + 100 * 5 + 3 + 7 + 2
    assert total(events, "histogram_observations") == 100
    s = event(events, "statsd tcp receiver stopped")
    assert s["samples"] == 100 * 4 + 2 + 2
    assert s["parse_errors"] == 1
    assert s["connections"] == 2
