"""How jobs ended: the row-count check against the manifest and the run summary."""

from __future__ import annotations

import logging
import typing as t

from tap_openfunnel.budget import credit_amount, credits_text, unreadable
from tap_openfunnel.families import BY_TYPE

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from tap_openfunnel.exceptions import JobError
    from tap_openfunnel.jobs import JobSnapshot, TrackedJob
    from tap_openfunnel.run import JobProgress

LOGGER = logging.getLogger("tap-openfunnel")


def row_count_mismatch(snapshot: JobSnapshot, rows_total: int) -> str | None:
    """Compare the rows read over all runs with the manifest's count.

    Args:
        snapshot: The job's terminal snapshot.
        rows_total: Rows read for the job, this run and earlier ones.

    Returns:
        A message when they disagree, else None.
    """
    key = BY_TYPE[snapshot.job_type].count_key
    expected = snapshot.manifest.get(key)
    if not isinstance(expected, int) or isinstance(expected, bool):
        LOGGER.warning(
            "Job %s: the manifest has no usable %r, so the %d rows read cannot be checked "
            "against it.",
            snapshot.job_id,
            key,
            rows_total,
        )
        return None
    if expected == rows_total:
        return None
    return (
        f"Job {snapshot.job_id}: read {rows_total} rows but the manifest's {key} says "
        f"{expected}. Every row the API returned was delivered; the difference is on the "
        "API's side. Set 'strict_row_count' to fail runs on such a mismatch."
    )


def log_summary(
    stream_names: list[str],
    progress: Iterable[JobProgress],
    jobs: Iterable[TrackedJob],
    failures: Mapping[str, JobError],
) -> None:
    """Log one line per stream and one for the run: jobs, pages, records, credits.

    Args:
        stream_names: The company streams of the run.
        progress: What the run did with each job.
        jobs: The jobs waited on.
        failures: The jobs that could not be extracted.
    """
    done = list(progress)
    jobs = list(jobs)
    for stream_name in stream_names:
        mine = [each for each in done if each.stream_name == stream_name]
        LOGGER.info(
            "Summary %s: %d job(s), %d page(s), %d record(s).",
            stream_name,
            len(mine),
            sum(each.pages_read for each in mine),
            sum(each.rows_read for each in mine),
        )
    consumed_total = 0.0
    unread = []
    for job in jobs:
        if job.last is None or not job.last.terminal:
            continue
        value = job.last.manifest.get("credits_consumed")
        consumed = credit_amount(value)
        if consumed is None:
            unread.append(f"{job.job_id} ({unreadable(value)})")
        else:
            consumed_total += consumed
    LOGGER.info(
        "Summary: %d job(s) touched, %d could not be extracted; %s credits consumed "
        "according to their manifests%s.",
        len(jobs),
        len(failures),
        credits_text(consumed_total),
        f", not counting {len(unread)} whose credits_consumed is not a number of credits: "
        + ", ".join(unread)
        if unread
        else "",
    )
