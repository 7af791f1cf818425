"""The README's commands work as written: its marked blocks run here, offline.

A fenced block right after ``<!-- readme-test: KIND -->`` is run, in the README's order,
in a scratch copy of the checkout (symlinks to the installed virtualenvs, a copy of
``meltano.yml``), so nothing the README does lands in the real checkout:

- ``run``: bash, as written (it may start the fake server itself);
- ``config``: a JSON config, which ``tap-openfunnel --discover`` must accept;
- ``run-against-fake-api``: bash, as written, with ``TAP_OPENFUNNEL_API_URL`` pointing
  at a fake server that accepts the README's placeholder key ``of_...``.

Every request goes to loopback, with one exception: the block that adds the tap to a
new Meltano project has pip install it (from the checkout) into a new virtualenv, so
pip resolves its dependencies from the configured package index or its cache, as
``make install`` does. Meltano Hub is a closed port throughout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKED = re.compile(
    r"^<!-- readme-test: (?P<kind>[a-z-]+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)^```$",
    flags=re.MULTILINE | re.DOTALL,
)
PLACEHOLDER_KEY = "of_..."
# Each block ends by itself; installing the tap into a new Meltano project is the slowest.
BLOCK_TIMEOUT = 600
# The checkout as `make demo` leaves it; meltano.yml is copied because `meltano config
# set` writes to it, .meltano is rebuilt around the installed plugins.
LINKED = (
    ".venv",
    ".meltano-venv",
    "tap_openfunnel",
    "sandbox",
    "schemas",
    "scripts",
    "docs",
    "tests",
)
COPIED = ("meltano.yml", "pyproject.toml", "tap-openfunnel.yml", "README.md", "Makefile")


def marked_blocks(text: str) -> list[tuple[str, str, str]]:
    return [(m["kind"], m["lang"], m["body"]) for m in MARKED.finditer(text)]


def test_readme_marks_its_runnable_blocks():
    kinds = [kind for kind, _, _ in marked_blocks(README.read_text(encoding="utf-8"))]
    assert kinds.count("run") >= 2
    assert "config" in kinds
    assert kinds.count("run-against-fake-api") >= 2
    assert set(kinds) <= {"run", "config", "run-against-fake-api"}


def scratch_checkout(base: Path) -> Path:
    checkout = base / "tap-openfunnel"
    checkout.mkdir()
    for name in LINKED:
        (checkout / name).symlink_to(ROOT / name)
    for name in COPIED:
        shutil.copy2(ROOT / name, checkout / name)
    shutil.copytree(ROOT / "plugins", checkout / "plugins")  # the extractor's lockfile
    (checkout / "output").mkdir()
    meltano_dir = checkout / ".meltano"
    meltano_dir.mkdir()
    for kind in ("extractors", "loaders"):
        (meltano_dir / kind).symlink_to(ROOT / ".meltano" / kind)
    return checkout


def environment(fake_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAP_OPENFUNNEL_", "TARGET_", "MELTANO_", "OPENFUNNEL_"))
    }
    env.update(
        {
            "TAP_OPENFUNNEL_API_URL": fake_url,
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            # Offline: Meltano Hub is a closed loopback port.
            "MELTANO_HUB_URL": "http://127.0.0.1:9/hub",
            "MELTANO_HUB_API_ROOT": "http://127.0.0.1:9/hub/meltano/v1",
        }
    )
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )


@pytest.mark.e2e
def test_readme_blocks_work_as_written(tmp_path):
    meltano_plugins = ROOT / ".meltano" / "extractors" / "tap-openfunnel" / "venv"
    if not meltano_plugins.exists():
        pytest.fail("Meltano's plugins are not installed: run `make install` first.")
    checkout = scratch_checkout(tmp_path)
    with FakeOpenFunnel(api_keys=(PLACEHOLDER_KEY,)) as fake:
        fake.submit_defaults["tam"] = JobSpec(
            kind="tam", rows=321, pending_seconds=0.2, running_seconds=0.5
        )
        env = environment(fake.url)
        # Exported state (PATH, variables) carries from block to block, as in one shell.
        prelude = ""
        for index, (kind, lang, body) in enumerate(
            marked_blocks(README.read_text(encoding="utf-8"))
        ):
            if kind == "config":
                assert lang == "json"
                config = checkout / f"readme-config-{index}.json"
                config.write_text(body, encoding="utf-8")
                json.loads(body)
                proc = run_bash(
                    f"{prelude}\ntap-openfunnel --discover --config {config}", checkout, env
                )
                assert proc.returncode == 0, proc.stderr
                assert "tam_companies" in proc.stdout
                assert "WARNING" not in proc.stderr, proc.stderr
                continue
            assert lang == "sh"
            proc = run_bash(f"{prelude}\n{body}", checkout, env)
            assert proc.returncode == 0, (
                f"README block {index} failed:\n{body}\n{proc.stderr[-3000:]}"
            )
            assert "Traceback" not in proc.stderr
            prelude += "\n" + "\n".join(
                line for line in body.splitlines() if line.startswith("export ")
            )
        # What the blocks promise arrived: the hand run's records, and both Meltano
        # pipelines' build: bought once, by the first project; the second re-attached
        # to it through the submission journal they share.
        records = [
            json.loads(line)
            for line in (checkout / "out.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert (
            sum(m["type"] == "RECORD" and m["stream"] == "tam_companies" for m in records) == 1234
        )
        assert fake.submit_count("tam") == 1
        assert (tmp_path / "my-pipeline" / "warehouse.duckdb").exists()
        assert (checkout / "output" / "warehouse.duckdb").exists()
