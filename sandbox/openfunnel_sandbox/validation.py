"""Request validation that answers like FastAPI/pydantic v2 (HTTP 422 ``detail`` lists)."""

from __future__ import annotations

import json
import typing as t

from openfunnel_sandbox.data import FUNDING_STAGES

TAM_QUERY_MAX = 500
BULK_QUERY_MAX = 200
BULK_LIMIT_MAX = 10_000
SEED_DOMAINS_MAX = 10
POLL_LIMIT_MAX = 100
SEARCH_TYPES = ("semantic", "agentic")

_BULK_FIELDS = frozenset(
    {
        "query",
        "seed_domains",
        "limit",
        "min_employees",
        "max_employees",
        "funding_stages",
        "locations",
        "search_type",
    }
)


class ValidationFailedError(Exception):
    """A request failed validation; ``errors`` is the FastAPI ``detail`` list.

    Args:
        errors: One dict per problem (type, loc, msg, input).
    """

    def __init__(self, errors: list[dict[str, t.Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


def error(kind: str, loc: tuple[str | int, ...], msg: str, value: object) -> dict[str, t.Any]:
    """Build one pydantic-style error entry.

    Args:
        kind: Error type, e.g. ``"string_too_long"``.
        loc: Location, e.g. ``("body", "query")``.
        msg: Human message.
        value: The offending input.

    Returns:
        The entry.
    """
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


def parse_json_object(raw: bytes) -> dict[str, t.Any]:
    """Decode a request body that must be a JSON object.

    Args:
        raw: The body bytes.

    Returns:
        The decoded object.

    Raises:
        ValidationFailedError: If the body is not JSON or not an object.
    """
    try:
        body = json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailedError(
            [error("json_invalid", ("body", 0), "JSON decode error", {})]
        ) from exc
    if body is None:
        raise ValidationFailedError([error("missing", ("body",), "Field required", None)])
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise ValidationFailedError([error("model_attributes_type", ("body",), msg, body)])
    return body


def _string(
    errors: list[dict[str, t.Any]], body: dict[str, t.Any], name: str, max_length: int
) -> None:
    value = body[name]
    loc = ("body", name)
    if not isinstance(value, str):
        errors.append(error("string_type", loc, "Input should be a valid string", value))
    elif not value:
        errors.append(
            error("string_too_short", loc, "String should have at least 1 character", value)
        )
    elif len(value) > max_length:
        msg = f"String should have at most {max_length} characters"
        errors.append(error("string_too_long", loc, msg, value))


def _integer(
    errors: list[dict[str, t.Any]], loc: tuple[str, ...], value: object, low: int, high: int | None
) -> None:
    # bool is an int subclass in Python, but pydantic's strict-ish int rejects it.
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(error("int_type", loc, "Input should be a valid integer", value))
    elif value < low:
        errors.append(
            error(
                "greater_than_equal", loc, f"Input should be greater than or equal to {low}", value
            )
        )
    elif high is not None and value > high:
        errors.append(
            error("less_than_equal", loc, f"Input should be less than or equal to {high}", value)
        )


def _string_list(
    errors: list[dict[str, t.Any]], name: str, value: object, allowed: tuple[str, ...] | None = None
) -> None:
    if not isinstance(value, list):
        errors.append(error("list_type", ("body", name), "Input should be a valid list", value))
        return
    for position, item in enumerate(value):
        loc = ("body", name, position)
        if not isinstance(item, str):
            errors.append(error("string_type", loc, "Input should be a valid string", item))
        elif allowed is not None and item not in allowed:
            expected = ", ".join(f"'{option}'" for option in allowed)
            errors.append(error("enum", loc, f"Input should be {expected}", item))


def _extra(errors: list[dict[str, t.Any]], body: dict[str, t.Any], allowed: frozenset[str]) -> None:
    msg = "Extra inputs are not permitted"
    errors.extend(
        error("extra_forbidden", ("body", name), msg, value)
        for name, value in body.items()
        if name not in allowed
    )


def validate_tam_submit(body: dict[str, t.Any]) -> str:
    """Check a TAM build request (only ``query``; extra fields are forbidden).

    Args:
        body: The decoded JSON body.

    Returns:
        The query.

    Raises:
        ValidationFailedError: On any problem.
    """
    errors: list[dict[str, t.Any]] = []
    if "query" not in body:
        errors.append(error("missing", ("body", "query"), "Field required", body))
    else:
        _string(errors, body, "query", TAM_QUERY_MAX)
    _extra(errors, body, frozenset({"query"}))
    if errors:
        raise ValidationFailedError(errors)
    return str(body["query"])


def validate_bulk_submit(body: dict[str, t.Any]) -> None:
    """Check a Search Lookalikes Bulk request against reference §4.1.

    Args:
        body: The decoded JSON body.

    Raises:
        ValidationFailedError: On any problem.
    """
    errors: list[dict[str, t.Any]] = []
    if body.get("query") is not None:
        _string(errors, body, "query", BULK_QUERY_MAX)
    _seed_domains(errors, body.get("seed_domains"))
    if body.get("limit") is not None:
        _integer(errors, ("body", "limit"), body["limit"], 1, BULK_LIMIT_MAX)
    for name in ("min_employees", "max_employees"):
        if body.get(name) is not None:
            _integer(errors, ("body", name), body[name], 0, None)
    if body.get("funding_stages") is not None:
        _string_list(errors, "funding_stages", body["funding_stages"], FUNDING_STAGES)
    if body.get("locations") is not None:
        _string_list(errors, "locations", body["locations"])
    search_type = body.get("search_type")
    if search_type is not None and search_type not in SEARCH_TYPES:
        msg = "Input should be 'semantic' or 'agentic'"
        errors.append(error("enum", ("body", "search_type"), msg, search_type))
    _extra(errors, body, _BULK_FIELDS)
    if body.get("query") is None and not body.get("seed_domains"):
        # pydantic reports model-level validators at the body location.
        msg = "Value error, at least one of query or seed_domains is required"
        errors.append(error("value_error", ("body",), msg, body))
    if errors:
        raise ValidationFailedError(errors)


def _seed_domains(errors: list[dict[str, t.Any]], seeds: object) -> None:
    if seeds is None:
        return
    _string_list(errors, "seed_domains", seeds)
    if isinstance(seeds, list) and len(seeds) > SEED_DOMAINS_MAX:
        msg = (
            f"List should have at most {SEED_DOMAINS_MAX} items after validation, not {len(seeds)}"
        )
        errors.append(error("too_long", ("body", "seed_domains"), msg, seeds))


def validate_poll_limit(value: str | None) -> None:
    """Check the bulk poll's ``limit`` query parameter, which is then ignored.

    Args:
        value: The raw parameter, or None when absent.

    Raises:
        ValidationFailedError: If it is not an integer in 1..100.
    """
    if value is None:
        return
    loc = ("query", "limit")
    try:
        number = int(value)
    except ValueError as exc:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise ValidationFailedError([error("int_parsing", loc, msg, value)]) from exc
    errors: list[dict[str, t.Any]] = []
    _integer(errors, loc, number, 1, POLL_LIMIT_MAX)
    if errors:
        errors[0]["input"] = value
        raise ValidationFailedError(errors)
