"""The time-based life cycle of one fake job: statuses, delivered rows, cancel, pause, resume."""

from __future__ import annotations

import math
import typing as t
from dataclasses import dataclass, field, replace

from openfunnel_sandbox.data import band_label

JobKind = t.Literal["tam", "lookalike"]
Outcome = t.Literal["completed", "failed", "cancelled", "paused"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
QUIRKS = frozenset(
    {
        "numbers_as_strings",
        "missing_fields",
        "extra_fields",
        "renamed_fields",
        "new_manifest_field",
        "empty_page_with_cursor",
        "repeat_cursor",
        "manifest_mismatch",
        "opaque_cursor",
        "wrong_page",
        "null_rows",
    }
)
# Keeps a float boundary such as 3 * (R / 6) from flooring to band 2.
_EPSILON = 1e-9


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides how a fake job behaves over time.

    Attributes:
        kind: ``"tam"`` or ``"lookalike"``.
        rows: Rows delivered by a completed job.
        pending_seconds: Time spent ``pending`` (after any ``extra_statuses``).
        running_seconds: Time spent ``running``; 0 and 0 means done on creation.
        outcome: How the job ends: completed, failed, cancelled or (TAM) paused.
        error_message: Reported when the job fails.
        query: The TAM build query, echoed in ``source_query``.
        bands_total: TAM bands; rows arrive band by band.
        page_size: Rows per page; None takes the server's.
        partial_fraction: Share of ``rows`` delivered by a job that does not complete.
        extra_statuses: Unknown status strings shown, with their durations, before
            ``pending``.
        quirks: Odd behaviours to switch on (see ``QUIRKS``).
        job_id: Fixed job id; None draws one from the server's seeded counter.
        request: The submitted body, kept for the manifest (seed domains).
        population: Key the rows are drawn from instead of the job id: jobs that share
            it share companies (the same row for the same population index).
        first_row: Population index of the job's first row.
        refresh_drift: In a submit template: each later submit of the same request
            starts this many rows further into that request's population, so
            refreshes of one entry overlap yet add and drop companies (0: every job
            draws rows of its own).
    """

    kind: JobKind
    rows: int = 250
    pending_seconds: float = 0.0
    running_seconds: float = 0.0
    outcome: Outcome = "completed"
    error_message: str = "Upstream enrichment provider timed out"
    query: str = "cloud observability and monitoring tools"
    bands_total: int = 6
    page_size: int | None = None
    partial_fraction: float = 0.5
    extra_statuses: tuple[tuple[str, float], ...] = ()
    quirks: frozenset[str] = frozenset()
    job_id: str | None = None
    request: dict[str, t.Any] | None = field(default=None, compare=False)
    population: str | None = None
    first_row: int = 0
    refresh_drift: int = 0

    def __post_init__(self) -> None:
        """Reject specs the server could not play out.

        Raises:
            ValueError: On an unknown kind, outcome or quirk, or a value out of range.
        """
        # A set passed for quirks is accepted and frozen, so specs stay immutable.
        object.__setattr__(self, "quirks", frozenset(self.quirks))
        problems = []
        if self.kind not in ("tam", "lookalike"):
            problems.append(f"kind {self.kind!r}")
        if self.outcome not in ("completed", "failed", "cancelled", "paused"):
            problems.append(f"outcome {self.outcome!r}")
        if self.outcome == "paused" and self.kind != "tam":
            problems.append("outcome 'paused' (TAM only)")
        if unknown := self.quirks - QUIRKS:
            problems.append(f"quirks {sorted(unknown)}")
        if (
            self.rows < 0
            or self.bands_total < 1
            or (self.page_size is not None and self.page_size < 1)
            or min(self.first_row, self.refresh_drift) < 0
        ):
            problems.append("rows, bands_total, page_size, first_row or refresh_drift out of range")
        if not 0.0 <= self.partial_fraction <= 1.0:
            problems.append("partial_fraction outside 0..1")
        durations = [
            self.pending_seconds,
            self.running_seconds,
            *(s for _, s in self.extra_statuses),
        ]
        if any(seconds < 0 for seconds in durations):
            problems.append("negative duration")
        if problems:
            msg = f"Invalid JobSpec: {', '.join(problems)}"
            raise ValueError(msg)


@dataclass(frozen=True)
class JobState:
    """A job as seen at one instant.

    Attributes:
        status: The status string the API reports.
        delivered: Rows delivered so far (``processed``).
        started: Whether work has begun (the bulk ``processed`` is null before).
        bands_done: TAM bands finished.
        progress_message: The stage in words.
    """

    status: str
    delivered: int
    started: bool
    bands_done: int
    progress_message: str

    @property
    def terminal(self) -> bool:
        """Whether the status is final (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


class JobConflictError(Exception):
    """The job's status does not allow the requested action (HTTP 409)."""


class Job:
    """One job's clock-driven life cycle; callers hold the server lock around every call.

    Args:
        spec: How the job behaves.
        job_id: Its id.
        owner: The API key that created it; None means every key sees it.
        created: The server clock at creation.
        page_size: Rows per page.
    """

    def __init__(
        self, spec: JobSpec, *, job_id: str, owner: str | None, created: float, page_size: int
    ) -> None:
        self.spec = spec
        self.job_id = job_id
        self.owner = owner
        self.page_size = page_size
        self._created = created
        self._outcome: str = spec.outcome
        self._start = sum(seconds for _, seconds in spec.extra_statuses) + spec.pending_seconds
        self._run_len = spec.running_seconds
        if spec.outcome == "completed":
            self._final = spec.rows
            self._run_total = self._run_len
        else:
            # A job that stops early runs at the pace of a full build, so when it stops
            # it has delivered exactly `partial_fraction` of the rows.
            self._final = math.floor(spec.rows * spec.partial_fraction)
            fraction = spec.partial_fraction
            self._run_total = self._run_len / fraction if fraction > 0 else math.inf
        self._offset = 0.0  # wall seconds spent parked, which do not advance the job
        self._pause_point: float | None = None
        # Progress frozen at the cancel request, and when `cancelling` turns `cancelled`.
        self._at_cancel: JobState | None = None
        self._cancel_done = 0.0
        # Rows never go backwards, even when a resumed job's band pace rounds lower.
        self._min_delivered = 0

    @property
    def kind(self) -> str:
        """The job family, ``"tam"`` or ``"lookalike"``."""
        return self.spec.kind

    def _raw(self, now: float) -> float:
        return now - self._created - self._offset

    def _effective(self, now: float) -> float:
        raw = self._raw(now)
        return raw if self._pause_point is None else min(raw, self._pause_point)

    def _end(self) -> float:
        return self._start + self._run_len

    def _bands_at(self, tau: float) -> int:
        if math.isinf(self._run_total):
            return 0  # a job that stops with nothing delivered never finishes a band
        if self._run_total <= 0:
            return self.spec.bands_total
        return min(
            self.spec.bands_total,
            math.floor(tau * self.spec.bands_total / self._run_total + _EPSILON),
        )

    def _band_end(self, band: int) -> int:
        return band * self.spec.rows // self.spec.bands_total

    def _bands_covering(self, delivered: int) -> int:
        if self.spec.rows <= 0:
            return self.spec.bands_total
        return min(
            self.spec.bands_total, ((delivered + 1) * self.spec.bands_total - 1) // self.spec.rows
        )

    def _delivered_at(self, t_eff: float) -> int:
        if t_eff < self._start:
            return 0
        tau = t_eff - self._start
        if tau >= self._run_len:
            return self._final
        if self.kind == "tam":
            # TAM rows land band by band: nothing of a band shows until it is finished.
            progress = self._band_end(self._bands_at(tau))
        else:
            progress = math.floor(self.spec.rows * tau / self._run_total)
        return min(self._final, max(progress, self._min_delivered))

    def _phase(self, t_eff: float) -> str:
        elapsed = 0.0
        for status, seconds in self.spec.extra_statuses:
            elapsed += seconds
            if t_eff < elapsed:
                return status
        return "pending" if t_eff < self._start else "running"

    def state(self, now: float) -> JobState:
        """Work out the job's status and progress at ``now``.

        Args:
            now: ``time.monotonic()``.

        Returns:
            The job's state.
        """
        if self._at_cancel is not None:
            status = "cancelling" if now < self._cancel_done else "cancelled"
            return replace(self._at_cancel, status=status, progress_message=status)
        raw, t_eff = self._raw(now), self._effective(now)
        if t_eff >= self._end():
            return self._ended()
        delivered = self._delivered_at(t_eff)
        bands = self._bands_at(t_eff - self._start) if t_eff >= self._start else 0
        if self._pause_point is not None and raw >= self._pause_point:
            return JobState(
                "paused", delivered, t_eff >= self._start, bands, "paused at band boundary"
            )
        phase = self._phase(t_eff)
        status = "pausing" if self._pause_point is not None else phase
        return JobState(
            status, delivered, phase == "running", bands, self._message(phase, t_eff, bands)
        )

    def _ended(self) -> JobState:
        delivered = self._final
        completed = self._outcome == "completed"
        bands = self.spec.bands_total if completed else self._bands_covering(delivered)
        return JobState(
            self._outcome, delivered, started=True, bands_done=bands, progress_message=self._outcome
        )

    def _message(self, phase: str, t_eff: float, bands: int) -> str:
        if phase != "running":
            return phase if self.kind == "tam" else "pending"
        if self.kind == "lookalike":
            halfway = (t_eff - self._start) * 2 < self._run_len
            return "retrieving_companies" if halfway else "qualifying_companies"
        in_flight = self._band_end(bands + 1) - self._band_end(bands)
        return f"band {band_label(bands)}: validating {max(in_flight, 1) * 4}"

    def cancel(self, now: float, cancel_seconds: float) -> str:
        """Ask the job to stop; it keeps the rows delivered so far.

        Args:
            now: ``time.monotonic()``.
            cancel_seconds: How long the job stays ``cancelling``.

        Returns:
            The status to answer, always ``"cancelling"``.

        Raises:
            JobConflictError: If the job is already terminal.
        """
        current = self.state(now)
        if current.terminal:
            msg = f"Job is already {current.status}"
            raise JobConflictError(msg)
        if self._at_cancel is None:
            bands = self._bands_covering(current.delivered)
            self._at_cancel = replace(current, bands_done=min(bands, current.bands_done))
            self._cancel_done = now + cancel_seconds
        return "cancelling"

    def pause(self, now: float) -> str:
        """Ask a TAM job to park at the next band boundary.

        Args:
            now: ``time.monotonic()``.

        Returns:
            ``"paused"`` if it already was, else ``"pausing"``.

        Raises:
            JobConflictError: If the job is terminal or being cancelled.
        """
        current = self.state(now)
        if current.terminal or current.status == "cancelling":
            msg = f"Job is {current.status} and cannot be paused"
            raise JobConflictError(msg)
        if current.status in ("paused", "pausing"):
            return current.status
        t_eff = self._effective(now)
        if t_eff < self._start or math.isinf(self._run_total):
            # No band is in flight before running starts, so the job parks at once.
            boundary = t_eff if t_eff < self._start else self._end()
        else:
            band_time = self._run_total / self.spec.bands_total
            boundary = (
                self._start + math.ceil((t_eff - self._start) / band_time - _EPSILON) * band_time
            )
        # A boundary at or past the natural end means the job finishes first.
        self._pause_point = boundary
        return "pausing"

    def resume(self, now: float) -> str:
        """Continue a paused TAM job from its checkpoint.

        Args:
            now: ``time.monotonic()``.

        Returns:
            ``"running"``.

        Raises:
            JobConflictError: If the job is terminal or not paused.
        """
        current = self.state(now)
        if current.status != "paused":
            msg = f"Job is {current.status}, only a paused job can be resumed"
            raise JobConflictError(msg)
        raw = self._raw(now)
        if self._pause_point is not None and self._pause_point < self._end():
            self._offset += raw - self._pause_point
        else:
            # Paused by its spec (outcome "paused"): go on at the same pace to the full set.
            self._offset += raw - self._end()
            self._min_delivered = current.delivered
            self._outcome = "completed"
            self._final = self.spec.rows
            if math.isinf(self._run_total):
                self._run_total = self._run_len
            self._run_len = self._run_total
        self._pause_point = None
        return "running"
