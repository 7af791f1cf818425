"""The README's settings table is --about's (meltano.yml's: tests/e2e); its links resolve."""

from __future__ import annotations

import re
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


def test_links_between_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    link = re.compile(r"\]\(([^)#:]+\.(?:md|yml))(?:#[^)]*)?\)")
    broken = [
        f"{page.name} -> {target}"
        for page in pages
        for target in link.findall(page.read_text(encoding="utf-8"))
        if not (page.parent / target).resolve().exists()
    ]
    assert broken == []
    assert "docs/how-it-works.md" in (ROOT / "README.md").read_text(encoding="utf-8")
