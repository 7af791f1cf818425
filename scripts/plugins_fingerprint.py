"""Print a fingerprint of what the Meltano plugins are installed from.

meltano.yml's plugins (name, variant, pip_url, python) and the tap's runtime
dependencies in pyproject.toml, not meltano.yml's bytes: `meltano config set` rewrites
that file (and reorders it) without changing what is installed. The tap is installed
into its plugin virtualenv with `pip_url: -e .`, so its code is always current but a
dependency added since would be missing. scripts/setup_meltano.sh stores the fingerprint
after `meltano install`; the end-to-end tests compare it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def fingerprint(project: Path = ROOT) -> str:
    """Return the hex digest of meltano.yml's plugins and the project's runtime dependencies."""
    pyproject = (project / "pyproject.toml").read_bytes()
    try:
        import tomllib  # noqa: PLC0415 - Python 3.11+; older ones hash the whole file

        metadata = tomllib.loads(pyproject.decode())["project"]
        relevant = json.dumps(
            [metadata.get("dependencies", []), metadata.get("requires-python")]
        ).encode()
    except ImportError:
        relevant = pyproject
    return hashlib.sha256(installed_plugins(project).encode() + relevant).hexdigest()


def installed_plugins(project: Path) -> str:
    """What `meltano install` installs, from meltano.yml: each plugin's package and Python."""
    meltano_yml = yaml.safe_load((project / "meltano.yml").read_text(encoding="utf-8")) or {}
    keys = ("name", "variant", "inherit_from", "pip_url", "python")
    plugins = sorted(
        [kind, *(str(plugin.get(key)) for key in keys)]
        for kind, listed in (meltano_yml.get("plugins") or {}).items()
        for plugin in listed or []
    )
    return json.dumps(plugins)


if __name__ == "__main__":
    # An optional argument: another project folder (the tests' copies).
    sys.stdout.write(fingerprint(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT) + "\n")
