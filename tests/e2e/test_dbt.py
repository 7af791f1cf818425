"""The dbt models of transform/ on what Meltano loaded: two refreshes of one entry, compared.

One tam_builds entry is submitted, then refreshed (refresh_after 0 days), beside a TAM
job id from config whose rows lack some domains; `meltano invoke dbt-<warehouse> build`
then builds the models and runs their dbt tests. The added and dropped companies, the
current market and the spend are checked exactly against the rows the tap loaded.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import pytest
from e2e_support import DUCKDB_PYTHON, PROJECT_ROOT, describe, tap_env

from openfunnel_sandbox import JobSpec
from tap_openfunnel.entries import parse_entries

pytestmark = pytest.mark.e2e

ENTRY = {"query": "observability vendors in Europe"}
ROWS, DRIFT, CONFIG_ROWS = 300, 40, 120
DBT = {
    "duckdb": PROJECT_ROOT / ".meltano/utilities/dbt-duckdb/venv/bin/dbt",
    "postgres": PROJECT_ROOT / ".meltano/utilities/dbt-postgres/venv/bin/dbt",
}


class DuckDBWarehouse:
    """A DuckDB file that target-duckdb writes, dbt-duckdb builds on and target-duckdb reads."""

    def __init__(self, path) -> None:
        self.path = path
        self.target_env = {"TARGET_DUCKDB_FILEPATH": str(path)}
        self.dbt_env = {"DBT_DUCKDB_PATH": str(path)}

    def rows(self, sql: str) -> list[tuple]:
        script = (
            "import duckdb, json, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
            "print(json.dumps(con.execute(sys.argv[2]).fetchall(), default=str))"
        )
        result = subprocess.run(
            [str(DUCKDB_PYTHON), "-c", script, str(self.path), sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return [tuple(row) for row in json.loads(result.stdout)]


class PostgresWarehouse:
    """One test database of the throwaway cluster."""

    def __init__(self, database) -> None:
        self.database = database
        self.target_env = database.target_env
        cluster = database.cluster
        self.dbt_env = {
            "DBT_POSTGRES_HOST": cluster.host,
            "DBT_POSTGRES_PORT": str(cluster.port),
            "DBT_POSTGRES_USER": cluster.user,
            "DBT_POSTGRES_PASSWORD": "unused-with-trust-auth",
            "DBT_POSTGRES_DBNAME": database.name,
        }

    def rows(self, sql: str) -> list[tuple]:
        # Unaligned psql output; none of the values read here holds a '|'.
        text = self.database.query(sql)
        return [
            tuple(None if v == "" else v for v in line.split("|")) for line in text.splitlines()
        ]


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request, tmp_path):
    if request.param == "duckdb":
        return "duckdb", DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    return "postgres", PostgresWarehouse(request.getfixturevalue("pg_database"))


def company_key(domain: str | None, name: str | None) -> str | None:
    """The models' identity of a company, computed here from the loaded rows."""
    if domain and domain.strip():
        return domain.strip().lower()
    if name and name.strip():
        return "name:" + name.strip().lower()
    return None


def test_models_compare_two_refreshes_of_one_entry(meltano, fake_api, warehouse):
    kind, target = warehouse
    if not DBT[kind].is_file():
        pytest.fail(f"dbt-{kind} is not installed: run `make install`.", pytrace=False)
    # Refreshes of one request share most companies: DRIFT dropped, DRIFT added.
    fake_api.submit_defaults["tam"] = JobSpec(kind="tam", rows=ROWS, refresh_drift=DRIFT)
    # A job id from config, its own entry; some rows lack a domain (matched by name).
    config_job = fake_api.add_job(
        JobSpec(kind="tam", rows=CONFIG_ROWS, quirks=frozenset({"missing_fields"}))
    )
    env = {
        **tap_env(fake_api, tam=[config_job], lookalike=[], tam_builds=[ENTRY]),
        **target.target_env,
    }
    loader = f"target-{kind}"
    first = meltano.run("run", "tap-openfunnel", loader, env=env)
    assert first.returncode == 0, describe(first)
    refresh = meltano.run(
        "run", "tap-openfunnel", loader, env={**env, "TAP_OPENFUNNEL_REFRESH_AFTER": "0"}
    )
    assert refresh.returncode == 0, describe(refresh)
    assert fake_api.submit_count("tam") == 2

    build = meltano.run("invoke", f"dbt-{kind}", "build", env=target.dbt_env)
    assert build.returncode == 0, describe(build)
    assert "ERROR=0" in build.stdout + build.stderr, describe(build)

    # What the tap loaded: the entry's two jobs in submit order, and every row's identity.
    fingerprint = parse_entries([ENTRY], [])[0].fingerprint
    jobs = target.rows(
        "SELECT job_id, request_fingerprint, credits_consumed FROM openfunnel.jobs "
        "ORDER BY submitted_at"
    )
    entry_jobs = [job for job, fp, _ in jobs if fp == fingerprint]
    assert len(entry_jobs) == 2, jobs
    keys: dict[str, set[str]] = defaultdict(set)
    for job, domain, name in target.rows(
        "SELECT job_id, domain, name FROM openfunnel.tam_companies"
    ):
        key = company_key(domain, name)
        if key is not None:
            keys[job].add(key)
    before, after = (keys[job] for job in entry_jobs)
    added, dropped = after - before, before - after
    # The sandbox's drift, seen in what was loaded: the refresh overlaps and differs.
    assert (len(added), len(dropped), len(before & after)) == (DRIFT, DRIFT, ROWS - DRIFT)
    # Some config rows have no domain: the name fallback is exercised.
    assert any(key.startswith("name:") for key in keys[config_job])

    changes = target.rows(
        "SELECT entry_id, job_id, previous_job_id, change, domain, name "
        "FROM analytics.company_changes"
    )
    assert {row[:3] for row in changes} == {(fingerprint, entry_jobs[1], entry_jobs[0])}
    changed = {
        change: sorted(company_key(domain, name) for *_, c, domain, name in changes if c == change)
        for change in ("added", "dropped")
    }
    assert changed == {"added": sorted(added), "dropped": sorted(dropped)}

    current = target.rows(
        "SELECT entry_id, job_id, domain, name, first_seen_refresh, refreshes_seen "
        "FROM analytics.current_companies"
    )
    by_entry: dict[str, list[tuple]] = defaultdict(list)
    for entry, job, domain, name, first_seen, seen in current:
        by_entry[entry].append((job, company_key(domain, name), int(first_seen), int(seen)))
    assert set(by_entry) == {fingerprint, config_job}
    expected_entry = {
        (entry_jobs[1], key, 2 if key in added else 1, 1 if key in added else 2) for key in after
    }
    assert set(by_entry[fingerprint]) == expected_entry
    assert len(by_entry[fingerprint]) == len(after)
    # One row per company: names without a domain that repeat count once.
    assert sorted(key for _, key, _, _ in by_entry[config_job]) == sorted(keys[config_job])

    spend = dict(target.rows("SELECT entry_id, credits_consumed FROM analytics.spend_per_entry"))
    billed = sum(float(billed_credits) for _, fp, billed_credits in jobs if fp == fingerprint)
    assert billed > 0
    assert float(spend[fingerprint]) == billed
    # Every job's credits land in exactly one month; none is lost or counted twice.
    monthly = target.rows("SELECT jobs, credits_consumed FROM analytics.spend_per_month")
    assert sum(int(n) for n, _ in monthly) == len(jobs)
    assert sum(float(c) for _, c in monthly) == sum(float(c) for _, _, c in jobs)


# No Snowflake or BigQuery emulator runs dbt's SQL here, so the models are compiled by
# each warehouse's own adapter (its quoting, types and cross-database macros) with
# placeholder credentials and no connection: --no-populate-cache skips the one query
# compile would send. The BigQuery key is generated (a private key must parse) and
# its token address is a closed loopback port.
@pytest.mark.parametrize(
    ("warehouse_name", "expect"),
    [
        pytest.param("snowflake", 'coalesce(unique_count, "count")', id="snowflake"),
        pytest.param("bigquery", "coalesce(unique_count, `count`)", id="bigquery"),
    ],
)
def test_models_compile_for_snowflake_and_bigquery(meltano, tmp_path, warehouse_name, expect):
    dbt = PROJECT_ROOT / f".meltano/utilities/dbt-{warehouse_name}/venv/bin/dbt"
    if not dbt.is_file():
        pytest.fail(f"dbt-{warehouse_name} is not installed: run `make install`.", pytrace=False)
    env = {
        "DBT_TARGET_PATH": str(tmp_path / "target"),
        "DBT_LOG_PATH": str(tmp_path / "logs"),
        "DBT_SNOWFLAKE_ACCOUNT": "placeholder",
        "DBT_SNOWFLAKE_USER": "placeholder",
        "DBT_BIGQUERY_PROJECT": "placeholder-project",
        "DBT_BIGQUERY_KEYFILE": str(service_account_key(dbt.parent / "python", tmp_path)),
    }

    result = meltano.run(
        "invoke", f"dbt-{warehouse_name}", "compile", "--no-populate-cache", env=env
    )

    assert result.returncode == 0, describe(result)
    compiled = tmp_path / "target" / "compiled" / "openfunnel" / "models"
    # The models, and under each .yml file the SQL of its dbt tests.
    sql = list(compiled.rglob("*.sql"))
    models = {path.stem: path.read_text() for path in sql if path.parent.suffix != ".yml"}
    assert len(sql) - len(models) >= 40, "the dbt tests were not compiled"
    assert set(models) == {
        path.stem for path in (PROJECT_ROOT / "transform" / "models").rglob("*.sql")
    }
    assert expect in models["stg_openfunnel__jobs"]
    assert "from_json" not in models["stg_openfunnel__tam_companies"]  # DuckDB's only


def service_account_key(python, folder):
    """A throwaway service-account key file, made with the adapter's own cryptography."""
    path = folder / "key.json"
    script = (
        "import json, sys\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import rsa\n"
        "key = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n"
        "pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,"
        " serialization.NoEncryption()).decode()\n"
        "json.dump({'type': 'service_account', 'project_id': 'placeholder-project',"
        " 'private_key_id': 'k', 'private_key': pem, 'client_id': '1',"
        " 'client_email': 'dbt@placeholder-project.iam.gserviceaccount.com',"
        " 'token_uri': 'http://127.0.0.1:9/token'}, open(sys.argv[1], 'w'))\n"
    )
    subprocess.run([str(python), "-c", script, str(path)], check=True, timeout=60)
    return path
