"""Reading the API's answers: error classification, its own words, and Retry-After."""

from __future__ import annotations

import email.utils
import math
import time
import typing as t

from tap_openfunnel.exceptions import (
    ApiError,
    AuthenticationError,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    RejectedRequestError,
)
from tap_openfunnel.logs import shown

if t.TYPE_CHECKING:
    import requests

_CREDIT_CODES = frozenset({"CREDITS_EXCEEDED", "INSUFFICIENT_CREDITS", "PAYMENT_REQUIRED"})


def parse_retry_after(response: requests.Response) -> float | None:
    """Read how long the server wants us to wait: header (seconds or date), then body.

    Args:
        response: A 429 or 5xx answer.

    Returns:
        Seconds to wait, or None when the server did not say.
    """
    header = response.headers.get("Retry-After")
    if header:
        header = header.strip()
        try:
            return _seconds(float(header))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
            except (TypeError, ValueError, OverflowError):
                when = None
            if when is not None:
                return _seconds(when.timestamp() - time.time())
    body = _json_or_none(response)
    details = body.get("details") if isinstance(body, dict) else None
    if isinstance(details, dict):
        value = details.get("retry_after_seconds")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return _seconds(float(value))
            except OverflowError:
                return None
    return None


def _seconds(value: float) -> float | None:
    # nan or inf is no hint at all: the caller's backoff decides instead.
    return max(value, 0.0) if math.isfinite(value) else None


def _json_or_none(response: requests.Response) -> t.Any:  # noqa: ANN401 - JSON is untyped
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def api_detail(response: requests.Response) -> str:
    """Summarise what an error answer said, for a user-facing message.

    Args:
        response: The error answer.

    Returns:
        The API's own words (``detail``/``message``/``error_code``), escaped and
        shortened (:func:`~tap_openfunnel.logs.shown`).
    """
    body = _json_or_none(response)
    if isinstance(body, dict):
        parts: list[str] = []
        if body.get("error_code"):
            parts.append(str(body["error_code"]))
        detail = body.get("detail", body.get("message"))
        if isinstance(detail, list):
            parts.extend(_format_validation_item(item) for item in detail)
        elif detail:
            parts.append(str(detail))
        if parts:
            return shown("; ".join(parts))
    return shown(response.text.strip()) or "(empty body)"


def _format_validation_item(item: object) -> str:
    # FastAPI/pydantic shape: {"loc": ["body", "query"], "msg": "...", "type": "..."}.
    if isinstance(item, dict):
        loc = ".".join(str(part) for part in item.get("loc", []) if part != "body")
        msg = item.get("msg", item)
        return f"{loc}: {msg}" if loc else str(msg)
    return str(item)


def fatal_error(response: requests.Response, path: str) -> ApiError:
    """The error for a 4xx answer, with a message saying what to do.

    Args:
        response: The 4xx answer.
        path: The request path.

    Returns:
        The exception to raise.
    """
    status = response.status_code
    detail = api_detail(response)
    if status in {401, 403}:
        msg = (
            f"Authentication failed: {path} answered HTTP {status} ({detail}). Check the "
            "'api_key' setting (TAP_OPENFUNNEL_API_KEY); keys look like 'of_...'. "
            "Requests with a refused key are not retried."
        )
        return AuthenticationError(msg, status=status, path=path)
    if status == 404:  # noqa: PLR2004
        msg = f"{path} answered HTTP 404 ({detail})."
        return NotFoundError(msg, status=status, path=path)
    if status == 409:  # noqa: PLR2004
        msg = f"{path} answered HTTP 409 ({detail}): the job has already finished."
        return ConflictError(msg, status=status, path=path)
    code = ""
    body = _json_or_none(response)
    if isinstance(body, dict):
        code = str(body.get("error_code") or "")
    if status == 402 or code in _CREDIT_CODES:  # noqa: PLR2004
        msg = (
            f"OpenFunnel refused {path} for lack of credits (HTTP {status}: {detail}). "
            "Top up the account or lower the request's 'limit', then run again."
        )
        return InsufficientCreditsError(msg, status=status, path=path)
    if status in {400, 422}:
        msg = (
            f"OpenFunnel rejected the request to {path} (HTTP {status}): {detail}. "
            "Correct the setting that feeds this field and run again."
        )
        return RejectedRequestError(msg, status=status, path=path)
    msg = f"{path} answered HTTP {status} ({detail}); this is not retried."
    return ApiError(msg, status=status, path=path)
