"""Decoding answers from bytes: msgspec, the json fallback, and odd bodies being retried."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import API_KEY

from tap_openfunnel.api import BALANCE_PATH
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.decoding import UndecodableBodyError, decode_object, decode_page_fields
from tap_openfunnel.exceptions import MalformedPageError, RetriesExhaustedError
from tap_openfunnel.pagination import Page
from tap_openfunnel.records import RowShaper
from tap_openfunnel.retries import RetryPolicy
from tap_openfunnel.safe_values import clean_text
from tap_openfunnel.streams import load_schema


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b'{"rows": [{"name": "Acme"', "incomplete", id="cut-off"),
        pytest.param(b"", "incomplete", id="empty"),
        pytest.param(b"<html><body>Bad Gateway</body></html>", "incomplete", id="html"),
        pytest.param(b'[{"name": "Acme"}]', "non-object", id="array"),
        pytest.param(b'"page_0001"', "non-object", id="string"),
        pytest.param(b"null", "non-object", id="null"),
        pytest.param(b"42", "non-object", id="number"),
        pytest.param(b'{"rows": ' + b"[" * 100_000 + b"}", "incomplete", id="too-deep-and-cut"),
    ],
)
def test_odd_bodies_are_undecodable(raw, reason):
    for decode in (decode_object, decode_page_fields):
        with pytest.raises(UndecodableBodyError, match=reason):
            decode(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"a": NaN}', {"a": math.nan}, id="nan"),
        pytest.param(b'{"a": -Infinity}', {"a": -math.inf}, id="infinity"),
        pytest.param(b'{"a": 1e400}', {"a": math.inf}, id="beyond-float"),
        pytest.param(b'{"a": "\\ud800"}', {"a": "\ud800"}, id="lone-surrogate"),
        pytest.param('{"a": "é"}'.encode("utf-16"), {"a": "é"}, id="utf-16"),
        pytest.param(
            b'{"a": 123456789012345678901234567890}',
            {"a": 123456789012345678901234567890},
            id="bigint",
        ),
    ],
)
def test_what_json_accepts_is_still_accepted(raw, expected):
    """msgspec refuses these; the tap read them before msgspec and still does."""
    got = decode_object(raw)
    assert got.keys() == expected.keys()
    value, want = got["a"], expected["a"]
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(value)
    else:
        assert value == want
        assert type(value) is type(want)


def page_or_error(read):
    try:
        return read()
    except MalformedPageError as exc:
        return ("malformed", str(exc))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"rows": "oops", "page": "page_0001"}, id="rows-str"),
        pytest.param({"rows": {"a": 1}}, id="rows-object"),
        pytest.param({"rows": None, "next_cursor": ""}, id="rows-null"),
        pytest.param({}, id="empty-object"),
        pytest.param({"rows": [{"a": 1}, 3, None, {"b": [1.5]}], "page": 2}, id="mixed-rows"),
        pytest.param({"rows": [], "next_cursor": 7}, id="cursor-number"),
        pytest.param(
            {"status": "completed", "manifest": {"pages": 3}, "rows": [], "page": "page_0000"},
            id="poll-fields-skipped",
        ),
    ],
)
def test_odd_pages_decode_as_before(body):
    """The page read from bytes is the page (or the error) read from the decoded object."""
    raw = json.dumps(body).encode()
    assert page_or_error(lambda: Page.from_response(decode_page_fields(raw).body)) == page_or_error(
        lambda: Page.from_response(body)
    )


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "rows": st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=6)),
            "page": json_values,
            "next_cursor": json_values,
            "manifest": json_values,
        },
    )
)
def test_msgspec_reads_exactly_what_json_reads(body):
    raw = json.dumps(body).encode()
    page = page_or_error(lambda: Page.from_response(decode_page_fields(raw).body))
    assert page == page_or_error(lambda: Page.from_response(json.loads(raw)))
    # Same types too: an int stays an int and a float a float.
    assert repr(page) == repr(page_or_error(lambda: Page.from_response(json.loads(raw))))
    assert decode_object(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "bad", [pytest.param(b'{"credits_left": 1', id="cut-off"), pytest.param(b"[]", id="array")]
)
def test_a_prefetched_body_that_does_not_decode_is_fetched_again(server, bad, sleeps):
    client = OpenFunnelClient(
        api_url=server.url, api_key=API_KEY, retry=RetryPolicy(max_retries=3, max_wait=0.01)
    )
    got = client.get_decoded(BALANCE_PATH, None, decode_object, body=bad)
    assert "credits_left" in got
    # One failed attempt (the prefetched body), one retry that asked the server.
    assert len(sleeps) == 1
    assert server.request_count() == 1


def test_bodies_that_never_decode_exhaust_the_retries(server, sleeps):
    client = OpenFunnelClient(
        api_url=server.url, api_key=API_KEY, retry=RetryPolicy(max_retries=2, max_wait=0.01)
    )

    def never(raw: bytes) -> dict[str, object]:
        reason = "an incomplete JSON body"
        raise UndecodableBodyError(reason)

    with pytest.raises(RetriesExhaustedError, match="incomplete JSON body"):
        client.get_decoded(BALANCE_PATH, None, never)
    assert len(sleeps) == 2
    assert server.request_count() == 3


def test_get_bytes_does_not_decode(server):
    client = OpenFunnelClient(api_url=server.url, api_key=API_KEY)
    raw = client.get_bytes(BALANCE_PATH)
    assert isinstance(raw, bytes)
    assert "credits_left" in json.loads(raw)


@pytest.mark.parametrize(
    ("raw", "checked"),
    [
        pytest.param('{"rows": [{"name": "København"}]}'.encode(), True, id="utf-8"),
        pytest.param(b'{"rows": [{"name": "\\ud83d\\ude00"}]}', True, id="surrogate-pair"),
        pytest.param(b'{"rows": [{"name": "a\\u0000b"}]}', False, id="escaped-nul"),
        pytest.param(b'{"rows": [{"name": "\\ud800"}]}', False, id="lone-surrogate"),
        pytest.param(b'{"rows": [{"name": NaN}]}', False, id="json-fallback"),
    ],
)
def test_text_is_vouched_for_only_when_msgspec_proved_it_clean(raw, checked):
    fields = decode_page_fields(raw)
    assert fields.text_checked is checked
    if checked:
        name = fields.body["rows"][0]["name"]
        assert clean_text(name) == name


def test_records_are_the_same_with_and_without_the_text_check():
    schema = load_schema("tam_companies")
    rows = [
        {"name": "København ApS", "domain": "x.dk", "industries": ["Tøj", 3], "match_score": "7"},
        {"name": "Plain", "headquarters": "Zürich, ZH", "employee_count": 12.0},
        # Lists of strings are taken as they are only when every item is a string.
        {"name": "Lists", "industries": ["Retail", None, "Tøj"]},
        {"name": "Lists", "industries": ["Retail", ["nested"], {"a": 1}, 2.5, True]},
        {"name": "Lists", "industries": ["Retail", "Tøj"]},
        {"name": "Lists", "industries": []},
        {"name": "Lists", "industries": "Retail"},
        {"name": "Lists", "industries": None},
    ]
    raw = json.dumps({"rows": rows}, ensure_ascii=False).encode()
    fields = decode_page_fields(raw)
    assert fields.text_checked
    kwargs = {"job_id": "j", "page": "page_0000", "first_rank": 1}
    fast = list(RowShaper(schema).records(fields.body["rows"], text_checked=True, **kwargs))
    slow = list(RowShaper(schema).records(fields.body["rows"], **kwargs))
    assert fast == slow
    assert [record["industries"] for record in fast[2:]] == [
        ["Retail", "Tøj"],
        ["Retail", '["nested"]', '{"a": 1}', "2.5", "true"],
        ["Retail", "Tøj"],
        [],
        ["Retail"],
        [],
    ]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param(5, 5, id="int"),
        pytest.param(2**63 - 1, 2**63 - 1, id="int64-max"),
        pytest.param(-(2**63), -(2**63), id="int64-min"),
        pytest.param(2**63, None, id="above-int64"),
        pytest.param(-(2**63) - 1, None, id="below-int64"),
        pytest.param(True, None, id="bool"),
        pytest.param(12.0, 12, id="whole-float"),
        pytest.param("1,200", 1200, id="text"),
    ],
)
def test_integers_taken_as_is_only_within_64_bits(sent, kept):
    shaper = RowShaper(load_schema("tam_companies"))
    (record,) = shaper.records(
        [{"name": "A", "employee_count": sent}], job_id="j", page="page_0000", first_rank=1
    )
    assert record["employee_count"] == kept
    assert type(record["employee_count"]) is type(kept)
    assert shaper.nulled == ({"employee_count": 1} if kept is None else {})
