"""Records: 64-bit integers, no null arrays, odd values coerced, any page shaped to the schema."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hostile import BAD, GOOD, HostileAPI, HostileJob, assert_clean, run_against
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from support import API_KEY, base_config, spec

from tap_openfunnel.exceptions import MalformedPageError
from tap_openfunnel.pagination import Page
from tap_openfunnel.records import INT64_MAX, INT64_MIN, RowShaper
from tap_openfunnel.streams import load_schema

SCHEMAS = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted((Path(__file__).resolve().parents[1] / "schemas").glob("*.json"))
}
FIELDS = [
    pytest.param(stream, name, prop, id=f"{stream}.{name}")
    for stream, schema in SCHEMAS.items()
    for name, prop in schema["properties"].items()
]


def types_of(prop: dict) -> list[str]:
    return [prop["type"]] if isinstance(prop["type"], str) else prop["type"]


@pytest.mark.parametrize(("stream", "name", "prop"), FIELDS)
def test_integers_are_bounded_to_64_bits_and_arrays_are_never_null(stream, name, prop):
    types = types_of(prop)
    if "integer" in types:
        # Without a maximum, target-duckdb creates HUGEINT (128-bit) columns.
        assert prop.get("maximum") == INT64_MAX
        assert INT64_MIN <= prop.get("minimum", INT64_MIN - 1) <= INT64_MAX
    if "array" in types:
        # A BigQuery REPEATED column takes no null: the row would be refused.
        assert types == ["array"]


def test_every_stream_has_an_integer_and_the_bounds_are_in_the_schemas():
    bounded = {
        stream
        for stream, schema in SCHEMAS.items()
        if any("maximum" in prop for prop in schema["properties"].values())
    }
    assert bounded == {"jobs", "tam_companies", "lookalike_companies"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(INT64_MAX, INT64_MAX, id="max"),
        pytest.param(INT64_MIN, INT64_MIN, id="min"),
        pytest.param(INT64_MAX + 1, None, id="above-max"),
        pytest.param(INT64_MIN - 1, None, id="below-min"),
        pytest.param(str(2**70), None, id="huge-string"),
        pytest.param(float(2**70), None, id="huge-float"),
        pytest.param("1,234", 1234, id="string-with-comma"),
        pytest.param(12.0, 12, id="whole-float"),
        pytest.param(True, None, id="bool-is-no-number"),
    ],
)
def test_integers_outside_64_bits_become_null(value, expected):
    shaper = RowShaper(SCHEMAS["tam_companies"])
    (record,) = shaper.records(
        [{"name": "Acme", "employee_count": value}], job_id="j", page="page_0000", first_rank=1
    )
    assert record["employee_count"] == expected
    assert type(record["employee_count"]) is type(expected)
    assert shaper.nulled == ({"employee_count": 1} if expected is None else {})


def test_out_of_range_integers_are_counted_in_the_per_job_warning(caplog):
    shaper = RowShaper(SCHEMAS["tam_companies"])
    rows = [{"match_score": 2**64}, {"match_score": -(2**64)}, {"match_score": 5}]
    records = list(shaper.records(rows, job_id="j", page="page_0000", first_rank=1))
    with caplog.at_level(logging.WARNING, logger="tap-openfunnel"):
        shaper.report("job-1")
    assert [r["match_score"] for r in records] == [None, None, 5]
    assert "Job job-1" in caplog.text
    assert "match_score x2" in caplog.text


@pytest.mark.parametrize(
    "row",
    [
        pytest.param({"name": "Acme"}, id="missing"),
        pytest.param({"name": "Acme", "industries": None}, id="null"),
        pytest.param({"name": "Acme", "industries": {"not": "a list"}}, id="unreadable"),
    ],
)
def test_a_null_or_missing_array_becomes_an_empty_list(row):
    shaper = RowShaper(SCHEMAS["tam_companies"])
    (record,) = shaper.records([row], job_id="j", page="page_0000", first_rank=1)
    assert record["industries"] == []
    assert record["employee_count"] is None  # scalars stay null


def test_jobs_records_carry_empty_lists_for_seed_domains():
    shaper = RowShaper(SCHEMAS["jobs"])
    record = shaper.conform(
        {"job_id": "j", "job_type": "tam_build", "resolved_seed_domains": None, "pages": 2**63}
    )
    assert record["resolved_seed_domains"] == []
    assert record["unresolved_seed_domains"] == []
    assert record["pages"] is None
    assert record["derived_query"] is None


def test_numbers_as_strings_are_coerced(server, run_tap):
    job = server.add_job(spec(quirks={"numbers_as_strings"}))
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    assert len(rows) == 250
    counts = [r["employee_count"] for r in rows if r["employee_count"] is not None]
    assert counts
    assert all(isinstance(value, int) for value in counts)
    assert isinstance(run.records("jobs")[0]["processed"], int)


def test_missing_and_extra_fields(server, run_tap):
    job = server.add_job(spec(quirks={"missing_fields", "extra_fields"}))
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    schema_fields = set(load_schema("tam_companies")["properties"])
    assert len(rows) == 250
    assert all(set(r) == schema_fields for r in rows)
    # Nothing the API sent is lost: the unknown fields ride along in _extra.
    assert all(set(r["_extra"]) == {"score_v2", "tags"} for r in rows)
    assert all(r["_extra"]["tags"][0] == "beta" for r in rows)
    assert "fields the schema does not name (score_v2, tags)" in run.stderr


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    # Any code point, lone surrogates and NUL included: what a broken server can send.
    st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
)


json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


TAM_SCHEMA = load_schema("tam_companies")


row_strategy = st.dictionaries(
    st.sampled_from([*TAM_SCHEMA["properties"], "zzz_extra", "rank"]), json_values, max_size=16
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "rows": st.one_of(
                st.lists(st.one_of(row_strategy, json_values), max_size=6), json_values
            ),
            "page": json_values,
            "next_cursor": json_values,
            "count": json_values,
        },
    )
)
def test_malformed_pages_never_crash_and_records_match_the_schema(body):
    try:
        page = Page.from_response(body)
    except MalformedPageError:
        # A clean failure of the job, for the two shapes that cannot be read at all.
        rows, cursor = body.get("rows"), body.get("next_cursor")
        assert not isinstance(rows, (list, type(None))) or not isinstance(cursor, (str, type(None)))
        return
    shaper = RowShaper(TAM_SCHEMA)
    records = list(
        shaper.records(page.rows, job_id="j", page=page.name or "page_0000", first_rank=1)
    )
    assert len(records) == len(page.rows)
    validator = Draft7Validator(TAM_SCHEMA)
    for index, record in enumerate(records, start=1):
        errors = [error.message for error in validator.iter_errors(record)]
        assert not errors, (record, errors)
        text = json.dumps(record, ensure_ascii=False)
        text.encode("utf-8")  # no lone surrogate survives
        assert "\x00" not in text
        assert record["rank"] == index


def test_odd_values_become_safe_records(tmp_path):
    odd = HostileJob(
        rows=120,
        text="Acme\ud800 \x00Corp",
        row_values={"industries": ["A\x00", None, "\udfff"], "employee_count": True},
        body_extra={"progress_message": f"done for {API_KEY}", "error_message": API_KEY},
        manifest_pages=True,  # not a count
    )
    with HostileAPI({GOOD: HostileJob(), BAD: odd}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_clean(run)
    first = next(r for r in run.records("tam_companies") if r["job_id"] == BAD and r["rank"] == 1)
    assert first["name"] == "Acme\ufffd Corp"
    assert first["industries"] == ["A", "\ufffd"]
    assert first["employee_count"] is None
    (job,) = [r for r in run.records("jobs") if r["job_id"] == BAD]
    assert job["progress_message"] == "done for ***"
    assert job["error_message"] == "***"
