"""Shared fixtures: a fake OpenFunnel server on loopback and a way to run the tap's CLI."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

import in_process
import pytest
from support import API_KEY, run_command, tap_command, write_json
from xdist.scheduler import LoadScopeScheduling

from openfunnel_sandbox import FakeOpenFunnel

# The shared fake server is seeded on purpose: the same job ids, so the same rows, on
# every test run. Unseeded servers draw new ids on every start.
SEED = 0
_SESSION_STATE_HOME = pytest.StashKey[tuple]()


def pytest_addoption(parser):
    parser.addoption(
        "--tap-subprocess",
        action="store_true",
        help="Run the tap as a process in every test, not in the test process where it can.",
    )


def pytest_configure(config):
    """Before collection: code that builds a tap at import or in a class-scoped fixture
    (the SDK's suite) finds a private XDG_STATE_HOME too, never the user's home."""
    in_process.ENABLED = not config.getoption("--tap-subprocess")
    folder = tempfile.mkdtemp(prefix="tap-openfunnel-tests-state-")
    config.stash[_SESSION_STATE_HOME] = (folder, os.environ.get("XDG_STATE_HOME"))
    os.environ["XDG_STATE_HOME"] = folder


def pytest_unconfigure(config):
    folder, before = config.stash.get(_SESSION_STATE_HOME, (None, None))
    if folder is None:
        return
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before
    shutil.rmtree(folder, ignore_errors=True)


class _EndToEndTogether(LoadScopeScheduling):
    """pytest-xdist's scheduling with the end-to-end tests, and each test class, one unit.

    They share Meltano's project folders (``.meltano/run``) and, per worker, a
    PostgreSQL cluster: they run in order on one worker, while the other workers take
    the quick tests one by one. (``--dist loadgroup`` would say the same with marks,
    but pytest-xdist 3.8 cannot tag pytest 9's node ids with their group.)
    """

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith(_TOGETHER):
            return "end-to-end"
        if nodeid.count("::") > 1:
            # A test class (the SDK's suite) shares class-scoped fixtures, its one sync
            # among them, and runs in its own order: one unit too.
            return nodeid.rsplit("::", 1)[0]
        return nodeid


# The Meltano runs: tests/e2e/, and the README's blocks (test_readme.py).
_TOGETHER = ("tests/e2e/", "tests/test_readme.py::")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None  # a --dist the caller chose
    return _EndToEndTogether(config, log)


@pytest.fixture(autouse=True)
def private_state_home(tmp_path, monkeypatch):
    """Every per-user path of every test, and of the taps and Meltano runs it starts,
    under the test's own folder: the submission journal never lands in the user's home,
    and no test sees another's submissions."""
    state_home = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    return state_home


@pytest.fixture
def server():
    # It refuses to serve for ever: a tap that loops fails instead of hanging.
    with FakeOpenFunnel(api_keys=(API_KEY,), seed=SEED, max_requests=20_000) as fake:
        yield fake


@pytest.fixture
def polled_server():
    """A fake server whose clock moves one second per request it has answered.

    A job's life cycle then advances as the tap polls it, never with the wall clock:
    a job pending for 1.5 s is pending for the first two polls, whatever the machine's
    speed, and the test waits for no real second.
    """
    served: list[FakeOpenFunnel] = []

    def clock() -> float:
        return float(len(served[0].requests)) if served else 0.0

    with FakeOpenFunnel(api_keys=(API_KEY,), seed=SEED, max_requests=20_000, clock=clock) as fake:
        served.append(fake)
        yield fake


@pytest.fixture
def run_tap(tmp_path):
    counter = {"n": 0}

    def run(config: dict[str, Any], state: dict[str, Any] | None = None, timeout: float = 120):
        counter["n"] += 1
        config_path = write_json(tmp_path / f"config{counter['n']}.json", config)
        state_path = None
        if state is not None:
            state_path = write_json(tmp_path / f"state{counter['n']}.json", state)
        return run_command(tap_command(config_path, state_path), timeout=timeout)

    return run


@pytest.fixture
def sleeps(monkeypatch):
    """The waits between retries (backoff sleeps with time.sleep), without waiting.

    Only the test's own thread is spared the wait: the fake server's threads sleep for
    real, since their slowness is what some tests inject.
    """
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            waits.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return waits
