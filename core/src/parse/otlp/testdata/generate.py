"""Real OpenTelemetry Python SDK exports (SDK 1.38), as protobuf (sdk-*.pb) and as
protobuf's JSON printer writes them: lowerCamelCase (sdk-*.json) and with the .proto
field names (sdk-*-snake.json). Enum names, 64-bit integers as strings.

Regenerate (from the repository root, with tests/python/requirements.txt in .venv):
    .venv/bin/python core/src/parse/otlp/testdata/generate.py core/src/parse/otlp/testdata
The .pb files are also the seeds of the `otlp` fuzz target (fuzz/corpus/otlp/seed-*).
"""
import sys
from google.protobuf import json_format
from opentelemetry.sdk.metrics import MeterProvider, Counter, Histogram, UpDownCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, AggregationTemporality
from opentelemetry.sdk.metrics.view import View, ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.metrics import Observation
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics

def export(delta, exponential):
    temporality = {}
    if delta:
        temporality = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA, UpDownCounter: AggregationTemporality.DELTA}
    reader = InMemoryMetricReader(preferred_temporality=temporality)
    views = [View(instrument_name="sizes", aggregation=ExponentialBucketHistogramAggregation())] if exponential else []
    provider = MeterProvider(metric_readers=[reader], views=views,
        resource=Resource.create({"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-1", "host.cores": 8, "flag": True}))
    m = provider.get_meter("io.weir.seed", "1.0")
    c = m.create_counter("http.requests", unit="1")
    c.add(5, {"http.route": "/a", "ok": True})
    c.add(2, {"http.route": "/b", "attempt": 3, "ratio": 0.5})
    m.create_up_down_counter("queue.size").add(-3)
    h = m.create_histogram("http.server.duration", unit="ms")
    for v in (0.5, 7, 120, 9000):
        h.record(v, {"http.route": "/a"})
    s = m.create_histogram("sizes")
    for v in (1, 2, 3, 1000):
        s.record(v)
    m.create_observable_gauge("temperature", callbacks=[lambda o: [Observation(21.5, {"room": "a"})]])
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data)

out = sys.argv[1]
for name, delta, exp in [("cumulative", False, False), ("delta", True, False), ("exponential", True, True)]:
    req = export(delta, exp)
    open(f"{out}/sdk-{name}.pb", "wb").write(req.SerializeToString())
    open(f"{out}/sdk-{name}.json", "w").write(json_format.MessageToJson(req))
    open(f"{out}/sdk-{name}-snake.json", "w").write(json_format.MessageToJson(req, preserving_proto_field_name=True))
