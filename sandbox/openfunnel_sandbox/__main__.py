"""Command line: ``python -m openfunnel_sandbox`` serves a fake OpenFunnel API on loopback."""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import threading
import typing as t

from openfunnel_sandbox import FakeOpenFunnel, Faults, JobSpec

if t.TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

DEFAULT_KEY = "of_sandbox_key"
DEMO_SEEDS = ["datadoghq.com", "https://www.grafana.com/", "not-a-real-vendor.example"]


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m openfunnel_sandbox",
        description="Serve a fake OpenFunnel API on loopback, to try tap-openfunnel without a key.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0: any free port)")
    parser.add_argument("--api-key", default=DEFAULT_KEY, help="the one key the server accepts")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds from each request's arrival to its answer",
    )
    parser.add_argument("--page-size", type=int, default=100, help="rows per result page")
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of job ids and faults (default: new job ids on every start, faults seed 0)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="create a completed TAM job and lookalike job, and make submits finish in seconds",
    )
    parser.add_argument("--tam-rows", type=int, default=1234, help="rows of TAM jobs")
    parser.add_argument("--lookalike-rows", type=int, default=250, help="rows of lookalike jobs")
    parser.add_argument(
        "--refresh-drift",
        type=int,
        default=0,
        help="rows each later submit of the same request moves on along its companies, "
        "so refreshes of one entry add and drop some (default 0: each job has its own)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of GETs that fail")
    parser.add_argument("--write-config", type=pathlib.Path, help="write a tap config JSON here")
    return parser


def _prepare(server: FakeOpenFunnel, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    drift = args.refresh_drift
    tam = JobSpec(kind="tam", rows=args.tam_rows, refresh_drift=drift)
    lookalike = JobSpec(kind="lookalike", rows=args.lookalike_rows, refresh_drift=drift)
    if not args.demo:
        server.submit_defaults.update(tam=tam, lookalike=lookalike)
        return [], []
    request = {"seed_domains": DEMO_SEEDS, "limit": args.lookalike_rows}
    tam_ids = [server.add_job(tam)]
    lookalike_ids = [
        server.add_job(JobSpec(kind="lookalike", rows=args.lookalike_rows, request=request))
    ]
    # Submitted jobs walk through pending and running quickly enough to watch in a demo.
    server.submit_defaults.update(
        tam=JobSpec(
            kind="tam",
            rows=args.tam_rows,
            pending_seconds=1.0,
            running_seconds=3.0,
            refresh_drift=drift,
        ),
        lookalike=JobSpec(
            kind="lookalike",
            rows=args.lookalike_rows,
            pending_seconds=0.5,
            running_seconds=2.0,
            refresh_drift=drift,
        ),
    )
    return tam_ids, lookalike_ids


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM.

    Prints one JSON line (url, api_key, job ids) to stdout once the port is bound.

    Args:
        argv: Arguments; None reads ``sys.argv``.

    Returns:
        The exit code: 0 after a clean stop, 1 if the port cannot be bound.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        server = FakeOpenFunnel(
            api_keys=(args.api_key,),
            latency=args.latency,
            page_size=args.page_size,
            seed=args.seed,
            host=args.host,
            port=args.port,
        )
        server.faults = Faults(rate=args.fault_rate, seed=args.seed or 0)
        tam_ids, lookalike_ids = _prepare(server, args)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        server.start()
    except OSError as exc:
        sys.stderr.write(f"Cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    if args.write_config is not None:
        config = {
            "api_url": server.url,
            "api_key": args.api_key,
            "tam_job_ids": tam_ids,
            "lookalike_job_ids": lookalike_ids,
            "poll_interval": 1,
        }
        # Written whole, then renamed: a script waiting for the file never reads half.
        partial = args.write_config.with_name(args.write_config.name + ".partial")
        partial.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        partial.replace(args.write_config)
    info = {
        "url": server.url,
        "api_key": args.api_key,
        "tam_job_ids": tam_ids,
        "lookalike_job_ids": lookalike_ids,
    }
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
