"""Interruptions and resume: after a SIGKILL or SIGTERM, a re-run delivers every row once."""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    ALL_FAULTS,
    base_config,
    kill_after,
    parse_messages,
    tap_command,
    tap_env,
    write_json,
)

from openfunnel_sandbox import Faults, JobSpec


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


def test_sigterm_does_not_wait_for_page_requests_in_flight(server, tmp_path, monkeypatch):
    """Prefetch threads stuck on slow pages must not hold the exit for request_timeout."""
    job = server.add_job(JobSpec(kind="tam", rows=2000))
    config = base_config(server, tam_job_ids=[job], page_concurrency=4, request_timeout=60)
    # Every page after the first is held until the tap has exited: a tap that waited for
    # its requests in flight would never exit, and proc.wait below would time out.
    exited = threading.Event()
    handle = server.handle

    def hold_later_pages(exchange):
        if exchange.query.get("cursor"):
            exited.wait(90)
        return handle(exchange)

    monkeypatch.setattr(server, "handle", hold_later_pages)
    proc = subprocess.Popen(
        tap_command(write_json(tmp_path / "c.json", config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=tap_env(),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first company record: page requests are now in flight
            if b'"tam_companies"' in line and b'"RECORD"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        exited.set()
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM


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
    """3,000 rows in 30 pages, one at a time, SIGTERM after 12 pages."""
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


def test_randomised_kills_with_faults_then_resume_deliver_every_row(server, run_tap, tmp_path):
    rng = random.Random(20261125)  # noqa: S311 - kill points, not secrets
    server.latency = 0.002
    server.faults = Faults(rate=0.15, kinds=ALL_FAULTS, retry_after=0, slow_seconds=0.05, seed=11)
    jobs = [server.add_job(JobSpec(kind="tam", rows=rows)) for rows in (700, 420)]
    config = base_config(server, tam_job_ids=jobs, page_concurrency=3, max_retries=12)
    config_path = write_json(tmp_path / "c.json", config)
    state = None
    delivered = []
    for attempt in range(3):
        state_path = write_json(tmp_path / f"s{attempt}.json", state) if state else None
        _, messages, _ = kill_after(
            tap_command(config_path, state_path), tap_env(), records=rng.randint(1, 300)
        )
        delivered += [
            m["record"]
            for m in messages
            if m["type"] == "RECORD" and m["stream"] == "tam_companies"
        ]
        states = [m["value"] for m in messages if m["type"] == "STATE"]
        state = states[-1] if states else state
    final = run_tap(config, state=state)
    assert final.returncode == 0, final.stderr[-2000:]
    delivered += final.records("tam_companies")
    for job_id, rows in zip(jobs, (700, 420), strict=True):
        assert {r["rank"] for r in delivered if r["job_id"] == job_id} == set(range(1, rows + 1))
