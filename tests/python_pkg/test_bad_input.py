"""Bad input: the documented error (as prometheus_client's) or the documented count."""

import math

import pytest

import weir
from conftest import samples, rejected


def test_wrong_label_counts_and_names_raise_value_error(instance):
    c = weir.Counter("orders", "Orders.", ["shop", "kind"], instance=instance)
    with pytest.raises(ValueError, match="Incorrect label count"):
        c.labels("only-one")
    with pytest.raises(ValueError, match="Incorrect label count"):
        c.labels("a", "b", "c")
    with pytest.raises(ValueError, match="Incorrect label names"):
        c.labels(shop="a", sort="b")
    with pytest.raises(ValueError, match="Incorrect label names"):
        c.labels(shop="a")
    with pytest.raises(ValueError):
        c.labels("a", kind="b")
    with pytest.raises(ValueError, match="missing label values"):
        c.inc()
    plain = weir.Counter("plain", "Plain.", instance=instance)
    with pytest.raises(ValueError, match="No label names"):
        plain.labels("x")
    assert samples(instance.generate_latest()) == {("plain_total", frozenset()): 0}


def test_invalid_metric_and_label_names_raise_value_error(instance):
    for name in ["", "1abc", "a-b", "with space"]:
        with pytest.raises(ValueError, match="Invalid metric name"):
            weir.Gauge(name, "Bad.", instance=instance)
    for label in ["1x", "a-b", "__reserved", ""]:
        with pytest.raises(ValueError, match="Invalid label"):
            weir.Gauge("ok", "Bad label.", [label], instance=instance)
    with pytest.raises(ValueError, match="Reserved"):
        weir.Histogram("h", "Le.", ["le"], instance=instance)
    with pytest.raises(ValueError, match="Reserved"):
        weir.Summary("s", "Quantile.", ["quantile"], instance=instance)
    with pytest.raises(ValueError, match="Duplicate"):
        weir.Gauge("ok", "Twice.", ["a", "a"], instance=instance)
    with pytest.raises(ValueError, match="sorted"):
        weir.Histogram("h", "Unsorted.", buckets=[2, 1], instance=instance)


def test_one_name_with_two_kinds_raises_value_error(instance):
    weir.Gauge("shared", "A gauge.", instance=instance)
    with pytest.raises(ValueError, match="exists as a gauge"):
        weir.Histogram("shared", "A histogram.", instance=instance)


def test_negative_counter_increment_raises_as_in_prometheus_client(instance):
    c = weir.Counter("neg", "Neg.", instance=instance)
    with pytest.raises(ValueError, match="non-negative"):
        c.inc(-1)
    assert samples(instance.generate_latest())[("neg_total", frozenset())] == 0


def test_non_finite_values_are_refused_and_counted_not_raised(instance):
    c = weir.Counter("nf", "Non-finite.", instance=instance)
    g = weir.Gauge("nf_gauge", "Non-finite.", instance=instance)
    h = weir.Histogram("nf_hist", "Non-finite.", instance=instance)
    c.inc(1)
    c.inc(math.inf)
    c.inc(math.nan)
    g.set(2)
    g.inc(math.nan)
    g.dec(math.inf)
    h.observe(math.nan)
    h.observe(1)
    latest = samples(instance.generate_latest())
    assert latest[("nf_total", frozenset())] == 1
    assert latest[("nf_gauge", frozenset())] == 2
    assert latest[("nf_hist_count", frozenset())] == 1
    assert rejected(instance, "invalid_value") == 5


def test_the_series_limit_drops_and_counts_every_refused_update(tmp_path):
    inst = weir.Instance(
        f'data_dir = "{tmp_path}"\n[aggregation]\nflush_interval = "1h"\n'
        "max_series_per_metric = 3\n"
    )
    try:
        c = weir.Counter("capped", "Capped.", ["id"], instance=inst)
        for i in range(5):
            for _ in range(10):
                c.labels(str(i)).inc()
        latest = samples(inst.generate_latest())
        assert latest == {("capped_total", frozenset({("id", str(i))})): 10 for i in range(3)}
        metrics = samples(inst.self_metrics())
        # Two refused children: one count at creation, then one per update.
        assert rejected(inst, "cardinality_limit_exceeded") == 2 * 11
        assert metrics[
            ("weir_cardinality_limit_exceeded_total", frozenset({("metric", "capped_total")}))
        ] == 2 * 11
    finally:
        inst.close(0)


def test_an_invalid_config_raises_value_error(tmp_path):
    with pytest.raises(ValueError):
        weir.Instance("this is not toml")
    with pytest.raises(ValueError, match="no receivers"):
        weir.Instance(f'data_dir = "{tmp_path}"\n[receivers.statsd]\naddress = "127.0.0.1:1"\n')


def test_a_closed_instance_refuses_flush_with_a_clear_error(tmp_path):
    inst = weir.Instance(f'data_dir = "{tmp_path}"\n')
    inst.close(0)
    inst.close(0)
    assert inst.closed
    with pytest.raises(RuntimeError, match="closed"):
        inst.flush()
