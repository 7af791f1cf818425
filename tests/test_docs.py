"""The README's settings table is the one --about prints (meltano.yml's: tests/e2e)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_is_generated_from_about():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_settings.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
