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

from tap_openfunnel.decoding import decode_page_fields
from tap_openfunnel.exceptions import MalformedPageError
from tap_openfunnel.pagination import Page
from tap_openfunnel.records import INT64_MAX, INT64_MIN, RowShaper
from tap_openfunnel.streams import load_schema
from tap_openfunnel.values import kind_of

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


# A clean row of tam_companies, every field of its schema type.
CLEAN = {
    "name": "Acme",
    "domain": "acme.io",
    "linkedin_url": "https://www.linkedin.com/company/acme",
    "headquarters": "Zürich, ZH, Switzerland",
    "match_reason": 'Says "observability"\nand 🚀',
    "match_score": 88,
    "source_band": "51-200",
    "source_query": "observability",
    "employee_count": 120,
    "funding_stage": "Series A",
    "industries": ["DevOps", "SaaS"],
    "hq_city": "Zürich",
    "hq_region": "ZH",
    "hq_country": "Switzerland",
}


def clean(**changes: object) -> dict[str, object]:
    row = dict(CLEAN, **changes)
    return {name: value for name, value in row.items() if value is not DROP}


DROP = object()

# (rows of one page, whether they are taken as sent). Every row of a page must be for
# the page to be: one odd row sends the whole page value by value.
PAGES = [
    pytest.param([CLEAN] * 3, True, id="clean"),
    pytest.param([clean(match_score=None, industries=None, name=None)], True, id="nulls"),
    pytest.param([clean(industries=DROP, hq_city=DROP)], True, id="missing-fields"),
    pytest.param([{}], True, id="empty-row"),
    pytest.param([clean(industries=[])], True, id="empty-list"),
    pytest.param([clean(match_score=INT64_MAX, employee_count=INT64_MIN)], True, id="int64-ends"),
    pytest.param([CLEAN, clean(match_score=INT64_MAX + 1)], False, id="above-int64"),
    pytest.param([clean(employee_count=INT64_MIN - 1)], False, id="below-int64"),
    pytest.param([clean(employee_count=2**64)], False, id="beyond-uint64"),
    pytest.param([clean(match_score=True)], False, id="bool-for-int"),
    pytest.param([clean(match_score=12.0)], False, id="float-for-int"),
    pytest.param([clean(match_score=12.5)], False, id="fraction-for-int"),
    pytest.param([clean(employee_count="1,200")], False, id="text-for-int"),
    pytest.param([clean(name=5)], False, id="int-for-text"),
    pytest.param([clean(name=False)], False, id="bool-for-text"),
    pytest.param([clean(name={"a": [1]})], False, id="object-for-text"),
    pytest.param([clean(name=["a"])], False, id="list-for-text"),
    pytest.param([clean(industries=["a", None])], False, id="null-in-list"),
    pytest.param([clean(industries=["a", 2, {"b": 1}])], False, id="non-text-in-list"),
    pytest.param([clean(industries="SaaS")], False, id="text-for-list"),
    pytest.param([clean(industries={"a": 1})], False, id="object-for-list"),
    pytest.param([CLEAN, clean(founded=1999)], False, id="unknown-field"),
    pytest.param([clean(rank=7, job_id="x", page="p")], False, id="added-field-names"),
    pytest.param([clean(_extra={"a": 1})], False, id="extra-sent"),
    pytest.param([clean(deep=[[[[["x" * 50]]]]])], False, id="unknown-nested"),
    pytest.param([{"domain": "only.io"}, {"domain": "b.io"}], True, id="changed-shape"),
    pytest.param([clean(funding_stage=DROP, name=DROP)] * 2 + [CLEAN], True, id="shape-minority"),
]


def shaped(schema: dict, rows: list, *, as_sent: bool, text_checked: bool = True) -> tuple:
    """Records (items in order) and every counter, with or without the as-sent path."""
    shaper = RowShaper(schema)
    if not as_sent:
        shaper.taken_as_sent = lambda _: False  # type: ignore[method-assign]
    records = shaper.records(
        rows, job_id="j", page="page_0003", first_rank=201, text_checked=text_checked
    )
    items = [list(record.items()) for record in records]
    return items, shaper.nulled, shaper.unknown_fields, shaper.dropped_kept


def decoded(rows: list) -> list:
    """Rows as the decoder hands them over, with their text vouched for."""
    fields = decode_page_fields(json.dumps({"rows": rows}, ensure_ascii=False).encode())
    assert fields.text_checked
    return fields.body["rows"]


def schema_of(stream: str, *, keep: bool) -> dict:
    schema = json.loads(json.dumps(SCHEMAS[stream]))
    if not keep:
        del schema["properties"]["_extra"]
    return schema


@pytest.mark.parametrize("keep", [True, False], ids=["keep-unknown", "drop-unknown"])
@pytest.mark.parametrize(("rows", "as_sent"), PAGES)
def test_rows_taken_as_sent_make_the_same_records_as_value_by_value(keep, rows, as_sent):
    """The as-sent path (one check per page, in C) and the value-by-value path give the
    same records, key order included, and count the same; odd rows never take it."""
    schema = schema_of("tam_companies", keep=keep)
    rows = decoded(rows)
    assert RowShaper(schema).taken_as_sent(rows) is as_sent
    assert shaped(schema, rows, as_sent=True) == shaped(schema, rows, as_sent=False)


@pytest.mark.parametrize(
    ("row", "as_sent"),
    [
        pytest.param(
            {"name": "A", "company_size": "51-200", "employee_count": 3}, True, id="clean"
        ),
        pytest.param({"name": "A", "industries": ["SaaS"]}, False, id="tam-field"),
        pytest.param({"name": "A", "employee_count": "3"}, False, id="text-for-int"),
    ],
)
def test_lookalike_rows_take_the_as_sent_path_by_their_own_schema(row, as_sent):
    schema = schema_of("lookalike_companies", keep=True)
    rows = decoded([row])
    assert RowShaper(schema).taken_as_sent(rows) is as_sent
    assert shaped(schema, rows, as_sent=True) == shaped(schema, rows, as_sent=False)


def test_field_names_that_are_no_python_names_take_the_as_sent_path_too():
    properties = {name: {"type": ["string", "null"]} for name in ("hq-city", "class", "field_0")}
    shaper = RowShaper({"properties": properties})
    rows = [{"hq-city": "Oslo", "class": "B", "field_0": "x"}, {"hq-city": None}]
    assert shaper.taken_as_sent(rows)
    assert not shaper.taken_as_sent([{"field_1": "x"}])
    assert shaped({"properties": properties}, rows, as_sent=True) == shaped(
        {"properties": properties}, rows, as_sent=False
    )


def test_a_schema_type_without_an_as_sent_check_always_goes_value_by_value():
    properties = {"job_id": {"type": "string"}, "name": {"type": ["string", "null"]}}
    typed = RowShaper({"properties": properties})
    assert typed.taken_as_sent([{"name": "a"}])
    untyped = RowShaper({"properties": {**properties, "blob": {"type": ["object", "null"]}}})
    assert not untyped.taken_as_sent([{"name": "a"}])


@pytest.mark.parametrize(
    ("kind", "value", "as_sent"),
    [
        pytest.param("number", 5, True, id="number-int"),
        pytest.param("number", 2.5, True, id="number-float"),
        pytest.param("number", 2**70, True, id="number-huge-int"),
        pytest.param("number", True, False, id="number-bool"),
        pytest.param("number", "2.5", False, id="number-text"),
        pytest.param("boolean", True, True, id="boolean"),
        pytest.param("boolean", 1, False, id="boolean-int"),
        pytest.param("boolean", "true", False, id="boolean-text"),
    ],
)
def test_numbers_and_booleans_taken_as_sent_are_what_coercion_keeps(kind, value, as_sent):
    schema = {"properties": {"rank": {"type": "integer"}, "v": {"type": [kind, "null"]}}}
    rows = [{"v": value}]
    assert RowShaper(schema).taken_as_sent(rows) is as_sent
    assert shaped(schema, rows, as_sent=True) == shaped(schema, rows, as_sent=False)


TEXT = st.text(max_size=6) | st.sampled_from(["Acme", "Zürich", "🚀", "a\x00b", "\ud800"])
ODD = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
# Mostly values of the schema type (so whole pages take the as-sent path), sometimes not.
AS_TYPED = {
    "string": TEXT,
    "integer": st.sampled_from([0, 7, INT64_MAX, INT64_MIN, INT64_MAX + 1, INT64_MIN - 1])
    | st.integers(INT64_MIN - 2, INT64_MAX + 2),
    "array": st.lists(TEXT, max_size=3),
}
TAM_ROW = st.fixed_dictionaries(
    {},
    optional={
        **{
            name: st.one_of(
                AS_TYPED[kind_of(prop)], AS_TYPED[kind_of(prop)], AS_TYPED[kind_of(prop)], ODD
            )
            for name, prop in SCHEMAS["tam_companies"]["properties"].items()
            if name not in {"job_id", "page", "rank", "_extra"}
        },
        "founded": ODD,
        "rank": ODD,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.lists(TAM_ROW | st.just({}), max_size=5), st.booleans())
def test_any_decoded_page_gives_the_same_records_through_either_path(rows, keep):
    """Whatever a page holds, after the real decoder, both paths agree."""
    raw = json.dumps({"rows": rows}).encode()
    fields = decode_page_fields(raw)
    decoded_rows = [row for row in fields.body["rows"] if isinstance(row, dict)]
    schema = schema_of("tam_companies", keep=keep)
    checked = fields.text_checked
    assert shaped(schema, decoded_rows, as_sent=True, text_checked=checked) == shaped(
        schema, decoded_rows, as_sent=False, text_checked=checked
    )


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


@pytest.mark.parametrize(
    ("sent", "text"),
    [
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(12, "12", id="int"),
        pytest.param(2.5, "2.5", id="float"),
        pytest.param({"a": [1, None]}, '{"a": [1, null]}', id="object"),
        pytest.param("Tøj", "Tøj", id="text"),
    ],
)
def test_a_value_in_a_text_column_lands_as_its_json_text(sent, text):
    """A value of another JSON type in a string column, or in a list of strings, lands
    as a reader of the API would write it (``true``, ``null``), not as Python's text."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"]},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        },
    }
    (record,) = RowShaper(schema).records(
        [{"name": sent, "tags": [sent, None, "x"]}], job_id="j", page="page_0000", first_rank=1
    )
    assert (record["name"], record["tags"]) == (text, [text, "x"])
