"""The real `weir` binary as the Python tests run it: JSON logs on stdout, waited on
line by line with a time limit, stopped with SIGTERM."""

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
WEIR = pathlib.Path(os.environ.get("WEIR_BIN", ROOT / "target" / "debug" / "weir"))
TIMEOUT_S = 20

# Everything off but what a test turns on; JSON logs the tests can read.
QUIET = "[receivers.statsd]\nenabled = false\n[receivers.otlp]\nenabled = false\n[exposition]\nenabled = false\n[admin]\nenabled = false\n"


class WeirProcess:
    """`weir --config` with `config` (TOML, `[log] format = "json"` added)."""

    def __init__(self, tmp_path, config):
        path = tmp_path / "weir.toml"
        path.write_text(config + '[log]\nformat = "json"\n')
        self.proc = subprocess.Popen(
            [str(WEIR), "--config", str(path)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.events = []

    def wait_for(self, message_prefix):
        """The first log event whose message starts with `message_prefix`."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            self.events.append(event)
            if event.get("message", "").startswith(message_prefix):
                return event
        self.kill()
        pytest.fail(f"no {message_prefix!r} log line; output:\n" + "\n".join(map(str, self.events)))

    def stop(self):
        """SIGTERM, wait for exit 0, return every log event."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=TIMEOUT_S)
        self.events += [json.loads(l) for l in out.splitlines() if l.strip()]
        assert self.proc.returncode == 0, self.events
        return self.events

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)


def flushes(events):
    """The flush summary events, the final one included."""
    return [e for e in events if e.get("message") in ("flush", "final flush")]


def total(events, field):
    """`field` summed over every flush."""
    return sum(e[field] for e in flushes(events))


def event(events, message):
    """The first event with exactly this message."""
    return next(e for e in events if e.get("message") == message)


# --- weir with its admin API, for the pipeline tests ---
#
# `WeirDaemon` runs weir from a directory of its own with the log in a file (a long
# test never blocks weir on a full pipe), knows the addresses its listeners took (port
# 0 in the config, read back from the log), drives the admin API (POST /flush,
# /status, /metrics) and can be stopped with SIGTERM, killed with SIGKILL and started
# again with the same config and data_dir.

import re
import urllib.error
import urllib.request

_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def toml_value(v):
    """A Python value as a TOML value (str, bool, int, float, list, dict as an inline
    table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def pipeline_toml(name, kind, endpoint, **keys):
    """One `[[pipelines]]` table; `keys` are its other keys, the dotted ones as inline
    tables: `wal={"max_bytes": ...}`, `retry={"initial_backoff": ...}`."""
    lines = ["[[pipelines]]", f"name = {toml_value(name)}", f"type = {toml_value(kind)}", f"endpoint = {toml_value(endpoint)}"]
    for k, v in keys.items():
        lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def parse_exposition(text):
    """Prometheus text format as `{(name, ((label, value), ...)): float}`, labels sorted."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("}", 1)
            key = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")) for k, v in _LABEL.findall(labels)))
        else:
            name, value = line.split(None, 1)
            key = ()
        out[(name, key)] = float(value.split()[0])
    return out


class WeirDaemon:
    """weir run from `directory` (created) with `config` (TOML; `[log] format = "json"`
    is added; the config must turn the admin API on, on port 0 or a fixed one). Started
    at construction; `start()` again after `terminate()` / `kill9()` runs the same
    config (same data_dir, so the same WALs)."""

    def __init__(self, directory, config, start=True):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "weir.toml"
        self.config_path.write_text(config + '[log]\nformat = "json"\n')
        self.log_path = self.dir / "weir.log"
        self.proc = None
        self.starts = 0
        self._offset = 0
        self._events = []  # this run's events
        if start:
            self.start()

    def start(self, timeout=TIMEOUT_S):
        """Starts weir and waits until its admin API (and every listener the config
        turns on) logged its address."""
        assert self.proc is None or self.proc.poll() is not None, "weir already running"
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._events = []
        self._partial = ""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(WEIR), "--config", str(self.config_path)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        self.admin = self.wait_for("admin API listening", timeout)["address"]
        started = self.wait_for("weir started", timeout)
        self.statsd = self.otlp_grpc = self.otlp_http = self.exposition = None
        for e in self._events:
            msg = e.get("message", "")
            if msg.startswith("statsd receiver listening"):
                host, port = e["address"].rsplit(":", 1)
                self.statsd = (host, int(port))
            elif msg.startswith("otlp receiver listening"):
                self.otlp_grpc, self.otlp_http = e["grpc"], e["http"]
            elif msg.startswith("exposition endpoint listening"):
                self.exposition = e["address"]
        return started

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def events(self):
        """This run's log events so far (JSON objects)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        text = self._partial + data.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    self._events.append({"message": "(not JSON) " + line})
        return self._events

    def wait_for(self, message_prefix, timeout=TIMEOUT_S):
        """The first event of this run whose message starts with `message_prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events():
                if e.get("message", "").startswith(message_prefix):
                    return e
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.kill9()
                pytest.fail(f"no {message_prefix!r} log line; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines=60):
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _admin(self, method, path, timeout):
        request = urllib.request.Request(f"http://{self.admin}{path}", method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def flush(self, timeout=45):
        """POST /flush: the summary with `pipelines: [{pipeline, delivered, error}]`."""
        status, body = self._admin("POST", "/flush", timeout)
        assert status == 200, (status, body)
        return json.loads(body)

    def status(self):
        """GET /status as JSON."""
        status, body = self._admin("GET", "/status", 10)
        assert status == 200, (status, body)
        return json.loads(body)

    def pipeline_status(self, name):
        """The `/status` entry of pipeline `name`."""
        return next(p for p in self.status()["pipelines"] if p["name"] == name)

    def self_metrics(self):
        """GET /metrics (weir's own metrics), parsed (see `parse_exposition`)."""
        status, body = self._admin("GET", "/metrics", 10)
        assert status == 200, (status, body)
        return parse_exposition(body.decode())

    def metric(self, name, **labels):
        """One self-metric's value (None if absent)."""
        return self.self_metrics().get((name, tuple(sorted(labels.items()))))

    def wait_metric(self, name, predicate, timeout=TIMEOUT_S, **labels):
        """Polls self-metric `name{labels}` until `predicate(value)`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if value is not None and predicate(value):
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"{name}{labels}: last value {value!r} after {timeout} s")
            time.sleep(0.05)

    def terminate(self, timeout=TIMEOUT_S):
        """SIGTERM; waits for the exit; returns `(exit code, seconds it took)`."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(f"weir did not exit within {timeout} s of SIGTERM; log:\n{self.log_tail()}")
        self.events()
        return code, time.monotonic() - began

    def kill9(self):
        """SIGKILL (a crash) if running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)


def daemon_config(
    data_dir,
    pipelines="",
    statsd=True,
    otlp=False,
    exposition=None,
    flush_interval="1h",
    aggregation="",
    extra="",
    otlp_keys="",
):
    """A config for `WeirDaemon`: `data_dir`, the admin API on a free port, StatsD
    and/or OTLP (gRPC and HTTP) on port 0 with `otlp_keys` (more `[receivers.otlp]`
    keys, TOML lines) or off, the exposition endpoint off or on
    `exposition` ("127.0.0.1:PORT"), flushes every `flush_interval` (`POST /flush`
    flushes at once) with `aggregation` (more `[aggregation]` keys, TOML lines), then
    `extra` (more TOML tables) and `pipelines` (see `pipeline_toml`)."""
    return (
        f"data_dir = {toml_value(str(data_dir))}\n"
        f"[aggregation]\nflush_interval = {toml_value(flush_interval)}\n{aggregation}"
        + ('[receivers.statsd]\naddress = "127.0.0.1:0"\n' if statsd else "[receivers.statsd]\nenabled = false\n")
        + (
            '[receivers.otlp]\ngrpc_address = "127.0.0.1:0"\nhttp_address = "127.0.0.1:0"\n' + otlp_keys
            if otlp
            else "[receivers.otlp]\nenabled = false\n"
        )
        + (f"[exposition]\naddress = {toml_value(exposition)}\n" if exposition else "[exposition]\nenabled = false\n")
        + '[admin]\naddress = "127.0.0.1:0"\n'
        + extra
        + pipelines
    )


def send_statsd_lines(address, lines, datagram_bytes=1400):
    """Sends StatsD `lines` (str) to `address` packed into datagrams of at most
    `datagram_bytes`; returns how many datagrams went out."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent, buf = 0, bytearray()
    try:
        for line in lines:
            data = line.encode()
            if buf and len(buf) + 1 + len(data) > datagram_bytes:
                sock.sendto(bytes(buf), address)
                sent, buf = sent + 1, bytearray()
            if buf:
                buf += b"\n"
            buf += data
        if buf:
            sock.sendto(bytes(buf), address)
            sent += 1
    finally:
        sock.close()
    return sent


# Retries that keep a test fast: pauses of at most 100 ms.
FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}


@pytest.fixture
def daemons():
    """A pytest fixture (import it into the test module): `daemons(directory,
    config)` starts a `WeirDaemon`; whatever is still running at teardown is killed."""
    started = []

    def start(directory, config):
        w = WeirDaemon(directory, config)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill9()


def sdk_export(exporter, make_instruments, rounds, resource, temporality=None):
    """Records with an OpenTelemetry SDK meter and exports through `exporter` once per
    round (explicit collections keep tests deterministic). `make_instruments(meter)`
    returns the instruments by name; each round is a function of that dict. Shuts the
    exporter and the provider down; returns the export results, one per round."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader(preferred_temporality=temporality or {})
    provider = MeterProvider(resource=Resource.create(resource), metric_readers=[reader])
    instruments = make_instruments(provider.get_meter("test"))
    results = []
    try:
        for round_ in rounds:
            round_(instruments)
            results.append(exporter.export(reader.get_metrics_data()))
    finally:
        exporter.shutdown()
        provider.shutdown()
    return results
