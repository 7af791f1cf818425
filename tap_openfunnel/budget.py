"""Spending: money numbers read strictly, and the brake on TAM builds near ``max_credits``.

Credits are money, so a number the API sends about them (a balance, a build's
``processed`` count, a manifest's ``credits_consumed``) is used only when it is a JSON
number, finite and not negative. Anything else (NaN, infinity, a string, a boolean, a
negative number, nothing) is *unknown*, and unknown never submits, never passes a budget
check and never cancels a build.
"""

from __future__ import annotations

import logging
import math
import typing as t
from dataclasses import dataclass

from tap_openfunnel.exceptions import ConfigurationError
from tap_openfunnel.families import BY_TYPE

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from tap_openfunnel.jobs import JobSnapshot, TrackedJob

LOGGER = logging.getLogger("tap-openfunnel")


def credit_amount(value: object) -> float | None:
    """A money number as the API sent it, or None when it cannot be trusted.

    Args:
        value: A decoded JSON value.

    Returns:
        The amount, or None for anything but a finite, non-negative JSON number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) and number >= 0 else None


def unreadable(value: object) -> str:
    """How a message names a money value that :func:`credit_amount` refused.

    Args:
        value: The value as decoded.

    Returns:
        ``missing``, ``NaN``, ``a string ('12')``... never the word for a number.
    """
    if value is None:
        return "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = {str: repr(value)[:42], bool: str(value).lower()}.get(type(value))
        kind = {str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
        return f"a {kind} ({shown})" if shown is not None else f"a {kind}"
    if value < 0:
        return f"negative ({value:.6g})"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else "infinite"
    return "a number beyond float range"


def cap_setting(value: object) -> float | None:
    """The ``max_credits`` setting as a number, refusing one no budget can be checked by.

    Args:
        value: The setting's value (None: no cap).

    Returns:
        The cap, or None.

    Raises:
        ConfigurationError: NaN, infinity, a negative number or not a number.
    """
    if value is None:
        return None
    cap = credit_amount(value)
    if cap is None:
        msg = (
            f"Setting 'max_credits' is {unreadable(value)}, not a number of credits, so no "
            "spend could be checked against it. Set it to a whole number of credits such "
            "as 2000, or remove it for no cap; nothing was submitted."
        )
        raise ConfigurationError(msg)
    return cap


def credits_text(amount: float) -> str:
    """Credits as people write them: ``1,484``, or ``12.5`` when not whole.

    Args:
        amount: A readable number of credits (see :func:`credit_amount`).

    Returns:
        The amount with thousands separators and no trailing ``.0``.
    """
    return f"{amount:,.0f}" if float(amount).is_integer() else f"{amount:,.2f}".rstrip("0")


def _band_count(done: object, total: object) -> int | None:
    """``bands_done`` when it is a whole number within ``bands_total``, else None.

    A count that cannot be placed is not used to split growth into bands: the growth
    between two polls then counts as one band, which projects a larger next step.
    """
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (done, total)):
        return None
    done, total = t.cast("int", done), t.cast("int", total)
    return done if 0 <= done <= total else None


@dataclass
class _Build:
    """What the polls of one TAM build showed: its spend and how fast it grows."""

    processed: float = 0.0  # the highest readable count: billed credits never shrink
    bands: int | None = None
    step: float | None = None  # the largest growth per band seen
    first: tuple[float, float] | None = None  # (clock, processed) before the first growth
    last_at: float = 0.0
    terminal: bool = False
    started: bool = False  # reported "running" at least once
    warned: bool = False

    def rate(self) -> float | None:
        """Credits per second since the last reading before growth, once it grew."""
        if self.first is None or self.step is None:
            return None
        seconds = self.last_at - self.first[0]
        grown = self.processed - self.first[1]
        return grown / seconds if seconds > 0 and grown > 0 else None

    def read(self, snapshot: JobSnapshot, at: float) -> bool:
        """Take one poll's ``processed`` (and ``bands_done``); False when unreadable."""
        self.terminal = snapshot.terminal
        self.started = self.started or snapshot.status == "running"
        processed = credit_amount(snapshot.body.get("processed"))
        if processed is None:
            return False
        bands = _band_count(snapshot.body.get("bands_done"), snapshot.body.get("bands_total"))
        grown = processed - self.processed
        if grown > 0:
            # Several bands can land between two polls: their mean is one band's step.
            per_band = (
                grown / (bands - self.bands)
                if bands is not None and self.bands is not None and bands > self.bands
                else grown
            )
            self.step = max(self.step or 0.0, per_band)
        if self.first is None or (self.step is None and grown <= 0):
            # Growth is timed from the last reading before the first band: a build that
            # was pending for long does not look slow.
            self.first = (at, processed)
        self.processed = max(self.processed, processed)
        self.bands = bands if bands is not None else self.bands
        self.last_at = at
        return True


class BudgetGuard:
    """Keeps this run's jobs together under ``max_credits``, cancelling TAM builds.

    A TAM build has no size parameter, so its ``processed`` count is the only brake:
    a cancelled build keeps (and bills) only what was delivered. The spend is every
    guarded job together: what each TAM build has processed (its highest readable
    count) plus the ``limit`` of each search submitted in this run (its worst case).
    Which families are braked and which reserved follows their ``size_field``
    (``families.py``).

    Rows of a build land band by band. After each poll of a build the guard projects
    the next step of every running build (the largest growth per band seen) and
    cancels the polled build when the spend plus those steps would pass the cap, or
    when the spend has reached it. Near the cap it asks the poller to poll sooner
    (:meth:`poll_within`), so that no more than one band lands between two polls.

    Args:
        max_credits: The cap, or None for none.
        cancel: Cancels a job by id.
        watch_interval: How often a build is polled until it has shown its pace (the
            first poll interval: no doubling while the brake cannot project).
        min_interval: The shortest wait it asks the poller for, in seconds.
    """

    def __init__(
        self,
        max_credits: float | None,
        *,
        cancel: Callable[[str], None],
        watch_interval: float = 5.0,
        min_interval: float = 1.0,
    ) -> None:
        self.max_credits = max_credits
        self._cancel = cancel
        self.watch_interval = watch_interval
        self.min_interval = min(min_interval, watch_interval)
        self._builds: dict[str, _Build] = {}
        self._reserved: dict[str, float] = {}
        self.cancelled: set[str] = set()
        self.blind: set[str] = set()

    @property
    def spent(self) -> float:
        """This run's spend so far: builds' processed counts plus searches' limits."""
        return sum(build.processed for build in self._builds.values()) + sum(
            self._reserved.values()
        )

    def _running(self) -> list[_Build]:
        return [
            build
            for job_id, build in self._builds.items()
            if not build.terminal and job_id not in self.cancelled
        ]

    def _projection(self) -> tuple[float, float]:
        """The next band of every running build together, and their growth per second.

        A running build that has shown no growth yet is assumed to grow like the
        fastest one seen, with a band as large as the largest seen: builds of one run
        are alike, and assuming nothing would let it land bands unwatched.
        """
        running = self._running()
        step_guess = max((build.step or 0.0 for build in running), default=0.0)
        rate_guess = max((build.rate() or 0.0 for build in running), default=0.0)
        steps = rates = 0.0
        for build in running:
            guess = build.started and build.step is None
            steps += build.step or (step_guess if guess else 0.0)
            rates += build.rate() or (rate_guess if guess else 0.0)
        return steps, rates

    def observe(self, snapshot: JobSnapshot, *, reserved: float = 0.0, at: float = 0.0) -> None:
        """Account for one poll of a guarded job; cancel a build the cap cannot afford.

        Args:
            snapshot: The poll answer.
            reserved: Credits set aside for the job whatever it reports (a search's limit).
            at: The poller's clock at the poll.
        """
        if BY_TYPE[snapshot.job_type].bounded:
            self._reserved[snapshot.job_id] = reserved
            return
        build = self._builds.setdefault(snapshot.job_id, _Build())
        if not build.read(snapshot, at):
            self._warn_blind(snapshot, build)
            return
        cap = self.max_credits
        if cap is None or snapshot.terminal or snapshot.job_id in self.cancelled:
            return
        spent = self.spent
        steps, _ = self._projection()
        if spent >= cap:
            why = f"have reached {credits_text(spent)} credits, max_credits is {credits_text(cap)}"
        elif build.step is not None and spent + steps > cap:
            why = (
                f"have reached {credits_text(spent)} credits and the next band of the "
                f"running builds (about {credits_text(steps)}, from the growth seen so "
                f"far) would pass max_credits ({credits_text(cap)})"
            )
        else:
            return
        self.cancelled.add(snapshot.job_id)
        LOGGER.warning(
            "Job %s: this run's jobs %s; cancelling the build. The companies delivered so "
            "far stay readable and are the only ones billed; they will be extracted.",
            snapshot.job_id,
            why,
        )
        self._cancel(snapshot.job_id)

    def poll_within(self, job: TrackedJob) -> float | None:
        """How soon a build should be polled again so the brake sees every band in time.

        Until a build has grown, every ``watch_interval`` (its pace is unknown, so the
        poller's doubling would leave it unwatched). Then half the time to the point
        where the next bands would pass the cap, at the growth seen so far, and never
        less than half a band's time (one band can land between two polls, not two).

        Args:
            job: The tracked job about to be rescheduled.

        Returns:
            Seconds, or None when the cap does not call for sooner polls.
        """
        build = self._builds.get(job.job_id)
        cap = self.max_credits
        if cap is None or build is None or job.job_id in self.cancelled:
            return None
        rate = build.rate()
        if rate is None or build.step is None:
            return None if build.terminal else self.watch_interval
        steps, total_rate = self._projection()
        room = cap - self.spent - steps
        until_brake = max(room, 0.0) / total_rate if total_rate > 0 else math.inf
        band_time = build.step / rate
        return max(band_time / 2, until_brake / 2, self.min_interval)

    def _warn_blind(self, snapshot: JobSnapshot, build: _Build) -> None:
        value = snapshot.body.get("processed")
        if self.max_credits is None or build.warned:
            return
        if value is None and not build.started and build.first is None:
            return  # no count before a build starts is normal
        build.warned = True
        self.blind.add(snapshot.job_id)
        LOGGER.warning(
            "Job %s reports processed as %s, not a number of credits, so max_credits "
            "cannot be checked against it: the build is not cancelled on that number, "
            "and its last readable count (%s) stands for its spend until it sends one. "
            "Watch this build in OpenFunnel and cancel it there if it runs past your "
            "budget.",
            snapshot.job_id,
            unreadable(value),
            credits_text(build.processed),
        )
