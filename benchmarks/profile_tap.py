"""Profile the tap's record path with cProfile, against the fast server (or the sandbox)."""

from __future__ import annotations

import argparse
import contextlib
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fast_server import FastServer

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

HERE = Path(__file__).resolve().parent

# (label, file suffix, function): the steps one record goes through, in order. cProfile
# inflates small calls, so read the shares, not the absolute microseconds. It profiles
# the main thread only: with --page-concurrency > 1 the page requests run in prefetch
# threads and "fetch" shows only what the main thread waited for.
STEPS = (
    (
        "fetch page bodies (main thread), server wait included",
        "tap_openfunnel/api.py",
        "page_body",
    ),
    ("decode pages (msgspec), re-fetching bad bodies", "tap_openfunnel/api.py", "read_page"),
    ("row shaping (tap RowShaper)", "tap_openfunnel/records.py", "records"),
    (
        "RECORD lines (tap SelectedRecordMessages)",
        "tap_openfunnel/writer.py",
        "_write_record_message",
    ),
    (
        "SDK pop_deselected_record_properties",
        "singer_sdk/helpers/_catalog.py",
        "pop_deselected_record_properties",
    ),
    ("SDK stream map transform", "singer_sdk/mapper.py", "transform"),
    ("message to JSON line (msgspec)", "singer_sdk/contrib/msgspec.py", "serialize_message"),
    ("encode lines into blocks (tap BlockWriter)", "tap_openfunnel/writer.py", "write_record"),
    ("SDK _sync_records, everything", "singer_sdk/streams/core.py", "_sync_records"),
)


def step_times(stats: pstats.Stats) -> dict[str, float]:
    """Sum the cumulative seconds of each step's function.

    Args:
        stats: The loaded profile.

    Returns:
        Seconds per step label.
    """
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    seconds = dict.fromkeys((label for label, _, _ in STEPS), 0.0)
    for (filename, _, function), (_, _, _, cumulative, _) in table.items():
        for label, suffix, name in STEPS:
            if function == name and filename.endswith(suffix):
                seconds[label] += cumulative
    return seconds


def run_profiled(output: str, tap_args: list[str]) -> int:
    """The child: the tap's command line under cProfile, the profile written at the end.

    The ``tap-openfunnel`` command ends with ``os._exit`` once its output is flushed
    (``tap_openfunnel.__main__``), so nothing that waits for the interpreter's exit, as
    ``python -m cProfile`` does, would run. This runs the same command line
    (``__main__.invoke_cli``: same imports, same pipe set-up), then flushes and dumps.

    Args:
        output: Where the pstats file goes.
        tap_args: The tap's arguments.

    Returns:
        The tap's exit code (1 if it ended with a message).
    """
    import cProfile  # noqa: PLC0415 - the child only

    sys.argv = ["tap-openfunnel", *tap_args]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        from tap_openfunnel import __main__ as command  # noqa: PLC0415 - profiled too

        code = command.invoke_cli()
    finally:
        profiler.disable()
        profiler.dump_stats(output)
    from tap_openfunnel import writer  # noqa: PLC0415 - loaded by the run

    writer.flush_all()
    sys.stdout.flush()
    return code if isinstance(code, int) else (0 if code is None else 1)


def main() -> int:
    """Run the tap CLI under cProfile on one completed TAM job and print where time goes.

    Returns:
        The tap's exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the job")
    parser.add_argument("--page-concurrency", type=int, default=4, help="default: the tap's")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--output", type=Path, help="keep the pstats file here")
    parser.add_argument(
        "--server",
        choices=("fast", "sandbox"),
        default="fast",
        help="fast: pre-rendered pages from a process of its own (default); sandbox: the "
        "in-process sandbox, which renders each page per request",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tap-openfunnel-profile-") as workdir:
        output = args.output or Path(workdir) / "tap.pstats"
        config = Path(workdir) / "config.json"
        with contextlib.ExitStack() as stack:
            if args.server == "fast":
                fast = stack.enter_context(FastServer([args.rows]))
                url, job_id = fast.url, fast.jobs[0]
            else:
                server = stack.enter_context(FakeOpenFunnel())
                url, job_id = server.url, server.add_job(JobSpec(kind="tam", rows=args.rows))
            settings = {
                "api_key": "of_test_key",
                "api_url": url,
                "tam_job_ids": [job_id],
                "page_concurrency": args.page_concurrency,
            }
            config.write_text(json.dumps(settings), encoding="utf-8")
            # Not `python -m cProfile tap-openfunnel`: the command ends with os._exit,
            # which would leave no profile behind (see run_profiled).
            command = [sys.executable, __file__, "--profiled-run", str(output)]
            started = time.monotonic()
            # Records go through a pipe to a drain process, as in bench.py.
            with subprocess.Popen(
                [*command, "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            ) as child:
                drained = subprocess.run(
                    [sys.executable, str(HERE / "drain.py"), "tam_companies"],
                    stdin=child.stdout,
                    capture_output=True,
                    check=True,
                )
            wall = time.monotonic() - started
        if child.returncode != 0:
            print(f"The tap exited {child.returncode}.", file=sys.stderr)
            return child.returncode
        records = json.loads(drained.stdout)["records"].get("tam_companies", 0)
        stats = pstats.Stats(str(output))
        print(
            f"{records:,} records in {wall:.2f} s under cProfile "
            f"(page_concurrency {args.page_concurrency}, {args.server} server).\n"
        )
        print("Where one record's time goes (cumulative, so steps nest: all run inside the last):")
        for label, seconds in step_times(stats).items():
            print(
                f"  {label:45} {seconds:6.2f} s  {seconds / max(records, 1) * 1e6:6.1f} us/record"
            )
        print()
        stats.sort_stats("cumulative").print_stats(r"tap_openfunnel|singer_sdk|msgspec", args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-run":
        sys.exit(run_profiled(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
