"""Benchmark the tap CLI against an in-process fake OpenFunnel: pages, records, memory, waits.

Run ``.venv/bin/python benchmarks/bench.py`` (add ``--peers`` for the side-by-side with
dlt, ``--markdown docs/benchmarks.md`` to regenerate that page, ``--readme README.md`` for
the README's summary). Every section measures the default settings first
(page_concurrency 4), then the others. The parts: harness.py (sizes, targets, the runner),
startup.py (the start-up table), sections.py ((a), (c), (d)), records_section.py
and fast_server.py ((b), on two servers), jobs_section.py ((g)), cap_section.py ((h)),
peers_section.py, peers.py and postgres_peers.py ((e)), report.py (what is printed and
written around the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from cap_section import section_cap
from harness import DEFAULT, QUICK, Bench, BenchError, Scale
from jobs_section import section_g
from peers import PeerError
from peers_section import section_peers
from postgres_peers import section_postgres
from readme_block import readme_summary, update_readme
from records_section import section_b
from report import Tee, header, short_machine, write_markdown
from sections import section_a, section_c, section_d
from startup import measure_startup
from state_section import section_f, section_f_jobs

if t.TYPE_CHECKING:
    from collections.abc import Sequence


def tap_sections(bench: Bench, scale: Scale) -> dict[str, t.Any]:
    """Start-up and sections (a) to (h): the tap alone, without the peers."""
    startup = measure_startup(bench, scale)
    return {
        "startup": startup,
        "a": section_a(bench, scale, startup["zero_job_run_s"]),
        "b": section_b(bench, scale),
        "c": section_c(bench, scale),
        "d": section_d(bench, scale),
        "f": section_f(bench, scale),
        "f_jobs": section_f_jobs(bench, scale),
        "g": section_g(bench, startup["zero_job_run_s"], max(scale.b_repeats, 1)),
        "h": section_cap(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run every section and print the figures.

    Args:
        argv: Command line arguments (default: ``sys.argv[1:]``).

    Returns:
        0, unless a measured process crashed (1).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller jobs, fewer repeats")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run tap | target-duckdb against dlt into DuckDB, and tap | target-postgres "
        "against dlt into PostgreSQL (builds .bench-venvs/)",
    )
    parser.add_argument(
        "--peers-only", action="store_true", help="run only the side-by-side with dlt"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this Markdown file")
    parser.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON document"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="also rewrite this README's benchmark summary (a full run with --peers only)",
    )
    args = parser.parse_args(argv)
    if args.readme is not None and (args.quick or args.peers_only or not args.peers):
        parser.error("--readme takes a full run with --peers (no --quick, no --peers-only)")
    scale = QUICK if args.quick else DEFAULT
    tee = Tee(sys.stdout)
    began = time.monotonic()
    with contextlib.redirect_stdout(tee):
        header("quick" if args.quick else "default")
        with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as workdir:
            # The taps it starts keep their submission journal here, not in the home.
            os.environ["XDG_STATE_HOME"] = str(Path(workdir) / "xdg-state")
            try:
                bench = Bench(Path(workdir))
                figures: dict[str, t.Any] = {
                    "mode": "quick" if args.quick else "default",
                    "machine": short_machine(),
                }
                if not args.peers_only:
                    figures.update(tap_sections(bench, scale))
                if args.peers or args.peers_only:
                    figures["e"] = section_peers(bench, scale.b_rows)
                    try:
                        figures["e_postgres"] = section_postgres(bench, scale.b_rows)
                    except PeerError as exc:
                        raise BenchError(str(exc)) from None
            except BenchError as exc:
                print(f"\nBenchmark aborted: {exc}", file=sys.stderr)
                return 1
        figures["total_s"] = time.monotonic() - began
        print(f"\nBenchmark took {figures['total_s']:.0f} s.")
    command = shlex.join([".venv/bin/python", "benchmarks/bench.py", *(argv or sys.argv[1:])])
    if args.markdown is not None:
        write_markdown(args.markdown, command, tee.copy.getvalue())
    if args.readme is not None:
        try:
            update_readme(args.readme, readme_summary(command, figures))
        except BenchError as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
