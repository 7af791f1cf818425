"""Section (g): many small finished jobs under latency, against the floor of the same requests.

Run alone with ``.venv/bin/python benchmarks/jobs_section.py`` (``--quick`` for fewer
repeats); ``bench.py`` runs it as part of the whole benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from harness import (
    API_KEY,
    DEFAULT_CONCURRENCY,
    PAGE_SIZE,
    TAM_PATH,
    Bench,
    expect_records,
    print_table,
    verdict,
)
from startup import measure_startup

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

G_JOBS = 100  # finished jobs, each read whole
G_ROWS = 250  # rows per job: 3 pages of 100, 100, 50
G_LATENCY = 0.1  # seconds per request
G_CONCURRENCY = (DEFAULT_CONCURRENCY, 8, 1)
TARGET_G = 1.3  # page_concurrency 8: wall <= 1.3 x the floor measured in the same run


def plain_requests(server: FakeOpenFunnel, job_ids: list[str], concurrency: int) -> float:
    """Every request the tap makes for these jobs, by plain threads: seconds.

    Per job one poll (which brings page_0000) and its further pages, all from
    ``concurrency`` threads with a kept-alive session each, nothing decoded or written.

    Args:
        server: The fake server, with its latency set.
        job_ids: Finished jobs of ``G_ROWS`` rows.
        concurrency: Threads.

    Returns:
        Wall seconds for all the requests.
    """
    local = threading.local()
    pages = -(-G_ROWS // PAGE_SIZE)

    def get(request: tuple[str, str | None]) -> int:
        job_id, cursor = request
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["X-API-Key"] = API_KEY
        params = {"cursor": cursor} if cursor else None
        answer = session.get(f"{server.url}{TAM_PATH}/{job_id}", params=params, timeout=30)
        answer.raise_for_status()
        return len(answer.content)

    requests_made = [
        (job_id, None if index == 0 else f"page_{index:04d}")
        for job_id in job_ids
        for index in range(pages)
    ]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        began = time.perf_counter()
        for _size in pool.map(get, requests_made):
            pass
        return time.perf_counter() - began


def section_g(bench: Bench, startup: float, repeats: int) -> dict[str, t.Any]:
    """(g) Many small finished jobs with latency: the in-flight budget across jobs.

    Args:
        bench: The runner.
        startup: Wall seconds of a no-job run.
        repeats: Interleaved runs of each page_concurrency (1 runs once).

    Returns:
        Per page_concurrency: median wall, most requests in flight; and the floor.
    """
    rows = G_JOBS * G_ROWS
    pages = -(-G_ROWS // PAGE_SIZE)
    print(
        f"\n(g) {G_JOBS} finished TAM jobs of {G_ROWS} rows ({pages} pages each, "
        f"{G_JOBS * pages} requests), {G_LATENCY * 1000:.0f} ms server latency per request.\n"
        f"    Target: page_concurrency 8 <= {TARGET_G} x the floor (start-up + the same "
        f"requests by 8 plain threads), median of {repeats}."
    )
    results: list[dict[str, t.Any]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(latency=G_LATENCY, page_size=PAGE_SIZE) as server:
        job_ids = [server.add_job(JobSpec(kind="tam", rows=G_ROWS)) for _ in range(G_JOBS)]
        configs = {
            concurrency: bench.config(server, tam_job_ids=job_ids, page_concurrency=concurrency)
            for concurrency in G_CONCURRENCY
        }
        walls: dict[int, list[float]] = {concurrency: [] for concurrency in configs}
        peaks: dict[int, int] = dict.fromkeys(configs, 0)
        for repeat in range(repeats):
            for concurrency, config in configs.items():
                if concurrency == 1 and repeat:
                    continue
                server.reset_peak_in_flight()
                run = bench.tap_run(config)
                expect_records(run, "tam_companies", rows, f"(g) page_concurrency {concurrency}")
                walls[concurrency].append(run.wall)
                peaks[concurrency] = max(peaks[concurrency], server.peak_in_flight)
        fetch = statistics.median(plain_requests(server, job_ids, 8) for _ in range(3))
    floor = startup + fetch
    for concurrency in configs:
        wall = statistics.median(walls[concurrency])
        eight = concurrency == 8
        table.append(
            [
                str(concurrency),
                f"{wall:.2f}",
                " ".join(f"{each:.2f}" for each in walls[concurrency]),
                str(peaks[concurrency]),
                f"{wall / floor:.2f}",
                f"<= {TARGET_G}" if eight else "",
                verdict(wall / floor, TARGET_G) if eight else "",
            ]
        )
        results.append(
            {
                "page_concurrency": concurrency,
                "wall_s": wall,
                "most_in_flight": peaks[concurrency],
                "x_floor": wall / floor,
            }
        )
    print_table(
        ["page_concurrency", "wall s", "each run s", "most in flight", "x floor", "target", ""],
        table,
    )
    print(
        f"    Floor: start-up {startup:.2f} s (a run with no jobs) + {fetch:.2f} s for the "
        f"same {G_JOBS * pages} requests by 8 plain threads\n    (median of 3) = {floor:.2f} s. "
        "'most in flight' is counted at the server."
    )
    return {"runs": results, "plain_fetch_s": fetch, "floor_s": floor}


def main() -> int:
    """Run section (g) alone.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    from harness import DEFAULT, QUICK  # noqa: PLC0415 - only the stand-alone run needs them

    scale = QUICK if args.quick else DEFAULT
    with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as workdir:
        bench = Bench(Path(workdir))
        startup = measure_startup(bench, scale)["zero_job_run_s"]
        section_g(bench, startup, scale.b_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
