"""Singer output: every row once, RECORD lines in blocks, STATE never ahead, selection applied."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import gzip
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.helpers import _state as sdk_state
from singer_sdk.singerlib import RecordMessage, StateMessage
from support import (
    base_config,
    discover,
    parse_messages,
    ranks,
    tap_command,
    tap_env,
    write_json,
)

from openfunnel_sandbox import JobSpec
from tap_openfunnel import cli
from tap_openfunnel import writer as writer_module
from tap_openfunnel.streams import load_schema
from tap_openfunnel.tap import TapOpenFunnel
from tap_openfunnel.writer import (
    BLOCK_SIZE,
    PIPE_SIZE,
    BlockWriter,
    SelectedRecordMessages,
    state_line,
    widen_pipe,
)


def record(n: int, payload: str = "x") -> RecordMessage:
    return RecordMessage(stream="s", record={"n": n, "payload": payload})


def state(n: int) -> StateMessage:
    return StateMessage(value={"n": n})


@contextlib.contextmanager
def file_stdout(tmp_path):
    """Point sys.stdout at a real file descriptor, as when the tap writes to a pipe.

    Set inside the test: pytest re-installs its own capture between fixture setup and
    the test call.
    """
    path = tmp_path / "stdout"
    stdout = path.open("w", encoding="utf-8")

    def written() -> bytes:
        return path.read_bytes()

    try:
        with contextlib.redirect_stdout(stdout):
            yield written
    finally:
        stdout.close()


def test_records_wait_for_the_next_state_and_keep_their_order(tmp_path):
    writer = BlockWriter()
    with file_stdout(tmp_path) as written:
        for n in range(5):
            writer.write_message(record(n))
        assert written() == b""
        writer.write_message(state(5))
        lines = [json.loads(line) for line in written().splitlines()]
    assert [line["type"] for line in lines] == ["RECORD"] * 5 + ["STATE"]
    assert [line["record"]["n"] for line in lines[:5]] == list(range(5))


def test_a_full_block_is_written_without_waiting_for_state(tmp_path):
    writer = BlockWriter()
    payload = "y" * 1000
    count = 3 * BLOCK_SIZE // 1000
    with file_stdout(tmp_path) as written:
        for n in range(count):
            writer.write_message(record(n, payload))
        early = written()
        writer.flush()
        everything = written()
    assert len(early) >= BLOCK_SIZE
    # Whole lines only, in order, and the rest follows on flush.
    assert early.endswith(b"\n")
    assert everything.startswith(early)
    lines = [json.loads(line) for line in everything.splitlines()]
    assert [line["record"]["n"] for line in lines] == list(range(count))


def test_flush_writes_what_is_pending(tmp_path):
    writer = BlockWriter()
    with file_stdout(tmp_path) as written:
        writer.write_message(record(1))
        writer.flush()
        assert json.loads(written())["record"]["n"] == 1


def test_a_deselected_property_is_left_out_and_the_rest_is_unchanged(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=30))
    config_path = write_json(tmp_path / "c.json", base_config(server, tam_job_ids=[job]))
    catalog = discover(config_path)

    def run(catalog_path=None):
        command = tap_command(config_path)
        if catalog_path is not None:
            command = [*command, "--catalog", str(catalog_path)]
        proc = subprocess.run(
            command, capture_output=True, text=True, env=tap_env(), timeout=60, check=True
        )
        return [
            m["record"]
            for m in parse_messages(proc.stdout)
            if m["type"] == "RECORD" and m["stream"] == "tam_companies"
        ]

    everything = run()
    assert len(everything) == 30
    assert set(everything[0]) == set(load_schema("tam_companies")["properties"])
    for entry in catalog["streams"]:
        if entry["tap_stream_id"] != "tam_companies":
            continue
        for item in entry["metadata"]:
            if not item["breadcrumb"]:
                item["metadata"]["selected"] = True
            elif item["breadcrumb"] == ["properties", "headquarters"]:
                item["metadata"]["selected"] = False
    trimmed = run(write_json(tmp_path / "catalog.json", catalog))
    assert [{k: v for k, v in r.items() if k != "headquarters"} for r in everything] == trimmed


def test_a_dry_run_hands_out_its_records_at_once(server):
    """The SDK's connection test stops after a record without a closing STATE."""
    job = server.add_job(JobSpec(kind="tam", rows=230))
    tap = TapOpenFunnel(config=base_config(server, tam_job_ids=[job]))
    tap.plan_run()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        tap.run_connection_test()
    records = [m for m in parse_messages(captured.getvalue()) if m["type"] == "RECORD"]
    assert any(m["stream"] == "tam_companies" for m in records)
    assert isinstance(tap.message_writer, BlockWriter)
    assert not tap.message_writer._block


# The command ends with os._exit (tap_openfunnel.__main__.finish), skipping the
# interpreter's teardown: what the caller reads must be out before, and the exit code
# must be the one sys.exit would give.
_FINISH_CHILD = """
import sys
from singer_sdk.singerlib import RecordMessage
from tap_openfunnel.__main__ import finish
from tap_openfunnel.writer import BlockWriter

writer = BlockWriter()
for n in range(3):
    writer.write_message(RecordMessage(stream="s", record={"n": n}))
sys.stdin.readline()  # the parent is ready for the exit
finish(eval(sys.argv[1]))
"""


def finish_child(code: str, *, close_stdout: bool = False) -> subprocess.CompletedProcess[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", _FINISH_CHILD, code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    if close_stdout:
        child.stdout.close()  # the target went away before the last lines
    child.stdin.write(b"go\n")
    child.stdin.close()
    out = b"" if close_stdout else child.stdout.read()
    err = child.stderr.read() if child.stderr is not None else b""
    child.wait(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_the_commands_exit_writes_pending_records_first():
    done = finish_child("0")
    assert done.returncode == 0
    assert [json.loads(line)["record"]["n"] for line in done.stdout.splitlines()] == [0, 1, 2]


def test_the_commands_exit_code_is_the_one_sys_exit_gives():
    assert finish_child("None").returncode == 0
    assert finish_child("3").returncode == 3
    message = finish_child("'Could not start: the reason.'")
    assert message.returncode == 1
    assert b"Could not start: the reason." in message.stderr


def test_the_commands_exit_is_not_zero_when_its_last_lines_could_not_be_written():
    assert finish_child("0", close_stdout=True).returncode == 120


def pipe_max_size() -> int:
    return int(Path("/proc/sys/fs/pipe-max-size").read_text())


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_pipe_on_the_commands_stdout_is_widened():
    """While the target loads a batch, the tap can write ~1 MiB ahead instead of 64 KiB."""
    wanted = min(PIPE_SIZE, pipe_max_size())
    read_end, write_end = os.pipe()
    try:
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == 64 * 1024  # the default
        assert widen_pipe(write_end) == wanted
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == wanted
    finally:
        os.close(read_end)
        os.close(write_end)
    # The command does it to its own stdout: the size stays with the pipe after it exits.
    child = subprocess.Popen(
        [sys.executable, "-m", "tap_openfunnel", "--about"], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    with child.stdout:
        assert child.stdout.read()
        assert child.wait(timeout=60) == 0
        assert fcntl.fcntl(child.stdout.fileno(), fcntl.F_GETPIPE_SZ) == wanted


def test_anything_but_a_pipe_is_left_alone(tmp_path):
    with (tmp_path / "out").open("wb") as file:
        assert widen_pipe(file.fileno()) is None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5))
def test_a_state_line_is_byte_for_byte_the_sdks(value):
    """The STATE fast path (no asdict copy) writes exactly what the SDK's writer does."""
    message = StateMessage(value=value)
    expected = bytes(MsgSpecWriter().format_message(message))
    assert bytes(BlockWriter().format_message(message)) == expected
    assert bytes(state_line(value)) == expected


RECORDS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    RECORDS,
    st.text(max_size=12),
    st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    st.datetimes(timezones=st.just(dt.timezone.utc)),
)
def test_a_record_line_is_byte_for_byte_the_sdks(value, stream, version, extracted):
    """The RECORD fast path (no message object) writes exactly what the SDK's writer does."""
    message = RecordMessage(stream=stream, record=value, version=version, time_extracted=extracted)
    expected = bytes(MsgSpecWriter().format_message(message))
    writer = BlockWriter()
    writer._block += b"before\n"
    writer.write_record(stream, value, version, extracted)
    assert bytes(writer._block) == b"before\n" + expected
    assert writer.since_state == len(expected)


def test_record_lines_follow_each_change_of_stream_version_and_time():
    """What surrounds a record is encoded once and reused: never for another stream,
    version or time_extracted."""
    first = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    later = dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
    same_time = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # equal, not the same
    lines = [
        ("a", None, first),
        ("a", None, first),
        ("b", None, first),
        ("b", 7, first),
        ("b", 8, first),
        ("b", None, first),
        ("b", None, later),
        ("b", None, same_time),
        ("a", 0, later),
    ]
    writer = BlockWriter()
    expected = b""
    for n, (stream, version, extracted) in enumerate(lines):
        writer.write_record(stream, {"n": n}, version, extracted)
        message = RecordMessage(
            stream=stream, record={"n": n}, version=version, time_extracted=extracted
        )
        expected += bytes(MsgSpecWriter().format_message(message))
    assert bytes(writer._block) == expected


def test_a_record_that_cannot_be_encoded_leaves_no_half_line():
    writer = BlockWriter()
    writer.write_record("s", {"n": 1}, None, dt.datetime.now(dt.timezone.utc))
    before = bytes(writer._block)
    with pytest.raises(TypeError):
        writer.write_record(
            "s", {"n": [1, 2, NotEncodable()]}, None, dt.datetime.now(dt.timezone.utc)
        )
    assert bytes(writer._block) == before
    assert writer.since_state == len(before)


class NotEncodable:
    """What msgspec refuses (the SDK's hook makes most objects a string: not this one)."""

    def __str__(self) -> str:
        raise TypeError


def test_the_records_of_a_page_share_its_time_extracted(server, monkeypatch, capsys):
    """The clock is read once per page, not per record: one page, one time."""
    job = server.add_job(JobSpec(kind="tam", rows=250))
    ticks = iter(range(1, 1000))
    monkeypatch.setattr(
        writer_module,
        "utc_now",
        lambda: dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=next(ticks)),
    )
    cli.sync(TapOpenFunnel(config=base_config(server, tam_job_ids=[job])))
    records = [
        m
        for m in parse_messages(capsys.readouterr().out)
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    times = {}
    for message in records:
        times.setdefault(message["record"]["page"], set()).add(message["time_extracted"])
    assert [len(records), sorted(times)] == [250, ["page_0000", "page_0001", "page_0002"]]
    # One time per page, read when the page's first record went out (the jobs
    # stream's record, written before, took a time of its own).
    assert [len(seen) for seen in times.values()] == [1, 1, 1]
    stamps = [seen.pop() for seen in times.values()]
    assert stamps == sorted(set(stamps))


def test_a_state_is_written_again_only_when_it_changed(tmp_path):
    writer = BlockWriter()
    partition = {"context": {"job_id": "a"}, "next_cursor": "page_0001", "rows_read": 100}
    state = {"bookmarks": {"tam_companies": {"partitions": [partition]}}}
    with file_stdout(tmp_path) as written:
        writer.write_message(StateMessage(value=state))
        writer.write_message(StateMessage(value=state))  # unchanged: not written again
        # The SDK changes state in place: a change deep inside must still be seen.
        partition["next_cursor"] = "page_0002"
        writer.write_message(StateMessage(value=state))
        partition["rows_read"] = 200
        writer.write_message(StateMessage(value=state))
        writer.write_message(StateMessage(value=state))
        lines = [json.loads(line) for line in written().splitlines()]
    assert [line["value"]["bookmarks"]["tam_companies"]["partitions"][0] for line in lines] == [
        {"context": {"job_id": "a"}, "next_cursor": "page_0001", "rows_read": 100},
        {"context": {"job_id": "a"}, "next_cursor": "page_0002", "rows_read": 100},
        {"context": {"job_id": "a"}, "next_cursor": "page_0002", "rows_read": 200},
    ]


def test_the_checkpoint_and_the_sdk_write_state_through_one_deduplicating_writer(server, tmp_path):
    """The checkpoint's STATE lines, the streams' (the public state_writer) and the
    tap-level ones the SDK writes through its own writer all go through the tap's
    message writer, which tells an unchanged state from its encoded line, whoever
    wrote the last one."""
    partition = {"context": {"job_id": "a"}, "rows_read": 1, "done": True}
    state = {"bookmarks": {"tam_companies": {"partitions": [partition]}}}
    tap = TapOpenFunnel(config=base_config(server), state=state)
    assert isinstance(tap.message_writer, BlockWriter)
    with file_stdout(tmp_path) as written:
        tap.checkpoint.write()
        tap.state_writer.write_state(tap.state)  # the streams' route, the same state
        tap._state_writer.write_state(tap.state)  # the SDK's own, at a sync's start and end
        tap.checkpoint.write()
        lines = written().splitlines()
    assert [json.loads(line) for line in lines] == [{"type": "STATE", "value": tap.state}]


def test_records_are_built_by_the_taps_own_message_builder(server, monkeypatch, capsys):
    """SelectedRecordMessages replaces a private SDK method: were the SDK to stop calling
    it, every record would quietly take the slow path again. This notices."""
    job = server.add_job(JobSpec(kind="tam", rows=5))
    built: list[int] = []
    original = SelectedRecordMessages._write_record_message

    def counting(self, record):
        if "rank" in record:
            built.append(record["rank"])
        return original(self, record)

    monkeypatch.setattr(SelectedRecordMessages, "_write_record_message", counting)
    cli.sync(TapOpenFunnel(config=base_config(server, tam_job_ids=[job])))
    assert built == [1, 2, 3, 4, 5]
    written = parse_messages(capsys.readouterr().out)
    ranks = [
        m["record"]["rank"]
        for m in written
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    assert ranks == [1, 2, 3, 4, 5]


def test_a_state_line_is_due_once_records_since_the_last_outweigh_it(tmp_path):
    writer = BlockWriter()
    assert writer.state_due()  # nothing written yet
    big = {"bookmarks": {"s": {"partitions": [{"context": {"job_id": "x" * 2000}}]}}}
    with file_stdout(tmp_path):
        writer.write_message(StateMessage(value=big))
        assert not writer.state_due()
        line = len(writer.format_message(record(0)))
        for n in range(2000 // line):
            writer.write_message(record(n))
        assert not writer.state_due()
        for n in range(3):
            writer.write_message(record(n))
        assert writer.state_due()
        writer.write_message(StateMessage(value={"bookmarks": {}}))
        assert not writer.state_due()
        writer.write_message(record(0, "y" * 100))  # outweighs the small state at once
        assert writer.state_due()


def test_a_grown_state_is_written_every_few_pages_and_never_ahead(server, run_tap):
    """A state that remembers 1,000 jobs is larger than a page of records: it is written
    every few pages instead of after each, never ahead of its records, and a resume from
    any of those lines reads the rest without a gap."""
    job = server.add_job(JobSpec(kind="tam", rows=3000))
    remembered = [
        {
            "context": {"job_id": f"old-{n:04d}"},
            "origin": "submitted",
            "fingerprint": f"{n:064x}",
            "submitted_at": "2026-01-01T02:00:03+00:00",
            "request": {"query": f"cloud observability and monitoring tools, market {n}"},
            "rows_read": 10,
            "done": True,
        }
        for n in range(1000)
    ]
    state = {"bookmarks": {"tam_companies": {"partitions": remembered}}}
    config = base_config(server, tam_job_ids=[job])
    first = run_tap(config, state)
    assert first.returncode == 0, first.stderr

    def position(message):
        for partition in message["value"]["bookmarks"]["tam_companies"]["partitions"]:
            if partition["context"]["job_id"] == job:
                return partition
        return None

    ranks_before = 0
    positions = []
    since_state = last_state = 0  # record bytes since the last STATE line, its size
    for text in first.stdout.splitlines():
        message, line = json.loads(text), len(text.encode()) + 1
        if message["type"] == "RECORD":
            ranks_before += message["stream"] == "tam_companies"
            since_state += line
        elif message["type"] == "STATE":
            found = position(message)
            if found is not None and "rows_read" in found:
                assert found["rows_read"] <= ranks_before  # never ahead of its records
                moved = not positions or found["rows_read"] > positions[-1]["rows_read"]
                if moved and not found.get("done"):
                    # A page's position goes out only once the records since the last
                    # STATE line outweigh that line.
                    assert since_state >= last_state
                positions.append(found)
            since_state, last_state = 0, line
    assert ranks_before == 3000
    last = {k: v for k, v in positions[-1].items() if k != "terminal_at"}  # a wall-clock stamp
    assert last == {"context": {"job_id": job}, "rows_read": 3000, "done": True}
    middle = [p for p in positions if not p.get("done")]
    assert 2 <= len(middle) < 29  # not after each of the 30 pages, but more than once
    # Resume from a line in the middle: the rest of the job, from the next rank on.
    resume_at = middle[len(middle) // 2]
    partitions = [*remembered, resume_at]
    second = run_tap(config, {"bookmarks": {"tam_companies": {"partitions": partitions}}})
    assert second.returncode == 0, second.stderr
    ranks = [
        m["record"]["rank"]
        for m in second.messages
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    assert ranks == list(range(resume_at["rows_read"] + 1, 3001))


def test_the_encoded_writer_writes_the_sdks_state_line_once_after_its_records(tmp_path):
    writer = BlockWriter()
    value = {"bookmarks": {"s": {"partitions": [{"context": {"job_id": "é"}, "rows_read": 1}]}}}
    sdk = MsgSpecWriter()
    with file_stdout(tmp_path) as written:
        writer.write_message(record(1))
        writer.write_message(StateMessage(value=value))
        writer.write_message(StateMessage(value=value))
        out = written()
    expected = bytes(sdk.format_message(record(1))) + bytes(
        sdk.format_message(StateMessage(value=value))
    )
    assert out == expected
    assert writer.since_state == 0


def test_child_contexts_are_still_asked_through_the_public_hook(server, monkeypatch, capsys):
    """SelectedRecordMessages spares the SDK's per-record child context through the
    public ``generate_child_contexts``; were the SDK to stop asking it, this notices."""
    job = server.add_job(JobSpec(kind="tam", rows=3))
    seen: list[int] = []
    original = SelectedRecordMessages.generate_child_contexts

    def counting(self, record, context):
        if "rank" in record:
            seen.append(record["rank"])
        return original(self, record, context)

    monkeypatch.setattr(SelectedRecordMessages, "generate_child_contexts", counting)
    cli.sync(TapOpenFunnel(config=base_config(server, tam_job_ids=[job])))
    assert seen == [1, 2, 3]
    capsys.readouterr()


def test_a_configured_stream_map_still_transforms_every_record(server, capsys):
    """Only the SDK's identity map is skipped: a map from the config still runs."""
    job = server.add_job(JobSpec(kind="tam", rows=4))
    config = base_config(
        server,
        tam_job_ids=[job],
        stream_maps={"tam_companies": {"rank_twice": "rank * 2", "domain": "__NULL__"}},
    )
    cli.sync(TapOpenFunnel(config=config))
    records = [
        m["record"]
        for m in parse_messages(capsys.readouterr().out)
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    assert [r["rank_twice"] for r in records] == [2, 4, 6, 8]
    assert all("domain" not in r for r in records)


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


TOOLS_BIN = Path(__file__).resolve().parent.parent / ".tools-venv" / "bin"


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


def test_a_state_that_has_grown_is_not_deep_copied_per_state_line(server, monkeypatch, capsys):
    """The SDK's state writer keeps a deep copy of every state it writes: with a
    partition for every job ever read, that would cost more than the records. Only the
    SDK's own two tap-level writes (a sync's start and end) may copy it; the streams'
    writes go through the tap's writer."""
    job = server.add_job(JobSpec(kind="tam", rows=450))
    monkeypatch.setattr(
        TapOpenFunnel, "discover_streams", _small_state_frequency(TapOpenFunnel.discover_streams)
    )
    sdk_writes: list[object] = []
    real = sdk_state.StateWriter.write_state

    def counted(writer, state):
        sdk_writes.append(state)
        return real(writer, state)

    monkeypatch.setattr(sdk_state.StateWriter, "write_state", counted)
    cli.sync(TapOpenFunnel(config=base_config(server, tam_job_ids=[job])))
    states = [m for m in parse_messages(capsys.readouterr().out) if m["type"] == "STATE"]
    assert len(states) >= 5  # the streams wrote state many times over
    assert len(sdk_writes) <= 2


def _small_state_frequency(discover):
    """Streams that ask the SDK for a STATE every 100 records (its default is 10,000)."""

    def streams(self):
        found = discover(self)
        for stream in found:
            stream.STATE_MSG_FREQUENCY = 100
        return found

    return streams
