"""Fixtures for the real backends weir forwards to (see backends.py): each started on
free ports of 127.0.0.1 with its data under the test's tmp_path, and stopped at
teardown however the test ended. A test may stop and start them again itself."""

import pytest

from backends import InfluxDB, OtlpRecorder, Prometheus, VictoriaMetrics


@pytest.fixture
def prometheus(tmp_path):
    """A running Prometheus with the remote-write receiver on and no scrape jobs."""
    backend = Prometheus(tmp_path).start()
    yield backend
    backend.stop()


@pytest.fixture
def influxdb(tmp_path):
    """A running InfluxDB 1.x with database `weir` created."""
    backend = InfluxDB(tmp_path).start()
    backend.create_database("weir")
    yield backend
    backend.stop()


@pytest.fixture
def victoria_metrics(tmp_path):
    """A running single-node VictoriaMetrics."""
    backend = VictoriaMetrics(tmp_path).start()
    yield backend
    backend.stop()


@pytest.fixture
def otlp_recorder():
    """A running recording OTLP/gRPC metrics server."""
    server = OtlpRecorder().start()
    yield server
    server.stop()
