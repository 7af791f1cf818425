"""Meltano's own config commands cannot break the project, and every setting's kind works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_support import PROJECT_ROOT, describe, scratch_project, tap_env

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

LOCKFILE = PROJECT_ROOT / "plugins" / "extractors" / "tap-openfunnel--openfunnel.lock"


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_config_set_any_number_of_times_leaves_the_project_working(meltano, tmp_path):
    """`meltano config set` reorders meltano.yml on every call: nothing may depend on it."""
    project = scratch_project(tmp_path / "project")
    fingerprint = script("plugins_fingerprint.py", str(project)).stdout
    lockfile = project / LOCKFILE.relative_to(PROJECT_ROOT)
    definitions = {path: path.read_bytes() for path in (lockfile, project / "tap-openfunnel.yml")}
    for round_ in (1, 2):
        for where, *args in (
            # The plugin's own config, and the dev environment's (Meltano writes them to
            # different places in meltano.yml); api_key is sensitive: it goes to .env.
            ("--no-environment", "tap-openfunnel", "api_key", f"of_round_{round_}"),
            ("--no-environment", "tap-openfunnel", "tam_job_ids", f'["job-{round_}"]'),
            ("--no-environment", "tap-openfunnel", "max_credits", str(100 * round_)),
            ("--environment=dev", "tap-openfunnel", "poll_interval", str(round_)),
            ("--no-environment", "target-postgres", "host", f"db{round_}.example"),
            ("--environment=dev", "target-postgres", "load_method", "upsert"),
            ("--no-environment", "target-duckdb", "batch_size_rows", str(1000 * round_)),
            ("--no-environment", "target-snowflake", "account", f"org-account{round_}"),
        ):
            done = meltano.run(where, "config", "set", *args, cwd=project, timeout=120)
            assert done.returncode == 0, describe(done)
        for plugin in ("tap-openfunnel", "target-postgres", "target-duckdb"):
            listed = meltano.run("config", "list", plugin, cwd=project, timeout=120)
            assert listed.returncode == 0, describe(listed)

    helped = meltano.run("invoke", "tap-openfunnel", "--help", cwd=project, timeout=120)
    assert helped.returncode == 0, describe(helped)
    assert "--discover" in helped.stdout
    dumped = meltano.run("invoke", "--dump=config", "tap-openfunnel", cwd=project, timeout=120)
    assert dumped.returncode == 0, describe(dumped)
    config = json.loads(dumped.stdout)
    assert config["api_key"] == "of_round_2"
    assert config["tam_job_ids"] == ["job-2"]
    assert config["max_credits"] == 200
    assert config["poll_interval"] == 2
    # The definitions Meltano reads are untouched, still what the tap says, and the
    # plugins are still the installed ones (no reinstall demanded by the e2e tests).
    for path, content in definitions.items():
        assert path.read_bytes() == content, path.name
    check = script("plugin_settings.py", "--check", "--project", str(project))
    assert check.returncode == 0, check.stderr
    assert script("plugins_fingerprint.py", str(project)).stdout == fingerprint


def whole_number_settings() -> dict[str, str]:
    """Every setting Meltano types as a whole number, with a value for the environment."""
    settings = json.loads(LOCKFILE.read_text(encoding="utf-8"))["settings"]
    # `decimal` (which Meltano cannot take from the environment) only for a fractional
    # default: scripts/plugin_settings.py.
    for setting in settings:
        if setting["kind"] == "decimal":
            assert not float(setting["value"]).is_integer(), setting["name"]
    return {s["name"]: str(s.get("value", 100)) for s in settings if s["kind"] == "integer"}


def test_every_number_setting_can_come_from_the_environment(meltano, fake_api, tmp_path):
    # TAP_OPENFUNNEL_MAX_CREDITS=100 once crashed Meltano: a `decimal` setting from the
    # environment became a Decimal it could not write into the tap's config.
    numbers = whole_number_settings()
    assert {"max_credits", "poll_interval", "job_timeout", "page_concurrency"} <= set(numbers)
    tam = fake_api.add_job(JobSpec(kind="tam", rows=120))
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[]),
        **{f"TAP_OPENFUNNEL_{name.upper()}": value for name, value in numbers.items()},
        "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
    }

    dumped = meltano.run("invoke", "--dump=config", "tap-openfunnel", env=env)
    assert dumped.returncode == 0, describe(dumped)
    config = json.loads(dumped.stdout)
    for name, value in numbers.items():
        assert config[name] == int(value), name
    ran = meltano.run("run", "tap-openfunnel", "target-jsonl", env=env)

    assert ran.returncode == 0, describe(ran)
    rows = (tmp_path / "tam_companies.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 120


def test_a_misspelt_setting_stops_the_run_before_any_call(meltano, fake_api, tmp_path):
    # Meltano only warns about a setting its definition lacks, and passes it on.
    project = scratch_project(tmp_path / "project")
    set_ = meltano.run("config", "set", "tap-openfunnel", "max_credit", "10", cwd=project)
    assert set_.returncode == 0, describe(set_)
    env = {
        **tap_env(fake_api, tam=[], lookalike=[]),
        "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
    }

    ran = meltano.run("run", "tap-openfunnel", "target-jsonl", env=env, cwd=project)

    assert ran.returncode != 0, describe(ran)
    assert "'max_credit' (did you mean 'max_credits'?)" in ran.stdout + ran.stderr
    assert fake_api.requests == []
