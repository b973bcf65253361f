"""weir's OTLP/HTTP receiver at its edges, the real binary against real clients:
OTLP/JSON as protobuf's own JSON printer writes it, every refused point reported back,
a histogram too large to keep, and clients that hold connections without finishing
a request. Each test names the defect it covers; all fixed in the merges of h-parsers
(OTLP/JSON, accounting, bucket cap) and h-serve (connection cap, header deadline)."""

import socket
import time

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from backends import http, poll
from weir_process import daemon_config, daemons, parse_exposition  # noqa: F401 (daemons: a fixture)

# Bounded waits of the socket tests: far above what weir needs, far below a hang.
SOCKET_WAIT_S = 5


def otlp_weir(tmp_path, daemons, otlp_keys=""):
    """weir with OTLP on (extra `[receivers.otlp]` keys: `otlp_keys`), the exposition
    endpoint on a free port, StatsD off, flushing only on `POST /flush`."""
    return daemons(
        tmp_path / "weir",
        daemon_config(tmp_path / "weir-data", statsd=False, otlp=True, exposition="127.0.0.1:0", otlp_keys=otlp_keys),
    )


def post_metrics(weir, body, content_type):
    """POST /v1/metrics: `(status, answer)`, the answer an ExportMetricsServiceResponse
    when the status is 200, read as a protobuf client reads it (a JSON answer with
    protobuf's own JSON parser, which refuses anything the proto3 JSON mapping does
    not allow), else the body."""
    status, data = http("POST", f"http://{weir.otlp_http}/v1/metrics", body, {"Content-Type": content_type})
    if status != 200:
        return status, data
    if content_type == "application/json":
        return status, json_format.Parse(data, ExportMetricsServiceResponse())
    return status, ExportMetricsServiceResponse.FromString(data)


def exposition(weir):
    """`POST /flush`, then weir's exposition page, parsed."""
    weir.flush()
    status, body = http("GET", f"http://{weir.exposition}/metrics")
    assert status == 200, body
    return parse_exposition(body.decode())


def series(name, **labels):
    return (name, tuple(sorted(labels.items())))


def attr(key, value):
    return KeyValue(key=key, value=AnyValue(string_value=value))


# --- Defect 1: OTLP/JSON in the spelling of protobuf's JSON printers ---
#
# opentelemetry-proto's serde derive read only camelCase names and numbers, so a body
# from `json_format.MessageToJson` (enum names, 64-bit integers as strings, and with
# `preserving_proto_field_name` snake_case names) lost its points behind a 200 with
# no partial success; metrics with no data were not counted at all.


def sdk_request():
    """A real OpenTelemetry SDK collection (cumulative, the SDK's default), encoded by
    the SDK's own OTLP protobuf encoder, and the exposition weir must show for it."""
    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "checkout", "service.instance.id": "pod-7"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("test")
    orders = meter.create_counter("shop.orders")
    orders.add(5, {"region": "eu"})
    orders.add(2, {"region": "us"})
    meter.create_counter("shop.ratio").add(0.25)
    meter.create_up_down_counter("shop.inflight").add(4)
    meter.create_gauge("shop.temperature").set(21.5)
    latency = meter.create_histogram("shop.latency", unit="s")
    for v in (0.01, 0.2, 3.0):
        latency.record(v)
    request = encode_metrics(reader.get_metrics_data())
    provider.shutdown()

    metrics = [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    (hist,) = [m for m in metrics if m.name == "shop.latency"]
    (point,) = hist.histogram.data_points
    job = {"job": "checkout", "instance": "pod-7"}
    expected = {
        series("shop_orders", region="eu", **job): 5.0,
        series("shop_orders", region="us", **job): 2.0,
        series("shop_ratio", **job): 0.25,
        series("shop_inflight", **job): 4.0,
        series("shop_temperature", **job): 21.5,
        series("shop_latency_count", **job): 3.0,
        series("shop_latency_sum", **job): point.sum,
    }
    bounds = list(point.explicit_bounds)
    assert bounds[:2] == [0.0, 5.0]  # the SDK's default bounds: all three in le="5"
    for b in bounds:
        expected[series("shop_latency_bucket", le=f"{b:g}", **job)] = float(sum(1 for v in (0.01, 0.2, 3.0) if v <= b))
    expected[series("shop_latency_bucket", le="+Inf", **job)] = 3.0
    return request, expected


@pytest.mark.parametrize("proto_names", [False, True], ids=["lowerCamelCase", "proto_field_names"])
def test_otlp_json_as_protobufs_printer_writes_it_arrives_exactly(tmp_path, daemons, proto_names):
    weir = otlp_weir(tmp_path, daemons)
    request, expected = sdk_request()
    body = json_format.MessageToJson(request, preserving_proto_field_name=proto_names)
    # The spellings this test is about are really in the body.
    assert '"AGGREGATION_TEMPORALITY_CUMULATIVE"' in body
    assert ('"time_unix_nano": "' if proto_names else '"timeUnixNano": "') in body
    assert ('"as_int": "5"' if proto_names else '"asInt": "5"') in body

    status, answer = post_metrics(weir, body.encode(), "application/json")
    assert status == 200, answer
    # A full success: no partial_success.
    assert not answer.HasField("partial_success"), answer

    assert exposition(weir) == expected
    m = weir.self_metrics()
    # shop.orders 2 points, shop.ratio, shop.inflight, shop.temperature, shop.latency 1 each.
    assert m[series("weir_otlp_points_accepted_total")] == 6
    assert m[series("weir_otlp_points_rejected_total")] == 0
    assert m[series("weir_otlp_bad_requests_total")] == 0


def refused_request():
    """A request with a metric without a data field (one refused point), a monotonic
    sum of two points with AGGREGATION_TEMPORALITY_UNSPECIFIED (two refused points)
    and one good gauge point."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(attr("service.name", "checkout"))
    sm = rm.scope_metrics.add()
    sm.metrics.add(name="shop.nothing")
    unspecified = sm.metrics.add(name="shop.unspecified")
    unspecified.sum.is_monotonic = True
    unspecified.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_UNSPECIFIED
    for route, v in (("a", 3), ("b", 4)):
        p = unspecified.sum.data_points.add(as_int=v, time_unix_nano=time.time_ns())
        p.attributes.append(attr("route", route))
    sm.metrics.add(name="shop.kept").gauge.data_points.add(as_double=1.5, time_unix_nano=time.time_ns())
    return request


@pytest.mark.parametrize("proto_names", [False, True], ids=["lowerCamelCase", "proto_field_names"])
def test_otlp_json_refused_points_are_counted_in_partial_success_and_self_metrics(tmp_path, daemons, proto_names):
    weir = otlp_weir(tmp_path, daemons)
    # Default-valued fields printed too, so the temporality is spelled out by name.
    body = json_format.MessageToJson(
        refused_request(), preserving_proto_field_name=proto_names, always_print_fields_with_no_presence=True
    )
    assert '"AGGREGATION_TEMPORALITY_UNSPECIFIED"' in body
    before = weir.metric("weir_otlp_points_rejected_total")
    assert before == 0

    status, answer = post_metrics(weir, body.encode(), "application/json")
    assert status == 200, answer
    assert answer.partial_success.rejected_data_points == 3, answer
    assert answer.partial_success.error_message == "3 of 4 data points refused: missing_data 1, invalid_temporality 2"

    assert weir.metric("weir_otlp_points_rejected_total") == before + 3
    assert weir.metric("weir_otlp_points_rejected_by_reason_total", reason="missing_data") == 1
    assert weir.metric("weir_otlp_points_rejected_by_reason_total", reason="invalid_temporality") == 2
    assert weir.metric("weir_otlp_points_accepted_total") == 1
    # Only the good point is stored.
    assert exposition(weir) == {series("shop_kept", job="checkout"): 1.5}


# --- Defect 4: a histogram point with too many buckets ---
#
# Every bound of an OTLP histogram point became a bucket of the series: 8 points of
# 100,000 bounds grew weir's RSS from 8 to 105 MiB. Now a point with more than 1,024
# finite bounds is refused as too_many_buckets, and the rest of its request is taken.

HUGE_BOUNDS = 100_000
HUGE_REQUESTS = 8


def histogram_request(i, huge_point):
    """Request `i` (its points labelled `req=i`, a new series each time): one delta
    histogram point with HUGE_BOUNDS bounds (`huge_point`, its attributes set here)
    and one normal point with three bounds."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(attr("service.name", "hist"))
    sm = rm.scope_metrics.add()
    huge = sm.metrics.add(name="big.hist")
    huge.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    p = huge.histogram.data_points.add()
    p.CopyFrom(huge_point)
    p.attributes.append(attr("req", str(i)))
    small = sm.metrics.add(name="small.hist")
    small.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    q = small.histogram.data_points.add(count=2, sum=7.0, time_unix_nano=time.time_ns())
    q.explicit_bounds.extend([1.0, 5.0, 10.0])
    q.bucket_counts.extend([0, 1, 1, 0])  # 2 in (1, 5], 5 in (5, 10]
    q.attributes.append(attr("req", str(i)))
    return request.SerializeToString()


def test_a_histogram_point_with_100000_bounds_is_refused_and_costs_no_memory(tmp_path, daemons):
    weir = otlp_weir(tmp_path, daemons)
    huge = metrics_pb2.HistogramDataPoint(count=1, sum=200_000.0, time_unix_nano=time.time_ns())
    huge.explicit_bounds.extend(float(b) for b in range(HUGE_BOUNDS))
    huge.bucket_counts.extend([0] * HUGE_BOUNDS + [1])  # one observation above the last bound
    bodies = [histogram_request(i, huge) for i in range(HUGE_REQUESTS)]
    assert all(len(b) < 4 << 20 for b in bodies)  # under max_request_bytes: refused by the cap, not by size

    rss_before = weir.metric("process_resident_memory_bytes")
    for body in bodies:
        status, answer = post_metrics(weir, body, "application/x-protobuf")
        assert status == 200, answer
        assert answer.partial_success.rejected_data_points == 1, answer
        assert answer.partial_success.error_message == "1 of 2 data points refused: too_many_buckets 1", answer

    m = weir.self_metrics()
    assert m[series("weir_otlp_points_rejected_total")] == HUGE_REQUESTS
    assert m[series("weir_otlp_points_accepted_total")] == HUGE_REQUESTS
    # The normal points are stored, one series each; no big.hist series exists.
    page = exposition(weir)
    rss_after = weir.metric("process_resident_memory_bytes")
    assert {k for k in page if k[0].startswith("big_hist")} == set()
    for i in range(HUGE_REQUESTS):
        labels = {"job": "hist", "req": str(i)}
        assert page[series("small_hist_count", **labels)] == 2.0
        assert page[series("small_hist_bucket", le="5", **labels)] == 1.0
        assert page[series("small_hist_bucket", le="+Inf", **labels)] == 2.0
    # RSS is read after the flush and the exposition page, which copy and render
    # every series kept. Kept, the 8 points grew it by ~67 MiB (measured on this
    # debug build with the cap taken out: ~25 MiB in the series, the rest in the
    # flush and the page). Refused, what remains is each request's body and decoded
    # vectors (~2.5 MiB) that glibc's allocator may keep cached per blocking-pool
    # thread: 2 to 5 MiB measured, so 20 MiB leaves room for another allocator
    # pattern without letting the kept points pass.
    grown = rss_after - rss_before
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


# --- Defect 5: hostile HTTP clients ---
#
# The OTLP/HTTP listener had no connection cap and no deadline for a request head: a
# client that opened connections and sent nothing, or half a request head, held a
# task and a socket each for as long as it liked.


def read_until_closed(sock, timeout=SOCKET_WAIT_S):
    """Reads until weir closes `sock`; returns what arrived before. Fails the test if
    the connection is still open after `timeout` seconds."""
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        except socket.timeout:
            pytest.fail(f"weir did not close the connection within {timeout} s; read {bytes(data)!r}")
        if not chunk:
            return bytes(data)
        data += chunk
        if time.monotonic() >= deadline:
            pytest.fail(f"weir did not close the connection within {timeout} s; read {bytes(data)!r}")


def request_on(sock, extra_headers=""):
    """Sends an empty protobuf export on `sock` (kept alive) and reads its answer;
    returns the status line."""
    sock.sendall(
        b"POST /v1/metrics HTTP/1.1\r\nHost: weir\r\nContent-Type: application/x-protobuf\r\n"
        + extra_headers.encode()
        + b"Content-Length: 0\r\n\r\n"
    )
    sock.settimeout(SOCKET_WAIT_S)
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the answer: {bytes(data)!r}"
        data += chunk
    head, rest = bytes(data).split(b"\r\n\r\n", 1)
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the answer"
        rest += chunk
    return head.split(b"\r\n")[0].decode()


def connect(address):
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=SOCKET_WAIT_S)


def test_a_client_that_never_finishes_its_request_head_is_closed_at_the_header_deadline(tmp_path, daemons):
    weir = otlp_weir(tmp_path, daemons, 'header_read_timeout = "300ms"\n')
    half = connect(weir.otlp_http)
    half.sendall(b"POST /v1/metrics HTTP/1.1\r\nHost: weir\r\nContent-Type: application/x-prot")
    silent = connect(weir.otlp_http)
    # Served once, then kept alive and idle: the deadline runs again from the answer.
    idle = connect(weir.otlp_http)
    assert request_on(idle) == "HTTP/1.1 200 OK"
    with half, silent, idle:
        # Closed by weir (a 408 or nothing before the close), not held open.
        for sock in (half, silent, idle):
            answer = read_until_closed(sock)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    # A head trickled in a byte every 20 ms (the pause paces the client, it
    # synchronises nothing): the deadline is for the whole head, not for each byte,
    # so weir closes the connection long before the head could be complete.
    with connect(weir.otlp_http) as trickle:
        trickle.sendall(b"POST /v1/metrics HTTP/1.1\r\nHost: weir\r\nX-Pad: ")
        deadline = time.monotonic() + SOCKET_WAIT_S
        while True:
            try:
                trickle.sendall(b"a")
            except OSError:
                break  # weir closed it: the send after its close is refused
            if time.monotonic() >= deadline:
                pytest.fail(f"a head trickled in for {SOCKET_WAIT_S} s was not cut off")
            time.sleep(0.02)
    poll(
        lambda: weir.metric("weir_listener_header_timeouts_total", listener="otlp_http"),
        lambda v: v == 4,
        what="the four connections counted as header timeouts",
    )
    # A client that sends its request in time is served as before.
    with connect(weir.otlp_http) as ok:
        assert request_on(ok) == "HTTP/1.1 200 OK"
    assert weir.metric("weir_listener_header_timeouts_total", listener="otlp_http") == 4
    assert weir.metric("weir_listener_connections_refused_total", listener="otlp_http") == 0


def test_connections_beyond_max_connections_are_closed_at_once_and_counted(tmp_path, daemons):
    # A long header deadline, so only the cap can close a connection within the
    # test's socket waits.
    weir = otlp_weir(tmp_path, daemons, 'max_connections = 2\nheader_read_timeout = "60s"\n')
    held = [connect(weir.otlp_http) for _ in range(2)]
    try:
        # An answer on each proves weir accepted it and holds a slot for it.
        for sock in held:
            assert request_on(sock) == "HTTP/1.1 200 OK"
        for _ in range(3):
            with connect(weir.otlp_http) as extra:
                assert read_until_closed(extra) == b""
        # Counted before the close, so exact now.
        assert weir.metric("weir_listener_connections_refused_total", listener="otlp_http") == 3
        assert weir.metric("weir_listener_connections_accepted_total", listener="otlp_http") == 2
        # The admitted connections are still served.
        for sock in held:
            assert request_on(sock) == "HTTP/1.1 200 OK"
    finally:
        for sock in held:
            sock.close()

    # Once they are gone their slots are free again (weir notices the close a
    # moment later; until then a new connection may still be refused).
    def served():
        with connect(weir.otlp_http) as s:
            try:
                return request_on(s)
            except (AssertionError, OSError):
                return None

    assert poll(served, lambda v: v == "HTTP/1.1 200 OK", what="a new connection served") == "HTTP/1.1 200 OK"
