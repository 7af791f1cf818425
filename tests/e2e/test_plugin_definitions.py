"""meltano.yml, the extractor's lockfile and tap-openfunnel.yml agree with the tap, need no Hub."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from e2e_support import PROJECT_ROOT, describe
from warehouse_support import doc_loader_blocks, project_loader

from tap_openfunnel.settings import CONFIG_SCHEMA

MELTANO_YML = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))
HUB_DEFINITION = yaml.safe_load((PROJECT_ROOT / "tap-openfunnel.yml").read_text(encoding="utf-8"))
EXTRACTOR = next(p for p in MELTANO_YML["plugins"]["extractors"] if p["name"] == "tap-openfunnel")
LOCKFILE = PROJECT_ROOT / "plugins" / "extractors" / "tap-openfunnel--openfunnel.lock"
LOCKED = json.loads(LOCKFILE.read_text(encoding="utf-8"))


def test_settings_are_generated_from_the_tap():
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "plugin_settings.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "definition",
    [pytest.param(LOCKED, id="lockfile"), pytest.param(HUB_DEFINITION, id="hub-definition")],
)
def test_sensitive_settings_are_exactly_the_secret_ones(definition):
    # The tap's own settings; the SDK's built-in ones are left out of the definitions.
    properties = CONFIG_SCHEMA["properties"]
    secret = {name for name, prop in properties.items() if prop.get("secret")}
    sensitive = {s["name"] for s in definition["settings"] if s.get("sensitive")}
    assert sensitive == secret == {"api_key"}
    assert {s["name"] for s in definition["settings"]} == set(properties)


def test_every_plugin_is_defined_in_the_project():
    # namespace, pip_url and executable make `meltano install` and `meltano run` work
    # without asking Meltano Hub for the plugin's definition: inline for the loaders, in
    # the lockfile for the extractor (meltano.yml names its variant, and no namespace,
    # which would make it a custom plugin defined inline).
    plugins = [p for kind in MELTANO_YML["plugins"].values() for p in kind]
    assert {p["name"] for p in plugins} == {
        "tap-openfunnel",
        "target-duckdb",
        "target-postgres",
        "target-jsonl",
        "target-snowflake",
        "target-bigquery",
        "dbt-duckdb",
        "dbt-postgres",
        "dbt-snowflake",
        "dbt-bigquery",
    }
    for plugin in plugins:
        assert "inherit_from" not in plugin
        if plugin["name"] == "tap-openfunnel":
            assert plugin == {"name": "tap-openfunnel", "variant": "openfunnel", "pip_url": "-e ."}
            continue
        assert {"namespace", "pip_url", "executable", "settings"} <= plugin.keys(), plugin["name"]
    assert LOCKFILE.name == f"{EXTRACTOR['name']}--{EXTRACTOR['variant']}.lock"
    assert {"namespace", "executable", "capabilities", "settings"} <= LOCKED.keys()
    assert LOCKED["plugin_type"] == "extractors"
    duckdb = next(p for p in plugins if p["name"] == "target-duckdb")
    # duckdb >= 1.3 makes target-duckdb 0.8.0 drop the first row of every batch.
    assert "duckdb==1.2.2" in duckdb["pip_url"].split()
    # dbt-duckdb opens the file target-duckdb wrote: one DuckDB version, one storage format.
    dbt_duckdb = next(p for p in plugins if p["name"] == "dbt-duckdb")
    assert "duckdb==1.2.2" in dbt_duckdb["pip_url"].split()
    assert MELTANO_YML["send_anonymous_usage_stats"] is False


def test_the_lockfile_is_the_hub_definition():
    # One definition in two formats: what this project runs is what other projects add.
    assert {k: v for k, v in LOCKED.items() if k != "plugin_type"} == HUB_DEFINITION


# The secrets of the warehouse loaders: where Meltano Hub's definitions of these variants
# mark a setting sensitive, and the OAuth token that target-snowflake 0.20 added since.
HUB_SENSITIVE = {
    "target-snowflake": {"password", "private_key", "private_key_passphrase", "oauth_access_token"},
    "target-bigquery": {"credentials_json", "credentials_path"},
}


@pytest.mark.parametrize(("loader", "sensitive"), HUB_SENSITIVE.items())
def test_loader_secrets_are_sensitive(loader, sensitive):
    settings = project_loader(loader)["settings"]
    assert {s["name"] for s in settings if s.get("sensitive")} == sensitive


@pytest.mark.parametrize("loader", ["target-snowflake", "target-bigquery"])
def test_the_docs_copy_paste_block_is_the_loader_of_meltano_yml(loader):
    # The end-to-end tests run the doc's block; this ties it to meltano.yml.
    block = dict(doc_loader_blocks()[loader])
    defined = project_loader(loader)
    config = block.pop("config")
    settings = block.pop("settings")
    assert block == {k: v for k, v in defined.items() if k != "settings"}
    by_name = {s["name"]: s for s in defined["settings"]}
    for setting in settings:
        assert setting == by_name.get(setting["name"]), setting["name"]
    # Every secret is there to be marked, and every configured setting is declared.
    sensitive = {s["name"] for s in defined["settings"] if s.get("sensitive")}
    assert sensitive <= {s["name"] for s in settings}
    assert set(config) <= {s["name"] for s in settings}
    assert not set(config) & sensitive, "a secret written into meltano.yml"


def test_docs_have_a_block_for_each_warehouse_loader():
    assert set(doc_loader_blocks()) == {"target-snowflake", "target-bigquery"}


@pytest.mark.e2e
def test_hub_definition_adds_to_another_project(meltano, tmp_path):
    created = meltano.run("init", "elsewhere", "--no-usage-stats", cwd=tmp_path, timeout=120)
    assert created.returncode == 0, describe(created)
    project = tmp_path / "elsewhere"

    added = meltano.run(
        "add",
        "--plugin-type",
        "extractor",
        "tap-openfunnel",
        "--from-ref",
        str(PROJECT_ROOT / "tap-openfunnel.yml"),
        "--no-install",
        cwd=project,
        timeout=120,
    )

    assert added.returncode == 0, describe(added)
    extractors = yaml.safe_load((project / "meltano.yml").read_text())["plugins"]["extractors"]
    (plugin,) = extractors
    assert plugin["name"] == "tap-openfunnel"
    assert plugin["namespace"] == "tap_openfunnel"
    assert plugin["settings"] == HUB_DEFINITION["settings"]
    listed = meltano.run("config", "list", "tap-openfunnel", cwd=project, timeout=120)
    assert listed.returncode == 0, describe(listed)
    assert "api_key [env: TAP_OPENFUNNEL_API_KEY]" in listed.stdout


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "plugin_settings", PROJECT_ROOT / "scripts" / "plugin_settings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("schema", "kind"),
    [
        pytest.param({"type": ["integer", "null"]}, "integer", id="integer"),
        # Meltano 4 cannot take a `decimal` from the environment: whole numbers it can.
        pytest.param({"type": ["number", "null"]}, "integer", id="number"),
        pytest.param({"type": ["number"], "default": 60}, "integer", id="whole-default"),
        pytest.param({"type": ["number"], "default": 60.0}, "integer", id="whole-float"),
        pytest.param({"type": ["number"], "default": 0.5}, "decimal", id="fraction-default"),
        pytest.param({"type": ["boolean"], "default": False}, "boolean", id="boolean"),
        pytest.param({"type": ["array", "null"]}, "array", id="array"),
    ],
)
def test_meltano_kinds_of_json_schema_types(schema, kind):
    assert load_generator().kind_of(schema) == kind


def test_the_generator_is_idempotent(tmp_path):
    # What the lead runs after merging settings from several branches: twice changes
    # nothing the second time, and a stale copy is rebuilt whole (no markers to find).
    shutil.copy2(PROJECT_ROOT / "tap-openfunnel.yml", tmp_path / "tap-openfunnel.yml")
    stale = yaml.safe_load((tmp_path / "tap-openfunnel.yml").read_text(encoding="utf-8"))
    stale["settings"] = stale["settings"][:2] + stale["settings"][:2]  # a bad merge
    text = (tmp_path / "tap-openfunnel.yml").read_text(encoding="utf-8")
    header = text[: text.index("\nname:")]
    (tmp_path / "tap-openfunnel.yml").write_text(
        header + "\n" + yaml.safe_dump(stale, sort_keys=False), encoding="utf-8"
    )
    script = [sys.executable, str(PROJECT_ROOT / "scripts" / "plugin_settings.py")]
    project = ["--project", str(tmp_path)]
    for _ in range(2):
        subprocess.run([*script, *project], check=True, capture_output=True, timeout=120)
    check = subprocess.run(
        [*script, "--check", *project], capture_output=True, text=True, timeout=120, check=False
    )
    assert check.returncode == 0, check.stderr
    for name in ("tap-openfunnel.yml", "plugins/extractors/tap-openfunnel--openfunnel.lock"):
        assert (tmp_path / name).read_bytes() == (PROJECT_ROOT / name).read_bytes(), name
