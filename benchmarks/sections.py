"""Sections (a), (c) and (d): the tap at its defaults first, then the others."""

from __future__ import annotations

import statistics
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

import requests
from harness import (
    API_KEY,
    MIB,
    PAGE_SIZE,
    TAM_PATH,
    TARGET_A,
    TARGET_C,
    TARGET_D,
    Bench,
    Scale,
    expect_records,
    print_table,
    verdict,
)

from openfunnel_sandbox import FakeOpenFunnel, JobSpec


def plain_fetch(
    server: FakeOpenFunnel, job_id: str, pages: int, concurrency: int, repeats: int = 3
) -> float:
    """What (a) fetches, with plain ``requests`` and no tap code: its floor, median seconds.

    One poll (which also brings page_0000), then pages 1 to ``pages - 1`` from
    ``concurrency`` threads, each with its own kept-alive session: the round trips the
    tap makes, with nothing decoded or written. Against this server, on this machine,
    no client of the same protocol can fetch them faster.

    Args:
        server: The fake server, with its latency set.
        job_id: A completed job of the server with ``pages`` pages.
        pages: The job's pages.
        concurrency: Requests in flight.
        repeats: Timed repeats.

    Returns:
        The median wall time from the poll's start to the last page's end.
    """
    url = f"{server.url}{TAM_PATH}/{job_id}"
    local = threading.local()

    def get(cursor: str | None) -> bytes:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["X-API-Key"] = API_KEY
        params = {"cursor": cursor} if cursor else None
        answer = session.get(url, params=params, timeout=30)
        answer.raise_for_status()
        return answer.content

    times = []
    for _ in range(repeats):
        # Fresh threads and sessions each time: the tap opens its connections too.
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            began = time.perf_counter()
            get(None)
            for body in pool.map(get, [f"page_{index:04d}" for index in range(1, pages)]):
                del body
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def section_a(bench: Bench, scale: Scale, startup: float) -> dict[str, t.Any]:
    """(a) One completed job read with page_concurrency 1, 4, 8 under server latency.

    Args:
        bench: The runner.
        scale: Sizes.
        startup: Wall seconds of a no-job run.

    Returns:
        One dict per concurrency (``runs``), and the floor at page_concurrency 8.
    """
    rows = scale.a_pages * PAGE_SIZE
    bound = scale.a_pages * scale.a_latency
    print(
        f"\n(a) Completed TAM job of {scale.a_pages} pages ({rows:,} rows, {PAGE_SIZE}/page), "
        f"{scale.a_latency * 1000:.0f} ms server latency per request.\n"
        f"    Sequential lower bound = {scale.a_pages} pages x {scale.a_latency * 1000:.0f} ms "
        f"= {bound:.2f} s. Target: page_concurrency 8 <= {TARGET_A} x bound."
    )
    if scale.b_repeats > 1:
        print(
            f"    Median of {scale.b_repeats} runs each, interleaved (page_concurrency 1, the "
            "slow reference, runs once)."
        )
    results: list[dict[str, float]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(latency=scale.a_latency, page_size=PAGE_SIZE) as server:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        configs = {
            concurrency: bench.config(server, tam_job_ids=[job_id], page_concurrency=concurrency)
            for concurrency in scale.a_concurrency
        }
        walls: dict[int, list[float]] = {concurrency: [] for concurrency in configs}
        for repeat in range(scale.b_repeats):
            for concurrency, config in configs.items():
                if concurrency == 1 and repeat:
                    continue
                run = bench.tap_run(config)
                expect_records(run, "tam_companies", rows, f"(a) page_concurrency {concurrency}")
                walls[concurrency].append(run.wall)
        for concurrency in configs:
            wall = statistics.median(walls[concurrency])
            ratio = wall / bound
            net = (wall - startup) / bound
            target = f"<= {TARGET_A:.2f}" if concurrency == 8 else ""
            result = verdict(ratio, TARGET_A) if concurrency == 8 else ""
            table.append(
                [
                    str(concurrency),
                    f"{wall:.2f}",
                    " ".join(f"{each:.2f}" for each in walls[concurrency]),
                    f"{ratio:.3f}",
                    f"{net:.3f}",
                    f"{rows / wall:,.0f}",
                    target,
                    result,
                ]
            )
            results.append(
                {
                    "page_concurrency": concurrency,
                    "wall_s": wall,
                    "x_bound": ratio,
                    "net_x_bound": net,
                }
            )
        fetch = plain_fetch(server, job_id, scale.a_pages, 8)
    print_table(
        [
            "page_concurrency",
            "wall s",
            "each run s",
            "x bound",
            "net x bound",
            "records/s",
            "target",
            "",
        ],
        table,
    )
    floor = startup + fetch
    print(
        f"    Floor at page_concurrency 8 with this server, Python and machine: start-up "
        f"{startup:.2f} s (a run with no jobs) + {fetch:.2f} s for the same poll and\n"
        f"    {scale.a_pages - 1} pages fetched by 8 threads of plain requests, nothing "
        f"decoded or written (median of 3) = {floor:.2f} s = {floor / bound:.3f} x bound."
    )
    return {
        "runs": results,
        "plain_fetch_s": fetch,
        "floor_s": floor,
        "floor_x_bound": floor / bound,
    }


def section_c(bench: Bench, scale: Scale) -> list[dict[str, float]]:
    """(c) Peak RSS of the tap process for a small and a large job, per page_concurrency.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        Per page_concurrency: peak RSS of each job, in MiB, and the difference.
    """
    small, large = scale.c_rows
    goals = ", ".join(
        f"{target:.0f} MiB at page_concurrency {concurrency}"
        for concurrency, target in TARGET_C.items()
    )
    print(
        "\n(c) Peak RSS of the whole tap process (its own ru_maxrss, from wait4), no latency."
        f"\n    Target: {large:,} rows within {goals} of {small:,} rows."
    )
    results: list[dict[str, float]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        jobs = {rows: server.add_job(JobSpec(kind="tam", rows=rows)) for rows in (small, large)}
        for concurrency in scale.c_concurrency:
            peaks: dict[int, float] = {}
            for rows, job_id in jobs.items():
                config = bench.config(server, tam_job_ids=[job_id], page_concurrency=concurrency)
                run = bench.tap_run(config)
                expect_records(run, "tam_companies", rows, f"(c) {rows} rows")
                peaks[rows] = run.max_rss / MIB
            diff = peaks[large] - peaks[small]
            target = TARGET_C.get(concurrency)
            table.append(
                [
                    str(concurrency),
                    f"{peaks[small]:.1f}",
                    f"{peaks[large]:.1f}",
                    f"{diff:+.1f}",
                    f"<= {target:.0f}" if target is not None else "",
                    verdict(diff, target) if target is not None else "",
                ]
            )
            results.append(
                {
                    "page_concurrency": concurrency,
                    "small_rows": small,
                    "large_rows": large,
                    "small_mib": peaks[small],
                    "large_mib": peaks[large],
                    "diff_mib": diff,
                }
            )
    print_table(
        [
            "page_concurrency",
            f"{small:,} rows MiB",
            f"{large:,} rows MiB",
            "difference",
            "target",
            "",
        ],
        table,
    )
    return results


def section_d(bench: Bench, scale: Scale) -> dict[str, float]:
    """(d) Three jobs that turn terminal at different times, extracted in one run.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        The wall time, the slowest job's time and their ratio.
    """
    slowest = max(scale.d_finish)
    finish = ", ".join(f"{seconds:g}" for seconds in scale.d_finish)
    print(
        f"\n(d) Three jobs (TAM, lookalike, TAM; {scale.d_rows:,} rows each) pending then "
        f"running, terminal {finish} s after creation;\n    one tap run with poll_interval "
        "0.25, max_poll_interval 0.5. Wall time from creating the jobs to the tap's exit.\n"
        f"    Target: <= {TARGET_D} x the slowest job ({slowest:g} s)."
    )
    kinds: tuple[t.Literal["tam", "lookalike"], ...] = ("tam", "lookalike", "tam")
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        created = time.monotonic()
        jobs = [
            (
                kind,
                server.add_job(
                    JobSpec(
                        kind=kind,
                        rows=scale.d_rows,
                        pending_seconds=seconds / 2,
                        running_seconds=seconds / 2,
                    )
                ),
            )
            for kind, seconds in zip(kinds, scale.d_finish, strict=True)
        ]
        tam_ids = [job_id for kind, job_id in jobs if kind == "tam"]
        lookalike_ids = [job_id for kind, job_id in jobs if kind == "lookalike"]
        config = bench.config(
            server,
            tam_job_ids=tam_ids,
            lookalike_job_ids=lookalike_ids,
            poll_interval=0.25,
            max_poll_interval=0.5,
        )
        run = bench.tap_run(config)
        wall = run.ended - created
    expect_records(run, "tam_companies", scale.d_rows * len(tam_ids), "(d) TAM jobs")
    expect_records(
        run, "lookalike_companies", scale.d_rows * len(lookalike_ids), "(d) lookalike job"
    )
    ratio = wall / slowest
    print_table(
        ["", "wall s", "x slowest", "after slowest s", "target", ""],
        [
            [
                "3 jobs, one run",
                f"{wall:.2f}",
                f"{ratio:.2f}",
                f"{wall - slowest:.2f}",
                f"<= {TARGET_D:.2f}",
                verdict(ratio, TARGET_D),
            ]
        ],
    )
    return {"wall_s": wall, "slowest_s": slowest, "x_slowest": ratio}
