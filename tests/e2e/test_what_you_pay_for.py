"""Through Meltano: a full refresh and a second loader read an entry again, never buy it again."""

from __future__ import annotations

import json

import pytest
from e2e_support import describe, duckdb_summary, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

ROWS = 300


def test_full_refresh_and_a_second_loader_reread_without_a_submit(
    meltano, fake_api, tmp_path, private_state_home
):
    fake_api.submit_defaults["tam"] = JobSpec(kind="tam", rows=ROWS)
    database = tmp_path / "openfunnel.duckdb"
    env = {
        **tap_env(fake_api, tam=[], lookalike=[], tam_builds=[{"query": "devtools in Europe"}]),
        "TARGET_DUCKDB_FILEPATH": str(database),
        "TARGET_JSONL_DESTINATION_PATH": str(tmp_path / "jsonl"),
    }
    (tmp_path / "jsonl").mkdir()

    first = meltano.run("run", "tap-openfunnel", "target-duckdb", env=env)
    assert first.returncode == 0, describe(first)
    assert fake_api.submit_count("tam") == 1
    # The journal is where the test put every per-user path, not in the home folder.
    assert (private_state_home / "tap-openfunnel" / "journal.sqlite3").is_file()

    # "Read it again", not "buy it again": Meltano passes no state on a full refresh.
    refreshed = meltano.run("run", "--full-refresh", "tap-openfunnel", "target-duckdb", env=env)
    assert refreshed.returncode == 0, describe(refreshed)
    assert fake_api.submit_count("tam") == 1
    assert "re-attaching to job" in refreshed.stdout + refreshed.stderr
    assert duckdb_summary(database)["tam_companies"]["rows"] == ROWS

    # Another loader is another pipeline with a state of its own (empty here).
    other = meltano.run("run", "tap-openfunnel", "target-jsonl", env=env)
    assert other.returncode == 0, describe(other)
    assert fake_api.submit_count("tam") == 1
    lines = (tmp_path / "jsonl" / "tam_companies.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["rank"] for line in lines) == list(range(1, ROWS + 1))
