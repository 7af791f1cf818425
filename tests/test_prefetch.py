"""The in-flight budget across jobs: the look-ahead alone, then the tap reading many jobs."""

from __future__ import annotations

import io
import json
import signal
import sys
import threading
from typing import Any

import pytest
from support import base_config, kill_after, tap_command, tap_env, write_json

from openfunnel_sandbox import JobSpec
from tap_openfunnel import cli
from tap_openfunnel.api import JobAPI
from tap_openfunnel.exceptions import RetriesExhaustedError
from tap_openfunnel.prefetch import Lookahead, RequestBudget
from tap_openfunnel.tap import TapOpenFunnel

ROWS = 250  # three pages of 100, 100 and 50: a small lookalike search
RANKS = list(range(1, ROWS + 1))


# The look-ahead alone ------------------------------------------------------------------


class Fetches:
    """Fetch calls of a plan, recorded; each returns the key's name as its body."""

    def __init__(self, gate: threading.Barrier | None = None) -> None:
        self.started: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.gate = gate

    def plan(self, jobs: int, pages: int):
        for job in range(jobs):
            for page in range(pages):
                key = (f"job-{job}", f"page_{page:04d}")
                yield key, lambda key=key: self(key)

    def __call__(self, key: tuple[str, str]) -> bytes:
        with self.lock:
            self.started.append(key)
        if self.gate is not None:
            self.gate.wait(10)
        return "/".join(key).encode()


def settle(lookahead: Lookahead) -> None:
    """Wait until every body asked for has arrived (no timing: the futures themselves)."""
    for future in list(lookahead._window.values()):
        future.result(10)


def test_bodies_waiting_undecoded_stay_within_twice_the_limit():
    budget = RequestBudget(3)
    fetches = Fetches()
    lookahead = Lookahead(budget, fetches.plan(jobs=20, pages=3))
    try:
        assert lookahead.take(("job-0", "page_0000")) == b"job-0/page_0000"
        settle(lookahead)
        # The taken body, and six more asked for: no further, however long we wait.
        assert len(fetches.started) == 1 + 2 * 3
        for job in range(20):
            for page in range(3):
                if (job, page) == (0, 0):
                    continue
                key = (f"job-{job}", f"page_{page:04d}")
                assert lookahead.take(key) == "/".join(key).encode()
                settle(lookahead)
                assert len(lookahead._window) <= 2 * 3
                # Asked for, not yet taken: never more than twice the limit.
                taken = job * 3 + page + 1
                assert len(fetches.started) - taken <= 2 * 3
        assert len(fetches.started) == 60
    finally:
        lookahead.close()
        budget.close()


def test_the_next_jobs_pages_are_in_flight_together():
    """Four requests of four different jobs pass a gate that opens only for four at once."""
    budget = RequestBudget(4)
    fetches = Fetches(gate=threading.Barrier(4))
    lookahead = Lookahead(budget, fetches.plan(jobs=8, pages=1))
    try:
        assert lookahead.take(("job-0", "page_0000")) == b"job-0/page_0000"
        assert {job for job, _ in fetches.started[:4]} == {"job-0", "job-1", "job-2", "job-3"}
        for job in range(1, 8):
            assert lookahead.take((f"job-{job}", "page_0000")) == f"job-{job}/page_0000".encode()
    finally:
        lookahead.close()
        budget.close()


def test_a_plan_that_waits_goes_on_later_and_skipped_bodies_are_dropped():
    budget = RequestBudget(2)
    fetches = Fetches()
    ready = {"job-1": False}

    def plan():
        yield from fetches.plan(jobs=1, pages=3)
        while not ready["job-1"]:
            yield None  # job-1 not terminal yet
        yield ("job-1", "page_0001"), lambda: fetches(("job-1", "page_0001"))

    lookahead = Lookahead(budget, plan())
    try:
        assert lookahead.take(("job-0", "page_0000")) is not None
        settle(lookahead)
        # job-0 is given up on after its first page: its other pages are dropped.
        lookahead.forget("job-0")
        assert lookahead.take(("job-1", "page_0001")) is None  # not planned yet
        ready["job-1"] = True
        assert lookahead.take(("job-1", "page_0001")) == b"job-1/page_0001"
        assert lookahead.take(("job-1", "page_0002")) is None  # never planned
    finally:
        lookahead.close()
        budget.close()


def test_the_callers_own_requests_count_against_the_budget():
    budget = RequestBudget(2)
    release = threading.Event()
    inside = threading.Semaphore(0)

    def blocked() -> bytes:
        inside.release()
        release.wait(10)
        return b""

    futures = [budget.submit(blocked) for _ in range(2)]
    assert inside.acquire(timeout=10)
    assert inside.acquire(timeout=10)
    got: list[bytes] = []
    caller = threading.Thread(target=lambda: got.append(budget.call(lambda: b"mine")))
    caller.start()
    caller.join(0.2)
    # Both slots are taken by the workers: the caller's request has not gone out.
    assert caller.is_alive()
    assert not got
    release.set()
    caller.join(10)
    assert got == [b"mine"]
    assert all(future.result(10) == b"" for future in futures)
    budget.close()


# The tap reading many jobs --------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def sync_in_process(
    monkeypatch, config: dict[str, Any], state: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Run the tap in this process; its messages and its exit code."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    code = 0
    try:
        cli.sync(TapOpenFunnel(config=config, state=state, parse_env_config=False))
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        out.flush()
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    raw = out.buffer.getvalue().decode()  # type: ignore[attr-defined]
    return [json.loads(line) for line in raw.splitlines()], code


def ranks_by_job(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [
        (m["record"]["job_id"], m["record"]["rank"])
        for m in messages
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]


def partitions(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    found = states[-1]["bookmarks"]["tam_companies"]["partitions"] if states else []
    # Each job's reading position; terminal_at (when the tap first saw the job finished)
    # is test_output's concern.
    return {
        p["context"]["job_id"]: {k: v for k, v in p.items() if k != "terminal_at"} for p in found
    }


@pytest.mark.parametrize("concurrency", [1, 4])
def test_many_jobs_come_out_in_job_and_page_order_within_the_budget(
    server, home, monkeypatch, concurrency
):
    server.latency = 0.02
    jobs = [server.add_job(JobSpec(kind="tam", rows=ROWS)) for _ in range(10)]
    # A gate for page requests (not polls) that opens only once as many as the budget
    # are in flight at once: one job's own pages are two, so only pages of several
    # jobs fetched together open it. The wait's timeout only ends a failing run.
    handle = server.handle
    gate = threading.Barrier(concurrency)
    met = threading.Event()

    def pages_of_several_jobs_at_once(exchange):
        if exchange.query.get("cursor") and not met.is_set():
            try:
                gate.wait(10)
                met.set()
            except threading.BrokenBarrierError:
                pass
        return handle(exchange)

    monkeypatch.setattr(server, "handle", pages_of_several_jobs_at_once)
    config = base_config(server, tam_job_ids=jobs, page_concurrency=concurrency)
    server.reset_peak_in_flight()
    messages, code = sync_in_process(monkeypatch, config)
    assert code == 0
    assert ranks_by_job(messages) == [(job, rank) for job in jobs for rank in RANKS]
    assert all(
        p == {"context": {"job_id": j}, "rows_read": ROWS, "done": True}
        for j, p in partitions(messages).items()
    )
    assert len(partitions(messages)) == len(jobs)
    assert met.is_set()
    # Counted at the server: the budget holds across jobs, polls and pages alike.
    assert server.peak_in_flight <= concurrency


def test_a_failed_prefetch_of_one_job_leaves_the_job_before_it_whole(server, home, monkeypatch):
    server.latency = 0.01
    jobs = [server.add_job(JobSpec(kind="tam", rows=ROWS)) for _ in range(4)]
    broken = jobs[2]
    page_body = JobAPI.page_body
    fetched_in: set[str] = set()

    def failing(self, job_type, job_id, cursor):
        if job_id == broken and cursor == "page_0001":
            fetched_in.add(threading.current_thread().name)
            msg = "HTTP 503 on every try (injected)"
            raise RetriesExhaustedError(msg, status=503)
        return page_body(self, job_type, job_id, cursor)

    monkeypatch.setattr(JobAPI, "page_body", failing)
    config = base_config(server, tam_job_ids=jobs, page_concurrency=4)
    messages, code = sync_in_process(monkeypatch, config)
    assert code != 0
    # It failed in a look-ahead worker, ahead of the reader.
    assert fetched_in
    assert threading.current_thread().name not in fetched_in
    got = ranks_by_job(messages)
    for job in (jobs[0], jobs[1], jobs[3]):
        assert [rank for j, rank in got if j == job] == RANKS
    # The broken job: its first page (the poll's), then nothing; state keeps the cursor.
    assert [rank for j, rank in got if j == broken] == list(range(1, 101))
    state = partitions(messages)
    assert state[jobs[1]] == {"context": {"job_id": jobs[1]}, "rows_read": ROWS, "done": True}
    assert state[broken]["next_cursor"] == "page_0001"
    assert state[broken]["rows_read"] == 100
    assert not state[broken].get("done")
    # Job order held: the job before the broken one was out whole before its failure.
    order = [j for j, _ in got]
    assert order.index(broken) > len(order) - order[::-1].index(jobs[1]) - 1


def test_resume_mid_job_reads_on_from_the_cursor_with_the_lookahead(server, home, monkeypatch):
    server.latency = 0.01
    jobs = [server.add_job(JobSpec(kind="tam", rows=ROWS)) for _ in range(4)]
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    {"context": {"job_id": jobs[0]}, "rows_read": ROWS, "done": True},
                    {"context": {"job_id": jobs[1]}, "next_cursor": "page_0001", "rows_read": 100},
                    {"context": {"job_id": jobs[2]}, "next_cursor": "page_0002", "rows_read": 200},
                ]
            }
        }
    }
    config = base_config(server, tam_job_ids=jobs, page_concurrency=4)
    messages, code = sync_in_process(monkeypatch, config, state)
    assert code == 0
    assert ranks_by_job(messages) == [
        *((jobs[1], rank) for rank in range(101, ROWS + 1)),
        *((jobs[2], rank) for rank in range(201, ROWS + 1)),
        *((jobs[3], rank) for rank in RANKS),
    ]
    assert all(p.get("done") for p in partitions(messages).values())


def test_sigterm_while_jobs_ahead_are_fetched_keeps_state_durable(server, run_tap, tmp_path):
    server.latency = 0.02
    jobs = [server.add_job(JobSpec(kind="tam", rows=ROWS)) for _ in range(8)]
    config = base_config(server, tam_job_ids=jobs, page_concurrency=8)
    config_path = write_json(tmp_path / "c.json", config)
    code, messages, err = kill_after(
        tap_command(config_path), tap_env(), records=3 * ROWS + 30, sig=signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    first = ranks_by_job(messages)
    state = partitions(messages)
    # State never runs ahead of the records out: each job's rows_read were all delivered.
    for job, partition in state.items():
        delivered = {rank for j, rank in first if j == job}
        assert set(range(1, partition.get("rows_read", 0) + 1)) <= delivered
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    second = run_tap(config, state=states[-1])
    assert second.returncode == 0, second.stderr[-2000:]
    again = [(r["job_id"], r["rank"]) for r in second.records("tam_companies")]
    assert set(first) | set(again) == {(job, rank) for job in jobs for rank in RANKS}
    # Nothing read twice but the page in hand when the signal came.
    assert len(first) + len(again) - len(jobs) * ROWS <= 100
