"""Request fingerprints: every field the API bills on makes a new request, nothing else does."""

from __future__ import annotations

from typing import Any

import pytest
from support import (
    API_KEY,
)

from tap_openfunnel.entries import fingerprint as entry_fingerprint
from tap_openfunnel.entries import parse_entries
from tap_openfunnel.exceptions import ConfigurationError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.planner import Action, Planner
from tap_openfunnel.settings import Settings

STREAMS = {JobType.TAM: "tam_companies", JobType.LOOKALIKE: "lookalike_companies"}

SEARCH: dict[str, Any] = {
    "query": "developer tools for data teams",
    "seed_domains": ["dbt.com", "airbyte.com"],
    "limit": 300,
    "min_employees": 10,
    "max_employees": 500,
    "funding_stages": ["Seed", "Series A"],
    "locations": ["USA", "DEU"],
    "search_type": "semantic",
}

# One change per row; together they cover every field a search accepts.
CHANGES = [
    pytest.param("query", "developer tools for ML teams", id="query"),
    pytest.param("seed_domains", ["dbt.com"], id="seed_domains"),
    pytest.param("limit", 301, id="limit"),
    pytest.param("min_employees", 11, id="min_employees"),
    pytest.param("max_employees", 499, id="max_employees"),
    pytest.param("funding_stages", ["Seed"], id="funding_stages"),
    pytest.param("locations", ["USA", "FRA"], id="locations"),
    pytest.param("search_type", "agentic", id="search_type"),
    pytest.param("locations", None, id="locations-dropped"),
    pytest.param("limit", None, id="limit-dropped"),
]


def search_with(field: str, value: Any) -> dict[str, Any]:
    changed = {**SEARCH, field: value}
    return {key: item for key, item in changed.items() if item is not None}


def fingerprint(search: dict[str, Any]) -> str:
    return parse_entries([], [search])[0].fingerprint


def test_the_table_covers_every_field_a_search_accepts():
    accepted = set(SEARCH)
    with pytest.raises(ConfigurationError, match="is not accepted"):
        parse_entries([], [{**SEARCH, "not_a_field": 1}])
    assert {param.values[0] for param in CHANGES} == accepted
    # Every accepted field is sent, so it is what the API bills on.
    assert set(parse_entries([], [SEARCH])[0].body) == accepted


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_a_changed_field_is_a_new_request(field, value):
    assert fingerprint(search_with(field, value)) != fingerprint(SEARCH)


def test_each_change_is_a_request_of_its_own():
    prints = [fingerprint(search_with(*param.values)) for param in CHANGES]
    assert len(set(prints)) == len(prints)


@pytest.mark.parametrize(
    "same",
    [
        pytest.param(dict(reversed(SEARCH.items())), id="key-order"),
        pytest.param({**SEARCH, "locations": [" USA", "DEU "]}, id="padding"),
        pytest.param({**SEARCH, "query": f"  {SEARCH['query']} "}, id="query-padding"),
    ],
)
def test_what_the_api_never_sees_is_the_same_request(same):
    assert fingerprint(same) == fingerprint(SEARCH)


class Balance:
    def balance(self) -> dict[str, Any]:
        return {"credits_left": 1e9}


def plan_entry(search: dict[str, Any], remembered: str) -> tuple[Action, str]:
    settings = Settings.from_config(
        {"api_key": API_KEY, "api_url": "http://127.0.0.1:1", "lookalike_searches": [search]}
    )
    partition = {
        "context": {"job_id": "j-done"},
        "fingerprint": remembered,
        "submitted_at": "2026-11-30T00:00:00+00:00",
        "done": True,
    }
    states = {"lookalike_companies": [partition]}
    planner = Planner(settings, Balance(), STREAMS, lambda name: states.get(name, []))  # type: ignore[arg-type]
    job = planner.plan().jobs[0]
    return job.action, job.reason


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_the_planner_submits_an_entry_whose_only_change_is_one_field(field, value):
    remembered = fingerprint(SEARCH)
    assert plan_entry(SEARCH, remembered)[0] is Action.SKIP
    action, reason = plan_entry(search_with(field, value), remembered)
    assert (action, reason) == (Action.SUBMIT, "new entry")


def test_a_tam_build_is_its_query():
    base = parse_entries([{"query": "observability"}], [])[0]
    assert parse_entries([{"query": " observability "}], [])[0].fingerprint == base.fingerprint
    assert parse_entries([{"query": "observability EU"}], [])[0].fingerprint != base.fingerprint


def test_fingerprint_ignores_key_order_but_not_values():
    a = parse_entries([], [{"query": "q", "limit": 5}])[0]
    b = parse_entries([], [{"limit": 5, "query": "q"}])[0]
    c = parse_entries([], [{"limit": 6, "query": "q"}])[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.fingerprint != entry_fingerprint(a.job_type.TAM, a.body)
    with pytest.raises(ConfigurationError):
        parse_entries(["not an object"], [])
