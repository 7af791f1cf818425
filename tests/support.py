"""Helpers the tests share: the tap's CLI as a subprocess and its parsed Singer output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import in_process

from openfunnel_sandbox import JobSpec

if TYPE_CHECKING:
    from openfunnel_sandbox import FakeOpenFunnel

API_KEY = "of_test_key_5f3c9a"  # a fake key; tests check it never leaks
# Every fault the fake server can inject into an answer.
ALL_FAULTS = ("429", "429_date", "429_body", "500", "502", "503", "drop", "cutoff", "slow")


def spec(rows: int = 250, **quirks_and_more: Any) -> JobSpec:
    """A TAM job of ``rows`` rows whose answers have the given quirks."""
    quirks = quirks_and_more.pop("quirks", ())
    return JobSpec(kind="tam", rows=rows, quirks=frozenset(quirks), **quirks_and_more)


def base_config(server: FakeOpenFunnel, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "api_key": API_KEY,
        "api_url": server.url,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "max_retry_wait": 0.05,
    }
    config.update(overrides)
    return config


@dataclass
class TapRun:
    returncode: int
    stdout: str
    stderr: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def records(self, stream: str) -> list[dict[str, Any]]:
        return [
            m["record"] for m in self.messages if m["type"] == "RECORD" and m["stream"] == stream
        ]

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def last_state(self) -> dict[str, Any] | None:
        return self.states[-1] if self.states else None


def ranks(records: list[dict[str, Any]], job_id: str) -> list[int]:
    """The ranks of one job's records, in order."""
    return sorted(r["rank"] for r in records if r["job_id"] == job_id)


def parse_messages(stdout: str) -> list[dict[str, Any]]:
    """Complete Singer lines only: a process killed mid-write may leave half a line."""
    messages = []
    for line in stdout.splitlines():
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return messages


def tap_command(config_path: Path, state_path: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "tap_openfunnel", "--config", str(config_path)]
    if state_path is not None:
        command += ["--state", str(state_path)]
    return command


def run_command(command: list[str], timeout: float = 120) -> TapRun:
    """Run the tap's ``command``: in this process unless it needs one of its own.

    The tap's own command (``tap_command``) runs in process (tests/in_process.py); a
    command that wraps it (a memory probe, say) runs as a process, as does everything
    under ``pytest --tap-subprocess``.
    """
    prefix = tap_command(Path())[:3]
    if in_process.ENABLED and command[:3] == prefix:
        code, out, err = in_process.run_cli(command[3:])
        return TapRun(code, out, err, parse_messages(out))
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=tap_env(), check=False
    )
    return TapRun(proc.returncode, proc.stdout, proc.stderr, parse_messages(proc.stdout))


def tap_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_OPENFUNNEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def kill_after(command, env, *, records: int, sig=signal.SIGKILL, timeout=60.0):
    """Start the tap, wait until `records` company RECORD lines were written, then signal it."""
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err_file, env=env)
        assert proc.stdout is not None
        lines: list[bytes] = []
        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            message = json.loads(line)
            if message["type"] == "RECORD" and message["stream"] != "jobs":
                seen += 1
                if seen >= records:
                    proc.send_signal(sig)
                    break
        # Read what is left through the same buffered reader: bytes it has already
        # buffered would be lost to a read on the raw pipe.
        lines.append(proc.stdout.read())
        proc.wait(timeout=timeout)
        err_file.seek(0)
        err = err_file.read().decode()
    return proc.returncode, parse_messages(b"".join(lines).decode()), err


def discover(config_path: Path) -> dict[str, Any]:
    """Run ``--discover`` through the CLI and return the catalog."""
    proc = subprocess.run(
        [*tap_command(config_path), "--discover"],
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=True,
    )
    assert API_KEY not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it: time as a parameter."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
