"""A Python program's metrics reach a real Prometheus through a
`prometheus_remote_write` pipeline and a weir daemon through `otlp_http`, and what a
SIGKILLed program had flushed into its WAL is sent by the next start on the same data
directory."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
from backends import Prometheus, free_port  # noqa: E402
from weir_process import daemon_config, daemons, parse_exposition  # noqa: E402,F401

PROGRAM = textwrap.dedent(
    """
    import sys, weir
    data_dir, endpoint, mode = sys.argv[1:4]
    inst = weir.Instance(f'''
    data_dir = "{data_dir}"
    [aggregation]
    flush_interval = "1h"
    [[pipelines]]
    name = "prom"
    type = "prometheus_remote_write"
    endpoint = "{endpoint}"
    retry.initial_backoff = "50ms"
    retry.max_backoff = "200ms"
    ''')
    if mode == "record":
        c = weir.Counter("pyfwd_orders", "Orders.", ["shop"], instance=inst)
        g = weir.Gauge("pyfwd_queue", "Queue.", instance=inst)
        h = weir.Histogram("pyfwd_latency_seconds", "Latency.", buckets=[0.1, 1], instance=inst)
        c.labels("eu").inc(7)
        c.labels(shop="us").inc(2.5)
        g.set(12)
        for v in (0.05, 0.5, 5):
            h.observe(v)
        inst.flush()
        print("flushed", flush=True)
    # Final flush, then up to 10 s for the pipeline to send what its WAL holds.
    inst.close(10)
    """
)


def run_program(tmp_path, data_dir, endpoint, mode):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    return subprocess.run(
        [sys.executable, str(script), str(data_dir), endpoint, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


EXPECTED = {
    'pyfwd_orders_total{shop="eu"}': 7,
    'pyfwd_orders_total{shop="us"}': 2.5,
    "pyfwd_queue": 12,
    'pyfwd_latency_seconds_bucket{le="0.1"}': 1,
    'pyfwd_latency_seconds_bucket{le="1"}': 2,
    'pyfwd_latency_seconds_bucket{le="+Inf"}': 3,
    "pyfwd_latency_seconds_count": 3,
    "pyfwd_latency_seconds_sum": 5.55,
}


def assert_in_prometheus(prom):
    for promql, want in EXPECTED.items():
        got = prom.wait_for(promql, lambda v: bool(v), timeout=20)
        assert list(got.values()) == [pytest.approx(want)], promql


def test_a_python_programs_metrics_reach_prometheus_through_remote_write(tmp_path):
    prom = Prometheus(tmp_path).start()
    try:
        out = run_program(tmp_path, tmp_path / "data", prom.remote_write_url, "record")
        assert "flushed" in out.stdout
        assert_in_prometheus(prom)
    finally:
        prom.stop()


KILLED = textwrap.dedent(
    """
    import sys, time, weir
    data_dir, endpoint = sys.argv[1:3]
    inst = weir.Instance(f'''
    data_dir = "{data_dir}"
    [aggregation]
    flush_interval = "1h"
    [[pipelines]]
    name = "prom"
    type = "prometheus_remote_write"
    endpoint = "{endpoint}"
    retry.initial_backoff = "50ms"
    retry.max_backoff = "200ms"
    ''')
    c = weir.Counter("pyfwd_orders", "Orders.", ["shop"], instance=inst)
    g = weir.Gauge("pyfwd_queue", "Queue.", instance=inst)
    h = weir.Histogram("pyfwd_latency_seconds", "Latency.", buckets=[0.1, 1], instance=inst)
    c.labels("eu").inc(7)
    c.labels(shop="us").inc(2.5)
    g.set(12)
    for v in (0.05, 0.5, 5):
        h.observe(v)
    inst.flush()  # into the WAL (wal.sync = "flush": fsynced before it returns)
    print("flushed", flush=True)
    while True:
        time.sleep(1)
    """
)


def test_a_sigkilled_programs_wal_is_sent_by_the_next_start(tmp_path):
    prom = Prometheus(tmp_path)  # port chosen, not started: the backend is down
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), prom.remote_write_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "flushed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    prom.start()
    try:
        # A new program on the same data directory records nothing; its start replays
        # the WAL and its close gives the pipeline time to send.
        run_program(tmp_path, data_dir, prom.remote_write_url, "replay")
        assert_in_prometheus(prom)
    finally:
        prom.stop()


OTLP_PROGRAM = textwrap.dedent(
    """
    import sys, weir
    data_dir, endpoint = sys.argv[1:3]
    inst = weir.Instance(f'''
    data_dir = "{data_dir}"
    [aggregation]
    flush_interval = "1h"
    [[pipelines]]
    name = "weir"
    type = "otlp_http"
    endpoint = "{endpoint}"
    ''')
    c = weir.Counter("pyotlp_orders", "Orders.", ["shop"], instance=inst)
    h = weir.Histogram("pyotlp_latency_seconds", "Latency.", buckets=[0.1, 1], instance=inst)
    c.labels("eu").inc(7)
    c.labels(shop="us").inc(2.5)
    for v in (0.05, 0.5, 5):
        h.observe(v)
    inst.flush()
    c.labels("eu").inc(1)
    inst.close(10)
    """
)


def test_a_python_programs_metrics_reach_a_weir_daemon_through_otlp_http(tmp_path, daemons):
    exposition = f"127.0.0.1:{free_port()}"
    daemon = daemons(
        tmp_path / "daemon",
        daemon_config(tmp_path / "daemon-data", statsd=False, otlp=True, exposition=exposition),
    )
    script = tmp_path / "otlp_program.py"
    script.write_text(OTLP_PROGRAM)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), "http://" + daemon.otlp_http],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    daemon.flush()
    with urllib.request.urlopen(f"http://{exposition}/metrics", timeout=10) as r:
        page = parse_exposition(r.read().decode())
    want = {
        ("pyotlp_orders_total", (("shop", "eu"),)): 8,
        ("pyotlp_orders_total", (("shop", "us"),)): 2.5,
        ("pyotlp_latency_seconds_bucket", (("le", "0.1"),)): 1,
        ("pyotlp_latency_seconds_bucket", (("le", "1"),)): 2,
        ("pyotlp_latency_seconds_bucket", (("le", "+Inf"),)): 3,
        ("pyotlp_latency_seconds_count", ()): 3,
        ("pyotlp_latency_seconds_sum", ()): 5.55,
    }
    got = {k: page.get(k) for k in want}
    assert got == pytest.approx(want), page
