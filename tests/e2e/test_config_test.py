"""`meltano config test` checks the key with one balance call and never touches a job."""

from __future__ import annotations

import pytest
from e2e_support import describe, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e


def test_meltano_config_test_is_cheap(meltano, fake_api):
    # A job that would take a minute, and a build that would be billed if submitted.
    slow = fake_api.add_job(JobSpec(kind="tam", rows=500, pending_seconds=60))
    env = tap_env(fake_api, tam=[slow], lookalike=[], tam_builds=[{"query": "do not submit"}])

    result = meltano.run("config", "test", "tap-openfunnel", env=env)

    assert result.returncode == 0, describe(result)
    assert "Plugin configuration is valid" in result.stdout + result.stderr
    assert fake_api.submit_count("tam") == 0
    assert [r.path for r in fake_api.requests] == ["/api/v1/credits/balance"]


def test_meltano_config_test_reports_a_wrong_key(meltano, fake_api):
    env = tap_env(fake_api, tam=[], lookalike=[], api_key="of_wrong_key")

    result = meltano.run("config", "test", "tap-openfunnel", env=env)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    # Meltano prints the last line the tap wrote, as it is: the message, not JSON.
    reported = output.split("Plugin configuration is invalid", 1)[1].splitlines()[1]
    assert reported.startswith("Authentication failed"), output
