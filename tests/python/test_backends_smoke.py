"""The real backends of backends.py work as the pipeline tests need them: each takes
data through its own API, reads it back exactly, and keeps it across a stop and a
start on the same port and data directory; the OTLP recorder records exactly what
the OpenTelemetry SDK exports and fails on demand the way a real collector does."""

import http.server
import threading
import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult

from backends import now_ms, poll, snappy_block
from weir_process import sdk_export


def restart_on_same_port(backend):
    port, data_dir = backend.port, backend.data_dir
    assert backend.stop() == 0, backend.log_tail()
    assert not backend.ready()
    backend.start()
    assert (backend.port, backend.data_dir) == (port, data_dir)


def test_snappy_literals_cover_every_length_form():
    assert snappy_block(b"") == b"\x00"
    assert snappy_block(b"abc") == b"\x03" + bytes([2 << 2]) + b"abc"
    long = bytes(range(256)) * 300  # 76800 bytes: two chunks, two-byte lengths
    block = snappy_block(long)
    assert block[:3] == b"\x80\xd8\x04"  # varint 76800
    assert block[3:6] == bytes([61 << 2]) + (65535).to_bytes(2, "little")
    rest = block[6 + 65536 :]
    assert rest[:3] == bytes([61 << 2]) + (76800 - 65536 - 1).to_bytes(2, "little")
    assert len(block) == 3 + 2 * 3 + len(long)


def remote_write_series(t):
    return [
        ({"__name__": "weir_smoke", "region": "eu"}, [(1.5, t - 1000), (2.5, t)]),
        ({"__name__": "weir_smoke", "region": "us"}, [(-3.0, t)]),
    ]


def remote_write_expected(t, extra=()):
    return {
        (("__name__", "weir_smoke"), *extra, ("region", "eu")): [(t - 1000, 1.5), (t, 2.5)],
        (("__name__", "weir_smoke"), *extra, ("region", "us")): [(t, -3.0)],
    }


def test_prometheus_remote_write_reads_back_and_persists(prometheus):
    assert prometheus.value("vector(1)") == 1.0
    assert prometheus.values("up") == {}  # no scrape jobs
    t = now_ms()
    status, body = prometheus.remote_write(remote_write_series(t))
    assert status == 204, body
    expected = remote_write_expected(t)
    assert prometheus.samples("weir_smoke", "5m") == expected
    assert prometheus.values("sum(weir_smoke)") == {(): -0.5}
    # A sample older than the newest of its series is refused (400, not retryable).
    status, body = prometheus.remote_write([({"__name__": "weir_smoke", "region": "eu"}, [(9.0, t - 500)])])
    assert status == 400, body

    restart_on_same_port(prometheus)
    assert prometheus.samples("weir_smoke", "5m") == expected


def test_prometheus_scrapes_a_target(prometheus):
    body = b"# TYPE weir_scraped_total counter\nweir_scraped_total{kind=\"a\"} 42\n"

    class Exposition(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        prometheus.scrape(f"127.0.0.1:{server.server_address[1]}", job="smoke")
        got = prometheus.wait_for('weir_scraped_total{job="smoke"}')
        assert list(got.values()) == [42.0]
        assert prometheus.value('up{job="smoke"}') == 1.0
    finally:
        server.shutdown()
        server.server_close()


def test_influxdb_line_protocol_reads_back_and_persists(influxdb):
    t = time.time_ns()
    status, body = influxdb.write("weir", [f"smoke,host=a value=1.5,n=3i {t}", f"smoke,host=b value=-2 {t + 1}"])
    assert status == 204, body
    query = "SELECT value, n FROM smoke GROUP BY host"
    expected = [
        {"time": t, "value": 1.5, "n": 3, "host": "a", "_measurement": "smoke"},
        {"time": t + 1, "value": -2, "n": None, "host": "b", "_measurement": "smoke"},
    ]
    assert influxdb.rows(query, "weir") == expected
    status, _ = influxdb.write("weir", "not line protocol")
    assert status == 400
    status, _ = influxdb.write("nosuchdb", f"smoke value=1 {t}")
    assert status == 404

    restart_on_same_port(influxdb)
    assert influxdb.rows(query, "weir") == expected


def test_influxdb_keeps_acknowledged_writes_across_a_crash(influxdb):
    t = time.time_ns()
    status, body = influxdb.write("weir", f"crash value=7 {t}")
    assert status == 204, body
    influxdb.kill()  # SIGKILL: no clean shutdown, the WAL is replayed at start
    influxdb.start()
    assert influxdb.rows("SELECT value FROM crash", "weir") == [{"time": t, "value": 7, "_measurement": "crash"}]


def test_victoria_metrics_influx_and_remote_write_read_back_and_persist(victoria_metrics):
    vm = victoria_metrics
    t = now_ms()
    status, body = vm.write_lines([f"smoke,host=a value=1.5,n=3i {t}", f"smoke,host=b value=-2 {t - 1}"], db="weir", precision="ms")
    assert status == 204, body
    status, body = vm.remote_write(remote_write_series(t))
    assert status == 204, body

    def read():
        return vm.samples('{__name__=~"smoke_.*|weir_smoke"}', "5m")

    expected = {
        (("__name__", "smoke_n"), ("db", "weir"), ("host", "a")): [(t, 3.0)],
        (("__name__", "smoke_value"), ("db", "weir"), ("host", "a")): [(t, 1.5)],
        (("__name__", "smoke_value"), ("db", "weir"), ("host", "b")): [(t - 1, -2.0)],
        **remote_write_expected(t),
    }
    assert read() == expected  # raw samples: readable at once
    # An instant query of "now" sees them once VM's second-resolution clock passed them.
    sums = vm.wait_for('sum(smoke_value{db="weir"})', lambda v: v == {(): -0.5}, timeout=5)
    assert sums == {(): -0.5}

    restart_on_same_port(vm)
    assert read() == expected


def export(recorder, rounds, timeout=5):
    """Records `rounds` with the SDK (delta temporality) and exports after each one
    through the real OTLP gRPC exporter; returns the export results."""
    return sdk_export(
        OTLPMetricExporter(endpoint=recorder.url, insecure=True, timeout=timeout),
        lambda meter: {
            "orders": meter.create_counter("shop.orders"),
            "latency": meter.create_histogram("shop.latency"),
        },
        rounds,
        {"service.name": "smoke"},
        {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA},
    )


def orders(n, region):
    return lambda i: i["orders"].add(n, {"region": region})


EU = ("shop.orders", (("region", "eu"),))
US = ("shop.orders", (("region", "us"),))


def test_otlp_recorder_records_delta_sums(otlp_recorder):
    def round1(i):
        orders(5, "eu")(i)
        orders(2, "us")(i)
        for v in (0.1, 0.2, 3.0):
            i["latency"].record(v)

    assert export(otlp_recorder, [round1, orders(1, "eu")]) == [MetricExportResult.SUCCESS] * 2
    assert otlp_recorder.request_count == 2 and otlp_recorder.attempts == 2
    assert otlp_recorder.delta_sums() == {EU: 6, US: 2}
    assert otlp_recorder.delta_histogram_counts() == {("shop.latency", ()): 3}
    resources = {p.resource for p in otlp_recorder.points()}
    assert len(resources) == 1 and ("service.name", "smoke") in next(iter(resources))


def test_otlp_recorder_unavailable_is_retried_by_the_exporter(otlp_recorder):
    otlp_recorder.fail_next(1)
    assert export(otlp_recorder, [orders(4, "eu")]) == [MetricExportResult.SUCCESS]
    assert (otlp_recorder.attempts, otlp_recorder.failed, otlp_recorder.request_count) == (2, 1, 1)
    assert otlp_recorder.delta_sums() == {EU: 4}

    otlp_recorder.clear()
    otlp_recorder.fail_always()
    assert export(otlp_recorder, [orders(1, "eu")], timeout=1.5) == [MetricExportResult.FAILURE]
    assert otlp_recorder.attempts >= 1 and otlp_recorder.request_count == 0
    otlp_recorder.recover()
    assert export(otlp_recorder, [orders(2, "us")]) == [MetricExportResult.SUCCESS]
    assert otlp_recorder.delta_sums() == {US: 2}


def test_otlp_recorder_invalid_argument_is_not_retried(otlp_recorder):
    otlp_recorder.fail_next(3, grpc.StatusCode.INVALID_ARGUMENT)
    assert export(otlp_recorder, [orders(1, "eu")]) == [MetricExportResult.FAILURE]
    assert (otlp_recorder.attempts, otlp_recorder.failed, otlp_recorder.request_count) == (1, 1, 0)


def test_otlp_recorder_slow_answer_times_the_client_out(otlp_recorder):
    otlp_recorder.delay(1.0)
    started = time.monotonic()
    assert export(otlp_recorder, [orders(1, "eu")], timeout=0.3) == [MetricExportResult.FAILURE]
    assert time.monotonic() - started < 1.0
    poll(lambda: otlp_recorder.abandoned, lambda n: n == 1, timeout=5, what="abandoned call")
    assert otlp_recorder.request_count == 0
    otlp_recorder.delay(0.2)  # slow but in time
    assert export(otlp_recorder, [orders(1, "eu")]) == [MetricExportResult.SUCCESS]
    assert otlp_recorder.delta_sums() == {EU: 1}


def test_otlp_recorder_stops_and_restarts_on_the_same_port(otlp_recorder):
    port = otlp_recorder.port
    otlp_recorder.stop()
    assert export(otlp_recorder, [orders(1, "eu")], timeout=1.5) == [MetricExportResult.FAILURE]
    otlp_recorder.start()
    assert otlp_recorder.port == port
    assert export(otlp_recorder, [orders(7, "us")]) == [MetricExportResult.SUCCESS]
    assert otlp_recorder.delta_sums() == {US: 7}


def test_otlp_recorder_wait_for_requests_fails_when_nothing_arrives(otlp_recorder):
    with pytest.raises(pytest.fail.Exception):
        otlp_recorder.wait_for_requests(1, timeout=0.2)
