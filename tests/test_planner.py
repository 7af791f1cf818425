"""The planner: what each job and entry becomes (attach, skip, submit); a submit happens once."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
from typing import Any

import pytest
from support import (
    API_KEY,
    base_config,
    kill_after,
    parse_messages,
    tap_command,
    tap_env,
    write_json,
)

from openfunnel_sandbox import Faults, JobSpec
from tap_openfunnel.api import JobAPI
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.entries import parse_entries
from tap_openfunnel.exceptions import NotFoundError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.planner import Action, BudgetError, Planner
from tap_openfunnel.settings import Settings

TAM_QUERY = "observability vendors in Europe"
SEARCH = {"query": "developer tools for data teams", "limit": 300}


def quick_jobs(server, *, tam_rows=1234, running=1.0):
    server.submit_defaults["tam"] = JobSpec(
        kind="tam", rows=tam_rows, pending_seconds=0.2, running_seconds=running
    )
    server.submit_defaults["lookalike"] = JobSpec(
        kind="lookalike", rows=999, pending_seconds=0.2, running_seconds=running
    )


def company_records(messages):
    return [
        m["record"]
        for m in messages
        if m["type"] == "RECORD" and m["stream"] in {"tam_companies", "lookalike_companies"}
    ]


@pytest.mark.parametrize(
    ("tam_builds", "searches", "needle"),
    [
        pytest.param([{"query": "x" * 501}], [], "tam_builds[0]: field 'query'", id="long-query"),
        pytest.param([{}], [], "field 'query' is required", id="no-query"),
        pytest.param(
            [{"query": "a", "limit": 5}], [], "field 'limit' is not accepted", id="tam-limit"
        ),
        pytest.param(
            [],
            [{"query": "a", "limit": 20000}],
            "lookalike_searches[0]: field 'limit'",
            id="limit-high",
        ),
        pytest.param(
            [],
            [{"query": "a", "limit": "ten"}],
            "config['lookalike_searches'][0]['limit']",
            id="limit-type",
        ),
        pytest.param([], [{"limit": 10}], "'seed_domains' is required", id="no-query-no-seeds"),
        pytest.param(
            [], [{"seed_domains": [f"d{i}.com" for i in range(11)]}], "1 to 10", id="seeds"
        ),
        pytest.param([], [{"query": "a", "funding_stages": ["Series Z"]}], "Series Z", id="stage"),
        pytest.param([], [{"query": "a", "search_type": "magic"}], "search_type", id="search-type"),
        pytest.param(
            [],
            [{"query": "a", "min_employees": 50, "max_employees": 10}],
            "min_employees",
            id="min-max",
        ),
        pytest.param(
            [],
            [{"query": "a"}, {"query": "b"}, {"query": "a"}],
            "lookalike_searches[2]: repeats lookalike_searches[0]",
            id="duplicate",
        ),
    ],
)
def test_bad_entries_fail_before_any_request(server, run_tap, tam_builds, searches, needle):
    config = base_config(server, tam_builds=tam_builds, lookalike_searches=searches)
    run = run_tap(config)
    assert run.returncode != 0
    assert needle in run.stderr
    # Type errors are caught by the SDK's schema check, ranges and rules by the tap's:
    # either way the run stops before sending anything.
    assert "nothing was submitted" in run.stderr or "Config validation failed" in run.stderr
    assert "Traceback" not in run.stderr
    assert server.request_count() == 0


@pytest.mark.parametrize(
    "second_submit_slow",
    [
        pytest.param(False, id="kill-after-first-state"),
        # The second submit's answer is late: the kill lands inside its round trip.
        pytest.param(True, id="kill-inside-the-second-submit"),
    ],
)
def test_kill_after_first_state_then_resume_submits_each_entry_once(
    server, run_tap, tmp_path, second_submit_slow
):
    """SIGKILL right after the first STATE, re-run, run again: each entry submitted once."""
    quick_jobs(server)
    if second_submit_slow:
        server.faults = Faults(submit_script=["ok", "sleep_after_create:3"])
    config = base_config(server, tam_builds=[{"query": TAM_QUERY}], lookalike_searches=[SEARCH])
    config_path = write_json(tmp_path / "c.json", config)
    if second_submit_slow:
        # Both jobs created, the second one's answer still on its way.
        proc_messages = kill_when(config_path, lambda: total_submits(server) == 2)
    else:
        proc_messages = kill_first_state(config_path)
    state = [m["value"] for m in proc_messages if m["type"] == "STATE"][-1]
    assert server.submit_count("tam") + server.submit_count("lookalike") >= 1

    runs, most = rerun_after_kills(run_tap, server, config, state)
    if second_submit_slow:
        # Bought at most once until the user allowed one more.
        assert (len(runs), total_submits(server)) == (2, 3)
    second = runs[-1]
    assert second.returncode == 0, second.stderr
    assert 1 <= server.submit_count("tam") <= most
    assert 1 <= server.submit_count("lookalike") <= most
    submitted = server.submit_count("tam"), server.submit_count("lookalike")
    rows = company_records(proc_messages) + [
        record for run in runs for record in company_records(run.messages)
    ]
    tam_ranks = {r["rank"] for r in rows if "source_band" in r}
    look_ranks = {r["rank"] for r in rows if "company_size" in r}
    assert tam_ranks == set(range(1, 1235))
    assert look_ranks == set(range(1, 301))
    jobs = {r["job_type"]: r for run in runs for r in run.records("jobs")}
    assert jobs["lookalike_search"]["request"] == SEARCH
    assert jobs["lookalike_search"]["origin"] == "submitted"
    assert jobs["tam_build"]["query"] == TAM_QUERY
    # Re-attached jobs still name their entry (what the dbt models group refreshes by).
    tam_entry, search_entry = parse_entries([{"query": TAM_QUERY}], [SEARCH])
    assert jobs["tam_build"]["request_fingerprint"] == tam_entry.fingerprint
    assert jobs["lookalike_search"]["request_fingerprint"] == search_entry.fingerprint

    third = run_tap(config, state=second.last_state)
    assert third.returncode == 0, third.stderr
    assert (server.submit_count("tam"), server.submit_count("lookalike")) == submitted
    assert company_records(third.messages) == []


def rerun_after_kills(run_tap, server, config, state):
    """Run again after kills; return the runs it took and the most submits per entry.

    A kill inside a submit's round trip (between the journal's intent and OpenFunnel's
    answer) leaves that entry blocked: the next run fails it rather than buying it
    twice. Then the documented way out, one run that allows a resubmit, completes it.
    """
    run = run_tap(config, state=state)
    if run.returncode == 0 or "may exist and be billed" not in run.stderr:
        return [run], 1
    assert server.submit_count("tam") <= 1
    assert server.submit_count("lookalike") <= 1
    retry = run_tap({**config, "unconfirmed_submits": "resubmit"}, state=run.last_state or state)
    return [run, retry], 2


def total_submits(server):
    return server.submit_count("tam") + server.submit_count("lookalike")


def kill_when(config_path, condition):
    """SIGKILL the tap once the fake server's state meets ``condition``; return its output."""
    return kill_command_when(tap_command(config_path), condition)


def kill_command_when(command, condition):
    """SIGKILL ``command`` once the fake server's state meets ``condition``; return its output."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=tap_env()
    )
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return parse_messages(out.decode())


def kill_first_state(config_path):
    """SIGKILL the tap as soon as its first STATE line is read; return all it wrote."""
    proc = subprocess.Popen(
        tap_command(config_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=tap_env()
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if json.loads(line)["type"] == "STATE":
            proc.send_signal(signal.SIGKILL)
            break
    # Whatever the tap wrote before the kill landed is output a runner (Meltano) keeps:
    # a STATE written in that instant is the state the next run gets.
    lines.append(proc.stdout.read())
    proc.wait(timeout=30)
    return parse_messages(b"".join(lines).decode())


@pytest.mark.parametrize(
    "kill_points",
    [
        pytest.param([("records", 1)], id="reading-first-page"),
        pytest.param([("records", 450), ("records", 300)], id="reading-twice"),
        # The first poll comes once both jobs are submitted, while they run.
        pytest.param([("polls", 1)], id="while-waiting"),
        # At once is before the imports are done. A kill inside a submit's round trip
        # (the window no API without idempotency keys closes) blocks that entry on the
        # next run instead of buying it twice: see rerun_after_kills.
        pytest.param([("polls", 0), ("records", 50), ("polls", 2)], id="mixed"),
    ],
)
def test_repeated_kills_never_submit_twice(server, run_tap, tmp_path, kill_points):
    quick_jobs(server, tam_rows=900, running=1.0)
    server.latency = 0.003
    config = base_config(server, tam_builds=[{"query": TAM_QUERY}], lookalike_searches=[SEARCH])
    config_path = write_json(tmp_path / "c.json", config)
    state = None
    delivered = []
    for kind, amount in kill_points:
        state_path = write_json(tmp_path / "s.json", state) if state is not None else None
        command = tap_command(config_path, state_path)
        if kind == "records":
            _, messages, _ = kill_after(command, tap_env(), records=int(amount))
        else:
            target = job_polls(server) + amount
            messages = kill_command_when(command, lambda n=target: job_polls(server) >= n)
        delivered += company_records(messages)
        states = [m["value"] for m in messages if m["type"] == "STATE"]
        state = states[-1] if states else state
    runs, most = rerun_after_kills(run_tap, server, config, state)
    final = runs[-1]
    assert final.returncode == 0, final.stderr
    delivered += [record for run in runs for record in company_records(run.messages)]
    assert 1 <= server.submit_count("tam") <= most
    assert 1 <= server.submit_count("lookalike") <= most
    assert {r["rank"] for r in delivered if "source_band" in r} == set(range(1, 901))
    assert {r["rank"] for r in delivered if "company_size" in r} == set(range(1, 301))


def job_polls(server):
    """How many polls of a job (its status and first page) the server has answered."""
    return sum(
        1
        for r in server.requests
        if r.method == "GET" and "/credits/" not in r.path and not r.query.get("cursor")
    )


def test_remembered_job_gone_is_submitted_again(server, run_tap):
    quick_jobs(server, tam_rows=120, running=0.2)
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    {
                        "context": {"job_id": "11111111-2222-4333-8444-555555555555"},
                        "origin": "submitted",
                        "fingerprint": entry.fingerprint,
                        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                        "request": dict(entry.body),
                    }
                ]
            }
        }
    }
    run = run_tap(base_config(server, tam_builds=[{"query": TAM_QUERY}]), state=state)
    assert run.returncode == 0, run.stderr
    assert "is gone" in run.stderr
    assert server.submit_count("tam") == 1
    assert len(run.records("tam_companies")) == 120


def test_changed_entry_submits_new_job_and_refresh_after_resubmits(server, run_tap):
    quick_jobs(server, tam_rows=50, running=0.1)
    first = run_tap(base_config(server, tam_builds=[{"query": TAM_QUERY}]))
    assert first.returncode == 0, first.stderr
    changed = run_tap(
        base_config(server, tam_builds=[{"query": TAM_QUERY + " and Asia"}]), state=first.last_state
    )
    assert changed.returncode == 0, changed.stderr
    assert server.submit_count("tam") == 2
    # Unchanged entry with a done job: nothing; with refresh_after 0 days: a new job.
    same = run_tap(base_config(server, tam_builds=[{"query": TAM_QUERY}]), state=changed.last_state)
    assert server.submit_count("tam") == 2
    assert same.records("tam_companies") == []
    refreshed = run_tap(
        base_config(server, tam_builds=[{"query": TAM_QUERY}], refresh_after=0),
        state=same.last_state,
    )
    assert refreshed.returncode == 0, refreshed.stderr
    assert server.submit_count("tam") == 3
    assert len(refreshed.records("tam_companies")) == 50
    # Every job of one entry carries the entry's fingerprint; a changed entry is another.
    fingerprints = [
        run.records("jobs")[0]["request_fingerprint"] for run in (first, changed, refreshed)
    ]
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    assert fingerprints[0] == fingerprints[2] == entry.fingerprint
    assert fingerprints[1] != fingerprints[0]
    assert refreshed.records("jobs")[0]["job_id"] != first.records("jobs")[0]["job_id"]


@pytest.mark.parametrize(
    ("script", "submits", "ok"),
    [
        pytest.param(["429", "ok"], 1, True, id="429-retried"),
        pytest.param(["500_after_create"], 1, False, id="5xx-ambiguous"),
        pytest.param(["drop_after_create"], 1, False, id="drop-ambiguous"),
        pytest.param(["sleep_after_create:3"], 1, False, id="timeout-ambiguous"),
    ],
)
def test_submit_retries_only_when_no_job_can_exist(server, run_tap, script, submits, ok):
    quick_jobs(server, tam_rows=30, running=0.1)
    server.faults = Faults(submit_script=script, retry_after=0)
    run = run_tap(base_config(server, tam_builds=[{"query": TAM_QUERY}], request_timeout=1))
    assert server.submit_count("tam") == submits
    if ok:
        assert run.returncode == 0, run.stderr
        assert len(run.records("tam_companies")) == 30
    else:
        assert run.returncode != 0
        assert "may have been created" in run.stderr
        assert "tam_job_ids" in run.stderr
        assert "Traceback" not in run.stderr


def test_a_check_that_reads_stdout_and_stderr_as_one_pipe_submits_nothing(server, tmp_path):
    """As under `meltano config test`, which stops the tap at the first RECORD it reads.

    Run to its end that way (`tap-openfunnel --config c.json 2>&1 | cat`), the tap has
    left its planned submit out: that is not a success, so it exits non-zero and says
    how to run it; the job attached by id is still read.
    """
    quick_jobs(server)
    attached = server.add_job(JobSpec(kind="tam", rows=30))
    config = base_config(server, tam_builds=[{"query": TAM_QUERY}], tam_job_ids=[attached])
    proc = subprocess.run(
        tap_command(write_json(tmp_path / "c.json", config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    output = proc.stdout.decode()
    assert proc.returncode == 1, output[-2000:]
    assert server.submit_count("tam") == 0
    assert "not submitted: stdout and stderr are one pipe" in output
    assert "1 planned submit(s) were not sent (tam_builds[0]" in output
    assert "2>tap.log" in output
    assert "Traceback" not in output
    records = [m for m in parse_messages(output) if m["type"] == "RECORD"]
    assert len([m for m in records if m["stream"] == "tam_companies"]) == 30


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
