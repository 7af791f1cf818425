"""Spending while jobs run: the brake on TAM builds that pass ``max_credits``."""

from __future__ import annotations

import logging
import typing as t

from tap_openfunnel.jobs import JobType

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from tap_openfunnel.jobs import JobSnapshot

LOGGER = logging.getLogger("tap-openfunnel")


def credits_text(amount: float) -> str:
    """Credits as people write them: ``1,484``, or ``12.5`` when not whole.

    Args:
        amount: A number of credits (the API sends whole numbers as floats too).

    Returns:
        The amount with thousands separators and no trailing ``.0``.
    """
    return f"{amount:,.0f}" if float(amount).is_integer() else f"{amount:,.2f}".rstrip("0")


class BudgetGuard:
    """Cancels a submitted TAM build once this run's spend passes ``max_credits``.

    A TAM build has no size parameter, so its ``processed`` count is the only brake:
    a cancelled build keeps (and bills) only what was delivered. Spend is what the
    running TAM builds have processed plus the limits of the searches submitted in this
    run (their worst case).

    Args:
        max_credits: The cap, or None for none.
        cancel: Cancels a job by id.
    """

    def __init__(self, max_credits: float | None, *, cancel: Callable[[str], None]) -> None:
        self.max_credits = max_credits
        self._cancel = cancel
        self._spend: dict[str, float] = {}
        self.cancelled: set[str] = set()

    def observe(self, snapshot: JobSnapshot, *, reserved: float = 0.0) -> None:
        """Account for one poll of a job the tap submitted; cancel a build over the cap.

        Args:
            snapshot: The poll answer.
            reserved: Credits set aside for the job whatever it reports (a search's limit).
        """
        if snapshot.job_type is JobType.TAM:
            try:
                self._spend[snapshot.job_id] = float(snapshot.body.get("processed") or 0)
            except (TypeError, ValueError):
                self._spend.setdefault(snapshot.job_id, 0.0)
        else:
            self._spend[snapshot.job_id] = reserved
        cap = self.max_credits
        if (
            cap is None
            or snapshot.job_type is not JobType.TAM
            or snapshot.terminal
            or snapshot.job_id in self.cancelled
        ):
            return
        spent = sum(self._spend.values())
        if spent <= cap:
            return
        self.cancelled.add(snapshot.job_id)
        LOGGER.warning(
            "Job %s: this run's jobs have reached %.0f credits, above max_credits (%.0f); "
            "cancelling the build. The companies delivered so far stay readable and are "
            "the only ones billed; they will be extracted.",
            snapshot.job_id,
            spent,
            cap,
        )
        self._cancel(snapshot.job_id)
