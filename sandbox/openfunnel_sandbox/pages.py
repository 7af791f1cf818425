"""Pages, cursors, manifests and poll bodies of a fake job (reference §3, §4 and §5.4)."""

from __future__ import annotations

import base64
import binascii
import math
import re
import typing as t
from dataclasses import dataclass

from openfunnel_sandbox.data import page_rows
from openfunnel_sandbox.validation import ValidationFailedError, error

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from openfunnel_sandbox.lifecycle import Job, JobState

_PAGE_NAME = re.compile(r"page_(\d{4,})")
_OPAQUE = re.compile(r"p:(\d+)")
_MISMATCH_EXTRA_ROWS = 5


def page_name(index: int) -> str:
    """Name page ``index`` the way the API does (``page_0003``).

    Args:
        index: Zero-based page number.

    Returns:
        The page name.
    """
    return f"page_{index:04d}"


def opaque_cursor(index: int) -> str:
    """Encode page ``index`` as an opaque token (the ``opaque_cursor`` quirk).

    Args:
        index: Zero-based page number.

    Returns:
        URL-safe base64 of ``p:<index>``, unpadded.
    """
    return base64.urlsafe_b64encode(f"p:{index}".encode()).rstrip(b"=").decode()


def parse_cursor(cursor: str | None) -> int:
    """Turn a ``cursor`` query value into a page number.

    Args:
        cursor: ``page_NNNN``, an opaque token from :func:`opaque_cursor`, or None.

    Returns:
        The page number (0 when absent).

    Raises:
        ValidationFailedError: If the cursor is neither form.
    """
    if cursor is None:
        return 0
    if match := _PAGE_NAME.fullmatch(cursor):
        return int(match.group(1))
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    if match := _OPAQUE.fullmatch(decoded):
        return int(match.group(1))
    msg = "Value error, cursor must be a page name such as page_0001"
    raise ValidationFailedError([error("value_error", ("query", "cursor"), msg, cursor)])


def split_seed_domains(seeds: Iterable[str]) -> tuple[list[str], list[str]]:
    """Normalise seed domains and split them into resolved and unresolved ones.

    Seeds under the reserved ``.example`` TLD stand for companies not in the index.

    Args:
        seeds: Seed domains as submitted (protocol and ``www.`` allowed).

    Returns:
        ``(resolved, unresolved)``, normalised.
    """
    resolved: list[str] = []
    unresolved: list[str] = []
    for seed in seeds:
        domain = re.sub(r"^[a-z]+://", "", seed.strip().lower()).split("/")[0]
        domain = domain.removeprefix("www.")
        (unresolved if domain.endswith(".example") else resolved).append(domain)
    return resolved, unresolved


@dataclass(frozen=True)
class _Layout:
    readable: int  # rows a reader can reach
    written: int  # pages that exist, counting the quirk's empty page
    empty_slot: bool  # `empty_page_with_cursor` is in effect


def _layout(job: Job, state: JobState) -> _Layout:
    size = job.page_size
    delivered = state.delivered
    if state.terminal:
        # An empty job still answers page_0000 (no rows, no next_cursor), so it counts
        # as one page: `pages` then matches what a reader walking from page_0000 sees.
        base_pages = max(1, math.ceil(delivered / size))
        readable = delivered
    else:
        # Pages are written only when full; the short tail waits for the terminal status.
        base_pages = delivered // size
        readable = base_pages * size
    empty_slot = "empty_page_with_cursor" in job.spec.quirks and base_pages >= 2  # noqa: PLR2004
    return _Layout(readable, base_pages + int(empty_slot), empty_slot)


def _manifest(job: Job, state: JobState, layout: _Layout) -> dict[str, t.Any] | None:
    if not state.terminal:
        return None
    quirks = job.spec.quirks
    reported = state.delivered + (_MISMATCH_EXTRA_ROWS if "manifest_mismatch" in quirks else 0)
    partial = state.status != "completed"
    manifest: dict[str, t.Any]
    if job.kind == "tam":
        manifest = {
            "pages": layout.written,
            "page_size": job.page_size,
            "unique_count": reported,
            "partial": partial,
            "degraded": False,
            "ranked": True,
            "stop_reason": "cancelled" if state.status == "cancelled" else None,
            # What was billed, which the manifest_mismatch quirk does not inflate.
            "credits_consumed": state.delivered,
        }
    else:
        request = job.spec.request or {}
        query = request.get("query")
        seeds = request.get("seed_domains") or []
        resolved, unresolved = split_seed_domains(seeds)
        derived = None
        if seeds:
            derived = f"Companies like {', '.join(resolved) or 'the seeds'}"
            derived += f" that match: {query}" if query else ""
        manifest = {
            "count": reported,
            "pages": layout.written,
            "page_size": job.page_size,
            "credits_consumed": state.delivered,
            "derived_query": derived,
            "resolved_seed_domains": resolved if seeds else None,
            "unresolved_seed_domains": unresolved if seeds else None,
            "rerank_degraded": False,
            "partial": partial,
        }
    if "extra_fields" in quirks:
        manifest["schema_version"] = 2
        manifest["tags"] = ["beta"]
    if "new_manifest_field" in quirks:
        # A field a later API release adds to the manifest, and nothing else.
        manifest["credits_refunded"] = 7
    return manifest


def _rows_of(job: Job, layout: _Layout, page: int) -> list[dict[str, t.Any]]:
    if layout.empty_slot and page == 1:
        return []
    base = page - 1 if layout.empty_slot and page > 1 else page
    start = base * job.page_size
    stop = min(start + job.page_size, layout.readable)
    first = job.spec.first_row
    return page_rows(
        job.kind,
        job.spec.population or job.job_id,
        first + start,
        first + stop,
        query=job.spec.query,
        rows_total=job.spec.rows,
        bands_total=job.spec.bands_total,
        quirks=job.spec.quirks,
    )


def poll_body(job: Job, state: JobState, requested: int) -> dict[str, t.Any]:
    """Assemble the poll answer for one page of a job.

    Args:
        job: The job.
        state: Its state now.
        requested: The page number the cursor named.

    Returns:
        The JSON-ready body, with every field of reference §3.2 / §4.2.
    """
    quirks = job.spec.quirks
    layout = _layout(job, state)
    served = 3 if "wrong_page" in quirks and requested == 2 else requested  # noqa: PLR2004
    rows: list[dict[str, t.Any]] = []
    next_cursor = None
    if served < layout.written:
        rows = _rows_of(job, layout, served)
        following = served + 1 if served + 1 < layout.written else None
        if "repeat_cursor" in quirks and served == 1:
            following = 1
        if following is not None:
            next_cursor = (
                opaque_cursor(following) if "opaque_cursor" in quirks else page_name(following)
            )
    processed: int | str | None = state.delivered
    if job.kind == "lookalike" and not state.started:
        processed = None
    if processed is not None and "numbers_as_strings" in quirks:
        processed = str(processed)
    body: dict[str, t.Any] = {
        "job_id": job.job_id,
        "status": state.status,
        "manifest": _manifest(job, state, layout),
        "error_message": job.spec.error_message if state.status == "failed" else None,
        # null_rows: some backends send null rather than [] for "nothing yet".
        "rows": None if not rows and not state.terminal and "null_rows" in quirks else rows,
        "page": page_name(served),
        "next_cursor": next_cursor,
        "count": len(rows),
        "processed": processed,
        "progress_message": state.progress_message,
    }
    if job.kind == "tam":
        body.update(bands_done=state.bands_done, bands_total=job.spec.bands_total, degraded=False)
    if "extra_fields" in quirks:
        body["request_id"] = f"req_{job.job_id[:8]}_{served:04d}"
        body["warnings"] = []
    return body
