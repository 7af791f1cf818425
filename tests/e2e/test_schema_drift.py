"""Schema drift through `meltano run`: unknown fields land as JSON in PostgreSQL and DuckDB."""

from __future__ import annotations

import json
import subprocess

import pytest
from e2e_support import DUCKDB_PYTHON, describe, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

ROWS = 250


def column_type(db, table: str, column: str) -> str:
    sql = (
        "SELECT data_type FROM information_schema.columns WHERE "  # noqa: S608 - the test's own names
        f"table_schema = '{db.schema}' AND table_name = '{table}' AND column_name = '{column}'"
    )
    return db.query(sql)


def test_unknown_fields_land_as_queryable_jsonb(meltano, fake_api, pg_database):
    # Every row has two unknown fields; from row 126 on, name and domain are renamed;
    # the manifest and the poll answer carry fields the jobs schema does not name.
    tam = fake_api.add_job(
        JobSpec(
            kind="tam",
            rows=ROWS,
            quirks=frozenset({"extra_fields", "renamed_fields", "new_manifest_field"}),
        )
    )
    lookalike = fake_api.add_job(JobSpec(kind="lookalike", rows=120))
    env = {**tap_env(fake_api, tam=[tam], lookalike=[lookalike]), **pg_database.target_env}

    result = meltano.run("run", "tap-openfunnel", "target-postgres", env=env)

    assert result.returncode == 0, describe(result)
    db = pg_database
    tam_table, jobs_table = db.table("tam_companies"), db.table("jobs")
    for table in ("tam_companies", "lookalike_companies", "jobs"):
        assert column_type(db, table, "_extra") == "jsonb", table
    assert column_type(db, "jobs", "manifest") == "jsonb"
    assert db.count("tam_companies") == ROWS
    # JSON objects, not text holding JSON: the fields can be queried directly.
    assert db.query(f"SELECT DISTINCT jsonb_typeof(_extra) FROM {tam_table}") == "object"  # noqa: S608
    assert db.query(
        f"SELECT count(*) FROM {tam_table} WHERE (_extra->>'score_v2')::numeric BETWEEN 0 AND 1"  # noqa: S608
    ) == str(ROWS)
    assert (
        db.query(
            f"SELECT DISTINCT _extra->'tags'->>0 FROM {tam_table}"  # noqa: S608
        )
        == "beta"
    )
    # The renamed fields are kept: the company names can be recovered in SQL.
    renamed = db.query(
        f"SELECT count(*) FROM {tam_table} WHERE name IS NULL AND _extra->>'company_name' <> ''"  # noqa: S608
    )
    assert renamed == str(ROWS // 2)
    recovered = db.query(
        f"SELECT count(DISTINCT coalesce(name, _extra->>'company_name') || '|' "  # noqa: S608
        f"|| coalesce(domain, _extra->>'website')) FROM {tam_table}"
    )
    assert recovered == str(ROWS)
    # Rows without unknown fields: target-postgres (SQLAlchemy's JSONB) stores the null
    # as the JSON value null, not SQL NULL, so docs/schema-drift.md filters on the type.
    assert (
        db.query(
            f"SELECT count(*) FROM {db.table('lookalike_companies')} "  # noqa: S608
            "WHERE jsonb_typeof(_extra) = 'null' AND _extra->>'score_v2' IS NULL"
        )
        == "120"
    )
    # The whole manifest, its new field included, and the poll answer's unknown fields.
    assert (
        db.query(
            f"SELECT manifest->>'credits_refunded', manifest->>'unique_count', "  # noqa: S608
            f"_extra->>'request_id' LIKE 'req_%' FROM {jobs_table} WHERE job_id = '{tam}'"
        )
        == f"7|{ROWS}|t"
    )


# Run by the target-duckdb plugin's own Python, which has duckdb 1.2.2.
DUCKDB_QUERY = """
import json, sys
import duckdb
db = duckdb.connect(sys.argv[1], read_only=True)
def one(sql):
    return db.execute(sql).fetchall()[0]
print(json.dumps({
    "types": sorted(db.execute(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
        "WHERE column_name IN ('_extra', 'manifest')").fetchall()),
    "tam": one("SELECT count(*), count(_extra), "
               "count(json_extract_string(_extra, '$.company_name')) "
               "FROM openfunnel.tam_companies"),
    "lookalike": one("SELECT count(*), count(_extra) FROM openfunnel.lookalike_companies"),
    "refunded": one("SELECT json_extract_string(manifest, '$.credits_refunded') "
                    "FROM openfunnel.jobs WHERE job_type = 'lookalike_search'")[0],
}))
"""


def test_unknown_fields_land_as_json_in_duckdb(meltano, fake_api, tmp_path):
    tam = fake_api.add_job(
        JobSpec(kind="tam", rows=ROWS, quirks=frozenset({"extra_fields", "renamed_fields"}))
    )
    lookalike = fake_api.add_job(JobSpec(kind="lookalike", rows=120, quirks={"new_manifest_field"}))
    database = tmp_path / "drift.duckdb"
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[lookalike]),
        "TARGET_DUCKDB_FILEPATH": str(database),
    }

    result = meltano.run("run", "tap-openfunnel", "target-duckdb", env=env)

    assert result.returncode == 0, describe(result)
    query = subprocess.run(
        [str(DUCKDB_PYTHON), "-c", DUCKDB_QUERY, str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert query.returncode == 0, query.stderr
    found = json.loads(query.stdout)
    assert found["types"] == [
        ["jobs._extra", "JSON"],
        ["jobs.manifest", "JSON"],
        ["lookalike_companies._extra", "JSON"],
        ["tam_companies._extra", "JSON"],
    ]
    assert found["tam"] == [ROWS, ROWS, ROWS // 2]
    # Unlike target-postgres, target-duckdb writes a null object as SQL NULL.
    assert found["lookalike"] == [120, 0]
    assert found["refunded"] == "7"
