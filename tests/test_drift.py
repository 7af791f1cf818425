"""Schema drift: what the API sends and the schemas do not name is kept, safely."""

from __future__ import annotations

import json
import math

import pytest
from hostile import BAD, GOOD, HostileAPI, HostileJob, assert_clean, run_against
from support import API_KEY, base_config, discover, write_json

from openfunnel_sandbox import JobSpec
from tap_openfunnel import logs
from tap_openfunnel.exceptions import ChangedShapeError
from tap_openfunnel.records import RowShaper
from tap_openfunnel.safe_values import (
    DEEP_MARKER,
    LARGE_MARKER,
    MAX_KEPT_CHARS,
    MAX_KEPT_DEPTH,
    keep_json,
)
from tap_openfunnel.streams import load_schema


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = {"down": value}
    return value


def depth_of(value: object) -> int:
    depth = 0
    while isinstance(value, dict):
        value = value["down"]
        depth += 1
    return depth


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setattr(logs, "_SECRET_FORMS", logs.secret_forms(API_KEY))


@pytest.mark.parametrize(
    ("value", "kept", "dropped"),
    [
        pytest.param(
            {"a": 1, "b": [True, None, 2.5]}, {"a": 1, "b": [True, None, 2.5]}, 0, id="as-is"
        ),
        pytest.param({"a\x00b": "x\x00y"}, {"ab": "xy"}, 0, id="nul"),
        pytest.param({"s": "bad \udc80 half"}, {"s": "bad \ufffd half"}, 0, id="lone-surrogate"),
        pytest.param(
            {"n": math.nan, "i": [math.inf]}, {"n": None, "i": [None]}, 0, id="non-finite"
        ),
        pytest.param({"k": f"key={API_KEY}"}, {"k": "key=***"}, 0, id="api-key"),
        pytest.param({"big": "x" * (MAX_KEPT_CHARS + 1)}, {"big": LARGE_MARKER}, 1, id="too-long"),
    ],
)
def test_keep_json_makes_values_safe(secret, value, kept, dropped):
    assert keep_json(value) == (kept, dropped)


def test_keep_json_cuts_deep_nesting_with_a_marker(secret):
    kept, dropped = keep_json(nested(MAX_KEPT_DEPTH + 40))
    assert dropped == 1
    assert depth_of(kept) == MAX_KEPT_DEPTH
    # The marker sits where the cut was, so the depth of the cut is visible.
    inner = kept
    for _ in range(MAX_KEPT_DEPTH):
        inner = inner["down"]  # type: ignore[index]
    assert inner == DEEP_MARKER


def test_keep_json_bounds_the_size_of_many_small_values(secret):
    many = {f"field_{i}": "y" * 1000 for i in range(400)}
    kept, dropped = keep_json(many)
    assert len(json.dumps(kept)) < MAX_KEPT_CHARS + 500  # the markers, a few hundred
    values = list(kept.values())
    # Whole values up to the cut, one marker for the value that did not fit, then the
    # name of the next one with a marker, and nothing after.
    assert values[-2:] == [LARGE_MARKER, LARGE_MARKER]
    assert all(value == "y" * 1000 for value in values[:-2])
    assert dropped == 400 - (len(kept) - 2)


def shaper(stream="tam_companies", *, keep=True, strict=False) -> RowShaper:
    schema = load_schema(stream)
    if not keep:
        del schema["properties"]["_extra"]
    return RowShaper(schema, strict_shape=strict)


def test_unknown_fields_go_to_extra_and_are_announced_once(caplog):
    rows = [{"name": "A", "domain": "a.io", "score_v2": 0.5}, {"name": "B", "domain": "b.io"}]
    shape = shaper()
    first = list(shape.records(rows, job_id="j1", page="page_0000", first_rank=1))
    again = list(shape.records(rows, job_id="j2", page="page_0000", first_rank=1))
    assert [r["_extra"] for r in first] == [{"score_v2": 0.5}, None]
    assert again == [{**r, "job_id": "j2"} for r in first]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "Job j1" in warnings[0]
    assert "(score_v2)" in warnings[0]
    assert "kept in the _extra column" in warnings[0]


def test_without_keep_unknown_fields_they_are_dropped_and_named(caplog):
    rows = [{"name": "A", "domain": "a.io", "score_v2": 0.5}]
    (record,) = shaper(keep=False).records(rows, job_id="j", page="page_0000", first_rank=1)
    assert "_extra" not in record
    assert "score_v2" not in record
    assert "dropped, as keep_unknown_fields is off" in caplog.text


RENAMED = [{"company_name": f"C{i}", "website": f"c{i}.io", "employee_count": i} for i in range(3)]


@pytest.mark.parametrize(
    ("rows", "changed"),
    [
        pytest.param(RENAMED, True, id="renamed"),
        pytest.param([*RENAMED, {"name": "A", "domain": "a.io"}], True, id="most-renamed"),
        pytest.param([RENAMED[0], {"name": "A", "domain": "a.io"}], False, id="half-renamed"),
        # Nulls are odd data, not a changed API: the field is still named.
        pytest.param([{"name": None, "domain": None, "hq_city": "Oslo"}] * 3, False, id="nulls"),
        pytest.param([{}] * 3, False, id="empty-rows"),
    ],
)
def test_a_changed_shape_warns_or_fails_before_any_record(caplog, rows, changed):
    records = list(shaper().records(rows, job_id="j", page="page_0004", first_rank=1))
    assert len(records) == len(rows)
    assert ("row shape has probably changed" in caplog.text) is changed
    if changed:
        assert "company_name, employee_count, website" in caplog.text
        with pytest.raises(ChangedShapeError, match="'page_0004'") as info:
            next(shaper(strict=True).records(rows, job_id="j", page="page_0004", first_rank=1))
        assert info.value.job_id == "j"


def test_discovery_documents_the_kept_columns(tmp_path, server):
    catalog = discover(write_json(tmp_path / "c.json", base_config(server)))
    schemas = {entry["tap_stream_id"]: entry["schema"] for entry in catalog["streams"]}
    for stream in ("tam_companies", "lookalike_companies", "jobs"):
        extra = schemas[stream]["properties"]["_extra"]
        assert extra["type"] == ["object", "null"]
        assert "does not name" in extra["description"]
    assert "whole manifest" in schemas["jobs"]["properties"]["manifest"]["description"]
    off = discover(
        write_json(tmp_path / "off.json", base_config(server, keep_unknown_fields=False))
    )
    for entry in off["streams"]:
        assert "_extra" not in entry["schema"]["properties"]
        assert "manifest" not in entry["schema"]["properties"]


def tam_job(server, rows=250, *quirks: str, kind="tam") -> str:
    return server.add_job(JobSpec(kind=kind, rows=rows, quirks=frozenset(quirks)))


@pytest.mark.parametrize("kind", ["tam", "lookalike"])
def test_extra_fields_reach_the_records_and_the_jobs_stream(server, run_tap, kind):
    job = tam_job(server, 250, "extra_fields", kind=kind)
    key = f"{kind}_job_ids" if kind == "tam" else "lookalike_job_ids"
    run = run_tap(base_config(server, **{key: [job]}))
    assert run.returncode == 0, run.stderr
    stream = "tam_companies" if kind == "tam" else "lookalike_companies"
    rows = run.records(stream)
    assert len(rows) == 250
    assert all(isinstance(r["_extra"]["score_v2"], float) for r in rows)
    (jobs,) = run.records("jobs")
    assert jobs["manifest"]["schema_version"] == 2
    assert jobs["_extra"]["request_id"].startswith("req_")
    assert "manifest.schema_version, manifest.tags" in run.stderr
    assert API_KEY not in run.stdout + run.stderr


def test_a_new_manifest_field_reaches_the_jobs_stream(server, run_tap):
    job = tam_job(server, 120, "new_manifest_field")
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    (record,) = run.records("jobs")
    assert record["manifest"]["credits_refunded"] == 7
    assert record["manifest"]["unique_count"] == record["unique_count"] == 120
    assert record["_extra"] is None
    assert "(manifest.credits_refunded)" in run.stderr
    assert all(r["_extra"] is None for r in run.records("tam_companies"))


def test_keep_unknown_fields_off_gives_the_old_records(server, run_tap):
    job = tam_job(server, 120, "extra_fields")
    run = run_tap(base_config(server, tam_job_ids=[job], keep_unknown_fields=False))
    assert run.returncode == 0, run.stderr
    schemas = {m["stream"]: m["schema"] for m in run.messages if m["type"] == "SCHEMA"}
    assert "_extra" not in schemas["tam_companies"]["properties"]
    assert "manifest" not in schemas["jobs"]["properties"]
    assert all("_extra" not in r for r in run.records("tam_companies"))
    assert "manifest" not in run.records("jobs")[0]
    assert "they are dropped, as keep_unknown_fields is off" in run.stderr


def test_renamed_fields_warn_and_are_kept(server, run_tap):
    # renamed_fields: rows 125 on call name company_name and domain website.
    job = tam_job(server, 250, "renamed_fields")
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = sorted(run.records("tam_companies"), key=lambda r: r["rank"])
    assert len(rows) == 250
    assert all(r["name"] and r["_extra"] is None for r in rows[:125])
    assert all(r["name"] is None and r["domain"] is None for r in rows[125:])
    assert all(set(r["_extra"]) == {"company_name", "website"} for r in rows[125:])
    assert run.stderr.count("row shape has probably changed") == 1
    assert "most rows of page 'page_0001' lack name, domain" in run.stderr


@pytest.mark.parametrize("concurrency", [1, 4])
def test_strict_row_shape_fails_the_job_before_the_changed_page(server, run_tap, concurrency):
    job = tam_job(server, 250, "renamed_fields")
    other = tam_job(server, 150)
    config = base_config(
        server, tam_job_ids=[job, other], strict_row_shape=True, page_concurrency=concurrency
    )
    run = run_tap(config)
    assert run.returncode == 1
    assert "row shape has probably changed" in run.stderr
    assert job in run.stderr.splitlines()[-1]
    ranks = sorted(r["rank"] for r in run.records("tam_companies") if r["job_id"] == job)
    assert ranks == list(range(1, 101))
    assert len([r for r in run.records("tam_companies") if r["job_id"] == other]) == 150
    # State stays before the changed page: the next run starts from it again.
    partitions = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    (saved,) = [p for p in partitions if p["context"]["job_id"] == job]
    assert (saved["next_cursor"], saved["rows_read"]) == ("page_0001", 100)
    assert not saved.get("done")
    relaxed = run_tap(base_config(server, tam_job_ids=[job]), state=run.last_state)
    assert relaxed.returncode == 0, relaxed.stderr
    again = sorted(r["rank"] for r in relaxed.records("tam_companies") if r["job_id"] == job)
    assert again == list(range(101, 251))


def test_hostile_unknown_fields_are_kept_safely(tmp_path):
    odd = HostileJob(
        rows=120,
        row_values={
            "notes": f"call\x00 me: {API_KEY} \udc80",
            "deep": nested(60),
            "score": math.nan,
        },
        body_extra={"debug": {"echo": API_KEY}},
    )
    with HostileAPI({GOOD: HostileJob(), BAD: odd}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_clean(run)
    first = next(r for r in run.records("tam_companies") if r["job_id"] == BAD and r["rank"] == 1)
    extra = first["_extra"]
    assert extra["notes"] == "call me: *** \ufffd"
    assert extra["score"] is None
    assert depth_of(extra["deep"]) == MAX_KEPT_DEPTH - 1
    (job,) = [r for r in run.records("jobs") if r["job_id"] == BAD]
    assert job["_extra"] == {"debug": {"echo": "***"}}
    assert "1 value(s) of fields kept in _extra" in run.stderr
