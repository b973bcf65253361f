"""weir's pipelines when the backend goes away: the WAL keeps every flush while
Prometheus is down for a minute (100,000 series, the acceptance test), across a
`kill -9` of weir and across a SIGTERM with data still unsent, and the WAL size cap
drops exactly the oldest batches and counts them.

Each test runs the real `weir` binary (free ports, its own data_dir) against a real
backend from backends.py, stops and starts the backend on the same port, and checks
what arrived exactly. The outage test takes about 80 s (a 60 s outage); the others
a few seconds each."""

import collections
import threading
import time

import grpc

from backends import flatten, poll
from weir_process import FAST_RETRY, daemon_config, daemons, pipeline_toml, send_statsd_lines  # noqa: F401 (daemons: a fixture)


def send_counted(weir, lines, slice_lines=20000, timeout=60):
    """Sends StatsD `lines` in slices, waiting after each until weir counted every
    sample (so nothing is lost to a full socket buffer and the count stays exact)."""
    for start in range(0, len(lines), slice_lines):
        part = lines[start : start + slice_lines]
        before = weir.metric("weir_statsd_samples_total")
        send_statsd_lines(weir.statsd, part)
        got = weir.wait_metric("weir_statsd_samples_total", lambda v: v >= before + len(part), timeout=timeout)
        assert got == before + len(part), "weir counted more samples than were sent"


def flush_events(weir):
    """This run's flush summaries (periodic and requested) that carried data."""
    return [e for e in weir.events() if e.get("message") in ("flush", "flush (requested)") and e["series"] > 0]


def wait_all_sent(weir, pipeline, timeout=60):
    return poll(
        lambda: weir.pipeline_status(pipeline),
        lambda s: s["unsent_batches"] == 0,
        timeout,
        f"pipeline {pipeline}: everything sent",
    )


SERIES = 100_000
OUTAGE_S = 60
ROUND_EVERY_S = 5


def test_prometheus_down_for_a_minute_loses_nothing_of_100k_series(tmp_path, prometheus, daemons):
    """The acceptance test: 100,000 counter series, flushes every 10 s, Prometheus
    stopped for 60 s while increments keep coming, then started again on the same
    port and data: every increment arrives, and so does every flush made during the
    outage."""
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml(
                "prom",
                "prometheus_remote_write",
                prometheus.remote_write_url,
                retry={"initial_backoff": "100ms", "max_backoff": "2s"},
            ),
            flush_interval="10s",
            aggregation=f"max_series_per_metric = {2 * SERIES}\n",
        ),
    )
    sent = 0

    def send_round(r):
        nonlocal sent
        lines = []
        for i in range(SERIES):
            inc = 1 + (i + r) % 3
            lines.append(f"outage_total:{inc}|c|#series:{i}")
            sent += inc
        send_counted(weir, lines)

    send_round(0)
    answer = weir.flush()
    assert answer["pipelines"][0]["delivered"] is True, answer
    assert prometheus.value("count(outage_total)") == SERIES

    assert prometheus.stop() == 0
    began = time.monotonic()
    r = 1
    while time.monotonic() - began < OUTAGE_S:
        send_round(r)
        r += 1
        time.sleep(max(0.0, began + r * ROUND_EVERY_S - ROUND_EVERY_S - time.monotonic()))
    during = weir.pipeline_status("prom")
    prometheus.start()
    outage = time.monotonic() - began

    # Everything flushed during the outage waited in the WAL.
    periodic = [e for e in flush_events(weir) if e["message"] == "flush"]
    assert len(periodic) >= OUTAGE_S // 10 - 1, periodic
    assert during["unsent_batches"] >= 5 * 2, during  # >= 5 flushes of >= 2 requests
    assert during["retries"] > 0 and during["last_error"], during
    assert during["forward_lag_seconds"] > OUTAGE_S / 2, during
    assert during["wal_dropped_batches"] == 0, during

    send_round(r)
    weir.flush()
    status = wait_all_sent(weir, "prom", timeout=90)
    assert status["wal_dropped_batches"] == 0 and status["failed_batches"] == 0, status
    assert status["forward_lag_seconds"] == 0 and status["last_error"] is None, status

    # Every increment, every series.
    assert prometheus.value("sum(outage_total)") == sent
    assert prometheus.value("count(outage_total)") == SERIES
    # Every flush: each one stamped all active series with their running totals, so
    # summing every stored sample gives the running total at each flush, summed over
    # the flushes (and counting them gives the active series, summed). A periodic
    # flush logged meanwhile means reading again (its records are in the WAL once it
    # is logged).
    window = f"{int(time.monotonic() - began) + 300}s"
    for _ in range(3):
        flushes = flush_events(weir)
        wait_all_sent(weir, "prom", timeout=30)
        samples = prometheus.value(f"sum(count_over_time(outage_total[{window}]))")
        summed = prometheus.value(f"sum(sum_over_time(outage_total[{window}]))")
        if len(flush_events(weir)) == len(flushes):
            break
    running, expected_sum, expected_samples = 0.0, 0.0, 0
    for e in flushes:
        running += e["counter_delta_sum"]
        expected_sum += running
        expected_samples += e["active_series"]
    assert running == sent
    assert (samples, summed) == (expected_samples, expected_sum)
    print(f"outage {outage:.0f} s, {r + 1} rounds, {len(flushes)} flushes, {sent} increments")


def test_a_dead_or_slow_backend_holds_back_no_other_pipeline(tmp_path, prometheus, otlp_recorder, daemons):
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml("prom", "prometheus_remote_write", prometheus.remote_write_url, retry=FAST_RETRY)
            + pipeline_toml("otlp", "otlp_grpc", otlp_recorder.url, retry=FAST_RETRY),
        ),
    )
    otlp_recorder.stop()
    total = 0
    for inc in (1, 2, 3):
        send_counted(weir, [f"both_total:{inc}|c"])
        total += inc
        outcomes = {p["pipeline"]: p["delivered"] for p in weir.flush()["pipelines"]}
        assert outcomes == {"prom": True, "otlp": False}
        assert prometheus.value("both_total") == total
    # Slow: the OTLP backend takes 2 s per call; remote write still lands at once.
    otlp_recorder.delay(2)
    otlp_recorder.start()
    otlp_recorder.wait_for_attempts(1)
    send_counted(weir, ["both_total:4|c"])
    total += 4
    flusher = threading.Thread(target=weir.flush)
    flusher.start()
    try:
        prometheus.wait_for("both_total", lambda v: list(v.values()) == [total], timeout=1)
    finally:
        otlp_recorder.delay(0)
        flusher.join(timeout=60)
    wait_all_sent(weir, "otlp")
    assert otlp_recorder.delta_sums() == {("both_total", ()): total}


def recorder_weir(tmp_path, daemons, recorder, grace="5s", extra_agg=""):
    return daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml("otlp", "otlp_grpc", recorder.url, retry=FAST_RETRY),
            aggregation=extra_agg,
            extra=f'[shutdown]\ngrace_period = "{grace}"\n',
        ),
    )


class Rounds:
    """StatsD rounds of counter increments with a `round` label, and what was sent
    per `(metric, attributes)` as the recorder's `delta_sums()` keys them."""

    def __init__(self, series=20):
        self.series = series
        self.sent = collections.Counter()
        self.rounds = 0

    def send(self, weir):
        r = self.rounds
        lines = []
        for i in range(self.series):
            inc = 1 + (i * 7 + r) % 5
            lines.append(f"jobs:{inc}|c|#round:{r},series:{i}")
            self.sent[("jobs", (("round", str(r)), ("series", str(i))))] += inc
        send_counted(weir, lines)
        self.rounds += 1


def nonzero(sums):
    return {k: v for k, v in sums.items() if v}


def test_kill_9_during_an_outage_then_restart_delivers_every_increment(tmp_path, otlp_recorder, daemons):
    weir = recorder_weir(tmp_path, daemons, otlp_recorder)
    rounds = Rounds()
    rounds.send(weir)
    assert weir.flush()["pipelines"][0]["delivered"] is True
    otlp_recorder.stop()
    for _ in range(3):
        rounds.send(weir)
        assert weir.flush()["pipelines"][0]["delivered"] is False
    assert weir.pipeline_status("otlp")["unsent_batches"] == 3
    weir.kill9()

    otlp_recorder.start()
    weir.start()
    started = weir.wait_for("pipeline started")
    assert started["replay_batches"] == 3, started
    rounds.send(weir)
    assert weir.flush()["pipelines"][0]["delivered"] is True
    wait_all_sent(weir, "otlp")
    # Nothing was in flight at the crash (the backend was down), so exactly once.
    assert nonzero(otlp_recorder.delta_sums()) == dict(rounds.sent)
    assert otlp_recorder.request_count == 5
    # What was acknowledged is not sent again after another crash.
    weir.kill9()
    weir.start()
    assert weir.wait_for("pipeline started")["replay_batches"] == 0
    rounds.send(weir)
    assert weir.flush()["pipelines"][0]["delivered"] is True
    assert nonzero(otlp_recorder.delta_sums()) == dict(rounds.sent)
    assert otlp_recorder.request_count == 6


def test_kill_9_then_restart_replays_remote_write_with_the_original_timestamps(tmp_path, prometheus, daemons):
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml("prom", "prometheus_remote_write", prometheus.remote_write_url, retry=FAST_RETRY),
        ),
    )
    for inc in (10, 20):
        send_counted(weir, [f"crash_total:{inc}|c"])
        assert weir.flush()["pipelines"][0]["delivered"] is True
    prometheus.stop()
    for inc in (30, 40):
        send_counted(weir, [f"crash_total:{inc}|c"])
        assert weir.flush()["pipelines"][0]["delivered"] is False
    crashed_ms = time.time_ns() // 1_000_000
    weir.kill9()

    prometheus.start()
    weir.start()
    send_counted(weir, [f"crash_total:5|c"])
    assert weir.flush()["pipelines"][0]["delivered"] is True
    (series,) = prometheus.samples("crash_total", "10m").values()
    # The running totals of the two flushes before the outage, the two replayed from
    # the WAL (stamped with their flush times, before the crash), then the new
    # process's total, which starts again from zero (a counter reset).
    assert [v for _, v in series] == [10.0, 30.0, 60.0, 100.0, 5.0]
    times = [t for t, _ in series]
    assert times == sorted(times) and len(set(times)) == 5
    assert times[3] < crashed_ms < times[4]


def test_sigterm_with_the_backend_down_exits_within_grace_and_keeps_the_data(tmp_path, otlp_recorder, daemons):
    grace_s = 2
    weir = recorder_weir(tmp_path, daemons, otlp_recorder, grace=f"{grace_s}s")
    rounds = Rounds()
    rounds.send(weir)
    assert weir.flush()["pipelines"][0]["delivered"] is True
    otlp_recorder.stop()
    rounds.send(weir)
    assert weir.flush()["pipelines"][0]["delivered"] is False
    rounds.send(weir)  # in no flush yet: the final flush at SIGTERM takes it

    code, seconds = weir.terminate(timeout=grace_s + 15)
    assert code == 0, weir.log_tail()
    # It kept trying for the grace period, and stopped then.
    assert grace_s - 0.5 <= seconds <= grace_s + 3, seconds
    stopped = [e for e in weir.events() if e.get("message", "").startswith("pipeline stopped")]
    assert len(stopped) == 1 and stopped[0]["delivered"] is False, stopped
    assert stopped[0]["unsent_batches"] == 2, stopped

    otlp_recorder.start()
    weir.start()
    assert weir.wait_for("pipeline started")["replay_batches"] == 2
    wait_all_sent(weir, "otlp")
    assert nonzero(otlp_recorder.delta_sums()) == dict(rounds.sent)
    assert otlp_recorder.request_count == 3


def test_a_full_forwarder_queue_reads_back_from_the_wal_in_order(tmp_path, otlp_recorder, daemons):
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml("otlp", "otlp_grpc", otlp_recorder.url, retry=FAST_RETRY, queue_capacity=2),
        ),
    )
    otlp_recorder.fail_always(grpc.StatusCode.UNAVAILABLE)
    rounds = Rounds(series=5)
    for _ in range(8):
        rounds.send(weir)
        assert weir.flush()["pipelines"][0]["delivered"] is False
    assert weir.metric("weir_pipeline_queue_full_total", pipeline="otlp") >= 1
    otlp_recorder.recover()
    wait_all_sent(weir, "otlp")
    # One request per flush, in flush order, each with its own round's increments.
    per_request = []
    for request in otlp_recorder.requests():
        per_request.append(sorted({dict(p.attributes)["round"] for p in flatten(request) if p.value}))
    assert per_request == [[str(r)] for r in range(8)]
    assert nonzero(otlp_recorder.delta_sums()) == dict(rounds.sent)


def test_wal_cap_drops_exactly_the_oldest_batches_and_counts_them(tmp_path, otlp_recorder, daemons):
    cap, segment = 1 << 20, 64 << 10
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml(
                "otlp",
                "otlp_grpc",
                otlp_recorder.url,
                retry=FAST_RETRY,
                wal={"max_bytes": cap, "segment_bytes": segment},
            ),
            # A round's series are evicted at the next flush, so every batch holds
            # about the same bytes (one round, and the previous one's last zeros).
            aggregation='series_ttl = "1ms"\n',
        ),
    )
    otlp_recorder.fail_always(grpc.StatusCode.UNAVAILABLE)
    rounds = Rounds(series=200)
    status = weir.pipeline_status("otlp")
    while status["wal_dropped_batches"] < 10:
        assert rounds.rounds < 400, status
        rounds.send(weir)
        assert weir.flush()["pipelines"][0]["delivered"] is False
        status = weir.pipeline_status("otlp")
        assert status["wal_bytes"] <= cap, status
    for _ in range(5):  # a few more after the cap was first reached
        rounds.send(weir)
        assert weir.flush()["pipelines"][0]["delivered"] is False
    # Let the forwarder see that the batch it retries was deleted (it checks after
    # each failed attempt) before the backend comes back.
    retries = weir.pipeline_status("otlp")["retries"]
    poll(lambda: weir.pipeline_status("otlp")["retries"], lambda n: n >= retries + 2, what="two more attempts")
    before = weir.pipeline_status("otlp")
    dropped = before["wal_dropped_batches"]
    assert before["unsent_batches"] + dropped == rounds.rounds, before

    otlp_recorder.recover()
    wait_all_sent(weir, "otlp")
    arrived = collections.Counter()
    for (metric, attrs), v in otlp_recorder.delta_sums().items():
        arrived[dict(attrs)["round"]] += v
    sent = collections.Counter()
    for (metric, attrs), v in rounds.sent.items():
        sent[dict(attrs)["round"]] += v
    missing = sorted(int(r) for r in sent if not arrived.get(r))
    # Exactly the oldest rounds are missing, one batch each; every newer round is
    # there in full.
    assert missing == list(range(dropped)), (missing, dropped)
    assert {r: v for r, v in arrived.items() if v} == {r: v for r, v in sent.items() if int(r) >= dropped}
    m = weir.self_metrics()
    label = (("pipeline", "otlp"),)
    assert m[("weir_wal_dropped_batches_total", label)] == dropped
    assert m[("weir_wal_dropped_bytes_total", label)] > 0
    assert m[("weir_pipeline_sent_batches_total", label)] == rounds.rounds - dropped
    warnings = [e for e in weir.events() if e.get("message", "").startswith("WAL size cap reached")]
    assert warnings and sum(e["dropped_batches"] for e in warnings) == dropped, warnings
    print(f"{rounds.rounds} batches, {dropped} dropped ({m[('weir_wal_dropped_bytes_total', label)]:.0f} bytes)")
