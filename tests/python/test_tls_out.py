"""weir's outgoing TLS and credentials against real peers: remote write over HTTPS
to a real Prometheus 2.42 (`--web.config.file` with `tls_server_config`, and with
`basic_auth_users`), the data read back from Prometheus; a scrape over HTTPS of a
real node_exporter (`--web.config.file`); a peer whose certificate a wrong CA does
not sign refused and counted (`reason="tls"`).

The certificates are made by the test with the `openssl` CLI in its tmp dir: a CA,
a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated CA."""

import pytest
import statsd

from certs import Pki
from backends import Prometheus, http, poll
from test_scrape_node_exporter import NodeExporter
from weir_process import FAST_RETRY, daemon_config, daemons, parse_exposition, pipeline_toml  # noqa: F401 (daemons: a fixture)


class Certs:
    """`ca`, `server_cert` + `server_key` (127.0.0.1 and localhost, signed by `ca`),
    and `other_ca` (signs nothing the peers show), under `dir`."""

    def __init__(self, tmp_path):
        self.pki = Pki(tmp_path / "certs")
        self.dir = self.pki.dir
        self.ca = self.pki.ca
        self.other_ca = Pki(tmp_path / "certs", "other-ca").ca
        self.server_cert, self.server_key = self.pki.server("server")


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


@pytest.fixture
def tls_prometheus(tmp_path, certs):
    """Prometheus serving HTTPS only, to user `weir` (password `remote-pw`)."""
    prom = Prometheus(tmp_path)
    prom.serve_tls(certs.server_cert, certs.server_key, certs.ca, basic_auth=("weir", "remote-pw"))
    prom.start()
    yield prom
    prom.stop()


def send_counter(weir, name, value):
    """A StatsD counter, waited for until weir counted it."""
    before = weir.metric("weir_statsd_samples_total") or 0
    statsd.StatsClient(*weir.statsd).incr(name, value)
    weir.wait_metric("weir_statsd_samples_total", lambda v: v >= before + 1)


def test_remote_write_over_https_with_basic_auth_reaches_a_real_prometheus(tmp_path, certs, tls_prometheus, daemons):
    password_file = tmp_path / "remote-pw"
    password_file.write_text("remote-pw\n")
    url = tls_prometheus.remote_write_url
    assert url.startswith("https://")
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml(
                "prom",
                "prometheus_remote_write",
                url,
                tls={"ca_file": str(certs.ca)},
                basic_auth={"username": "weir", "password_file": str(password_file)},
                retry=FAST_RETRY,
            ),
        ),
    )
    send_counter(weir, "tls.orders", 42)
    answer = weir.flush()
    assert answer["pipelines"][0]["delivered"] is True, answer
    tls_prometheus.wait_for("tls_orders", lambda v: v == {(("__name__", "tls_orders"),): 42.0})
    status = weir.pipeline_status("prom")
    assert status["sent_batches"] >= 1 and status["last_error"] is None, status
    assert "remote-pw" not in weir.log_path.read_text()

    # The peer really checks the password: without it, 401, refused for good.
    weir.terminate()
    bad = daemons(
        tmp_path / "weir2",
        daemon_config(
            tmp_path / "weir2-data",
            pipeline_toml(
                "prom",
                "prometheus_remote_write",
                url,
                tls={"ca_file": str(certs.ca)},
                basic_auth={"username": "weir", "password": "wrong-pw"},
                retry=FAST_RETRY,
            ),
        ),
    )
    send_counter(bad, "tls.orders", 1)
    answer = bad.flush()
    assert answer["pipelines"][0]["delivered"] is False, answer
    assert "401" in answer["pipelines"][0]["error"], answer
    assert bad.metric("weir_pipeline_send_failures_total", pipeline="prom", reason="http_status") >= 1
    assert "wrong-pw" not in bad.log_path.read_text()
    assert "wrong-pw" not in str(bad.status())


def test_a_wrong_ca_is_refused_and_counted_as_tls(tmp_path, certs, tls_prometheus, daemons):
    weir = daemons(
        tmp_path / "weir",
        daemon_config(
            tmp_path / "weir-data",
            pipeline_toml(
                "prom",
                "prometheus_remote_write",
                tls_prometheus.remote_write_url,
                tls={"ca_file": str(certs.other_ca)},
                basic_auth={"username": "weir", "password": "remote-pw"},
                retry=FAST_RETRY,
            ),
        ),
    )
    send_counter(weir, "tls.refused", 1)
    answer = weir.flush()
    outcome = answer["pipelines"][0]
    assert outcome["delivered"] is False, answer
    assert "unknown issuer" in outcome["error"], outcome
    assert weir.metric("weir_pipeline_send_failures_total", pipeline="prom", reason="tls") >= 1
    # The log line says why.
    failed = [e for e in weir.events() if e.get("message", "").startswith("send failed")]
    assert failed and failed[0]["reason"] == "tls" and "unknown issuer" in failed[0]["error"], failed
    # Nothing arrived.
    assert tls_prometheus.values("tls_refused") == {}


def test_scrape_over_https_of_a_real_node_exporter_and_a_wrong_ca_is_down(tmp_path, certs, daemons):
    exporter = NodeExporter(tmp_path)
    exporter.serve_tls(certs.server_cert, certs.server_key, certs.ca)
    exporter.write_textfile(jobs=100, temperature=21.5, fast=1, slow=2, count=3, sum=1.25)
    exporter.start()
    try:
        good = f"https://127.0.0.1:{exporter.port}/metrics"
        # The same exporter under another name (localhost) with the wrong CA.
        bad = f"https://localhost:{exporter.port}/metrics"
        targets = (
            f'[[scrape.targets]]\nurl = "{good}"\njob = "node"\ninterval = "100ms"\ntimeout = "90ms"\n'
            f'tls = {{ ca_file = "{certs.ca}" }}\n'
            f'[[scrape.targets]]\nurl = "{bad}"\njob = "wrong-ca"\ninterval = "100ms"\ntimeout = "90ms"\n'
            f'tls = {{ ca_file = "{certs.other_ca}" }}\n'
        )
        port = exporter.port
        weir = daemons(
            tmp_path / "weir",
            daemon_config(tmp_path / "weir-data", statsd=False, exposition="127.0.0.1:0", flush_interval="200ms", extra=targets),
        )

        def page():
            status, body = http("GET", f"http://{weir.exposition}/metrics")
            assert status == 200, body
            return parse_exposition(body.decode())

        node = (("instance", f"127.0.0.1:{port}"), ("job", "node"))
        wrong = (("instance", f"localhost:{port}"), ("job", "wrong-ca"))
        p = poll(
            page,
            lambda p: p.get(("weir_ne_jobs_total", tuple(sorted(node + (("queue", "mail"),))))) == 100
            and p.get(("up", wrong)) == 0,
            what="https target scraped, wrong-CA target down",
        )
        assert p[("up", node)] == 1
        weir.wait_metric("weir_scrape_errors_total", lambda v: v >= 1, target=bad, reason="tls")
        assert weir.metric("weir_scrape_errors_total", target=good, reason="tls") == 0
        targets = {t["url"]: t for t in weir.status()["scrape_targets"]}
        assert targets[good]["up"] is True, targets
        assert "unknown issuer" in targets[bad]["last_error"], targets
    finally:
        exporter.stop()


def test_an_agent_forwards_over_otlp_grpc_with_a_client_certificate_to_a_gateway_weir(tmp_path, daemons):
    """The Kubernetes layout (packaging/kubernetes): a node agent's otlp_grpc pipeline
    to a gateway weir whose gRPC listener requires client certificates. An agent with
    the certificate delivers exactly; one without it is refused by the gateway, and
    both sides count the refusal."""
    pki = Pki(tmp_path / "pki")
    server_cert, server_key = pki.server("gateway")
    client_cert, client_key = pki.client("agent")
    gateway = daemons(
        tmp_path / "gateway",
        daemon_config(
            tmp_path / "gateway-data",
            statsd=False,
            otlp=True,
            exposition="127.0.0.1:0",
            extra=(
                "[receivers.otlp.grpc_tls]\n"
                f'cert_file = "{server_cert}"\nkey_file = "{server_key}"\nclient_ca_file = "{pki.ca}"\n'
            ),
        ),
    )
    endpoint = f"https://localhost:{gateway.otlp_grpc.rsplit(':', 1)[1]}"

    def agent(name, tls):
        return daemons(
            tmp_path / name,
            daemon_config(
                tmp_path / f"{name}-data",
                pipeline_toml("gateway", "otlp_grpc", endpoint, tls=tls, retry=FAST_RETRY),
            ),
        )

    def gateway_page():
        status, body = http("GET", f"http://{gateway.exposition}/metrics")
        assert status == 200, body
        return parse_exposition(body.decode())

    good = agent("agent", {"ca_file": str(pki.ca), "cert_file": str(client_cert), "key_file": str(client_key)})
    send_counter(good, "mtls.orders", 42)
    answer = good.flush()
    assert answer["pipelines"][0]["delivered"] is True, answer
    gateway.flush()
    orders = {k: v for k, v in gateway_page().items() if k[0].startswith("mtls_orders")}
    assert list(orders.values()) == [42.0], orders

    anonymous = agent("anonymous", {"ca_file": str(pki.ca)})
    send_counter(anonymous, "mtls.orders", 1)
    answer = anonymous.flush()
    assert answer["pipelines"][0]["delivered"] is False, answer
    # Under TLS 1.3 the client finishes its handshake before the gateway checks the
    # (missing) certificate, so over gRPC the agent sees the stream cancelled, not a
    # TLS alert; the gateway's counter names the reason.
    failures = {
        dict(labels)["reason"]: v
        for (name, labels), v in anonymous.self_metrics().items()
        if name == "weir_pipeline_send_failures_total" and dict(labels).get("pipeline") == "gateway"
    }
    assert sum(failures.values()) >= 1, failures
    gateway.wait_metric(
        "weir_tls_handshakes_failed_total", lambda v: v >= 1, listener="otlp_grpc", reason="no_client_cert"
    )
    gateway.flush()
    assert [v for k, v in gateway_page().items() if k[0].startswith("mtls_orders")] == [42.0]
