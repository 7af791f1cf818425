"""The README's settings table is the one --about prints, and metadata agrees with itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tap_openfunnel.settings import CONFIG_SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_is_generated_from_about():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_settings.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_secret_settings_are_exactly_the_sensitive_ones_in_meltano_yml():
    secret = {name for name, spec in CONFIG_SCHEMA["properties"].items() if spec.get("secret")}
    project = yaml.safe_load((ROOT / "meltano.yml").read_text(encoding="utf-8"))
    extractor = next(p for p in project["plugins"]["extractors"] if p["name"] == "tap-openfunnel")
    sensitive = {s["name"] for s in extractor["settings"] if s.get("sensitive")}
    assert secret == sensitive == {"api_key"}
    names = {s["name"] for s in extractor["settings"]}
    assert set(CONFIG_SCHEMA["properties"]) <= names
