"""Fixtures of the `weir` package's suite (the installed package, not the daemon:
tests/python drives the daemon over the network)."""

import pytest

import weir

# Long flush interval: the tests flush by hand, so no periodic flush lands in between.
QUIET = '[aggregation]\nflush_interval = "1h"\n'


@pytest.fixture
def instance(tmp_path):
    """A fresh instance of its own (data directory under tmp_path), closed afterwards."""
    inst = weir.Instance(f'data_dir = "{tmp_path}"\n' + QUIET)
    yield inst
    if not inst.closed:
        inst.close(0)


def samples(text):
    """{(name, frozenset(labels)): value} of a text exposition, `le` normalised to a
    float and prometheus_client's `_created` series left out."""
    from prometheus_client.parser import text_string_to_metric_families

    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = float(labels["le"])
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def rejected(instance, reason):
    """weir_rejected_total{reason=...} of an instance's self-metrics."""
    key = ("weir_rejected_total", frozenset({("reason", reason)}))
    return samples(instance.self_metrics()).get(key, 0.0)
