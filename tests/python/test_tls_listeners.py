"""weir's listeners over TLS, driven by the OpenTelemetry Python SDK exporters (gRPC and
HTTP) as an instrumented service would send: a CA file on the SDK side, exact values
read back from weir's exposition endpoint (over HTTPS too); a client with the wrong CA
and a server certificate that has expired are refused, and weir counts the failed
handshakes. Certificates are made by the test with the `openssl` CLI."""

import json
import socket
import ssl
import urllib.request

import grpc as grpc_lib
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
from opentelemetry.sdk.metrics import Counter, Histogram, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult

from certs import Pki
from weir_process import daemon_config, daemons, parse_exposition, sdk_export  # noqa: F401 (fixture)

DELTA = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
}


def tls_table(key, cert, key_file):
    return f'[{key}]\ncert_file = "{cert}"\nkey_file = "{key_file}"\n'


def tls_weir(daemons, tmp_path, cert, key):
    """weir with OTLP (gRPC and HTTP) and the exposition endpoint over TLS with
    `cert`/`key`, the admin API plain (for POST /flush and its /metrics)."""
    config = daemon_config(
        tmp_path / "data",
        statsd=False,
        otlp=True,
        exposition="127.0.0.1:0",
        extra=tls_table("receivers.otlp.grpc_tls", cert, key)
        + tls_table("receivers.otlp.http_tls", cert, key)
        + tls_table("exposition.tls", cert, key),
    )
    return daemons(tmp_path / "weir", config)


def port(address):
    return int(address.rsplit(":", 1)[1])


def https_get(address, path, ca):
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://localhost:{port(address)}{path}", context=context, timeout=10) as r:
        return r.read().decode()


def served_certificate(address, ca):
    """The DER certificate a new TLS connection to `address` is served."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port(address)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def record(i):
    i["orders"].add(5, {"region": "eu"})
    i["orders"].add(2, {"region": "us"})
    for v in (0.01, 0.2, 3.0):
        i["latency"].record(v)
    i["inflight"].add(4)


def export(exporter, resource):
    return sdk_export(
        exporter,
        lambda meter: {
            "orders": meter.create_counter("shop.orders"),
            "latency": meter.create_histogram("shop.latency", unit="s"),
            "inflight": meter.create_up_down_counter("shop.inflight"),
        },
        [record],
        resource,
        DELTA,
    )


def exported(page, job):
    """`page`'s samples of job `job`, labels without `job`."""
    return {
        (name, tuple(l for l in labels if l[0] != "job")): v
        for (name, labels), v in page.items()
        if ("job", job) in labels
    }


def test_sdk_exporters_send_over_tls_with_a_ca_file_and_the_values_arrive_exactly(daemons, tmp_path, monkeypatch):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.server("server")
    weir = tls_weir(daemons, tmp_path, cert, key)

    # gRPC: the CA file from the environment, as a deployment would set it.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
    grpc = GrpcExporter(endpoint=f"https://localhost:{port(weir.otlp_grpc)}", timeout=10)
    assert export(grpc, {"service.name": "grpc-svc"}) == [MetricExportResult.SUCCESS]
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_CERTIFICATE")
    # HTTP: the CA file as the exporter's argument.
    http = HttpExporter(
        endpoint=f"https://localhost:{port(weir.otlp_http)}/v1/metrics", certificate_file=str(pki.ca), timeout=10
    )
    assert export(http, {"service.name": "http-svc"}) == [MetricExportResult.SUCCESS]

    weir.flush()
    page = parse_exposition(https_get(weir.exposition, "/metrics", pki.ca))
    for job in ("grpc-svc", "http-svc"):
        got = exported(page, job)
        assert got[("shop_orders", (("region", "eu"),))] == 5, got
        assert got[("shop_orders", (("region", "us"),))] == 2, got
        assert got[("shop_inflight", ())] == 4, got
        assert got[("shop_latency_count", ())] == 3, got
        assert got[("shop_latency_sum", ())] == pytest.approx(3.21), got
    for listener in ("otlp_grpc", "otlp_http", "exposition"):
        assert weir.metric("weir_tls_handshakes_total", listener=listener) >= 1
        assert weir.metric("weir_tls_handshakes_failed_total", listener=listener, reason="client_refused") == 0


def test_an_sdk_with_the_wrong_ca_fails_and_weir_counts_the_refused_handshake(daemons, tmp_path):
    pki = Pki(tmp_path / "pki")
    other = Pki(tmp_path / "other", name="other-ca")
    cert, key = pki.server("server")
    weir = tls_weir(daemons, tmp_path, cert, key)

    grpc = GrpcExporter(
        endpoint=f"https://localhost:{port(weir.otlp_grpc)}",
        credentials=grpc_lib.ssl_channel_credentials(root_certificates=other.ca.read_bytes()),
        timeout=2,
    )
    assert export(grpc, {"service.name": "svc"}) == [MetricExportResult.FAILURE]
    weir.wait_metric(
        "weir_tls_handshakes_failed_total", lambda v: v >= 1, listener="otlp_grpc", reason="client_refused"
    )
    http = HttpExporter(
        endpoint=f"https://localhost:{port(weir.otlp_http)}/v1/metrics", certificate_file=str(other.ca), timeout=2
    )
    # The HTTP exporter raises the TLS error (the SDK's periodic reader logs it).
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        export(http, {"service.name": "svc"})
    weir.wait_metric(
        "weir_tls_handshakes_failed_total", lambda v: v >= 1, listener="otlp_http", reason="client_refused"
    )
    assert weir.metric("weir_otlp_requests_total") == 0
    assert weir.metric("weir_tls_handshakes_total", listener="otlp_grpc") == 0


def test_an_expired_server_certificate_is_refused_by_the_sdk(daemons, tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.expired_server("expired")
    weir = tls_weir(daemons, tmp_path, cert, key)

    http = HttpExporter(
        endpoint=f"https://localhost:{port(weir.otlp_http)}/v1/metrics", certificate_file=str(pki.ca), timeout=2
    )
    with pytest.raises(requests.exceptions.SSLError, match="certificate has expired"):
        export(http, {"service.name": "svc"})
    grpc = GrpcExporter(
        endpoint=f"https://localhost:{port(weir.otlp_grpc)}",
        credentials=grpc_lib.ssl_channel_credentials(root_certificates=pki.ca.read_bytes()),
        timeout=2,
    )
    assert export(grpc, {"service.name": "svc"}) == [MetricExportResult.FAILURE]
    for listener in ("otlp_http", "otlp_grpc"):
        weir.wait_metric(
            "weir_tls_handshakes_failed_total", lambda v: v >= 1, listener=listener, reason="client_refused"
        )
    assert weir.metric("weir_otlp_requests_total") == 0


def test_a_reload_serves_a_renewed_certificate_and_a_broken_one_keeps_the_old(daemons, tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.server("server")
    weir = tls_weir(daemons, tmp_path, cert, key)
    first = served_certificate(weir.otlp_http, pki.ca)

    renewed_cert, renewed_key = pki.server("renewed")
    cert.write_bytes(renewed_cert.read_bytes())
    key.write_bytes(renewed_key.read_bytes())
    status, body = weir._admin("POST", "/config/reload", 30)
    answer = json.loads(body)
    assert status == 200 and "tls" in answer["applied"] and answer["errors"] == [], answer
    second = served_certificate(weir.otlp_http, pki.ca)
    assert second != first
    assert served_certificate(weir.exposition, pki.ca) == second

    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    status, body = weir._admin("POST", "/config/reload", 30)
    answer = json.loads(body)
    assert status == 200, answer
    errors = answer["errors"]
    assert any(e.startswith("receivers.otlp.http_tls: ") and str(cert) in e for e in errors), errors
    assert served_certificate(weir.otlp_http, pki.ca) == second
    assert weir.metric("weir_tls_reloads_failed_total", listener="otlp_grpc") == 1
    # The listeners still take exports.
    http = HttpExporter(
        endpoint=f"https://localhost:{port(weir.otlp_http)}/v1/metrics", certificate_file=str(pki.ca), timeout=10
    )
    assert export(http, {"service.name": "svc"}) == [MetricExportResult.SUCCESS]
