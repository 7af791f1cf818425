"""The job layer's phases in process: planner, checkpoint, submit connections, catalogs."""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import io
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import API_KEY, base_config, parse_messages, tap_command, tap_env, write_json

from openfunnel_sandbox import JobSpec
from tap_openfunnel import cli
from tap_openfunnel.api import JobAPI
from tap_openfunnel.checkpoint import Checkpoint, Position
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.entries import parse_entries
from tap_openfunnel.exceptions import NotFoundError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.planner import Action, BudgetError, Planner
from tap_openfunnel.settings import Settings
from tap_openfunnel.tap import TapOpenFunnel

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
STREAMS = {JobType.TAM: "tam_companies", JobType.LOOKALIKE: "lookalike_companies"}


class FakeJobAPI:
    """Knows some jobs; counts what the planner asks."""

    def __init__(self, known: set[str], credits_left: float = 1e9) -> None:
        self.known = known
        self.credits_left = credits_left
        self.polls: list[str] = []
        self.balance_calls = 0
        self.submits = 0

    def poll(self, job_type: JobType, job_id: str, cursor: str | None) -> dict[str, Any]:
        self.polls.append(job_id)
        if job_id not in self.known:
            msg = "HTTP 404"
            raise NotFoundError(msg, status=404)
        return {"job_id": job_id, "status": "running"}

    def balance(self) -> dict[str, Any]:
        self.balance_calls += 1
        return {"credits_left": self.credits_left}

    def submit(self, job_type: JobType, body: Any) -> dict[str, Any]:  # pragma: no cover
        self.submits += 1
        return {"job_id": "never"}


def settings(**config: Any) -> Settings:
    return Settings.from_config({"api_key": API_KEY, "api_url": "http://127.0.0.1:1", **config})


def partition(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"context": {"job_id": job_id}, **fields}


def fingerprint_of(config: dict[str, Any]) -> str:
    return parse_entries(config.get("tam_builds", []), config.get("lookalike_searches", []))[
        0
    ].fingerprint


def plan_for(config: dict[str, Any], states: dict[str, list[dict[str, Any]]], api: FakeJobAPI):
    planner = Planner(
        settings(**config),
        api,  # type: ignore[arg-type]
        STREAMS,
        lambda name: states.get(name, []),
        now=lambda: NOW,
    )
    return planner.plan()


# Planner --------------------------------------------------------------------------


def test_planner_decides_each_job_and_sends_nothing_billed():
    search = {"lookalike_searches": [{"query": "devtools", "limit": 300}]}
    tam = {"tam_builds": [{"query": "observability"}]}
    fp_search = fingerprint_of(search)
    fp_tam = fingerprint_of(tam)
    states = {
        "tam_companies": [
            partition("done-id", done=True, rows_read=10),
            partition("half-id", next_cursor="page_0003", rows_read=300),
            partition("tam-old", fingerprint=fp_tam, submitted_at="2026-11-01T00:00:00+00:00"),
        ],
        "lookalike_companies": [
            partition("gone-id", fingerprint=fp_search, submitted_at="2026-11-29T00:00:00+00:00"),
        ],
    }
    api = FakeJobAPI(known={"tam-old"})
    config = {
        "tam_job_ids": ["done-id", "half-id", "fresh-id"],
        "refresh_after": 7,
        **search,
        **tam,
    }
    plan = plan_for(config, states, api)

    decisions = [(job.action, job.stream_name, job.job_id) for job in plan.jobs]
    assert decisions == [
        (Action.SKIP, "tam_companies", "done-id"),
        (Action.ATTACH, "tam_companies", "half-id"),
        (Action.ATTACH, "tam_companies", "fresh-id"),
        (Action.REFRESH, "tam_companies", None),  # 29 days old, refresh_after 7
        (Action.SUBMIT, "lookalike_companies", None),  # its job is gone (404)
    ]
    assert "gone" in plan.jobs[-1].reason
    assert api.polls == ["gone-id"]  # tam-old is refreshed without asking the API
    assert api.balance_calls == 1
    assert api.submits == 0
    assert plan.budget_problem is None


@pytest.mark.parametrize(
    ("fields", "action"),
    [
        pytest.param({"done": True}, Action.SKIP, id="done"),
        pytest.param({"failed": True}, Action.SUBMIT, id="failed"),
        pytest.param({"next_cursor": "page_0002"}, Action.REATTACH, id="alive"),
    ],
)
def test_planner_on_a_remembered_entry(fields, action):
    config = {"tam_builds": [{"query": "observability"}]}
    states = {
        "tam_companies": [
            partition(
                "j1",
                fingerprint=fingerprint_of(config),
                submitted_at="2026-11-29T00:00:00+00:00",
                **fields,
            ),
        ],
    }
    api = FakeJobAPI(known={"j1"})
    plan = plan_for(config, states, api)
    assert [job.action for job in plan.jobs] == [action]
    # Only a submit needs the balance; only a live candidate needs a poll.
    assert api.balance_calls == (1 if action is Action.SUBMIT else 0)
    assert api.polls == (["j1"] if action is Action.REATTACH else [])


def test_a_job_both_configured_and_remembered_is_planned_once():
    config = {"tam_job_ids": ["j1"], "tam_builds": [{"query": "observability"}]}
    states = {"tam_companies": [partition("j1", fingerprint=fingerprint_of(config))]}
    plan = plan_for(config, states, FakeJobAPI(known={"j1"}))
    assert [(job.action, job.job_id) for job in plan.jobs] == [(Action.ATTACH, "j1")]


@pytest.mark.parametrize(
    ("config", "credits_left", "needle"),
    [
        pytest.param(
            {"lookalike_searches": [{"query": "a", "limit": 900}], "max_credits": 500},
            1e9,
            "above max_credits",
            id="cap",
        ),
        pytest.param(
            {"lookalike_searches": [{"query": "a", "limit": 900}]}, 100, "100 credits", id="balance"
        ),
    ],
)
def test_the_budget_is_checked_by_the_planner(config, credits_left, needle):
    plan = plan_for(config, {}, FakeJobAPI(known=set(), credits_left=credits_left))
    assert plan.budget_problem is not None
    assert needle in plan.budget_problem
    with pytest.raises(BudgetError, match="Nothing was submitted"):
        plan.check_budget()
    assert any("REFUSED" in line for line in plan.describe())


# Checkpoint -----------------------------------------------------------------------


def make_checkpoint(*, hold: bool, due=None):
    state: dict[str, dict[str, Any]] = {}
    written: list[dict[str, Any]] = []
    checkpoint = Checkpoint(
        lambda _stream, job_id: state.setdefault(job_id, {"context": {"job_id": job_id}}),
        lambda: written.append(copy.deepcopy(state)),
        hold_until_promoted=hold,
        due=due,
    )
    checkpoint.register("j", "tam_companies")
    return checkpoint, state, written


def test_checkpoint_writes_each_page_at_once_when_records_go_to_stdout():
    checkpoint, state, written = make_checkpoint(hold=False)
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    assert state["j"]["next_cursor"] == "page_0001"
    assert written[-1]["j"]["rows_read"] == 100
    checkpoint.page_read("j", next_cursor=None, rows_read=150)
    assert written[-1]["j"] == {"context": {"job_id": "j"}, "rows_read": 150, "done": True}
    assert checkpoint.position("j") == Position(None, 150, done=True)


def test_checkpoint_paces_pages_and_finished_jobs_alike():
    due = {"now": False}
    checkpoint, state, written = make_checkpoint(hold=False, due=lambda: due["now"])
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    # Not worth a line yet: the position is in the state, for the next line to carry.
    assert written == []
    assert state["j"]["next_cursor"] == "page_0001"
    assert checkpoint.position("j") == Position("page_0001", 100)
    due["now"] = True
    checkpoint.page_read("j", next_cursor="page_0002", rows_read=200)
    assert written[-1]["j"]["next_cursor"] == "page_0002"
    due["now"] = False
    checkpoint.page_read("j", next_cursor="page_0003", rows_read=300)
    assert len(written) == 1
    checkpoint.write()  # what the signal handler calls: the state as it is
    assert written[-1]["j"]["next_cursor"] == "page_0003"
    # The end is paced too (a line per finished job would grow with their square)...
    checkpoint.page_read("j", next_cursor=None, rows_read=350)
    assert len(written) == 2
    assert checkpoint.position("j") == Position(None, 350, done=True)
    # ...and goes out with the next line, whoever writes it.
    checkpoint.write()
    assert written[-1]["j"] == {"context": {"job_id": "j"}, "rows_read": 350, "done": True}


def test_checkpoint_in_batch_mode_writes_every_file_whatever_the_pace():
    checkpoint, _state, written = make_checkpoint(hold=True, due=lambda: False)
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    checkpoint.promote(checkpoint.handed())
    assert written[-1]["j"]["next_cursor"] == "page_0001"


def test_checkpoint_in_batch_mode_holds_pages_until_promoted():
    checkpoint, state, written = make_checkpoint(hold=True)
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    checkpoint.page_read("j", next_cursor="page_0002", rows_read=200)
    # Nothing of those pages is durable: the state and what was written say so.
    assert "next_cursor" not in state.get("j", {})
    assert written == []
    assert checkpoint.position("j") == Position(None, 0)
    in_file = checkpoint.handed()
    checkpoint.page_read("j", next_cursor="page_0003", rows_read=300)  # next file
    checkpoint.promote(in_file)
    assert checkpoint.position("j") == Position("page_0002", 200)
    assert written[-1]["j"]["next_cursor"] == "page_0002"
    # The later page is still held, and is promoted with its own file.
    assert checkpoint.handed() == {"j": Position("page_0003", 300)}


# Submits on a connection of their own ----------------------------------------------


def test_a_submit_never_reuses_a_connection(server):
    client = OpenFunnelClient(api_url=server.url, api_key=API_KEY, timeout=5)
    api = JobAPI(client)
    api.client.get("/api/v1/credits/balance")
    api.client.get("/api/v1/credits/balance")
    api.submit(JobType.TAM, {"query": "observability"})
    api.submit(JobType.LOOKALIKE, {"query": "devtools", "limit": 10})
    api.client.get("/api/v1/credits/balance")
    connections = [(r.method, r.connection) for r in server.requests]
    gets = [conn for method, conn in connections if method == "GET"]
    posts = [conn for method, conn in connections if method == "POST"]
    # Control: the GETs share one keep-alive connection, so sharing would show.
    assert len(set(gets)) == 1
    assert len(set(posts)) == 2
    assert not set(posts) & set(gets)


# Catalog subsets and sync order -----------------------------------------------------


def run_in_process(
    monkeypatch, config: dict[str, Any], selected: set[str], order: tuple[str, ...]
) -> list[dict[str, Any]]:
    discovered = TapOpenFunnel(config=config, parse_env_config=False).catalog_dict
    catalog = copy.deepcopy(discovered)
    for entry in catalog["streams"]:
        for item in entry["metadata"]:
            if item["breadcrumb"] == []:
                item["metadata"]["selected"] = entry["tap_stream_id"] in selected
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    tap = TapOpenFunnel(config=config, catalog=catalog, parse_env_config=False)
    tap._streams = {name: tap.streams[name] for name in order}
    cli.sync(tap)
    out.flush()
    monkeypatch.undo()
    return [json.loads(line) for line in out.buffer.getvalue().decode().splitlines()]  # type: ignore[attr-defined]


def comparable(messages: list[dict[str, Any]]) -> dict[str, list[Any]]:
    records: dict[str, list[Any]] = {}
    for message in messages:
        if message["type"] == "RECORD":
            record = dict(message["record"])
            record.pop("terminal_at", None)  # a wall-clock stamp
            records.setdefault(message["stream"], []).append(record)
    return {stream: sorted(rows, key=json.dumps) for stream, rows in records.items()}


def test_results_do_not_depend_on_the_catalog_subset_or_the_sync_order(server, monkeypatch):
    tam = server.add_job(JobSpec(kind="tam", rows=230))
    look = server.add_job(JobSpec(kind="lookalike", rows=120))
    config = base_config(server, tam_job_ids=[tam], lookalike_job_ids=[look])
    names = ("jobs", "lookalike_companies", "tam_companies")
    expected_jobs = {"tam_companies": tam, "lookalike_companies": look}
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            outputs = [
                comparable(run_in_process(monkeypatch, config, set(subset), order))
                for order in itertools.permutations(names)
            ]
            assert all(output == outputs[0] for output in outputs), subset
            result = outputs[0]
            company = [name for name in subset if name != "jobs"]
            assert sorted(result) == sorted(subset if company else []), subset
            for name in company:
                ranks = sorted(record["rank"] for record in result[name])
                assert ranks == list(range(1, (230 if name == "tam_companies" else 120) + 1))
            if "jobs" in subset and company:
                assert sorted(r["job_id"] for r in result["jobs"]) == sorted(
                    expected_jobs[name] for name in company
                )


# Dry run -----------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_touches_nothing(server, run_tap):
    done = server.add_job(JobSpec(kind="tam", rows=50))
    alive = server.add_job(JobSpec(kind="tam", rows=50))
    entry = {"lookalike_searches": [{"query": "devtools", "limit": 300}]}
    remembered = {"tam_builds": [{"query": "observability"}]}
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    partition(done, done=True, rows_read=50),
                    partition(
                        alive,
                        fingerprint=fingerprint_of(remembered),
                        origin="submitted",
                        submitted_at="2026-11-29T00:00:00+00:00",
                    ),
                ],
            },
        },
    }
    config = base_config(
        server, tam_job_ids=[done], dry_run=True, max_credits=1000, **entry, **remembered
    )
    run = run_tap(config, state=state)
    assert run.returncode == 0, run.stderr
    assert run.messages == []  # no SCHEMA, RECORD or STATE: state stays as it was
    assert server.request_count("POST") == 0
    assert not [r for r in server.requests if r.query.get("cursor")]
    assert [r.path for r in server.requests if r.method == "GET"] == [
        f"/api/v1/tam/build/{alive}",  # is the remembered job still there?
        "/api/v1/credits/balance",
    ]
    for needle in (
        f"skip      tam_companies: job {done}",
        "re-attach tam_companies: tam_builds[0]",
        "submit    lookalike_companies: lookalike_searches[0]",
        "up to 300 credits",
        "max_credits 1,000",
        "Budget: the submits fit",
    ):
        assert needle in run.stderr, needle
    assert API_KEY not in run.stderr


# BATCH mode and SIGTERM -----------------------------------------------------------------


def batch_ranks(messages: list[dict[str, Any]], stream: str) -> list[int]:
    ranks: list[int] = []
    for message in messages:
        if message["type"] == "BATCH" and message["stream"] == stream:
            for url in message["manifest"]:
                raw = Path(url.removeprefix("file://")).read_bytes()
                if raw[:2] == b"\x1f\x8b":  # the SDK may gzip whatever the config says
                    raw = gzip.decompress(raw)
                ranks += [json.loads(line)["rank"] for line in raw.decode().splitlines()]
    return ranks


@pytest.mark.parametrize("batch_size", [10_000, 500], ids=["no-file-yet", "some-files-out"])
def test_batch_mode_sigterm_then_resume_delivers_every_rank(server, run_tap, tmp_path, batch_size):
    """The issue's case: 3,000 rows in 30 pages, one at a time, SIGTERM after 12 pages."""
    server.latency = 0.03
    job = server.add_job(JobSpec(kind="tam", rows=3000))
    batch_config = {
        "encoding": {"format": "jsonl", "compression": "none"},
        "storage": {"root": f"file://{tmp_path}", "prefix": "batch-"},
        "batch_size": batch_size,
    }
    config = base_config(server, tam_job_ids=[job], page_concurrency=1, batch_config=batch_config)
    proc = subprocess.Popen(
        tap_command(write_json(tmp_path / "c.json", config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tap_env(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pages = [r for r in server.requests if r.path.endswith(job) and r.query.get("cursor")]
        if len(pages) >= 12:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    messages = parse_messages(out.decode())
    first = batch_ranks(messages, "tam_companies")
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    state = states[-1] if states else None
    for value in states:
        for part in value.get("bookmarks", {}).get("tam_companies", {}).get("partitions", []):
            # No state ever claims more rows than the announced batch files hold.
            assert part.get("rows_read", 0) <= len(first)
    if batch_size == 10_000:
        assert first == []

    # Resumed from that state, without batching.
    del config["batch_config"]
    second = run_tap(config, state=state)
    assert second.returncode == 0, second.stderr[-2000:]
    again = [r["rank"] for r in second.records("tam_companies")]
    assert set(first) | set(again) == set(range(1, 3001))
    assert len(again) == len(set(again))
