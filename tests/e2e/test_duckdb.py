"""`meltano run tap-openfunnel target-duckdb`: the embedded default loader gets every row."""

from __future__ import annotations

import pytest
from e2e_support import describe, duckdb_summary, tap_env

from tap_openfunnel.sandbox import JobSpec

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
