"""Job families as data: each descriptor is complete, and the tap is built from the list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import API_KEY

from tap_openfunnel.entries import parse_entries
from tap_openfunnel.families import FAMILIES, LOOKALIKE, MAX_LOOKALIKE_LIMIT, TAM, settings_text
from tap_openfunnel.jobs import JobSnapshot
from tap_openfunnel.outcomes import row_count_mismatch
from tap_openfunnel.settings import CONFIG_SCHEMA
from tap_openfunnel.streams import CompanyStream
from tap_openfunnel.tap import TapOpenFunnel

ROOT = Path(__file__).resolve().parent.parent
EACH = [pytest.param(family, id=family.job_type.value) for family in FAMILIES]


@pytest.mark.parametrize("family", EACH)
def test_each_family_has_its_schema_file_settings_and_stream(family):
    schema = json.loads((ROOT / "schemas" / f"{family.stream_name}.json").read_text())
    assert {"job_id", "rank"} <= set(schema["properties"])
    settings = set(CONFIG_SCHEMA["properties"])
    assert {family.ids_setting, family.entries_setting} <= settings

    tap = TapOpenFunnel(config={"api_key": API_KEY}, parse_env_config=False)
    stream = tap.streams[family.stream_name]
    assert isinstance(stream, CompanyStream)
    assert stream.job_type is family.job_type
    assert stream.schema["properties"].keys() >= {"job_id", "rank"}


def test_the_jobs_stream_names_every_family_and_no_other():
    schema = json.loads((ROOT / "schemas" / "jobs.json").read_text())
    named = schema["properties"]["job_type"]["enum"]
    assert sorted(named) == sorted(family.job_type.value for family in FAMILIES)


def test_the_tap_has_one_company_stream_per_family_and_no_other():
    tap = TapOpenFunnel(config={"api_key": API_KEY}, parse_env_config=False)
    company = [name for name, s in tap.streams.items() if isinstance(s, CompanyStream)]
    assert sorted(company) == sorted(family.stream_name for family in FAMILIES)


@pytest.mark.parametrize(
    "key", ["job_type", "path", "stream_name", "ids_setting", "entries_setting", "label"]
)
def test_no_two_families_share_a_key(key):
    # A descriptor copied for a new family and not fully edited would send its jobs
    # or rows to another family's endpoint, setting or stream.
    values = [getattr(family, key) for family in FAMILIES]
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    ("tam_builds", "lookalike_searches", "worst"),
    [
        pytest.param([{"query": "observability"}], [], None, id="tam-unbounded"),
        pytest.param([], [{"query": "q", "limit": 250}], 250.0, id="search-limit"),
        pytest.param([], [{"query": "q"}], float(MAX_LOOKALIKE_LIMIT), id="search-no-limit"),
    ],
)
def test_an_entrys_worst_case_follows_its_familys_size_field(tam_builds, lookalike_searches, worst):
    (entry,) = parse_entries(tam_builds, lookalike_searches)
    assert entry.worst_case_credits == worst


@pytest.mark.parametrize(
    ("family", "key", "other"),
    [
        # A TAM build's manifest counts companies once across bands (unique_count).
        pytest.param(TAM, "unique_count", "count", id="tam"),
        pytest.param(LOOKALIKE, "count", "unique_count", id="lookalike"),
    ],
)
def test_rows_are_checked_against_the_familys_manifest_count(family, key, other):
    manifest = {key: 3, other: 99}
    done = JobSnapshot("j", family.job_type, "completed", {"manifest": manifest})
    assert row_count_mismatch(done, 3) is None
    mismatch = row_count_mismatch(done, 4)
    assert mismatch is not None
    assert f"manifest's {key} says 3" in mismatch


@pytest.mark.parametrize(
    ("setting", "family"),
    [
        pytest.param("tam_builds", TAM, id="tam"),
        pytest.param("lookalike_searches", LOOKALIKE, id="lookalike"),
    ],
)
def test_entries_take_their_family_from_their_setting(setting, family):
    configured = [[], []]
    configured[FAMILIES.index(family)] = [{"query": "q"}]
    (entry,) = parse_entries(*configured)
    assert entry.setting == setting
    assert entry.job_type is family.job_type


def test_messages_that_name_every_family_list_them_all():
    assert settings_text("ids", " / ") == "'tam_job_ids' / 'lookalike_job_ids'"
    assert settings_text("entries", " / ", quote=False) == "tam_builds / lookalike_searches"


def test_no_module_outside_the_descriptors_branches_on_a_family():
    # The point of families.py: a new family is a descriptor, not a hunt for branches.
    branch = re.compile(r"JobType\.(TAM|LOOKALIKE)\b")
    found = [
        f"{path.name}:{number}"
        for path in sorted((ROOT / "tap_openfunnel").glob("*.py"))
        if path.name != "families.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []
