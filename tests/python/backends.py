"""Real metrics backends that weir's forwarding pipelines write to, run by the tests
themselves: Prometheus (remote-write receiver), InfluxDB 1.x, VictoriaMetrics (the
Debian packages that scripts/test installs) and a recording OTLP gRPC metrics server
written here in Python.

Every backend listens on 127.0.0.1 only, on a free port, with its own data directory
under the test's tmp_path, is waited for with a bounded readiness poll and can be
stopped and started again on the SAME port and data directory in the middle of a test
(outage tests). Query helpers read back what arrived, exactly. Nothing here sleeps
longer than a poll interval, and every wait has a time limit.

A weir pipeline points at a backend through its URL properties, e.g.

    [[pipelines]]
    name = "prom"
    type = "prometheus_remote_write"    # or "otlp_grpc", "otlp_http", "influxdb"
    endpoint = "http://127.0.0.1:PORT/api/v1/write"   # prometheus.remote_write_url

This module owns the backend processes it starts and nothing else: it never touches a
system service, a default port or a path outside the test's directory.
"""

import base64
import collections
import dataclasses
import json
import pathlib
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
HTTP_TIMEOUT_S = 5
# PromQL over 100k series and a few minutes of samples takes seconds on a busy 2-core
# machine; the server's own query timeout (2 min) still bounds it.
QUERY_TIMEOUT_S = 60
POLL_S = 0.05


# Ports free_port has handed out in this process: a picked port is released at once
# (the backend binds it later), so the kernel may hand the same port to the very next
# pick, and a test asking for two ports in a row would give both servers one port.
_HANDED_OUT = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound to port 0, then
    released for the backend to take) and that this process has not handed out before."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh port on 127.0.0.1 in 64 picks")


def http(method, url, body=None, headers=None, timeout=HTTP_TIMEOUT_S, context=None):
    """One HTTP request: `(status, body bytes)`, error statuses included. Connection
    errors raise (OSError / urllib.error.URLError). `context`: an `ssl.SSLContext`
    for https URLs."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(probe, predicate=bool, timeout=10, what="condition"):
    """Calls `probe()` every POLL_S until `predicate(value)` holds and returns that
    value; fails the test with the last value (or exception) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = probe()
            if predicate(last):
                return last
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not true after {timeout} s; last value: {last!r}")
        time.sleep(POLL_S)


# --- Prometheus remote write, encoded by hand (no snappy or protobuf package needed) ---


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def snappy_block(data):
    """`data` in the snappy block format, as literals only (valid snappy that any
    decoder reads, without compression): the uncompressed length as a varint, then
    literal chunks of at most 65536 bytes. A literal's tag byte has 00 in its low two
    bits; its upper six bits hold length - 1 when below 60, else 61 here, meaning
    length - 1 follows in two little-endian bytes."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        else:
            out.append(61 << 2)
            out += struct.pack("<H", n)
        out += chunk
    return bytes(out)


def encode_write_request(series):
    """A Prometheus remote-write `WriteRequest` (protobuf): `series` is a list of
    `(labels, samples)`, labels a dict with `__name__`, samples `(value, timestamp_ms)`
    pairs. WriteRequest.timeseries = 1; TimeSeries.labels = 1, .samples = 2;
    Label.name = 1, .value = 2; Sample.value = 1 (double), .timestamp = 2 (int64)."""
    out = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name in sorted(labels):
            label = _field_bytes(1, name.encode()) + _field_bytes(2, str(labels[name]).encode())
            ts += _field_bytes(1, label)
        for value, timestamp_ms in samples:
            sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(timestamp_ms & (2**64 - 1))
            ts += _field_bytes(2, sample)
        out += _field_bytes(1, bytes(ts))
    return bytes(out)


def remote_write(url, series):
    """POSTs `series` (see `encode_write_request`) as a snappy-compressed remote-write
    request; returns `(status, body)`."""
    return http(
        "POST",
        url,
        snappy_block(encode_write_request(series)),
        {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )


def wall_clock():
    """The wall clock in Unix seconds (float)."""
    return time.time()


def now_ms():
    """The wall clock in milliseconds, as remote-write timestamps are."""
    return time.time_ns() // 1_000_000


# --- The backend processes ---


class BackendProcess:
    """One backend server binary, run from the test's directory: its port and data
    directory are chosen once and kept across `stop()` / `start()`. Output goes to
    `log_path` (appended across restarts), shown when it fails to start."""

    binary = ""
    package = ""
    ready_path = ""

    def __init__(self, tmp_path, name):
        self.dir = pathlib.Path(tmp_path) / name
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "output.log"
        self.port = free_port()
        self.proc = None
        self.starts = 0
        # Set by `serve_tls`: the server's web config (Prometheus exporter-toolkit
        # format, `--web.config.file`), and how the tests' own requests reach it.
        self.web_config = None
        self.web_config_path = self.dir / "web-config.yml"
        self.ssl_context = None
        self.auth_headers = {}

    @property
    def url(self):
        """`http://127.0.0.1:PORT` (`https://` once `serve_tls` was called), the base
        of every endpoint."""
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def serve_tls(self, cert_file, key_file, ca_file, basic_auth=None):
        """Serves HTTPS with `cert_file`/`key_file` (and, with `basic_auth` =
        `(user, password)`, only to that user) through `--web.config.file`, the
        exporter-toolkit config Prometheus and node_exporter share. The tests'
        requests verify the server against `ca_file` and send the credentials. Call
        before `start()` (for binaries whose `web_args` adds the flag)."""
        self.web_config = {"tls_server_config": {"cert_file": str(cert_file), "key_file": str(key_file)}}
        if basic_auth:
            import bcrypt  # only these tests need it

            user, password = basic_auth
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            self.web_config["basic_auth_users"] = {user: hashed}
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.auth_headers = {"Authorization": f"Basic {token}"}
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file))
        return self

    def web_args(self):
        """`--web.config.file=...` when `serve_tls` set a web config (written here)."""
        if self.web_config is None:
            return []
        self.web_config_path.write_text(json.dumps(self.web_config))  # JSON is YAML
        return [f"--web.config.file={self.web_config_path}"]

    @property
    def running(self):
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def args(self):
        """The command-line arguments after the binary."""
        raise NotImplementedError

    def prepare(self):
        """Writes what the process reads at start (config files); run before each start."""

    def start(self):
        """Starts the process and waits (bounded) until its readiness endpoint answers
        2xx; fails the test with the log's tail if it exits or is not ready in time."""
        assert not self.running, f"{self.binary} already running"
        exe = shutil.which(self.binary)
        if exe is None:
            pytest.fail(f"{self.binary} not found; scripts/test installs it (apt-get install {self.package})")
        self.prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}: port {self.port} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [exe, *self.args()],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.binary} exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(POLL_S)
        self.kill()
        pytest.fail(f"{self.binary} not ready after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def ready(self):
        """Whether the readiness endpoint answers 2xx now."""
        try:
            status, _ = http("GET", self.url + self.ready_path, headers=self.auth_headers, timeout=1, context=self.ssl_context)
        except OSError:
            return False
        return 200 <= status < 300

    def stop(self):
        """SIGTERM (a clean shutdown that persists data), SIGKILL after STOP_TIMEOUT_S;
        returns the exit code, or None if it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self):
        """SIGKILL: a crash, without a clean shutdown."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            self.proc = None

    def restart(self):
        """`stop()` then `start()`, same port and data."""
        self.stop()
        return self.start()

    def log_tail(self, lines=40):
        """The last `lines` lines of the process output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def get_json(self, path, params=None, method="GET", timeout=HTTP_TIMEOUT_S):
        """`path` (with `params` as the query string or form body) parsed as JSON;
        fails the test on a non-2xx answer."""
        encoded = urllib.parse.urlencode(params or {})
        if method == "GET":
            url, body, headers = self.url + path + ("?" + encoded if encoded else ""), None, dict(self.auth_headers)
        else:
            url, body = self.url + path, encoded.encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", **self.auth_headers}
        status, data = http(method, url, body, headers, timeout=timeout, context=self.ssl_context)
        if not 200 <= status < 300:
            pytest.fail(f"{self.binary} {method} {path} {params}: {status} {data[:500]!r}")
        return json.loads(data)


def labels_key(metric):
    """A series' labels as a hashable, sorted tuple of `(name, value)` pairs."""
    return tuple(sorted(metric.items()))


class PromQL:
    """PromQL reads over the Prometheus HTTP API (`/api/v1/query`), shared by
    Prometheus and VictoriaMetrics."""

    def query(self, promql, time=None):
        """`data` of `/api/v1/query`: `{"resultType": ..., "result": [...]}`. `time` is
        Unix seconds (float), now when None, always sent with milliseconds
        (VictoriaMetrics rounds a missing `time` down to the second, hiding the newest
        samples)."""
        params = {"query": promql, "time": f"{wall_clock() if time is None else time:.3f}"}
        answer = self.get_json("/api/v1/query", params, timeout=QUERY_TIMEOUT_S)
        assert answer["status"] == "success", answer
        return answer["data"]

    def values(self, promql, time=None):
        """An instant vector as `{labels_key: float}` (scalars as `{(): float}`)."""
        data = self.query(promql, time)
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        assert data["resultType"] == "vector", data
        return {labels_key(r["metric"]): float(r["value"][1]) for r in data["result"]}

    def value(self, promql, time=None):
        """The one value of `promql`, None if its result is empty; fails if it has more
        than one series."""
        values = self.values(promql, time)
        assert len(values) <= 1, f"{promql}: more than one series: {values}"
        return next(iter(values.values()), None)

    def samples(self, selector, window="1h", time=None):
        """The raw samples of `selector` over the last `window` (the instant query
        `selector[window]`) as `{labels_key: [(timestamp_ms, value), ...]}`, exact."""
        data = self.query(f"{selector}[{window}]", time)
        assert data["resultType"] == "matrix", data
        return {
            labels_key(r["metric"]): [(round(float(t) * 1000), float(v)) for t, v in r["values"]]
            for r in data["result"]
        }

    def wait_for(self, promql, predicate=bool, timeout=10, reader=None):
        """Polls `reader(promql)` (default `values`) until `predicate(result)` holds and
        returns the result; fails the test with the last result after `timeout` s."""
        read = reader or self.values
        return poll(lambda: read(promql), predicate, timeout, f"{self.binary}: {promql}")


class Prometheus(PromQL, BackendProcess):
    """Prometheus with its remote-write receiver on (`remote_write_url`) and no scrape
    jobs, unless `scrape()` adds one (e.g. weir's exposition endpoint).

    Prometheus refuses samples older than the newest one of the same series
    (out of order) and ones far behind its head block; `out_of_order_window` (e.g.
    "10m") turns on its out-of-order ingestion for tests that replay old data."""

    binary = "prometheus"
    package = "prometheus"
    ready_path = "/-/ready"

    def __init__(self, tmp_path, name="prometheus", out_of_order_window=None):
        super().__init__(tmp_path, name)
        self.config_path = self.dir / "prometheus.yml"
        self.out_of_order_window = out_of_order_window
        self.scrape_jobs = {}

    @property
    def remote_write_url(self):
        """`http://127.0.0.1:PORT/api/v1/write`."""
        return self.url + "/api/v1/write"

    def args(self):
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
            "--log.level=info",
            *self.web_args(),
        ]

    def prepare(self):
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s"]
        if self.out_of_order_window:
            lines += ["storage:", "  tsdb:", f"    out_of_order_time_window: {self.out_of_order_window}"]
        lines.append("scrape_configs:" if self.scrape_jobs else "scrape_configs: []")
        for job, (target, interval, path) in self.scrape_jobs.items():
            lines += [
                f"  - job_name: {json.dumps(job)}",
                f"    scrape_interval: {interval}",
                f"    scrape_timeout: {interval}",
                f"    metrics_path: {json.dumps(path)}",
                "    static_configs:",
                f"      - targets: [{json.dumps(target)}]",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def scrape(self, target, job="weir", interval="1s", path="/metrics", timeout=15):
        """Adds (or replaces) scrape job `job` of `target` ("127.0.0.1:PORT") and, if
        running, reloads the config (SIGHUP) and waits until the target is listed
        (its first scrape follows within a discovery update, ~5 s at most)."""
        self.scrape_jobs[job] = (target, interval, path)
        if self.running:
            self.prepare()
            self.proc.send_signal(signal.SIGHUP)
            self.wait_for_target(job, timeout)

    def targets(self):
        """The active scrape targets of `/api/v1/targets`."""
        return self.get_json("/api/v1/targets")["data"]["activeTargets"]

    def wait_for_target(self, job, timeout=15):
        """Waits until a target of `job` has been scraped successfully (health "up")."""
        return poll(
            lambda: [t for t in self.targets() if t["labels"].get("job") == job],
            lambda ts: any(t["health"] == "up" for t in ts),
            timeout,
            f"prometheus scrape target {job} up",
        )

    def remote_write(self, series):
        """Writes `series` (see `encode_write_request`) to the remote-write receiver."""
        return remote_write(self.remote_write_url, series)


class InfluxDB(BackendProcess):
    """InfluxDB 1.x (`influxd run -config`), with a generated config: HTTP API and the
    RPC (backup) bind address on free ports of 127.0.0.1, meta/data/wal under the
    test's directory, reporting, the _internal monitor store, continuous queries and
    every other listener off."""

    binary = "influxd"
    package = "influxdb"
    ready_path = "/ping"

    def __init__(self, tmp_path, name="influxdb"):
        super().__init__(tmp_path, name)
        self.rpc_port = free_port()
        self.config_path = self.dir / "influxdb.conf"

    def args(self):
        return ["run", "-config", str(self.config_path)]

    def prepare(self):
        d = self.data_dir
        self.config_path.write_text(
            "reporting-enabled = false\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            '  index-version = "inmem"\n'
            "[monitor]\n  store-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
            "[retention]\n  enabled = false\n"
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.port}"\n'
            "  auth-enabled = false\n  log-enabled = true\n  pprof-enabled = false\n"
            "  unix-socket-enabled = false\n"
            "[logging]\n  level = \"info\"\n  suppress-logo = true\n"
        )

    def write_url(self, db, precision=None):
        """`http://127.0.0.1:PORT/write?db=DB[&precision=...]` (line protocol)."""
        params = {"db": db}
        if precision:
            params["precision"] = precision
        return self.url + "/write?" + urllib.parse.urlencode(params)

    def create_database(self, db):
        """`CREATE DATABASE db` (idempotent)."""
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, db, lines, precision=None):
        """Writes line-protocol `lines` (a str, or a list joined by newlines) to `db`;
        returns `(status, body)` (204 is success)."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        return http("POST", self.write_url(db, precision), text.encode(), {"Content-Type": "text/plain"})

    def query(self, influxql, db=None, epoch="ns"):
        """The `results` of `/query` (POST) for `influxql`, timestamps as integers in
        `epoch` units; fails the test if a statement returned an error."""
        params = {"q": influxql, "epoch": epoch}
        if db:
            params["db"] = db
        results = self.get_json("/query", params, method="POST")["results"]
        for r in results:
            assert "error" not in r, f"{influxql}: {r['error']}"
        return results

    def rows(self, influxql, db=None, epoch="ns"):
        """Every row of every series of `influxql`, as dicts of column -> value, plus
        the series' tags and `"_measurement"`."""
        out = []
        for result in self.query(influxql, db, epoch):
            for series in result.get("series", []):
                extra = dict(series.get("tags", {}), _measurement=series["name"])
                out += [dict(zip(series["columns"], row), **extra) for row in series["values"]]
        return out


class VictoriaMetrics(PromQL, BackendProcess):
    """Single-node VictoriaMetrics: Prometheus remote write (`remote_write_url`), Influx
    line protocol (`influx_write_url`) and PromQL/MetricsQL reads.

    Run so that fresh data reads back at once: `-search.latencyOffset=0` (the default
    hides the last 30 s), `-search.disableCache` (no cached rollups), and every query
    helper first calls `/internal/force_flush` (rows are otherwise buffered up to ~1 s).
    Even so, an instant query evaluated at "now" sees a sample only once the server's
    second-resolution clock has passed its timestamp (up to ~2 s; measured on 1.79):
    `samples()` (raw samples) reads it at once, `values()` / `value()` of a fresh
    sample need `wait_for`.
    `-retentionPeriod=100y`, so any past timestamp is kept (VM drops samples outside
    its retention, and ones more than 2 days in the future). Influx lines become
    `{measurement}_{field}{tags..., db="DB"}` series."""

    binary = "victoria-metrics"
    package = "victoria-metrics"
    ready_path = "/health"

    def __init__(self, tmp_path, name="victoria-metrics"):
        super().__init__(tmp_path, name)

    @property
    def remote_write_url(self):
        """`http://127.0.0.1:PORT/api/v1/write`."""
        return self.url + "/api/v1/write"

    def influx_write_url(self, db=None, precision=None):
        """`http://127.0.0.1:PORT/write[?db=DB&precision=...]` (line protocol; with
        `db`, series get a `db` label)."""
        params = {k: v for k, v in (("db", db), ("precision", precision)) if v}
        return self.url + "/write" + ("?" + urllib.parse.urlencode(params) if params else "")

    def args(self):
        return [
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0",
            "-search.disableCache",
            "-loggerLevel=INFO",
        ]

    def flush(self):
        """`/internal/force_flush`: buffered rows become searchable."""
        status, body = http("GET", self.url + "/internal/force_flush")
        assert status == 200, (status, body)

    def query(self, promql, time=None):
        self.flush()
        return super().query(promql, time)

    def write_lines(self, lines, db=None, precision=None):
        """Writes Influx line protocol; returns `(status, body)` (204 is success)."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        return http("POST", self.influx_write_url(db, precision), text.encode(), {"Content-Type": "text/plain"})

    def remote_write(self, series):
        """Writes `series` (see `encode_write_request`) as Prometheus remote write."""
        return remote_write(self.remote_write_url, series)


# --- The recording OTLP gRPC metrics server ---

DELTA = 1  # AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclasses.dataclass(frozen=True)
class RecordedPoint:
    """One received data point, flattened. `attributes` and `resource` are sorted
    `(key, value)` tuples; `value` is the number of a gauge or sum point, `count` and
    `sum` those of a histogram (explicit or exponential) or summary point."""

    metric: str
    kind: str  # "gauge", "sum", "histogram", "exponential_histogram", "summary"
    attributes: tuple
    resource: tuple
    value: float = None
    count: int = None
    sum: float = None
    temporality: int = 0
    monotonic: bool = False
    start_time_unix_nano: int = 0
    time_unix_nano: int = 0


def any_value(v):
    """An OTLP AnyValue as a hashable Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(key_values):
    """OTLP KeyValues as a sorted tuple of `(key, value)`."""
    return tuple(sorted((kv.key, any_value(kv.value)) for kv in key_values))


def flatten(request):
    """Every data point of an ExportMetricsServiceRequest as RecordedPoints."""
    out = []
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(m, kind)
                temporality = getattr(data, "aggregation_temporality", 0)
                monotonic = getattr(data, "is_monotonic", False)
                for p in data.data_points:
                    common = dict(
                        metric=m.name,
                        kind=kind,
                        attributes=attributes(p.attributes),
                        resource=resource,
                        temporality=temporality,
                        monotonic=monotonic,
                        start_time_unix_nano=p.start_time_unix_nano,
                        time_unix_nano=p.time_unix_nano,
                    )
                    if kind in ("gauge", "sum"):
                        out.append(RecordedPoint(value=getattr(p, p.WhichOneof("value") or "as_double"), **common))
                    else:
                        out.append(RecordedPoint(count=p.count, sum=p.sum, **common))
    return out


class OtlpRecorder(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC MetricsService on 127.0.0.1 that records every request it accepts
    and can be made to fail on demand:

    - `fail_next(n, code)`: the next n calls answer `code` (default UNAVAILABLE);
    - `fail_always(code)`: every call answers `code` until `recover()`;
    - `delay(seconds)`: calls answer after `seconds` (a client that gave up by then
      saw a failure: its request is counted in `abandoned`, not recorded);
    - `partial_success(rejected, message)`: accepted calls answer a partial success;
    - `stop()` / `start()`: down and up again on the same port.

    `attempts` counts every call, `requests()` holds the accepted ones. Thread-safe."""

    def __init__(self, max_workers=8):
        self.port = 0
        self.max_workers = max_workers
        self.server = None
        self._cond = threading.Condition()
        self._requests = []
        self._fail_next = collections.deque()
        self._fail_code = None
        self._delay_s = 0.0
        self._partial = None
        self._stopping = threading.Event()
        self.attempts = 0
        self.failed = 0
        self.abandoned = 0

    @property
    def endpoint(self):
        """`127.0.0.1:PORT` (a gRPC target)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        """`http://127.0.0.1:PORT` (the OTLP exporter / weir pipeline endpoint)."""
        return f"http://{self.endpoint}"

    @property
    def running(self):
        """Whether the server is serving."""
        return self.server is not None

    def start(self):
        """Serves on the port of the first start (a free one then)."""
        assert self.server is None, "already running"
        self._stopping.clear()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers),
            options=[("grpc.so_reuseport", 0)],
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, server)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the old listener of a restart may take a moment to go
            try:
                port = server.add_insecure_port(f"127.0.0.1:{self.port}")
            except RuntimeError:
                port = 0
            if port:
                break
            if time.monotonic() >= deadline:
                pytest.fail(f"OTLP recorder could not bind 127.0.0.1:{self.port}")
            time.sleep(POLL_S)
        self.port = port
        server.start()
        self.server = server
        return self

    def stop(self, grace=0):
        """Stops serving (calls in progress are cancelled after `grace` seconds)."""
        if self.server is not None:
            self._stopping.set()
            self.server.stop(grace).wait(STOP_TIMEOUT_S)
            self.server = None

    def restart(self):
        """`stop()` then `start()` on the same port."""
        self.stop()
        return self.start()

    # Failure modes.

    def fail_next(self, n, code=grpc.StatusCode.UNAVAILABLE, message="recorder told to fail"):
        """The next `n` calls answer `code` (queued after earlier `fail_next`s)."""
        with self._cond:
            self._fail_next.extend([(code, message)] * n)

    def fail_always(self, code=grpc.StatusCode.UNAVAILABLE, message="recorder told to fail"):
        """Every call answers `code` until `recover()`."""
        with self._cond:
            self._fail_code = (code, message)

    def delay(self, seconds):
        """Calls answer after `seconds` (0 to answer at once again)."""
        with self._cond:
            self._delay_s = seconds

    def partial_success(self, rejected_data_points, message="recorder rejected points"):
        """Accepted calls answer ExportMetricsPartialSuccess (None: full success)."""
        with self._cond:
            self._partial = None if rejected_data_points is None else (rejected_data_points, message)

    def recover(self):
        """Clears every failure mode, delay and partial success."""
        with self._cond:
            self._fail_next.clear()
            self._fail_code = None
            self._delay_s = 0.0
            self._partial = None

    def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        with self._cond:
            self.attempts += 1
            self._cond.notify_all()
            failure = self._fail_next.popleft() if self._fail_next else self._fail_code
            delay_s, partial = self._delay_s, self._partial
        if delay_s:
            self._stopping.wait(delay_s)
        if failure is not None:
            with self._cond:
                self.failed += 1
                self._cond.notify_all()
            context.abort(*failure)
        if not context.is_active() or self._stopping.is_set():
            with self._cond:
                self.abandoned += 1
                self._cond.notify_all()
            context.abort(grpc.StatusCode.UNAVAILABLE, "recorder stopping")
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        if partial is not None:
            response.partial_success.rejected_data_points = partial[0]
            response.partial_success.error_message = partial[1]
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
        return response

    # What was received.

    def requests(self):
        """The accepted ExportMetricsServiceRequests, in arrival order (a copy)."""
        with self._cond:
            return list(self._requests)

    @property
    def request_count(self):
        """How many requests were accepted."""
        with self._cond:
            return len(self._requests)

    def clear(self):
        """Forgets what was received and the counts."""
        with self._cond:
            self._requests.clear()
            self.attempts = self.failed = self.abandoned = 0

    def wait_for_requests(self, n, timeout=10):
        """Waits until at least `n` requests were accepted; returns them, or fails the
        test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"OTLP recorder: {len(self._requests)} of {n} requests after {timeout} s "
                        f"({self.attempts} attempts, {self.failed} failed)"
                    )
                self._cond.wait(left)
            return list(self._requests)

    def wait_for_attempts(self, n, timeout=10):
        """Waits until at least `n` calls (failed ones too) arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.attempts < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"OTLP recorder: {self.attempts} of {n} attempts after {timeout} s")
                self._cond.wait(left)
            return self.attempts

    def points(self):
        """Every data point received, flattened (see RecordedPoint)."""
        return [p for r in self.requests() for p in flatten(r)]

    def delta_sums(self):
        """Monotonic delta Sum points summed per `(metric, attributes)`; fails the test
        if a monotonic Sum arrived with another temporality."""
        totals = collections.defaultdict(int)
        for p in self.points():
            if p.kind == "sum" and p.monotonic:
                assert p.temporality == DELTA, f"non-delta monotonic sum: {p}"
                totals[(p.metric, p.attributes)] += p.value
        return dict(totals)

    def delta_histogram_counts(self):
        """Delta histogram point counts summed per `(metric, attributes)`."""
        totals = collections.defaultdict(int)
        for p in self.points():
            if p.kind in ("histogram", "exponential_histogram"):
                assert p.temporality == DELTA, f"non-delta histogram: {p}"
                totals[(p.metric, p.attributes)] += p.count
        return dict(totals)
