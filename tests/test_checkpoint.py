"""The checkpoint: what a state file may hold, how a job's position moves and when it is written."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from hostile import BAD, GOOD, HostileAPI, HostileJob, assert_clean, run_against
from singer_sdk.helpers import _state as sdk_state
from support import API_KEY, base_config, parse_messages, tap_command, tap_env, write_json

from openfunnel_sandbox import JobSpec
from tap_openfunnel import cli
from tap_openfunnel.checkpoint import Checkpoint, PartitionIndex, Position, state_problem
from tap_openfunnel.tap import TapOpenFunnel

UUID = "8a8e8a97-8192-48ff-849a-d8a96e949732"


def state_with(**fields: Any) -> dict[str, Any]:
    return {
        "bookmarks": {"tam_companies": {"partitions": [{"context": {"job_id": UUID}, **fields}]}}
    }


WHERE = "bookmarks.tam_companies.partitions[0]"

REFUSED = [
    pytest.param(state_with(rows_read=-1), ".rows_read is -1", id="rows-read-negative"),
    pytest.param(state_with(rows_read=1.5), ".rows_read is 1.5", id="rows-read-fraction"),
    pytest.param(state_with(rows_read=2.0), ".rows_read is 2.0", id="rows-read-float"),
    pytest.param(state_with(rows_read=True), ".rows_read is true", id="rows-read-bool"),
    pytest.param(state_with(rows_read="300"), '.rows_read is "300"', id="rows-read-string"),
    pytest.param(state_with(rows_read=None), ".rows_read is null", id="rows-read-null"),
    pytest.param(state_with(next_cursor=3), ".next_cursor is 3", id="cursor-number"),
    pytest.param(state_with(next_cursor=False), ".next_cursor is false", id="cursor-bool"),
    pytest.param(state_with(next_cursor=["p"]), '.next_cursor is ["p"]', id="cursor-list"),
    pytest.param(state_with(next_cursor=""), '.next_cursor is ""', id="cursor-empty"),
    pytest.param(state_with(done="yes"), '.done is "yes"', id="done-string"),
    pytest.param(state_with(done=1), ".done is 1", id="done-number"),
    pytest.param(state_with(failed=0), ".failed is 0", id="failed-number"),
    pytest.param(state_with(origin=5), ".origin is 5", id="origin-number"),
    pytest.param(state_with(fingerprint=None), ".fingerprint is null", id="fingerprint-null"),
    pytest.param(state_with(submitted_at=0), ".submitted_at is 0", id="submitted-at-number"),
    pytest.param(state_with(request=[]), ".request is []", id="request-list"),
]
INCONSISTENT = [
    pytest.param(state_with(rows_read=300), id="rows-read-without-cursor"),
    pytest.param(state_with(rows_read=300, next_cursor=None), id="rows-read-null-cursor"),
    pytest.param(state_with(rows_read=300, done=False), id="rows-read-not-done"),
]


@pytest.mark.parametrize("state", INCONSISTENT)
def test_rows_counted_without_a_place_to_resume_are_refused(state):
    # A read from the first page would rank its rows after 300 already counted.
    assert state_problem(state) == (
        f"{WHERE}.rows_read is 300 without a next_cursor or done: true, a position the tap "
        "never writes"
    )


@pytest.mark.parametrize(("state", "needle"), REFUSED)
def test_a_partition_field_of_the_wrong_kind_is_named(state, needle):
    problem = state_problem(state)
    assert problem is not None
    assert problem.startswith(f"{WHERE}{needle}, not ")


def job(job_id: object) -> dict[str, Any]:
    return {"bookmarks": {"tam_companies": {"partitions": [{"context": {"job_id": job_id}}]}}}


@pytest.mark.parametrize(
    "job_id", ["", ".", "..", "a/b", "../../credits/balance", "%2e", "a b", "x" * 129, 5, None]
)
def test_a_job_id_in_state_that_could_leave_its_path_segment_is_refused(job_id):
    problem = state_problem(job(job_id))
    assert problem is not None
    assert problem.startswith(f"{WHERE}.context.job_id is ")


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"bookmarks": {}},
        state_with(),
        state_with(next_cursor="page_0003", rows_read=300),
        state_with(next_cursor=None, rows_read=0),
        state_with(rows_read=500, done=True, failed=False, origin="submitted"),
        state_with(fingerprint="ab" * 32, submitted_at="2026-01-01T00:00:00+00:00", request={}),
        job("good-job_1"),
    ],
)
def test_a_state_the_tap_writes_is_accepted(state):
    assert state_problem(state) is None


# The position --------------------------------------------------------------------


def make_checkpoint(*, hold: bool = False) -> tuple[Checkpoint, dict[str, Any], list[str]]:
    partitions: dict[str, dict[str, Any]] = {}
    written: list[str] = []

    def partition(stream: str, job_id: str) -> dict[str, Any]:
        return partitions.setdefault(job_id, {"context": {"job_id": job_id}})

    checkpoint = Checkpoint(
        partition, lambda: written.append(json.dumps(partitions)), hold_until_promoted=hold
    )
    checkpoint.register("j", "tam_companies")
    return checkpoint, partitions, written


@pytest.mark.parametrize("hold", [False, True], ids=["records", "batch"])
def test_read_again_sets_a_job_back_to_its_first_page_and_writes_it_at_once(hold):
    checkpoint, _, written = make_checkpoint(hold=hold)
    checkpoint.page_read("j", next_cursor="page_0004", rows_read=400)
    if hold:
        checkpoint.promote(checkpoint.handed())
    checkpoint.page_read("j", next_cursor="page_0005", rows_read=500)  # not durable yet in BATCH
    before = len(written)
    checkpoint.read_again("j")
    assert len(written) > before
    assert json.loads(written[-1])["j"] == {
        "context": {"job_id": "j"},
        "rows_read": 0,
        "next_cursor": None,
    }
    assert checkpoint.position("j") == Position()
    # A batch file announced later cannot move the job forward again.
    assert checkpoint.handed() == {}


# STATE output that scales ---------------------------------------------------------


def state_output(server, run_tap, jobs: int) -> tuple[int, int, int]:
    """Run ``jobs`` completed two-row jobs; return STATE bytes, RECORD bytes, last STATE line."""
    ids = [server.add_job(JobSpec(kind="tam", rows=2)) for _ in range(jobs)]
    run = run_tap(base_config(server, tam_job_ids=ids))
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(run.records("tam_companies")) == 2 * jobs
    lines = run.stdout.splitlines(keepends=True)
    states = [len(line.encode()) for line in lines if line.startswith('{"type":"STATE"')]
    records = sum(len(line.encode()) for line in lines if line.startswith('{"type":"RECORD"'))
    done = [p for p in run.last_state["bookmarks"]["tam_companies"]["partitions"] if p["done"]]
    assert len(done) == jobs  # every job's end reached the last STATE line
    return sum(states), records, states[-1]


def test_state_output_grows_linearly_with_the_jobs_of_a_run(server, run_tap):
    small, small_records, _ = state_output(server, run_tap, 60)
    large, large_records, last_line = state_output(server, run_tap, 300)
    # Five times the jobs: about five times the STATE bytes, not twenty-five.
    assert large < 8 * small, (small, large)
    # Paced by the records written: STATE never outweighs them by more than its last lines.
    assert large <= large_records + 3 * last_line, (large, large_records, last_line)
    assert small_records * 4 < large_records


def recording_checkpoint(*, hold: bool, due=None):
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
    checkpoint, state, written = recording_checkpoint(hold=False)
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    assert state["j"]["next_cursor"] == "page_0001"
    assert written[-1]["j"]["rows_read"] == 100
    checkpoint.page_read("j", next_cursor=None, rows_read=150)
    assert written[-1]["j"] == {"context": {"job_id": "j"}, "rows_read": 150, "done": True}
    assert checkpoint.position("j") == Position(None, 150, done=True)


def test_checkpoint_paces_pages_and_finished_jobs_alike():
    due = {"now": False}
    checkpoint, state, written = recording_checkpoint(hold=False, due=lambda: due["now"])
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
    checkpoint, _state, written = recording_checkpoint(hold=True, due=lambda: False)
    checkpoint.page_read("j", next_cursor="page_0001", rows_read=100)
    checkpoint.promote(checkpoint.handed())
    assert written[-1]["j"]["next_cursor"] == "page_0001"


def test_checkpoint_in_batch_mode_holds_pages_until_promoted():
    checkpoint, state, written = recording_checkpoint(hold=True)
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


def test_unreadable_state_file_is_a_clear_error(server, tmp_path):
    config = write_json(tmp_path / "c.json", base_config(server))
    state = tmp_path / "s.json"
    state.write_text("{not json", encoding="utf-8")
    proc = subprocess.run(
        tap_command(config, state),
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"The state file given with --state ({state}) is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


BAD_STATES = [
    pytest.param([], "a JSON list, not an object", id="list"),
    pytest.param({"bookmarks": []}, "'bookmarks' is not an object", id="bookmarks-list"),
    pytest.param(
        {"bookmarks": {"tam_companies": []}}, "tam_companies is not an object", id="entry"
    ),
    pytest.param(
        {"bookmarks": {"tam_companies": {"partitions": {}}}}, "partitions is not a list", id="parts"
    ),
    pytest.param(
        {"bookmarks": {"tam_companies": {"partitions": [{"next_cursor": "page_0001"}]}}},
        "partitions[0] has no 'context' object",
        id="no-context",
    ),
    pytest.param(
        {
            "bookmarks": {
                "tam_companies": {
                    "partitions": [{"context": {"job_id": GOOD}, "rows_read": "many"}]
                }
            }
        },
        'partitions[0].rows_read is "many"',
        id="rows-read",
    ),
    pytest.param(
        {"bookmarks": {"jobs": {"partitions": [{"context": {"job_id": GOOD}, "done": "yes"}]}}},
        "bookmarks.jobs.partitions[0].done",
        id="done",
    ),
    pytest.param(
        {
            "bookmarks": {
                "tam_companies": {
                    "partitions": [
                        {"context": {"job_id": GOOD}, "rows_read": 100, "next_cursor": "page_0001"},
                        {"context": {"job_id": "other"}},
                        {"context": {"job_id": GOOD}, "rows_read": 300, "done": True},
                    ]
                }
            }
        },
        "partitions[2] has the context of partitions[0]: one job, two positions",
        id="one-job-twice",
    ),
]


@pytest.mark.parametrize(("state", "needle"), BAD_STATES)
def test_a_state_of_the_wrong_shape_is_refused_with_a_way_out(tmp_path, state, needle):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, state=state)
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "meltano state clear" in run.stderr
    assert "Traceback" not in run.stderr
    assert served == 0


def test_a_state_cursor_the_api_does_not_know_is_named(tmp_path):
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    {"context": {"job_id": BAD}, "next_cursor": "page_0099", "rows_read": 9900}
                ]
            }
        }
    }
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology="unknown_cursor")}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        api.jobs[BAD].pathology = None
        original = api.answer

        def answer(job_id: str, cursor: str | None):
            if job_id == BAD and cursor == "page_0099":
                return 404, {}, {"detail": "Not Found"}
            return original(job_id, cursor)

        api.answer = answer  # type: ignore[method-assign]
        run = run_against(api, tmp_path, state=state)
    assert run.returncode == 1
    assert "page 'page_0099'" in run.stderr
    assert "the job itself is fine" in run.stderr
    assert "Remove it from the config" not in run.stderr
    assert_clean(run)


def test_the_partition_index_hands_out_the_sdks_own_partitions(server):
    """Found by job id in one look-up, the partitions are the very objects the SDK's
    own (scanning) look-up finds, for jobs already in state and for new ones alike."""
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    {"context": {"job_id": "a"}, "rows_read": 100, "next_cursor": "page_0001"},
                    {"context": {"job_id": "b"}, "rows_read": 200, "done": True},
                ]
            }
        }
    }
    tap = TapOpenFunnel(config=base_config(server), state=state, parse_env_config=False)
    stream = tap.streams["tam_companies"]
    index = PartitionIndex(lambda name: tap.streams[name].stream_state)
    for job_id in ("b", "a", "new", "b"):
        assert index("tam_companies", job_id) is stream.get_context_state({"job_id": job_id})
    assert [
        p["context"]["job_id"] for p in tap.state["bookmarks"]["tam_companies"]["partitions"]
    ] == [
        "a",
        "b",
        "new",
    ]
    assert index("tam_companies", "a")["next_cursor"] == "page_0001"


def test_a_run_of_many_jobs_finds_their_partitions_without_scanning_them(
    server, monkeypatch, capsys
):
    """The SDK's partition look-up compares the context with every partition: asked
    per job (and several times), it made a run quadratic in its jobs. A sync reads
    each job's partition by its id instead."""
    jobs = [server.add_job(JobSpec(kind="tam", rows=2)) for _ in range(40)]
    scans: list[int] = []
    real = sdk_state._find_in_partitions_list

    def counted(partitions, context):
        scans.append(len(partitions))
        return real(partitions, context)

    monkeypatch.setattr(sdk_state, "_find_in_partitions_list", counted)
    cli.sync(TapOpenFunnel(config=base_config(server, tam_job_ids=jobs)))
    records = [m for m in parse_messages(capsys.readouterr().out) if m["type"] == "RECORD"]
    assert sum(m["stream"] == "tam_companies" for m in records) == 80
    assert len(scans) < len(jobs)  # not one scan (or four) per job
