"""weir's forwarding pipelines end to end against real backends: known StatsD and OTLP
traffic goes into the real `weir` binary, `POST /flush` flushes it into each
pipeline's WAL and waits for the send, and the values are read back from the backend
exactly: Prometheus (remote write, and scraping weir's exposition endpoint),
InfluxDB 1.x, VictoriaMetrics (remote write and Influx line protocol), the recording
OTLP/gRPC server of backends.py (retries, refusals, partial success, temporality) and
a second weir behind an OTLP/HTTP pipeline.

Every weir runs on free ports of 127.0.0.1 with its own data_dir and flushes only
when the test asks (`flush_interval = "1h"`)."""

import collections

import grpc
import statsd
from datadog.dogstatsd import DogStatsd
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.sdk.metrics import Counter, Histogram, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult

from backends import CUMULATIVE, free_port, http, labels_key, now_ms, poll
from weir_process import FAST_RETRY, daemon_config, daemons, parse_exposition, pipeline_toml, sdk_export, send_statsd_lines  # noqa: F401 (daemons: a fixture)


def flush_delivered(weir, *pipelines):
    """POST /flush; asserts every named pipeline (all when none named) delivered."""
    answer = weir.flush()
    outcomes = {p["pipeline"]: p for p in answer["pipelines"]}
    for name in pipelines or outcomes:
        assert outcomes[name]["delivered"] is True, answer
        assert outcomes[name]["error"] is None, answer
    return answer


def wait_statsd_samples(weir, n):
    """Waits until weir aggregated exactly `n` StatsD samples in all (none lost)."""
    weir.wait_metric("weir_statsd_samples_total", lambda v: v >= n)
    assert weir.metric("weir_statsd_samples_total") == n


def shop_statsd_round1(weir):
    """The StatsD traffic of the first flush in the exact-value tests; returns the
    number of samples sent."""
    c = statsd.StatsClient(*weir.statsd, prefix="shop")
    for i in range(100):
        c.incr("orders")  # shop_orders += 1
        c.gauge("queue", i)  # last value wins: 99
    for _ in range(10):
        c.incr("revenue", 7)  # 70
    for _ in range(40):
        c.timing("checkout", 250)  # 0.25 s
    for _ in range(20):
        c.timing("checkout", 500)  # 0.5 s
    c.gauge("queue", -5, delta=True)  # 94
    return 100 * 2 + 10 + 40 + 20 + 1


def shop_statsd_round2(weir):
    c = statsd.StatsClient(*weir.statsd, prefix="shop")
    c.incr("orders", 50)  # 150
    return 1


# Statsd timers go into weir's default buckets (Prometheus client defaults).
DEFAULT_BOUNDS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
CHECKOUT_BUCKETS = {le: (0 if float(le) < 0.25 else 40 if float(le) < 0.5 else 60) for le in DEFAULT_BOUNDS}


def otel_export(endpoint, rounds):
    """Exports each of `rounds` (functions of the instruments) through the SDK's
    OTLP/gRPC exporter to `endpoint` (delta temporality), one export per round."""
    results = sdk_export(
        GrpcExporter(endpoint=f"http://{endpoint}", insecure=True),
        lambda meter: {
            "requests": meter.create_counter("otel.requests"),
            "latency": meter.create_histogram("otel.latency", unit="ms"),
            "temperature": meter.create_gauge("otel.temperature"),
        },
        rounds,
        {"service.name": "checkout", "service.instance.id": "pod-7"},
        {
            Counter: AggregationTemporality.DELTA,
            UpDownCounter: AggregationTemporality.DELTA,
            Histogram: AggregationTemporality.DELTA,
        },
    )
    assert results == [MetricExportResult.SUCCESS] * len(rounds)


# The SDK's default explicit bounds; 3, 30 and 300 are recorded.
OTEL_BOUNDS = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]


def otel_buckets():
    out = {}
    for b in OTEL_BOUNDS:
        out[f"{b}"] = sum(1 for v in (3, 30, 300) if v <= b)
    out["+Inf"] = 3
    return out


def key(name, **labels):
    return labels_key({"__name__": name, **labels})


def test_remote_write_to_prometheus_exact_values_labels_and_filters(tmp_path, prometheus, daemons):
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml(
                "prom",
                "prometheus_remote_write",
                prometheus.remote_write_url,
                external_labels={"dc": "eu1", "env": "test"},
                include=["shop_*", "otel_*"],
                exclude=["shop_debug*"],
            ),
            otlp=True,
        ),
    )
    samples = shop_statsd_round1(weir)
    c = statsd.StatsClient(*weir.statsd)
    c.incr("other.hits", 9)  # not included
    c.incr("shop.debug_hits", 9)  # excluded
    c.timing("shop.debug_latency", 5)  # excluded with its _bucket, _sum and _count
    d = DogStatsd(host=weir.statsd[0], port=weir.statsd[1], disable_telemetry=True)
    d.increment("shop.requests", 3, tags=["dc:local", "route:/a"])  # its own dc wins
    d.flush()
    samples += 4

    def otel1(i):
        i["requests"].add(5, {"route": "a"})
        i["requests"].add(2, {"route": "b"})
        for v in (3, 30, 300):
            i["latency"].record(v)
        i["temperature"].set(21.5)

    otel_export(weir.otlp_grpc, [otel1])
    wait_statsd_samples(weir, samples)
    flush_delivered(weir, "prom")

    samples += shop_statsd_round2(weir)
    otel_export(weir.otlp_grpc, [lambda i: i["requests"].add(1, {"route": "a"})])
    wait_statsd_samples(weir, samples)
    flush_delivered(weir, "prom")

    ext = {"dc": "eu1", "env": "test"}
    otel = {"job": "checkout", "instance": "pod-7", **ext}
    expected = {
        key("shop_orders", **ext): 150.0,
        key("shop_revenue", **ext): 70.0,
        key("shop_queue", **ext): 94.0,
        key("shop_requests", dc="local", env="test", route="/a"): 3.0,
        key("shop_checkout_count", **ext): 60.0,
        key("shop_checkout_sum", **ext): 20.0,
        **{key("shop_checkout_bucket", le=le, **ext): float(n) for le, n in CHECKOUT_BUCKETS.items()},
        key("otel_requests", route="a", **otel): 6.0,
        key("otel_requests", route="b", **otel): 2.0,
        key("otel_temperature", **otel): 21.5,
        key("otel_latency_count", **otel): 3.0,
        key("otel_latency_sum", **otel): 333.0,
        **{key("otel_latency_bucket", le=le, **otel): float(n) for le, n in otel_buckets().items()},
    }
    got = prometheus.values('{__name__=~".+"}')
    assert got == expected
    # Counters are running totals stamped with the flush time: the first flush's
    # sample is there too, one sample per flush and series.
    orders = prometheus.samples("shop_orders", "10m")[key("shop_orders", **ext)]
    assert [v for _, v in orders] == [100.0, 150.0]
    assert orders[0][0] < orders[1][0]
    requests_a = prometheus.samples('otel_requests{route="a"}', "10m")[key("otel_requests", route="a", **otel)]
    assert [v for _, v in requests_a] == [5.0, 6.0]
    status = weir.pipeline_status("prom")
    assert status["failed_batches"] == 0 and status["retries"] == 0
    assert status["unsent_batches"] == 0
    assert status["sent_batches"] == 2
    # Points are samples: the second flush re-sends every series.
    assert status["sent_points"] == 2 * len(expected)


def test_influxdb_and_victoria_metrics_remote_write_and_line_protocol(tmp_path, influxdb, victoria_metrics, daemons):
    vm = victoria_metrics
    ext = {"dc": "eu1"}
    pipelines = (
        pipeline_toml("influx", "influxdb", influxdb.url, database="weir", external_labels=ext)
        + pipeline_toml("vm_rw", "prometheus_remote_write", vm.remote_write_url, external_labels=ext)
        + pipeline_toml("vm_influx", "influxdb", vm.url, database="weir", external_labels=ext, compression="gzip")
    )
    weir = daemons(tmp_path / "weir", daemon_config(tmp_path / "weir-data", pipelines))
    n = shop_statsd_round1(weir)
    # Line protocol escaping (space, comma, equals sign) and a tag without a value
    # (an empty label: left out).
    send_statsd_lines(weir.statsd, ["shop.hits:2|c|#path:/a b,q:x=y,canary"])
    n += 1
    wait_statsd_samples(weir, n)
    flush_delivered(weir, "influx", "vm_rw", "vm_influx")
    n += shop_statsd_round2(weir)
    wait_statsd_samples(weir, n)
    flush_delivered(weir, "influx", "vm_rw", "vm_influx")

    # InfluxDB 1.x: cumulative (the influxdb default), one row per flush.
    orders = influxdb.rows("SELECT * FROM shop_orders", db="weir", epoch="ms")
    assert [(r["value"], r["dc"]) for r in orders] == [(100.0, "eu1"), (150.0, "eu1")]
    times = [r["time"] for r in orders]
    queue = influxdb.rows("SELECT * FROM shop_queue", db="weir", epoch="ms")
    assert [(r["time"], r["value"]) for r in queue] == [(times[0], 94.0), (times[1], 94.0)]
    revenue = influxdb.rows("SELECT * FROM shop_revenue", db="weir", epoch="ms")
    assert [r["value"] for r in revenue] == [70.0, 70.0]
    checkout = influxdb.rows("SELECT * FROM shop_checkout", db="weir", epoch="ms")
    assert len(checkout) == 2
    for row in checkout:
        fields = {k: v for k, v in row.items() if k not in ("time", "dc", "_measurement")}
        assert fields == {"count": 60.0, "sum": 20.0, "min": 0.25, "max": 0.5, **{le: float(c) for le, c in CHECKOUT_BUCKETS.items()}}
    hits = influxdb.rows("SELECT * FROM shop_hits GROUP BY *", db="weir", epoch="ms")
    assert [(r["time"], r["path"], r["q"], r["value"]) for r in hits] == [
        (times[0], "/a b", "x=y", 2.0),
        (times[1], "/a b", "x=y", 2.0),
    ]
    assert all("canary" not in r for r in hits)
    assert {r["_measurement"] for r in influxdb.rows("SELECT * FROM /.*/", db="weir")} == {
        "shop_hits",
        "shop_orders",
        "shop_queue",
        "shop_revenue",
        "shop_checkout",
    }

    # VictoriaMetrics, remote write: the same flush times and running totals.
    rw = vm.samples('{__name__=~"shop_.*", db=""}', "10m")
    assert rw[key("shop_orders", **ext)] == [(times[0], 100.0), (times[1], 150.0)]
    assert rw[key("shop_queue", **ext)] == [(times[0], 94.0), (times[1], 94.0)]
    assert rw[key("shop_checkout_sum", **ext)] == [(times[0], 20.0), (times[1], 20.0)]
    assert rw[key("shop_checkout_bucket", le="0.25", **ext)] == [(times[0], 40.0), (times[1], 40.0)]
    assert rw[key("shop_hits", path="/a b", q="x=y", **ext)] == [(times[0], 2.0), (times[1], 2.0)]
    assert len(rw) == 3 + 2 + 1 + len(CHECKOUT_BUCKETS)

    # VictoriaMetrics, Influx line protocol: {measurement}_{field}{tags, db}.
    lp = vm.samples('{db="weir"}', "10m")
    db = {"db": "weir", **ext}
    assert lp[key("shop_orders_value", **db)] == [(times[0], 100.0), (times[1], 150.0)]
    assert lp[key("shop_queue_value", **db)] == [(times[0], 94.0), (times[1], 94.0)]
    assert lp[key("shop_checkout_count", **db)] == [(times[0], 60.0), (times[1], 60.0)]
    assert lp[key("shop_checkout_max", **db)] == [(times[0], 0.5), (times[1], 0.5)]
    assert lp[key("shop_checkout_+Inf", **db)] == [(times[0], 60.0), (times[1], 60.0)]
    assert lp[key("shop_hits_value", path="/a b", q="x=y", **db)] == [(times[0], 2.0), (times[1], 2.0)]
    assert len(lp) == 3 + 4 + 1 + len(CHECKOUT_BUCKETS)


def test_influxdb_1x_takes_a_batch_with_a_tag_value_ending_in_a_backslash(tmp_path, influxdb, daemons):
    # A tag value ending in a backslash: InfluxDB 1.x reads a backslash followed by a
    # space or comma as an escaped separator, whatever comes before that backslash,
    # so weir's doubled backslash then a space does not parse there, and InfluxDB
    # answers the whole batch 400 (a "partial write": the other lines are stored).
    weir = daemons(
        tmp_path / "weir",
        daemon_config(tmp_path / "weir-data", pipeline_toml("influx", "influxdb", influxdb.url, database="weir")),
    )
    send_statsd_lines(weir.statsd, ["dir.hits:3|c|#path:C:\\", "other.hits:4|c"])
    wait_statsd_samples(weir, 2)
    flush_delivered(weir, "influx")
    status = weir.pipeline_status("influx")
    assert (status["failed_batches"], status["last_error"]) == (0, None), status
    assert [r["value"] for r in influxdb.rows("SELECT * FROM other_hits", db="weir")] == [4.0]


def otlp_weir(tmp_path, daemons, recorder, **keys):
    keys.setdefault("retry", FAST_RETRY)
    return daemons(
        tmp_path / "weir",
        daemon_config(tmp_path / "weir-data", pipeline_toml("otlp", "otlp_grpc", recorder.url, **keys)),
    )


def nonzero(sums):
    return {k: v for k, v in sums.items() if v}


def test_otlp_grpc_delta_sums_exact_through_unavailable_retries(tmp_path, otlp_recorder, daemons):
    weir = otlp_weir(tmp_path, daemons, otlp_recorder, external_labels={"dc": "eu1"})
    sent = collections.Counter()
    n = 0
    for flush in range(4):
        lines = []
        for route in range(5):
            inc = flush * 10 + route + 1
            lines.append(f"api.requests:{inc}|c|#route:r{route}")
            sent[("api_requests", (("route", f"r{route}"),))] += inc
        lines.append(f"api.latency:{flush + 1}|h")
        send_statsd_lines(weir.statsd, lines)
        n += len(lines)
        wait_statsd_samples(weir, n)
        if flush == 1:
            otlp_recorder.fail_next(3, grpc.StatusCode.UNAVAILABLE)
            # The flush's attempt fails; the batch stays in the WAL and is retried.
            answer = weir.flush()
            assert answer["pipelines"] == [
                {"pipeline": "otlp", "delivered": False, "error": "gRPC Unavailable: recorder told to fail"}
            ]
            poll(lambda: weir.pipeline_status("otlp")["unsent_batches"], lambda v: v == 0, what="retried and sent")
        else:
            flush_delivered(weir, "otlp")
    # Exact: a refused attempt records nothing, so the retried batch arrives once.
    assert otlp_recorder.delta_sums() == dict(sent)
    assert otlp_recorder.delta_histogram_counts() == {("api_latency", ()): 4}
    # Each flush's histogram point: weir's default bounds, its one observation in
    # the right bucket (OTLP counts per bucket, not cumulative), min and max.
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    hist = [
        p
        for r in otlp_recorder.requests()
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "api_latency"
        for p in m.histogram.data_points
    ]
    assert [list(p.explicit_bounds) for p in hist] == [bounds] * 4
    observed = [1, 2, 3, 4]
    for p, v in zip(hist, observed):
        expected_counts = [0] * (len(bounds) + 1)
        expected_counts[next(i for i, b in enumerate(bounds) if v <= b)] = 1
        assert (list(p.bucket_counts), p.count, p.sum, p.min, p.max) == (expected_counts, 1, v, v, v)
    assert otlp_recorder.failed == 3
    assert otlp_recorder.request_count == 4
    assert all(p.resource == (("dc", "eu1"),) for p in otlp_recorder.points())
    m = weir.self_metrics()
    label = (("pipeline", "otlp"),)
    # Each refused attempt was retried: exactly the recorder's 3 failures.
    assert m[("weir_pipeline_retries_total", label)] == otlp_recorder.failed == 3
    assert m[("weir_pipeline_sent_batches_total", label)] == 4
    assert m[("weir_pipeline_failed_batches_total", label)] == 0
    assert m[("weir_wal_unsent_batches", label)] == 0
    # Points as the recorder counted them: 5 counters + 1 histogram per flush.
    assert m[("weir_pipeline_sent_points_total", label)] == len(otlp_recorder.points()) == 4 * 6


def test_otlp_grpc_invalid_argument_drops_the_batch_once_and_goes_on(tmp_path, otlp_recorder, daemons):
    weir = otlp_weir(tmp_path, daemons, otlp_recorder)
    send_statsd_lines(weir.statsd, ["jobs:1|c|#round:0"])
    wait_statsd_samples(weir, 1)
    otlp_recorder.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, "bad batch")
    answer = weir.flush()
    # The flush's batch was refused and dropped: not delivered, and the answer says why.
    (outcome,) = answer["pipelines"]
    assert outcome["pipeline"] == "otlp"
    assert outcome["delivered"] is False, outcome
    assert "bad batch" in (outcome["error"] or ""), outcome
    attempts = otlp_recorder.attempts
    assert attempts == 1
    send_statsd_lines(weir.statsd, ["jobs:2|c|#round:1"])
    wait_statsd_samples(weir, 2)
    flush_delivered(weir, "otlp")
    # The refused batch was tried once and dropped; the next one went through.
    assert otlp_recorder.attempts == 2
    assert nonzero(otlp_recorder.delta_sums()) == {("jobs", (("round", "1"),)): 2}
    status = weir.pipeline_status("otlp")
    assert status["failed_batches"] == 1
    assert status["retries"] == 0
    assert status["unsent_batches"] == 0
    assert weir.metric("weir_pipeline_failed_batches_total", pipeline="otlp") == 1
    assert weir.metric("weir_pipeline_failed_points_total", pipeline="otlp") == 1
    refusals = [e for e in weir.events() if e.get("message", "").startswith("the backend refused a batch for good")]
    assert len(refusals) == 1 and "bad batch" in refusals[0]["error"], refusals


def test_remote_write_400_from_prometheus_is_dropped_not_retried(tmp_path, prometheus, daemons):
    # Prometheus refuses a sample older than its series' newest one with 400: a
    # sample of ooo_total ten minutes ahead makes weir's one out of order.
    future_ms = now_ms() + 600_000
    status, body = prometheus.remote_write([({"__name__": "ooo_total"}, [(1000.0, future_ms)])])
    assert status == 204, body
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml("prom", "prometheus_remote_write", prometheus.remote_write_url, retry=FAST_RETRY),
        ),
    )
    send_statsd_lines(weir.statsd, ["ooo_total:1|c"])
    wait_statsd_samples(weir, 1)
    answer = weir.flush()
    (outcome,) = answer["pipelines"]
    assert outcome["delivered"] is False, outcome
    assert "400" in (outcome["error"] or ""), outcome
    status = weir.pipeline_status("prom")
    assert (status["failed_batches"], status["retries"], status["unsent_batches"]) == (1, 0, 0), status
    assert "out of order" in status["last_error"], status
    assert weir.metric("weir_pipeline_failed_points_total", pipeline="prom") == 1
    assert prometheus.samples("ooo_total", "20m", time=future_ms / 1000) == {key("ooo_total"): [(future_ms, 1000.0)]}


def test_otlp_grpc_timeout_is_retried_and_arrives_once(tmp_path, otlp_recorder, daemons):
    weir = otlp_weir(tmp_path, daemons, otlp_recorder, timeout="300ms")
    send_statsd_lines(weir.statsd, ["jobs:4|c|#queue:a", "jobs:5|c|#queue:b"])
    wait_statsd_samples(weir, 2)
    otlp_recorder.delay(1.0)  # longer than the pipeline's timeout
    answer = weir.flush()
    assert answer["pipelines"][0]["delivered"] is False, answer
    otlp_recorder.wait_for_attempts(2)
    otlp_recorder.delay(0)
    poll(lambda: weir.pipeline_status("otlp")["unsent_batches"], lambda v: v == 0, what="sent after the timeouts")
    assert otlp_recorder.delta_sums() == {("jobs", (("queue", "a"),)): 4, ("jobs", (("queue", "b"),)): 5}
    assert otlp_recorder.request_count == 1
    # Every attempt but the one that went through timed out and was retried (how many
    # timed out depends on when the delay was lifted; the recorder counted them all).
    assert otlp_recorder.attempts >= 2
    assert weir.metric("weir_pipeline_retries_total", pipeline="otlp") == otlp_recorder.attempts - 1
    assert weir.metric("weir_pipeline_failed_batches_total", pipeline="otlp") == 0


def test_otlp_grpc_partial_success_counts_rejected_points(tmp_path, otlp_recorder, daemons):
    weir = otlp_weir(tmp_path, daemons, otlp_recorder)
    send_statsd_lines(weir.statsd, [f"jobs:1|c|#queue:q{i}" for i in range(8)])
    wait_statsd_samples(weir, 8)
    otlp_recorder.partial_success(5, "five refused")
    flush_delivered(weir, "otlp")
    assert weir.metric("weir_pipeline_rejected_points_total", pipeline="otlp") == 5
    assert weir.metric("weir_pipeline_sent_points_total", pipeline="otlp") == 8
    assert weir.metric("weir_pipeline_failed_batches_total", pipeline="otlp") == 0
    otlp_recorder.partial_success(None)
    flush_delivered(weir, "otlp")
    assert weir.metric("weir_pipeline_rejected_points_total", pipeline="otlp") == 5


def test_otlp_grpc_cumulative_temporality_sends_running_totals(tmp_path, otlp_recorder, daemons):
    weir = otlp_weir(tmp_path, daemons, otlp_recorder, temporality="cumulative")
    n = 0
    for inc in (5, 3, 0, 4):
        lines = ([f"jobs:{inc}|c"] if inc else []) + [f"wait:{inc + 1}|h"]
        send_statsd_lines(weir.statsd, lines)
        n += len(lines)
        wait_statsd_samples(weir, n)
        flush_delivered(weir, "otlp")
    points = otlp_recorder.points()
    jobs = [p for p in points if p.metric == "jobs"]
    assert [p.value for p in jobs] == [5.0, 8.0, 8.0, 12.0]
    assert all(p.kind == "sum" and p.monotonic and p.temporality == CUMULATIVE for p in jobs)
    # One start for the whole series, times increasing after it.
    assert len({p.start_time_unix_nano for p in jobs}) == 1
    times = [p.time_unix_nano for p in jobs]
    assert jobs[0].start_time_unix_nano <= times[0] < times[1] < times[2] < times[3]
    wait = [p for p in points if p.metric == "wait"]
    assert [(p.count, p.sum) for p in wait] == [(1, 6.0), (2, 10.0), (3, 11.0), (4, 16.0)]
    assert all(p.temporality == CUMULATIVE for p in wait)


def test_otlp_http_pipeline_into_a_second_weir(tmp_path, daemons):
    receiver = daemons(
        tmp_path / "receiver",
        daemon_config(tmp_path / "receiver-data", statsd=False, otlp=True, exposition="127.0.0.1:0"),
    )
    sender = daemons(
        tmp_path / "sender",
        daemon_config(
            tmp_path / "sender-data",
            pipeline_toml(
                "weir2",
                "otlp_http",
                f"http://{receiver.otlp_http}",
                compression="gzip",
                external_labels={"region": "eu"},
                retry=FAST_RETRY,
            ),
        ),
    )
    n = shop_statsd_round1(sender)
    wait_statsd_samples(sender, n)
    flush_delivered(sender, "weir2")
    n += shop_statsd_round2(sender)
    wait_statsd_samples(sender, n)
    flush_delivered(sender, "weir2")
    receiver.flush()
    status, body = http("GET", f"http://{receiver.exposition}/metrics")
    assert status == 200
    got = {k: v for k, v in parse_exposition(body.decode()).items()}
    # weir's OTLP receiver takes only service.name / service.instance.id from the
    # resource (as job / instance); the sender's external label (a resource
    # attribute) is not a series label there.
    labels = ()
    expected = {
        ("shop_orders", labels): 150.0,
        ("shop_revenue", labels): 70.0,
        ("shop_queue", labels): 94.0,
        ("shop_checkout_count", labels): 60.0,
        ("shop_checkout_sum", labels): 20.0,
        **{("shop_checkout_bucket", tuple(sorted(labels + (("le", le),)))): float(c) for le, c in CHECKOUT_BUCKETS.items()},
    }
    assert got == expected
    # Two requests, one per flush, every point taken.
    m = receiver.self_metrics()
    assert m[("weir_otlp_requests_total", ())] == 2
    assert m[("weir_otlp_points_rejected_total", ())] == 0
    assert m[("weir_otlp_points_accepted_total", ())] == 2 * 4
    assert sender.metric("weir_pipeline_sent_batches_total", pipeline="weir2") == 2


def test_prometheus_scrapes_the_exposition_endpoint(tmp_path, prometheus, daemons):
    address = f"127.0.0.1:{free_port()}"
    weir = daemons(tmp_path / "weir", daemon_config(tmp_path / "weir-data", exposition=address))
    n = shop_statsd_round1(weir)
    wait_statsd_samples(weir, n)
    weir.flush()
    prometheus.scrape(address, job="weir", interval="1s")
    scraped = {"job": "weir", "instance": address}
    expected = {
        key("shop_orders", **scraped): 100.0,
        key("shop_revenue", **scraped): 70.0,
        key("shop_queue", **scraped): 94.0,
        key("shop_checkout_count", **scraped): 60.0,
        key("shop_checkout_sum", **scraped): 20.0,
        **{key("shop_checkout_bucket", le=le, **scraped): float(c) for le, c in CHECKOUT_BUCKETS.items()},
    }
    query = '{__name__=~"shop_.*"}'
    prometheus.wait_for(query, lambda v: v == expected, timeout=15)
    n += shop_statsd_round2(weir)
    wait_statsd_samples(weir, n)
    weir.flush()
    expected[key("shop_orders", **scraped)] = 150.0
    prometheus.wait_for(query, lambda v: v == expected, timeout=15)
