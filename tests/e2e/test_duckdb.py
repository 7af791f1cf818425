"""`meltano run tap-openfunnel target-duckdb`: the embedded default loader gets every row."""

from __future__ import annotations

import json
import subprocess

import pytest
from e2e_support import DUCKDB_PYTHON, INTEGER_COLUMNS, describe, duckdb_summary, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e


def test_meltano_run_loads_every_row_into_duckdb(meltano, fake_api, tmp_path):
    tam = fake_api.add_job(JobSpec(kind="tam", rows=1234))
    lookalike = fake_api.add_job(JobSpec(kind="lookalike", rows=250))
    database = tmp_path / "openfunnel.duckdb"
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[lookalike]),
        "TARGET_DUCKDB_FILEPATH": str(database),
        # Many batches: target-duckdb 0.8.0 with duckdb >= 1.3 drops the first row of
        # every batch, so a wrong duckdb pin shows up here as missing rows.
        "TARGET_DUCKDB_BATCH_SIZE_ROWS": "100",
    }

    result = meltano.run("run", "tap-openfunnel", "target-duckdb", env=env)

    assert result.returncode == 0, describe(result)
    tables = duckdb_summary(database)
    assert tables["tam_companies"] == {"rows": 1234, "duplicate_keys": 0}
    assert tables["lookalike_companies"] == {"rows": 250, "duplicate_keys": 0}
    assert tables["jobs"] == {"rows": 2, "duplicate_keys": 0}
    # The schemas' 64-bit bounds make target-duckdb create BIGINT, not HUGEINT (128-bit);
    # arrays arrive as lists, [] where the API sent none.
    types = column_types(database)
    for table, column in INTEGER_COLUMNS:
        assert types[table][column] == "BIGINT", (table, column, types[table])
    assert types["jobs"]["terminal_at"] == "TIMESTAMP"
    assert types["tam_companies"]["industries"] == "JSON"


def column_types(database) -> dict[str, dict[str, str]]:
    """Column types per table, read with the loader's own duckdb after it exited."""
    script = (
        "import duckdb, json, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        'rows = con.execute("select table_name, column_name, data_type from '
        "information_schema.columns where table_schema = 'openfunnel'\").fetchall(); "
        "print(json.dumps(rows))"
    )
    result = subprocess.run(
        [str(DUCKDB_PYTHON), "-c", script, str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    types: dict[str, dict[str, str]] = {}
    for table, column, kind in json.loads(result.stdout):
        types.setdefault(table, {})[column] = kind
    return types
