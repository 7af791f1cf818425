"""Write the extractor's Meltano definition (tap-openfunnel.yml and its lockfile) from `--about`.

The definition lives in two generated files that `meltano config set` never rewrites:

- tap-openfunnel.yml, the Hub-style definition other projects add with
  `meltano add --from-ref` (its header comment is kept);
- plugins/extractors/tap-openfunnel--openfunnel.lock, the same definition as the lockfile
  this project's meltano.yml takes it from (`variant: openfunnel`, no `namespace`).

Both are rebuilt whole from `tap-openfunnel --about --format=json` (names, labels,
descriptions, defaults, the sensitive flag), so running this again changes nothing, and
nothing in meltano.yml (which Meltano reorders on every `config set`) depends on it.

    .venv/bin/python scripts/plugin_settings.py          # rewrite both files
    .venv/bin/python scripts/plugin_settings.py --check  # exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HUB_DEFINITION = ROOT / "tap-openfunnel.yml"
LOCKFILE = ROOT / "plugins" / "extractors" / "tap-openfunnel--openfunnel.lock"
# Meltano's kind for each JSON Schema type. A JSON "number" is `integer` to Meltano
# unless its default has a fraction: Meltano 4 casts a `decimal` setting given in the
# environment (TAP_OPENFUNNEL_MAX_CREDITS=100) to Decimal and then fails writing the
# tap's config ("Object of type Decimal is not JSON serializable"). Whole seconds and
# whole credits are what these settings take from a user; the tap itself still accepts
# a fraction written as a number in a config file.
KINDS = {
    "string": "string",
    "integer": "integer",
    "number": "integer",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
}


def about() -> dict:
    """The tap's own description of itself."""
    output = subprocess.run(
        [sys.executable, "-m", "tap_openfunnel", "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    return json.loads(output)


def kind_of(schema: dict) -> str:
    """Meltano's setting kind for a JSON Schema property."""
    types = schema.get("type", "string")
    types = [types] if isinstance(types, str) else types
    kind = KINDS[next(t for t in types if t != "null")]
    default = schema.get("default")
    if "number" in types and isinstance(default, float) and not default.is_integer():
        return "decimal"  # a fraction is what it takes
    return kind


def settings_block(info: dict) -> dict:
    """The settings and settings_group_validation keys of a plugin definition."""
    from tap_openfunnel.settings import CONFIG_SCHEMA  # noqa: PLC0415 - ROOT on sys.path first

    schema = info["settings"]
    settings = []
    for name, prop in schema["properties"].items():
        if name not in CONFIG_SCHEMA["properties"]:  # the SDK's built-ins: Meltano knows them
            continue
        setting = {"name": name, "label": prop.get("title", name), "kind": kind_of(prop)}
        if "default" in prop:
            setting["value"] = prop["default"]
        setting["description"] = prop.get("description", "")
        if prop.get("secret"):
            setting["sensitive"] = True
        settings.append(setting)
    block: dict = {"settings": settings}
    if schema.get("required"):
        block["settings_group_validation"] = [sorted(schema["required"])]
    return block


def header_of(text: str) -> str:
    """The comment lines a definition file starts with."""
    header = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            break
        header.append(line)
    return "\n".join(header)


def definition(text: str, block: dict) -> dict:
    """The Hub-style definition with its settings replaced by ``block``."""
    loaded = yaml.safe_load(text) or {}
    loaded.pop("settings", None)
    loaded.pop("settings_group_validation", None)
    loaded.update(block)
    return loaded


def render_definition(header: str, plugin: dict) -> str:
    """The Hub-style definition file: its header comment, then the definition as YAML."""
    body = yaml.safe_dump(plugin, sort_keys=False, width=1000, allow_unicode=True)
    return f"{header}\n{body}" if header else body


def render_lockfile(plugin: dict) -> str:
    """The definition as Meltano writes a lockfile (`meltano lock`): JSON, 2-space indent."""
    locked = {"plugin_type": "extractors", **plugin}
    return json.dumps(locked, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite or check both files; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument(
        "--project", type=Path, default=ROOT, help="the Meltano project (default: this checkout)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    block = settings_block(about())
    hub_definition = args.project / HUB_DEFINITION.relative_to(ROOT)
    hub_text = hub_definition.read_text(encoding="utf-8")
    plugin = definition(hub_text, block)
    wanted = {
        hub_definition: render_definition(header_of(hub_text), plugin),
        args.project / LOCKFILE.relative_to(ROOT): render_lockfile(plugin),
    }
    stale = []
    for path, text in wanted.items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if text != current:
            stale.append(str(path.relative_to(args.project)))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        sys.stderr.write(
            f"{', '.join(stale)} differ from `tap-openfunnel --about`; regenerate them "
            "with `.venv/bin/python scripts/plugin_settings.py`.\n"
        )
        return 1
    if not args.check:
        print(f"Updated: {', '.join(stale) or 'nothing (already current)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
