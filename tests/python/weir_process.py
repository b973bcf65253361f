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
