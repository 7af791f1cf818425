"""The ``--state`` file in the forms people pass it: a state, a STATE message, Meltano's export."""

from __future__ import annotations

import json
import typing as t

from tap_openfunnel.exceptions import OpenFunnelError
from tap_openfunnel.families import FAMILIES, settings_text

# The tap's streams; a test keeps this equal to the streams the tap declares.
STREAM_NAMES = frozenset(
    {*(family.stream_name for family in FAMILIES), "jobs", "credits_balance"},
)
# What a Singer state holds at its top level (the SDK writes bookmarks; the spec also
# names currently_syncing).
_STATE_KEYS = frozenset({"bookmarks", "currently_syncing"})
_TO_DO = (
    "Pass the 'value' of the last STATE message the tap wrote (or that whole line), or "
    "the output of 'meltano state get <state id>'. A state the tap cannot place is "
    f"never read as empty: an empty state submits every "
    f"{settings_text('entries', ' / ', quote=False)} entry again (billed), unless the "
    "submission journal remembers it."
)


class StateFileError(OpenFunnelError):
    """The state given is in no form this tap can place; nothing was read or sent."""


def read_state(text: str) -> tuple[object, str | None]:
    """Decode a ``--state`` file and unwrap the forms people pass.

    A STATE message (``{"type": "STATE", "value": {...}}``, the last line of a tap's
    output) and Meltano's export (``{"singer_state": {...}}``) are unwrapped. Anything
    else whose top level is not a state's is refused: silently reading an unknown form
    as an empty state would buy every entry again.

    Args:
        text: The file's content.

    Returns:
        The state, and the form it was unwrapped from (None: it was a state already).

    Raises:
        ValueError: The text is not JSON (the caller says so).
        StateFileError: The JSON is in a form the tap cannot place.
    """
    try:
        value: object = json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and all(_is_json(line) for line in lines):
            msg = (
                f"The state given with --state holds {len(lines)} JSON lines (a tap's "
                "whole output?), not one state. " + _TO_DO
            )
            raise StateFileError(msg) from None
        raise
    form = None
    if isinstance(value, dict) and "type" in value:
        if value.get("type") != "STATE" or not isinstance(value.get("value"), dict):
            msg = (
                f"The state given with --state is a Singer {str(value.get('type'))[:20]!r} "
                "message, not a STATE message holding a state object. " + _TO_DO
            )
            raise StateFileError(msg)
        _check_wrapper(value, ("type", "value"), "STATE message")
        value, form = value["value"], "a STATE message"
    elif isinstance(value, dict) and "singer_state" in value:
        if not isinstance(value["singer_state"], dict):
            msg = "The state given with --state has a 'singer_state' that is not an object. "
            raise StateFileError(msg + _TO_DO)
        _check_wrapper(value, ("singer_state",), "Meltano state export")
        value, form = value["singer_state"], "Meltano's state export (singer_state)"
    if isinstance(value, dict):
        _check_top_level(value)
    return value, form


def _check_wrapper(wrapper: dict[str, t.Any], known: tuple[str, ...], form: str) -> None:
    _refuse_unknown(wrapper, known, has=f"is a {form} with", nobody=form, holds="holds")


def _refuse_unknown(
    value: dict[str, t.Any], known: t.Container[str], *, has: str, nobody: str, holds: str
) -> None:
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        msg = (
            f"The state given with --state {has} field(s) no {nobody} has "
            f"({', '.join(repr(key[:40]) for key in unknown[:5])}), so the tap cannot tell "
            f"what it {holds}. " + _TO_DO
        )
        raise StateFileError(msg)


def _check_top_level(state: dict[str, t.Any]) -> None:
    _refuse_unknown(
        state, _STATE_KEYS, has="has top-level", nobody="Singer state", holds="remembers"
    )
    bookmarks = state.get("bookmarks")
    if isinstance(bookmarks, dict):
        foreign = sorted(str(name) for name in bookmarks if name not in STREAM_NAMES)
        if foreign:
            msg = (
                "The state given with --state has bookmarks for stream(s) this tap does "
                f"not have ({', '.join(repr(name[:40]) for name in foreign[:5])}): it looks "
                "like another tap's state. " + _TO_DO
            )
            raise StateFileError(msg)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
