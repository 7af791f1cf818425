"""The tap end to end through its CLI, against the fake server: issue #2's promises."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import (
    API_KEY,
    base_config,
    discover,
    kill_after,
    parse_messages,
    tap_command,
    tap_env,
    write_json,
)

from openfunnel_sandbox import JobSpec

TOOLS_BIN = Path(__file__).resolve().parent.parent / ".tools-venv" / "bin"


def ranks(records, job_id):
    return sorted(r["rank"] for r in records if r["job_id"] == job_id)


def test_full_run_emits_every_row_once(server, run_tap):
    tam = server.add_job(JobSpec(kind="tam", rows=1234))
    look = server.add_job(JobSpec(kind="lookalike", rows=250))
    run = run_tap(base_config(server, tam_job_ids=[tam], lookalike_job_ids=[look]))
    assert run.returncode == 0, run.stderr
    tam_rows = run.records("tam_companies")
    look_rows = run.records("lookalike_companies")
    assert len(tam_rows) == 1234
    assert len(look_rows) == 250
    assert ranks(tam_rows, tam) == list(range(1, 1235))
    assert ranks(look_rows, look) == list(range(1, 251))
    assert tam_rows[0]["page"] == "page_0000"
    assert tam_rows[-1]["page"] == "page_0012"
    jobs = {r["job_id"]: r for r in run.records("jobs")}
    assert set(jobs) == {tam, look}
    assert jobs[tam]["job_type"] == "tam_build"
    assert jobs[tam]["unique_count"] == 1234
    assert jobs[look]["count"] == 250
    assert jobs[tam]["terminal_at"]
    # A job id from config is its own entry: no request, no fingerprint.
    assert jobs[tam]["origin"] == "config"
    assert jobs[tam]["request_fingerprint"] is None
    assert run.messages[-1]["type"] == "STATE"
    partitions = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    assert partitions == [
        {
            "context": {"job_id": tam},
            "rows_read": 1234,
            "done": True,
            "terminal_at": jobs[tam]["terminal_at"],
        }
    ]


def test_terminal_at_is_when_the_tap_first_saw_the_job_finished(server, run_tap):
    """A re-read of the job (here: resumed from a saved page) reports the kept time."""
    tam = server.add_job(JobSpec(kind="tam", rows=250))
    first_seen = "2026-01-02T03:04:05.123456+00:00"
    partition = {
        "context": {"job_id": tam},
        "rows_read": 100,
        "next_cursor": "page_0001",
        "terminal_at": first_seen,
    }
    state = {"bookmarks": {"tam_companies": {"partitions": [partition]}}}
    run = run_tap(base_config(server, tam_job_ids=[tam]), state=state)
    assert run.returncode == 0, run.stderr
    (job,) = run.records("jobs")
    assert job["terminal_at"] == first_seen
    (kept,) = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    assert kept["terminal_at"] == first_seen
    assert ranks(run.records("tam_companies"), tam) == list(range(101, 251))


def test_output_passes_singer_check_tap(server, tmp_path):
    checker = TOOLS_BIN / "singer-check-tap"
    if not checker.exists():
        pytest.fail(
            f"{checker} is missing: create it with `python3 -m venv .tools-venv && "
            ".tools-venv/bin/pip install singer-tools` (make test does this)."
        )
    tam = server.add_job(JobSpec(kind="tam", rows=1234))
    look = server.add_job(JobSpec(kind="lookalike", rows=250))
    config = write_json(
        tmp_path / "c.json", base_config(server, tam_job_ids=[tam], lookalike_job_ids=[look])
    )
    tap = subprocess.run(
        tap_command(config), capture_output=True, env=tap_env(), timeout=120, check=True
    )
    check = subprocess.run(
        [str(checker)], input=tap.stdout, capture_output=True, timeout=120, check=False
    )
    out = check.stdout.decode()
    assert check.returncode == 0, out + check.stderr.decode()
    assert "The output is valid." in out
    assert "1234" in out
    assert "250" in out


def test_pending_then_running_job_is_waited_for(server, run_tap):
    job = server.add_job(JobSpec(kind="tam", rows=450, pending_seconds=1.5, running_seconds=2.0))
    started = time.monotonic()
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started >= 3.5
    assert ranks(run.records("tam_companies"), job) == list(range(1, 451))
    assert "status pending" in run.stderr
    assert "status running" in run.stderr
    # Never read a page before the job was terminal: the poll answers are the only
    # requests while the job runs, and rows come from the completed set.
    assert run.records("jobs")[0]["status"] == "completed"


def test_paused_job_fails_within_seconds_naming_the_job(server, run_tap):
    paused = server.add_job(JobSpec(kind="tam", rows=600, running_seconds=0.2, outcome="paused"))
    started = time.monotonic()
    run = run_tap(base_config(server, tam_job_ids=[paused], job_timeout=3))
    elapsed = time.monotonic() - started
    assert run.returncode != 0
    assert elapsed < 20
    assert paused in run.stderr
    assert "job_timeout" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records("jobs")[0]["status"] == "paused"


def test_failed_job_exits_nonzero_after_other_jobs_are_delivered(server, run_tap):
    good = server.add_job(JobSpec(kind="tam", rows=321))
    bad = server.add_job(
        JobSpec(kind="lookalike", rows=300, outcome="failed", error_message="Seed index offline")
    )
    run = run_tap(base_config(server, tam_job_ids=[good], lookalike_job_ids=[bad]))
    assert run.returncode == 1
    assert bad in run.stderr
    assert "Seed index offline" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.records("tam_companies")) == 321
    assert run.records("lookalike_companies") == []
    assert {r["status"] for r in run.records("jobs")} == {"completed", "failed"}
    assert run.messages[-1]["type"] == "STATE"


def test_unknown_job_exits_nonzero_naming_it(server, run_tap):
    good = server.add_job(JobSpec(kind="tam", rows=10))
    missing = "00000000-0000-4000-8000-000000000000"
    run = run_tap(base_config(server, tam_job_ids=[good, missing]))
    assert run.returncode == 1
    assert missing in run.stderr
    assert "not found for this API key" in run.stderr
    assert len(run.records("tam_companies")) == 10


def test_cancelled_job_delivers_its_pages_and_warns(server, run_tap):
    job = server.add_job(
        JobSpec(kind="lookalike", rows=800, outcome="cancelled", partial_fraction=0.5)
    )
    run = run_tap(base_config(server, lookalike_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("lookalike_companies")
    assert len(rows) == server.job_delivered(job) == 400
    assert "partial" in run.stderr
    record = run.records("jobs")[0]
    assert record["status"] == "cancelled"
    assert record["partial"] is True


def test_second_run_with_final_state_reads_nothing(server, run_tap):
    tam = server.add_job(JobSpec(kind="tam", rows=250))
    look = server.add_job(JobSpec(kind="lookalike", rows=120))
    config = base_config(server, tam_job_ids=[tam], lookalike_job_ids=[look])
    first = run_tap(config)
    assert first.returncode == 0, first.stderr
    before = server.request_count()
    second = run_tap(config, state=first.last_state)
    assert second.returncode == 0, second.stderr
    assert second.records("tam_companies") == []
    assert second.records("lookalike_companies") == []
    assert second.records("jobs") == []
    assert server.request_count() == before
    assert second.last_state == first.last_state


def test_new_job_added_later_is_the_only_one_read(server, run_tap):
    old = server.add_job(JobSpec(kind="tam", rows=150))
    first = run_tap(base_config(server, tam_job_ids=[old]))
    new = server.add_job(JobSpec(kind="tam", rows=70))
    second = run_tap(base_config(server, tam_job_ids=[old, new]), state=first.last_state)
    assert second.returncode == 0, second.stderr
    assert {r["job_id"] for r in second.records("tam_companies")} == {new}
    assert len(second.records("tam_companies")) == 70


@pytest.mark.parametrize("kill_at", [1, 150, 777, 1100])
def test_sigkill_mid_extraction_then_resume_delivers_every_row(
    server, tmp_path, run_tap, monkeypatch, kill_at
):
    server.latency = 0.005
    job = server.add_job(JobSpec(kind="tam", rows=1200))
    config = base_config(server, tam_job_ids=[job], page_concurrency=2)
    config_path = write_json(tmp_path / "c.json", config)
    # The last page (rows 1101-1200) is held back until the kill has landed, so every
    # kill point, the last one included, finds the tap still running.
    release = threading.Event()
    handle = server.handle

    def hold_the_last_page(exchange):
        if exchange.query.get("cursor") == "page_0011":
            release.wait(30)
        return handle(exchange)

    monkeypatch.setattr(server, "handle", hold_the_last_page)
    try:
        code, messages, _ = kill_after(tap_command(config_path), tap_env(), records=kill_at)
    finally:
        release.set()
    monkeypatch.undo()
    assert code == -signal.SIGKILL
    first = [
        m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    state = states[-1] if states else None
    second = run_tap(config, state=state)
    assert second.returncode == 0, second.stderr
    again = second.records("tam_companies")
    union = {(r["job_id"], r["rank"]): r for r in first + again}
    assert sorted(rank for _, rank in union) == list(range(1, 1201))
    # Resume re-reads at most the page in flight when the process died.
    assert len(first) + len(again) - 1200 <= 100
    # The same rank always carries the same company.
    by_rank: dict[int, str] = {}
    for record in first + again:
        assert by_rank.setdefault(record["rank"], record["domain"]) == record["domain"]


def test_sigterm_writes_state_and_exits_nonzero(server, tmp_path, run_tap):
    server.latency = 0.01
    job = server.add_job(JobSpec(kind="tam", rows=1500))
    config = base_config(server, tam_job_ids=[job], page_concurrency=1)
    config_path = write_json(tmp_path / "c.json", config)
    code, messages, err = kill_after(
        tap_command(config_path), tap_env(), records=300, sig=signal.SIGTERM
    )
    assert code not in (0, None)
    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    # The latest state is out: either the handler wrote it, or it was already written
    # (the SDK never repeats an unchanged STATE).
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    assert states
    first = [
        m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    second = run_tap(config, state=states[-1])
    assert second.returncode == 0, second.stderr
    union = {r["rank"] for r in first} | {r["rank"] for r in second.records("tam_companies")}
    assert union == set(range(1, 1501))


def test_api_key_never_printed_even_at_debug(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=120))
    config_path = write_json(tmp_path / "c.json", base_config(server, tam_job_ids=[job]))
    env = tap_env() | {"TAP_OPENFUNNEL_LOGLEVEL": "DEBUG"}
    proc = subprocess.run(
        tap_command(config_path), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr
    assert API_KEY not in proc.stdout
    assert API_KEY not in proc.stderr


def test_python_dash_m_and_discover(tmp_path, server):
    catalog = discover(write_json(tmp_path / "c.json", base_config(server)))
    streams = {entry["tap_stream_id"]: entry for entry in catalog["streams"]}
    assert set(streams) == {"tam_companies", "lookalike_companies", "jobs", "credits_balance"}
    assert streams["tam_companies"]["key_properties"] == ["job_id", "rank"]
    assert streams["jobs"]["key_properties"] == ["job_id"]


@pytest.mark.parametrize(("key", "code"), [(API_KEY, 0), ("of_not_the_key", 1)])
def test_connection_test_is_one_cheap_call(server, tmp_path, key, code):
    """--test checks the key with the balance call: no submit, no waiting."""
    job = server.add_job(JobSpec(kind="tam", rows=10, pending_seconds=60))
    config = base_config(server, api_key=key, tam_job_ids=[job], tam_builds=[{"query": "x"}])
    proc = subprocess.run(
        [*tap_command(write_json(tmp_path / "c.json", config)), "--test"],
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == code
    assert proc.stdout == ""
    assert [r.path for r in server.requests] == ["/api/v1/credits/balance"]
    assert server.submit_count("tam") == 0
    if code == 0:
        assert "Connection test passed" in proc.stderr
        assert "credits left" in proc.stderr
    else:
        assert "Authentication failed" in proc.stderr
        assert key not in proc.stderr


def test_credits_balance_stream_comes_first_when_selected(server, tmp_path):
    """Meltano selects every stream and `meltano config test` stops at the first record."""
    job = server.add_job(JobSpec(kind="tam", rows=10))
    config_path = write_json(tmp_path / "c.json", base_config(server, tam_job_ids=[job]))
    catalog = discover(config_path)
    for entry in catalog["streams"]:
        for item in entry["metadata"]:
            if not item["breadcrumb"]:
                item["metadata"]["selected"] = True
    catalog_path = write_json(tmp_path / "catalog.json", catalog)
    proc = subprocess.run(
        [*tap_command(config_path), "--catalog", str(catalog_path)],
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=True,
    )
    records = [m for m in parse_messages(proc.stdout) if m["type"] == "RECORD"]
    assert records[0]["stream"] == "credits_balance"
    assert records[0]["record"]["credits_left"] > 0
    assert len([m for m in records if m["stream"] == "tam_companies"]) == 10


def test_batch_mode_delivers_every_row_and_state_never_runs_ahead(server, run_tap, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=1234))
    batch_config = {
        "encoding": {"format": "jsonl", "compression": "none"},
        "storage": {"root": f"file://{tmp_path}", "prefix": "batch-"},
        "batch_size": 500,
    }
    run = run_tap(base_config(server, tam_job_ids=[job], batch_config=batch_config))
    assert run.returncode == 0, run.stderr
    ranks_seen: list[int] = []
    for message in run.messages:
        if message["type"] == "BATCH" and message["stream"] == "tam_companies":
            for url in message["manifest"]:
                raw = Path(url.removeprefix("file://")).read_bytes()
                if raw[:2] == b"\x1f\x8b":  # the SDK may gzip whatever the config says
                    raw = gzip.decompress(raw)
                lines = raw.decode().splitlines()
                ranks_seen += [json.loads(line)["rank"] for line in lines]
        if message["type"] == "STATE":
            partitions = message["value"].get("bookmarks", {}).get("tam_companies", {})
            for partition in partitions.get("partitions", []):
                # Every row the state says was read is already in a written batch file.
                assert partition.get("rows_read", 0) <= len(ranks_seen)
    assert sorted(ranks_seen) == list(range(1, 1235))


def test_sigterm_does_not_wait_for_page_requests_in_flight(server, tmp_path):
    """Prefetch threads stuck on slow pages must not hold the exit for request_timeout."""
    job = server.add_job(JobSpec(kind="tam", rows=2000))
    server.latency = 4.0
    config = base_config(server, tam_job_ids=[job], page_concurrency=4, request_timeout=60)
    proc = subprocess.Popen(
        tap_command(write_json(tmp_path / "c.json", config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=tap_env(),
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the first company record: page requests are now in flight
        if b'"tam_companies"' in line and b'"RECORD"' in line:
            break
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < 2.5
