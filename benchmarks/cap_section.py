"""(h) The spend cap: how far past ``max_credits`` a run's TAM builds bill, before and after.

Run ``.venv/bin/python benchmarks/cap_section.py``. The fake server's TAM builds deliver
rows band by band (nothing of a band shows until it is finished); a cancel keeps, and
bills, only what was delivered when it arrived. The server and the tap's poller share
one fake clock, so the figures are the same on every machine and the seconds are the
default settings' own (poll_interval 5 s doubling to 60 s), not wall time; only the
HTTP round trips are real (loopback).

"before" is the brake of commit dd3df6a, kept below as ``LegacyGuard``: cancel once the
spend has passed the cap, on the poller's own doubling schedule. "after" is the run's
brake as shipped (:class:`tap_openfunnel.budget.BudgetGuard`): the next band projected
from the growth seen, sooner polls near the cap.
"""

from __future__ import annotations

import logging
import threading
import typing as t
from dataclasses import dataclass

from openfunnel_sandbox import FakeOpenFunnel, JobSpec
from tap_openfunnel.api import JobAPI
from tap_openfunnel.checkpoint import Checkpoint
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.jobs import JobPoller, JobSnapshot, JobType
from tap_openfunnel.planner import Planner
from tap_openfunnel.run import Run
from tap_openfunnel.settings import Settings

if t.TYPE_CHECKING:
    from collections.abc import Callable

API_KEY = "of_bench_cap_key"
CAP = 2000
STREAMS = {JobType.TAM: "tam_companies", JobType.LOOKALIKE: "lookalike_companies"}


class FakeClock:
    """One clock for the server and the poller; sleeping moves it on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The time now, in seconds."""
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        """Move the clock on by ``seconds``."""
        with self._lock:
            self.now += max(seconds, 0.0)


class LegacyGuard:
    """The brake before this change: cancel a build once the run's spend passes the cap."""

    def __init__(self, max_credits: float, *, cancel: Callable[[str], None]) -> None:
        self.max_credits = max_credits
        self._cancel = cancel
        self._spend: dict[str, float] = {}
        self.cancelled: set[str] = set()

    def observe(self, snapshot: JobSnapshot, *, reserved: float = 0.0, at: float = 0.0) -> None:
        """Count the build's processed; cancel it if the run is past the cap."""
        del reserved, at
        try:
            self._spend[snapshot.job_id] = float(snapshot.body.get("processed") or 0)
        except (TypeError, ValueError):
            self._spend.setdefault(snapshot.job_id, 0.0)
        if snapshot.terminal or snapshot.job_id in self.cancelled:
            return
        if sum(self._spend.values()) > self.max_credits:
            self.cancelled.add(snapshot.job_id)
            self._cancel(snapshot.job_id)


@dataclass(frozen=True)
class Case:
    """Builds submitted together in one run."""

    name: str
    builds: tuple[JobSpec, ...]


# Bands of 10 s at the default poll schedule; one case per way a cap is passed.
CASES = (
    Case(
        "one build, 12 bands of 833",
        (JobSpec(kind="tam", rows=10_000, bands_total=12, running_seconds=120),),
    ),
    Case(
        "one build, pending 100 s, then 12 bands of 833",
        (
            JobSpec(
                kind="tam", rows=10_000, bands_total=12, pending_seconds=100, running_seconds=120
            ),
        ),
    ),
    Case(
        "two builds of 3 bands of 500, each under the cap",
        tuple(JobSpec(kind="tam", rows=1500, bands_total=3, running_seconds=30) for _ in "ab"),
    ),
    Case(
        "one build, 6 bands of 1,666 (a step near the cap)",
        (JobSpec(kind="tam", rows=10_000, bands_total=6, running_seconds=60),),
    ),
)


def billed(case: Case, *, legacy: bool) -> tuple[int, int]:
    """Run one case to its end; the credits billed and the polls it took."""
    clock = FakeClock()
    with FakeOpenFunnel(api_keys=(API_KEY,), seed=7, clock=clock) as server:
        queue = list(case.builds)
        settings = Settings.from_config(
            {
                "api_key": API_KEY,
                "api_url": server.url,
                "tam_builds": [{"query": f"build {index}"} for index in range(len(queue))],
                "max_credits": CAP,
            }
        )
        api = JobAPI(OpenFunnelClient(api_url=server.url, api_key=API_KEY, pool_size=2))
        submit = api.submit

        def submit_next(job_type: JobType, body: t.Any) -> dict[str, t.Any]:  # noqa: ANN401
            server.submit_defaults["tam"] = queue.pop(0)
            return submit(job_type, body)

        api.submit = submit_next  # type: ignore[method-assign]
        plan = Planner(settings, api, STREAMS, lambda _name: []).plan()
        state: dict[str, dict[str, t.Any]] = {}
        checkpoint = Checkpoint(
            lambda _stream, job_id: state.setdefault(job_id, {"context": {"job_id": job_id}}),
            lambda: None,
        )

        def poller(*args: t.Any, **kwargs: t.Any) -> JobPoller:  # noqa: ANN401
            return JobPoller(*args, clock=clock, sleep=clock.sleep, **kwargs)

        run = Run(plan, api, checkpoint, settings, poller)
        if legacy:
            run.budget = LegacyGuard(CAP, cancel=run.cancel)  # type: ignore[assignment]
            run.poller.interval_limit = None
        run.start()
        run.wait_all()
        jobs = list(run.poller.jobs)
        polls = server.request_count("GET", "/api/v1/tam/build/")
        return sum(server.job_delivered(job_id) for job_id in jobs), polls


def section_cap() -> list[dict[str, t.Any]]:
    """Measure every case before and after; print the table.

    Returns:
        One row per case.
    """
    logging.getLogger("tap-openfunnel").setLevel(logging.ERROR)
    rows = []
    for case in CASES:
        before, before_polls = billed(case, legacy=True)
        after, after_polls = billed(case, legacy=False)
        rows.append(
            {
                "case": case.name,
                "before": before,
                "after": after,
                "before_polls": before_polls,
                "after_polls": after_polls,
            }
        )
    print(f"(h) Spend cap: credits billed with max_credits {CAP:,} (fake clock, default polls)")
    print(f"  {'case':<50} {'before':>24} {'after':>24}")
    for row in rows:
        cells = [
            f"{row[key]:,} ({row[key] - CAP:+,}), {row[key + '_polls']} polls"
            for key in ("before", "after")
        ]
        print(f"  {row['case']:<50} {cells[0]:>24} {cells[1]:>24}")
    print("  (credits billed, their difference from the cap, and the polls it took)")
    return rows


if __name__ == "__main__":
    section_cap()
