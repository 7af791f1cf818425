"""`meltano run tap-openfunnel target-snowflake`, on fakesnow, with the block of docs/meltano.md."""

from __future__ import annotations

import json

import pytest
from e2e_support import describe, tap_env
from warehouse_support import (
    FakeSnowflake,
    api_rows,
    build_project,
    check_fakesnow_installed,
    null_counts,
    rerun_one_page_back,
)

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

LOADER = "target-snowflake"
SCHEMA = "OPENFUNNEL"  # default_target_schema in the doc's block
TAM_ROWS, LOOKALIKE_ROWS, PAGE_SIZE = 1234, 250, 100
SEARCH = {"seed_domains": ["datadoghq.com", "gone.example"], "limit": LOOKALIKE_ROWS}
TAM_NULLABLE = ("linkedin_url", "match_score", "employee_count", "hq_region", "funding_stage")


def test_meltano_run_loads_every_stream_into_snowflake(meltano, fake_api, tmp_path):
    check_fakesnow_installed()
    project = build_project(tmp_path / "project", LOADER, "target-snowflake-on-fakesnow")
    warehouse = FakeSnowflake(tmp_path / "fakesnow")
    warehouse.db_path.mkdir()
    tam = fake_api.add_job(JobSpec(kind="tam", rows=TAM_ROWS, page_size=PAGE_SIZE))
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[], lookalike_searches=[SEARCH]),
        # The doc's block reads these; the password is a sensitive setting.
        "SNOWFLAKE_ACCOUNT": "fakesnow",
        "SNOWFLAKE_USER": "loader",
        "SNOWFLAKE_DATABASE": warehouse.database,
        "SNOWFLAKE_WAREHOUSE": "LOADING",
        "TARGET_SNOWFLAKE_PASSWORD": "not-checked-by-fakesnow",
        "FAKESNOW_DB_PATH": str(warehouse.db_path),
    }

    first = meltano.run("run", "tap-openfunnel", LOADER, env=env, cwd=project)

    assert first.returncode == 0, describe(first)
    counts = table_counts(warehouse)
    assert counts == {
        "TAM_COMPANIES": TAM_ROWS,
        "LOOKALIKE_COMPANIES": LOOKALIKE_ROWS,
        "JOBS": 2,
        "CREDITS_BALANCE": 1,
    }, describe(first)

    # Resumed one page before the TAM job's end: re-sent pages merge, not add.
    rerun_one_page_back(meltano, project, env, fake_api, loader=LOADER, tam_job=tam)
    counts = table_counts(warehouse)
    assert counts["TAM_COMPANIES"] == TAM_ROWS
    assert counts["LOOKALIKE_COMPANIES"] == LOOKALIKE_ROWS
    assert counts["JOBS"] == 2
    assert counts["CREDITS_BALANCE"] == 2  # one balance per run, keyed on checked_at
    duplicates = warehouse.query(
        *(
            f"select count(*) from (select job_id, rank from {table} "  # noqa: S608
            "group by job_id, rank having count(*) > 1)"
            for table in ("TAM_COMPANIES", "LOOKALIKE_COMPANIES")
        ),
        schema=SCHEMA,
    )
    assert duplicates == [[[0]], [[0]]]

    types = column_types(warehouse)
    for table, column in [
        ("TAM_COMPANIES", "RANK"),
        ("TAM_COMPANIES", "EMPLOYEE_COUNT"),
        ("TAM_COMPANIES", "MATCH_SCORE"),
        ("LOOKALIKE_COMPANIES", "EMPLOYEE_COUNT"),
        ("JOBS", "PAGES"),
    ]:
        assert types[table][column] == "NUMBER(38,0)", (table, column, types[table])
    assert types["TAM_COMPANIES"]["INDUSTRIES"] == "VARIANT"
    assert types["JOBS"]["RESOLVED_SEED_DOMAINS"] == "VARIANT"
    # The free-form objects: the submitted request, the manifest, the fields kept aside.
    for table, column in [("JOBS", "REQUEST"), ("JOBS", "MANIFEST"), ("TAM_COMPANIES", "_EXTRA")]:
        assert types[table][column] == "VARIANT", (table, column, types[table])
    assert types["JOBS"]["TERMINAL_AT"].startswith("TIMESTAMP_NTZ")
    assert types["CREDITS_BALANCE"]["CHECKED_AT"].startswith("TIMESTAMP_NTZ")
    assert types["CREDITS_BALANCE"]["CREDITS_LEFT"] == "FLOAT"

    # Values and nulls as the API sent them: SQL NULL where it sent null, never 0 or 'null'.
    rows = api_rows(tam, "tam", TAM_ROWS)
    expected_nulls = null_counts(rows, TAM_NULLABLE)
    assert all(expected_nulls.values()), expected_nulls  # the data has nulls to check
    null_sql = ", ".join(f"count(*) - count({name})" for name in TAM_NULLABLE)
    tam_nulls, tam_sums, empty_lists, jobs = warehouse.query(
        f"select {null_sql} from TAM_COMPANIES",  # noqa: S608
        "select sum(employee_count), sum(match_score), sum(rank) from TAM_COMPANIES",
        "select count(*), count(industries), "
        "sum(case when array_size(industries) = 0 then 1 else 0 end) from TAM_COMPANIES",
        "select job_type, resolved_seed_domains, unresolved_seed_domains, request is null, "
        "typeof(request), query from JOBS order by job_type",
        schema=SCHEMA,
    )
    assert dict(zip(TAM_NULLABLE, tam_nulls[0], strict=True)) == expected_nulls
    assert tam_sums[0] == [
        sum(r["employee_count"] or 0 for r in rows),
        sum(r["match_score"] or 0 for r in rows),
        TAM_ROWS * (TAM_ROWS + 1) // 2,
    ]
    assert empty_lists[0] == [TAM_ROWS, TAM_ROWS, sum(not r["industries"] for r in rows)]
    (lookalike_job, tam_job) = jobs
    assert lookalike_job[0] == "lookalike_search"
    assert json.loads(lookalike_job[1]) == ["datadoghq.com"]
    assert json.loads(lookalike_job[2]) == ["gone.example"]
    assert lookalike_job[3] is False
    assert tam_job[0] == "tam_build"
    assert json.loads(tam_job[1]) == []  # an empty list, not null: no BigQuery refusal
    assert tam_job[3] is True  # a job given by id has no request: SQL NULL
    assert tam_job[5] is None


def table_counts(warehouse: FakeSnowflake) -> dict[str, int]:
    (tables,) = warehouse.query(
        "select table_name from information_schema.tables where table_schema = 'OPENFUNNEL'",
        schema=SCHEMA,
    )
    names = sorted(name for (name,) in tables)
    answers = warehouse.query(
        *(f"select count(*) from {name}" for name in names),  # noqa: S608
        schema=SCHEMA,
    )
    return {name: rows[0][0] for name, rows in zip(names, answers, strict=True)}


def column_types(warehouse: FakeSnowflake) -> dict[str, dict[str, str]]:
    tables = ("TAM_COMPANIES", "LOOKALIKE_COMPANIES", "JOBS", "CREDITS_BALANCE")
    answers = warehouse.query(*(f"describe table {t}" for t in tables), schema=SCHEMA)
    return {t: {row[0]: row[1] for row in rows} for t, rows in zip(tables, answers, strict=True)}
