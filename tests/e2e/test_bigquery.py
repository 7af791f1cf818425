"""`meltano run tap-openfunnel target-bigquery` on local-bigquery, from docs/meltano.md's block."""

from __future__ import annotations

import pytest
from e2e_support import INTEGER_COLUMNS, describe, tap_env
from warehouse_support import (
    api_rows,
    bigquery_emulator,
    build_project,
    null_counts,
    rerun_one_page_back,
)

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

LOADER = "target-bigquery"
DATASET = "openfunnel"  # dataset in the doc's block
TAM_ROWS, LOOKALIKE_ROWS, PAGE_SIZE = 1234, 250, 100
SEARCH = {"seed_domains": ["datadoghq.com", "gone.example"], "limit": LOOKALIKE_ROWS}
TAM_NULLABLE = ("linkedin_url", "match_score", "employee_count", "hq_region", "funding_stage")
TABLES = ("tam_companies", "lookalike_companies", "jobs", "credits_balance")


@pytest.fixture
def bigquery(tmp_path):
    with bigquery_emulator(tmp_path / "bigquery") as emulator:
        yield emulator


@pytest.mark.parametrize(
    "method_override",
    [
        # The doc's block as it is: load jobs.
        pytest.param({}, id="batch_job"),
        # Streaming inserts refuse, row by row and with the target exiting 0, a null in a
        # REPEATED column, where load jobs take it as an empty list: this is where a null
        # array of ours (the jobs stream's seed domains) left the jobs table empty.
        pytest.param({"TARGET_BIGQUERY_METHOD": "streaming_insert"}, id="streaming_insert"),
    ],
)
def test_meltano_run_loads_every_stream_into_bigquery(
    meltano, fake_api, bigquery, tmp_path, method_override
):
    project = build_project(tmp_path / "project", LOADER, "target-bigquery-on-emulator")
    tam = fake_api.add_job(JobSpec(kind="tam", rows=TAM_ROWS, page_size=PAGE_SIZE))
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[], lookalike_searches=[SEARCH]),
        # The doc's block reads GCP_PROJECT; the wrapper replaces the credentials.
        "GCP_PROJECT": bigquery.project,
        **bigquery.target_env,
        **method_override,
    }

    first = meltano.run("run", "tap-openfunnel", LOADER, env=env, cwd=project)

    assert first.returncode == 0, describe(first)
    # The target exits 0 even when BigQuery refused every row: count them there.
    assert table_counts(bigquery) == {
        "tam_companies": TAM_ROWS,
        "lookalike_companies": LOOKALIKE_ROWS,
        "jobs": 2,
        "credits_balance": 1,
    }, describe(first)

    # Resumed one page before the TAM job's end: re-sent pages merge, not add.
    second = rerun_one_page_back(meltano, project, env, fake_api, loader=LOADER, tam_job=tam)
    assert table_counts(bigquery) == {
        "tam_companies": TAM_ROWS,
        "lookalike_companies": LOOKALIKE_ROWS,
        "jobs": 2,
        "credits_balance": 2,  # one balance per run, keyed on checked_at
    }, describe(second)
    # Values and nulls as the API sent them: NULL where it sent null, never 0 or 'null'.
    rows = api_rows(tam, "tam", TAM_ROWS)
    expected_nulls = null_counts(rows, TAM_NULLABLE)
    assert all(expected_nulls.values()), expected_nulls  # the data has nulls to check
    null_sql = ", ".join(f"countif({name} is null)" for name in TAM_NULLABLE)
    # One helper process for every question: each one starts a BigQuery client.
    *schemas, tam_duplicates, lookalike_duplicates, tam_nulls, tam_sums, empty_lists, jobs = (
        bigquery.ask(
            *({"table": f"{DATASET}.{table}"} for table in TABLES),
            *(
                {
                    "sql": f"select count(*) from (select job_id, `rank` from {DATASET}.{table} "  # noqa: S608
                    "group by job_id, `rank` having count(*) > 1)"
                }
                for table in ("tam_companies", "lookalike_companies")
            ),
            {"sql": f"select {null_sql} from {DATASET}.tam_companies"},  # noqa: S608
            {
                "sql": "select sum(employee_count), sum(match_score), sum(`rank`) "  # noqa: S608
                f"from {DATASET}.tam_companies"
            },
            {
                "sql": "select count(*), countif(array_length(industries) = 0) "  # noqa: S608
                f"from {DATASET}.tam_companies"
            },
            {
                "sql": "select job_type, resolved_seed_domains, unresolved_seed_domains, "  # noqa: S608
                f"request is null, query from {DATASET}.jobs order by job_type"
            },
        )
    )
    assert (tam_duplicates, lookalike_duplicates) == ([[0]], [[0]])

    columns = {
        table: {name: (kind, mode) for name, kind, mode in schema}
        for table, schema in zip(TABLES, schemas, strict=True)
    }
    for table, column in INTEGER_COLUMNS:
        # INTEGER is INT64; not NUMERIC or BIGNUMERIC, not STRING.
        assert columns[table][column][0] == "INTEGER", (table, columns[table])
    assert columns["tam_companies"]["industries"] == ("STRING", "REPEATED")
    assert columns["jobs"]["resolved_seed_domains"] == ("STRING", "REPEATED")
    # The free-form objects: the submitted request, the manifest, the fields kept aside.
    for table, column in [("jobs", "request"), ("jobs", "manifest"), ("tam_companies", "_extra")]:
        assert columns[table][column][0] == "JSON", (table, column, columns[table])
    assert columns["jobs"]["terminal_at"][0] == "TIMESTAMP"
    assert columns["credits_balance"]["checked_at"][0] == "TIMESTAMP"
    assert columns["credits_balance"]["credits_left"][0] == "FLOAT"

    assert dict(zip(TAM_NULLABLE, tam_nulls[0], strict=True)) == expected_nulls
    assert tam_sums[0] == [
        sum(r["employee_count"] or 0 for r in rows),
        sum(r["match_score"] or 0 for r in rows),
        TAM_ROWS * (TAM_ROWS + 1) // 2,
    ]
    assert empty_lists[0] == [TAM_ROWS, sum(not r["industries"] for r in rows)]
    (lookalike_job, tam_job) = jobs
    assert lookalike_job[:4] == ["lookalike_search", ["datadoghq.com"], ["gone.example"], False]
    assert tam_job == ["tam_build", [], [], True, None]


def table_counts(bigquery) -> dict[str, int]:
    answers = bigquery.query(
        *(f"select count(*) from {DATASET}.{table}" for table in TABLES)  # noqa: S608
    )
    return {table: rows[0][0] for table, rows in zip(TABLES, answers, strict=True)}
