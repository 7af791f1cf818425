"""What every warehouse needs from the schemas and the records: 64-bit integers, no null arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tap_openfunnel.records import INT64_MAX, INT64_MIN, RowShaper

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
