"""The start-up table: the tap doing nothing much, alone and under Meltano."""

from __future__ import annotations

import os
import statistics
import sys
import typing as t

from harness import API_KEY, ROOT, Bench, Scale, print_table

from openfunnel_sandbox import FakeOpenFunnel

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path


def measure_startup(bench: Bench, scale: Scale) -> dict[str, float]:
    """Time the tap doing nothing much: imports, ``--about``, ``--test``, a run with no jobs.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        Median wall seconds of each.
    """
    python = sys.executable

    def median(command: Sequence[str], env: Mapping[str, str] | None = None) -> float:
        return statistics.median(
            bench.wall_only(command, env=env) for _ in range(scale.startup_repeats)
        )

    with FakeOpenFunnel() as server:
        config = bench.config(server)
        figures = {
            "python_s": median([python, "-c", "pass"]),
            "import_sdk_s": median([python, "-c", "import singer_sdk"]),
            "import_tap_s": median([python, "-c", "import tap_openfunnel.tap"]),
            "about_s": median([bench.tap, "--about"]),
            "test_s": median([bench.tap, "--config", str(config), "--test"]),
            "zero_job_run_s": statistics.median(
                bench.tap_run(config).wall for _ in range(scale.startup_repeats)
            ),
        }
        # What `meltano run` / `meltano config test` start: the plugin's own virtualenv.
        meltano_tap = ROOT / ".meltano/extractors/tap-openfunnel/venv/bin/tap-openfunnel"
        if meltano_tap.exists():
            figures["meltano_venv_about_s"] = median([str(meltano_tap), "--about"])
        if meltano_tap.exists() and MELTANO.exists():
            env = meltano_env(bench.workdir, server)
            figures["meltano_version_s"] = median([str(MELTANO), "--version"], env)
            figures["meltano_config_test_s"] = median(
                [str(MELTANO), "config", "test", "tap-openfunnel"], env
            )
    print(f"Start-up, median of {scale.startup_repeats} (wall s):")
    print_table(
        ["", "wall s"],
        [
            ["python -c pass", f"{figures['python_s']:.2f}"],
            ["python -c 'import singer_sdk'", f"{figures['import_sdk_s']:.2f}"],
            ["python -c 'import tap_openfunnel.tap'", f"{figures['import_tap_s']:.2f}"],
            ["tap-openfunnel --about", f"{figures['about_s']:.2f}"],
            ["tap-openfunnel --test (one balance call)", f"{figures['test_s']:.2f}"],
            ["a run with no jobs", f"{figures['zero_job_run_s']:.2f}"],
            *(
                [label, f"{figures[key]:.2f}"]
                for key, label in (
                    ("meltano_venv_about_s", "--about from Meltano's plugin venv"),
                    ("meltano_version_s", "meltano --version (Meltano alone)"),
                    ("meltano_config_test_s", "meltano config test tap-openfunnel"),
                )
                if key in figures
            ),
        ],
    )
    print("    Every wall time below includes start-up; the 'net' columns subtract the no-job run.")
    return figures


MELTANO = ROOT / ".meltano-venv" / "bin" / "meltano"


def meltano_env(workdir: Path, server: FakeOpenFunnel) -> dict[str, str]:
    """Meltano's environment for timing it: the project's dev environment, the fake server.

    A system database of its own, nothing from Meltano Hub, no usage statistics, and the
    tap pointed at ``server`` with no job to read (``config test`` then checks the key).

    Args:
        workdir: Where the system database goes.
        server: The fake server.

    Returns:
        The environment.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TAP_OPENFUNNEL_", "MELTANO_", "TARGET_"))
    }
    env.update(
        {
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "MELTANO_DATABASE_URI": f"sqlite:///{workdir / 'meltano.db'}",
            "MELTANO_ENVIRONMENT": "dev",
            "MELTANO_AUTO_INSTALL": "false",
            "MELTANO_HUB_URL": "http://127.0.0.1:9/hub",
            "MELTANO_HUB_API_ROOT": "http://127.0.0.1:9/hub/meltano/v1",
            "TAP_OPENFUNNEL_API_URL": server.url,
            "TAP_OPENFUNNEL_API_KEY": API_KEY,
            "TAP_OPENFUNNEL_TAM_JOB_IDS": "[]",
            "TAP_OPENFUNNEL_LOOKALIKE_JOB_IDS": "[]",
        }
    )
    return env
