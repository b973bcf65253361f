"""An InfluxDB partial write as weir's influxdb pipeline must count it, against the
real InfluxDB 1.x: InfluxDB stores the lines it can, refuses the others and answers
the whole request 400 `partial write: ... dropped=N`. That is a send that went
through with N points refused (`weir_pipeline_rejected_points_total`), not a failed
batch, and not one to send again (the good lines are stored already, the bad ones
never will be).

Covers the defect fixed in `backends/influx.rs` (`outcome`, `dropped_points`): a
partial write used to follow the common HTTP rule, so the 400 made the batch a
permanent failure (`weir_pipeline_failed_batches_total` 1, the flush reported not
delivered) with the refused points counted nowhere."""

import statsd

from weir_process import daemon_config, daemons, pipeline_toml, send_statsd_lines  # noqa: F401 (daemons: a fixture)


def test_influxdb_partial_write_counts_the_dropped_lines_as_rejected_and_sends_once(tmp_path, influxdb, daemons):
    # weir writes a StatsD counter `conflict.hits` as measurement `conflict_hits`
    # with the float field `value` (core/src/encode/influx.rs). A string `value` in
    # that measurement first makes InfluxDB refuse every line weir writes there
    # (field types are fixed per measurement and shard).
    status, body = influxdb.write("weir", 'conflict_hits,k=pre value="x"')
    assert status == 204, body
    weir = daemons(
        tmp_path / "weir",
        daemon_config(tmp_path / "weir-data", pipeline_toml("influx", "influxdb", influxdb.url, database="weir")),
    )
    # Three conflicting series (three lines InfluxDB drops) and two it stores.
    send_statsd_lines(weir.statsd, [f"conflict.hits:1|c|#k:{k}" for k in "abc"])
    c = statsd.StatsClient(*weir.statsd)
    c.incr("other.hits", 4)
    c.gauge("other.queue", 7)
    weir.wait_metric("weir_statsd_samples_total", lambda v: v >= 5)
    assert weir.metric("weir_statsd_samples_total") == 5

    answer = weir.flush()
    # Delivered: the backend took the request, a refusal of some lines included.
    assert answer["pipelines"] == [{"pipeline": "influx", "delivered": True, "error": None}], answer

    # The good lines are stored, once; the refused ones are not.
    assert [r["value"] for r in influxdb.rows("SELECT * FROM other_hits", db="weir")] == [4.0]
    assert [r["value"] for r in influxdb.rows("SELECT * FROM other_queue", db="weir")] == [7.0]
    conflict = influxdb.rows("SELECT * FROM conflict_hits GROUP BY *", db="weir")
    assert [(r["k"], r["value"]) for r in conflict] == [("pre", "x")]

    # Counted as what it is: 3 points refused (InfluxDB's dropped=3), no failed
    # batch, and nothing left to resend.
    m = weir.self_metrics()
    label = (("pipeline", "influx"),)
    assert m[("weir_pipeline_rejected_points_total", label)] == 3
    assert m[("weir_pipeline_failed_batches_total", label)] == 0
    assert m[("weir_pipeline_failed_points_total", label)] == 0
    assert m[("weir_pipeline_sent_batches_total", label)] == 1
    assert m[("weir_pipeline_retries_total", label)] == 0
    status = weir.pipeline_status("influx")
    assert (status["unsent_batches"], status["failed_batches"], status["retries"]) == (0, 0, 0), status

    # A later flush sends only its own batch: the partial one is not sent again.
    c.incr("other.hits", 1)
    weir.wait_metric("weir_statsd_samples_total", lambda v: v >= 6)
    answer = weir.flush()
    assert answer["pipelines"] == [{"pipeline": "influx", "delivered": True, "error": None}], answer
    m = weir.self_metrics()
    assert m[("weir_pipeline_sent_batches_total", label)] == 2
    assert m[("weir_pipeline_retries_total", label)] == 0
    # The second batch repeats the conflicting series (counters are running
    # totals), so InfluxDB drops their 3 lines again: 6 in all, still no failure.
    assert m[("weir_pipeline_rejected_points_total", label)] == 6
    assert m[("weir_pipeline_failed_batches_total", label)] == 0
    assert weir.pipeline_status("influx")["unsent_batches"] == 0
    assert [r["value"] for r in influxdb.rows("SELECT * FROM other_hits", db="weir")] == [4.0, 5.0]
