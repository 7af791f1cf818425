"""The account behind the sandbox: its jobs, who may see them, what they cost."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import typing as t
import uuid
from dataclasses import replace

from openfunnel_sandbox.lifecycle import Job, JobSpec, JobState

if t.TYPE_CHECKING:
    from collections.abc import Callable


class CreditsExceededError(Exception):
    """A job's worst-case cost is more than the credits left.

    Args:
        cost: The job's worst-case cost.
        left: Credits left.
    """

    def __init__(self, cost: int, left: float) -> None:
        super().__init__(f"Worst-case cost {cost} exceeds the {left:g} credits left")
        self.cost = cost
        self.left = left


class JobStore:
    """Every job of the fake account, guarded by one lock (nothing slow runs under it).

    Args:
        seed: Seed of generated job ids; None draws one (ids unique per server start).
        clock: Monotonic clock driving the jobs.
    """

    def __init__(self, *, seed: int | None, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._seed = secrets.randbits(64) if seed is None else seed
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._unbilled: list[Job] = []
        self._billed = 0.0
        self._counter = 0
        self._submits = {"tam": 0, "lookalike": 0}
        self._population_jobs: dict[str, int] = {}

    def create(
        self,
        spec: JobSpec,
        *,
        owner: str | None,
        page_size: int,
        submitted: bool = False,
        credits_total: float | None = None,
    ) -> Job:
        """Create a job now.

        Args:
            spec: How it behaves.
            owner: The key that submitted it; None for jobs every key sees.
            page_size: Rows per page when the spec does not say.
            submitted: Whether a POST submit created it (counted by ``submit_count``).
            credits_total: When given, refuse jobs whose rows exceed the credits left.

        Returns:
            The job.

        Raises:
            CreditsExceededError: If the job could cost more than the credits left.
            ValueError: If ``spec.job_id`` is already taken.
        """
        with self._lock:
            # Checked and created under one lock so that concurrent submits cannot
            # overspend together.
            if credits_total is not None:
                left = credits_total - self._credits_used_locked()
                if spec.rows > left:
                    raise CreditsExceededError(spec.rows, left)
            if submitted and spec.refresh_drift:
                spec = self._drifted_locked(spec)
            job_id = spec.job_id or self._next_id()
            if job_id in self._jobs:
                msg = f"A job with id {job_id} already exists"
                raise ValueError(msg)
            page_size = spec.page_size or page_size
            job = Job(spec, job_id=job_id, owner=owner, created=self.clock(), page_size=page_size)
            self._jobs[job_id] = job
            self._unbilled.append(job)
            if submitted:
                self._submits[spec.kind] += 1
            return job

    def _drifted_locked(self, spec: JobSpec) -> JobSpec:
        """The spec of the next refresh of its request: its rows shifted along its population."""
        canonical = json.dumps([spec.kind, spec.request], sort_keys=True, separators=(",", ":"))
        population = hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()
        earlier = self._population_jobs.get(population, 0)
        self._population_jobs[population] = earlier + 1
        return replace(spec, population=population, first_row=earlier * spec.refresh_drift)

    def _next_id(self) -> str:
        self._counter += 1
        key = f"{self._seed}:{self._counter}".encode()
        return str(uuid.UUID(bytes=hashlib.blake2b(key, digest_size=16).digest(), version=4))

    def find(self, kind: str, job_id: str, api_key: str | None) -> tuple[Job, JobState] | None:
        """Look a job up as one key sees it, with its state now.

        Args:
            kind: The family of the endpoint asked (a TAM id is unknown to bulk).
            job_id: The id from the path.
            api_key: The caller's key.

        Returns:
            The job and its state, or None when this key cannot see such a job.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.kind != kind or job.owner not in (None, api_key):
                return None
            return job, job.state(self.clock())

    def control(self, job: Job, action: str, cancel_seconds: float) -> str:
        """Cancel, pause or resume a job.

        Args:
            job: A job from :meth:`find`.
            action: ``cancel``, ``pause`` or ``resume``.
            cancel_seconds: How long a cancel stays ``cancelling``.

        Returns:
            The status to answer.

        Raises:
            JobConflictError: If the job's status forbids it.
        """
        with self._lock:
            now = self.clock()
            if action == "cancel":
                return job.cancel(now, cancel_seconds)
            if action == "pause":
                return job.pause(now)
            return job.resume(now)

    def state(self, job_id: str) -> JobState:
        """Return a job's state now, whoever owns it.

        Args:
            job_id: The job id.

        Returns:
            The state.

        Raises:
            KeyError: If no such job exists.
        """
        with self._lock:
            return self._jobs[job_id].state(self.clock())

    def submit_counts(self) -> dict[str, int]:
        """Return the jobs created by POST submits, per family."""
        with self._lock:
            return dict(self._submits)

    def credits_used(self) -> float:
        """Return the credits billed: 1 per row of every job that reached a terminal status."""
        with self._lock:
            return self._credits_used_locked()

    def _credits_used_locked(self) -> float:
        now = self.clock()
        unbilled = []
        for job in self._unbilled:
            state = job.state(now)
            if state.terminal:
                # Terminal states never change, so each job is billed exactly once.
                self._billed += state.delivered
            else:
                unbilled.append(job)
        self._unbilled = unbilled
        return self._billed
