"""weir receiving OTLP metrics from the OpenTelemetry Python SDK over gRPC and HTTP
(protobuf), as an instrumented service would send them: the real `weir` binary on
free ports, exact totals checked in its JSON flush log lines."""

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
from opentelemetry.sdk.metrics import Counter, Histogram, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult

from weir_process import WeirProcess, event, flushes, sdk_export

DELTA = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
}


@pytest.fixture
def weir(tmp_path):
    """weir with only OTLP on, both listeners on ephemeral ports."""
    w = WeirProcess(
        tmp_path,
        '[aggregation]\nflush_interval = "200ms"\n'
        "[receivers.statsd]\nenabled = false\n"
        '[receivers.otlp]\ngrpc_address = "127.0.0.1:0"\nhttp_address = "127.0.0.1:0"\n'
        "[exposition]\nenabled = false\n[admin]\nenabled = false\n",
    )
    listening = w.wait_for("otlp receiver listening")
    w.grpc, w.http = listening["grpc"], listening["http"]
    yield w
    w.kill()


def export_with(exporter, record, temporality=None):
    """Records with an SDK meter, then exports what was collected, once per `record`
    round, through `exporter`."""
    results = sdk_export(
        exporter,
        lambda meter: {
            "orders": meter.create_counter("shop.orders"),
            "latency": meter.create_histogram("shop.latency", unit="s"),
            "inflight": meter.create_up_down_counter("shop.inflight"),
        },
        record,
        {"service.name": "checkout", "service.instance.id": "pod-7"},
        temporality,
    )
    assert results == [MetricExportResult.SUCCESS] * len(record)


def test_grpc_delta_export(weir):
    def round1(i):
        i["orders"].add(5, {"region": "eu"})
        i["orders"].add(2, {"region": "us"})
        for v in (0.01, 0.2, 3.0):
            i["latency"].record(v)
        i["inflight"].add(4)

    def round2(i):
        i["orders"].add(1, {"region": "eu"})
        i["inflight"].add(-1)

    exporter = GrpcExporter(endpoint=f"http://{weir.grpc}", insecure=True)
    export_with(exporter, [round1, round2], DELTA)
    events = weir.stop()
    assert sum(e["counter_delta_sum"] for e in flushes(events)) == 8
    assert sum(e["histogram_observations"] for e in flushes(events)) == 3
    stopped = event(events, "otlp receiver stopped")
    assert stopped["requests"] == 2 and stopped["rejected"] == 0
    # shop_orders{region=eu|us}, shop_latency, shop_inflight
    assert flushes(events)[-1]["active_series"] == 4


def test_http_cumulative_export_counts_a_stream_that_started_after_weir_from_zero(weir):
    def round1(i):
        i["orders"].add(5, {"region": "eu"})

    def round2(i):
        i["orders"].add(3, {"region": "eu"})

    exporter = HttpExporter(endpoint=f"http://{weir.http}/v1/metrics")
    export_with(exporter, [round1, round2])  # the SDK's default: cumulative
    events = weir.stop()
    # The SDK's stream starts (start_time_unix_nano) after weir did, so its first
    # cumulative value is an increase, not a baseline (the OpenTelemetry Collector's
    # cumulative-to-delta "auto" rule): 5, then 3 more.
    assert sum(e["counter_delta_sum"] for e in flushes(events)) == 8
    stopped = event(events, "otlp receiver stopped")
    assert stopped["requests"] == 2 and stopped["bad_requests"] == 0


def test_http_takes_json_refuses_garbage_without_dying(weir):
    import urllib.error
    import urllib.request

    def post(body, ctype):
        req = urllib.request.Request(f"http://{weir.http}/v1/metrics", data=body, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post(b"{}", "application/json") == 200  # OTLP/JSON, an empty request
    assert post(b"{}", "text/plain") == 415
    assert post(b"\xff\xff\xff not protobuf", "application/x-protobuf") == 400
    assert post(b"", "application/x-protobuf") == 200  # an empty request is valid
    events = weir.stop()
    stopped = event(events, "otlp receiver stopped")
    assert stopped["bad_requests"] == 2  # text/plain, and the garbage protobuf
