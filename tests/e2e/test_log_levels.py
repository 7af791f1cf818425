"""Under `meltano run`, the tap's warnings and errors show as such, each said once."""

from __future__ import annotations

import re

import pytest
from e2e_support import describe, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

MISSING = "00000000-0000-4000-8000-000000000000"


def tap_lines(output: str, level: str) -> list[str]:
    # Meltano 4 renders a parsed plugin line as `<ts> [<level>   ] tap-openfunnel <message>`.
    return re.findall(rf"\[{level} *\] tap-openfunnel (.*)", output)


def test_meltano_shows_the_tap_levels_and_no_noise(meltano, fake_api, tmp_path):
    tam = fake_api.add_job(JobSpec(kind="tam", rows=150, quirks={"manifest_mismatch"}))
    env = {
        **tap_env(fake_api, tam=[tam, MISSING], lookalike=[]),
        "TARGET_DUCKDB_FILEPATH": str(tmp_path / "levels.duckdb"),
    }

    result = meltano.run("run", "tap-openfunnel", "target-duckdb", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, describe(result)
    warnings = tap_lines(output, "warning")
    assert any("manifest" in line for line in warnings), describe(result)
    errors = tap_lines(output, "error")
    assert any("was not found for this API key" in line for line in errors), describe(result)
    assert MISSING in errors[-1]
    assert output.count("was not found for this API key") == 1
    assert "An unhandled error occurred" not in output
