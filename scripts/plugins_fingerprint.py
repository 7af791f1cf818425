"""Print a fingerprint of what the Meltano plugins are installed from.

meltano.yml (plugins, pip_urls) and the tap's runtime dependencies in pyproject.toml:
the tap is installed into its plugin virtualenv with `pip_url: -e .`, so its code is
always current but a dependency added since would be missing. scripts/setup_meltano.sh
stores the fingerprint after `meltano install`; the end-to-end tests compare it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fingerprint() -> str:
    """Return the hex digest of meltano.yml and the project's runtime dependencies."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    try:
        import tomllib  # noqa: PLC0415 - Python 3.11+; older ones hash the whole file

        project = tomllib.loads(pyproject.decode())["project"]
        relevant = json.dumps(
            [project.get("dependencies", []), project.get("requires-python")]
        ).encode()
    except ImportError:
        relevant = pyproject
    return hashlib.sha256((ROOT / "meltano.yml").read_bytes() + relevant).hexdigest()


if __name__ == "__main__":
    sys.stdout.write(fingerprint() + "\n")
