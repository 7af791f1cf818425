"""Routing and the API endpoints of the sandbox (reference §3 and §4), without faults."""

from __future__ import annotations

import re
import typing as t
from dataclasses import replace

from openfunnel_sandbox.faults import Answer, json_answer
from openfunnel_sandbox.lifecycle import JobConflictError
from openfunnel_sandbox.pages import parse_cursor, poll_body, split_seed_domains
from openfunnel_sandbox.store import CreditsExceededError
from openfunnel_sandbox.validation import (
    ValidationFailedError,
    parse_json_object,
    validate_bulk_submit,
    validate_poll_limit,
    validate_tam_submit,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from openfunnel_sandbox.lifecycle import JobSpec
    from openfunnel_sandbox.store import JobStore
    from openfunnel_sandbox.transport import Exchange

BASES = {"tam": "/api/v1/tam/build", "lookalike": "/api/v1/account/search-lookalikes-bulk"}
SUBMIT_PATHS = frozenset(BASES.values())
_JOB = r"(?P<job_id>[^/]+)"


class Settings(t.Protocol):
    """The server knobs the endpoints read on every request (tests change them live)."""

    api_keys: tuple[str, ...]
    page_size: int
    credits_total: float
    cancel_seconds: float
    submit_defaults: dict[str, JobSpec]


class Endpoints:
    """Matches a request to an endpoint, checks method and key, and answers it.

    Args:
        store: The account's jobs.
        settings: Live server settings.
    """

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        tam, bulk = BASES["tam"], BASES["lookalike"]
        self._routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Answer]]]] = [
            (re.compile(tam), {"POST": self._submit_tam}),
            (re.compile(f"{tam}/{_JOB}"), {"GET": self._poll}),
            (re.compile(f"{tam}/{_JOB}/(?P<action>cancel|pause|resume)"), {"POST": self._control}),
            (re.compile(bulk), {"POST": self._submit_bulk}),
            (re.compile(f"{bulk}/{_JOB}"), {"GET": self._poll}),
            # Bulk jobs have no pause or resume: those paths are unknown (404), as in FastAPI.
            (re.compile(f"{bulk}/{_JOB}/(?P<action>cancel)"), {"POST": self._control}),
            (re.compile("/api/v1/credits/balance"), {"GET": self._balance}),
        ]

    def route(self, exchange: Exchange) -> Answer:
        """Answer a request: 404 unknown path, 405 wrong method, 401 bad key, 422 invalid.

        Args:
            exchange: The parsed request.

        Returns:
            The answer.
        """
        for pattern, methods in self._routes:
            match = pattern.fullmatch(exchange.path)
            if match is None:
                continue
            endpoint = methods.get(exchange.method)
            if endpoint is None:
                allow = (("Allow", ", ".join(methods)),)
                return json_answer(405, {"detail": "Method Not Allowed"}, allow)
            if exchange.api_key not in self._settings.api_keys:
                return json_answer(401, {"detail": "Invalid or missing API key"})
            try:
                return endpoint(exchange, **match.groupdict())
            except ValidationFailedError as exc:
                return json_answer(422, {"detail": exc.errors})
        return json_answer(404, {"detail": "Not Found"})

    def _submit_tam(self, exchange: Exchange) -> Answer:
        body = parse_json_object(exchange.body)
        query = validate_tam_submit(body)
        template = self._settings.submit_defaults["tam"]
        spec = replace(template, kind="tam", query=query, request=body, job_id=None)
        job = self._store.create(
            spec, owner=exchange.api_key, page_size=self._settings.page_size, submitted=True
        )
        message = f"Poll GET {BASES['tam']}/{job.job_id}"
        return json_answer(200, {"job_id": job.job_id, "status": "pending", "message": message})

    def _submit_bulk(self, exchange: Exchange) -> Answer:
        body = parse_json_object(exchange.body)
        validate_bulk_submit(body)
        resolved, _ = split_seed_domains(body.get("seed_domains") or [])
        if body.get("query") is None and not resolved:
            # The reference says unresolvable seeds are skipped "as long as at least one
            # resolves"; with none left and no query there is nothing to search for.
            message = "None of the seed_domains could be resolved; add a query or other seeds"
            return json_answer(400, {"error_code": "INVALID_REQUEST", "message": message})
        template = self._settings.submit_defaults["lookalike"]
        limit = body.get("limit") or template.rows
        spec = replace(template, kind="lookalike", rows=limit, request=body, job_id=None)
        try:
            job = self._store.create(
                spec,
                owner=exchange.api_key,
                page_size=self._settings.page_size,
                submitted=True,
                credits_total=self._settings.credits_total,
            )
        except CreditsExceededError as exc:
            return json_answer(400, {"error_code": "CREDITS_EXCEEDED", "message": str(exc)})
        payload = {
            "job_id": job.job_id,
            "status": "pending",
            "message": f"Poll GET {BASES['lookalike']}/{job.job_id}",
            "requested_limit": limit,
        }
        return json_answer(200, payload)

    def _poll(self, exchange: Exchange, job_id: str) -> Answer:
        kind = _kind_of(exchange.path)
        # FastAPI validates query parameters before the handler looks the job up.
        if kind == "lookalike":
            validate_poll_limit(exchange.query.get("limit"))
        page = parse_cursor(exchange.query.get("cursor"))
        found = self._store.find(kind, job_id, exchange.api_key)
        if found is None:
            return json_answer(404, {"detail": "Job not found"})
        # Rows are generated outside the store's lock: a job's spec never changes.
        return json_answer(200, poll_body(*found, page))

    def _control(self, exchange: Exchange, job_id: str, action: str) -> Answer:
        kind = _kind_of(exchange.path)
        found = self._store.find(kind, job_id, exchange.api_key)
        if found is None:
            return json_answer(404, {"detail": "Job not found"})
        try:
            status = self._store.control(found[0], action, self._settings.cancel_seconds)
        except JobConflictError as exc:
            return json_answer(409, {"detail": str(exc)})
        message = f"{action.capitalize()} accepted; poll GET {BASES[kind]}/{job_id}"
        return json_answer(200, {"job_id": job_id, "status": status, "message": message})

    def _balance(self, exchange: Exchange) -> Answer:
        del exchange  # the balance is account-wide
        total = self._settings.credits_total
        used = self._store.credits_used()
        payload = {"total_credits": total, "credits_used": used, "credits_left": total - used}
        return json_answer(200, payload)


def _kind_of(path: str) -> str:
    return "tam" if path.startswith(BASES["tam"]) else "lookalike"
