"""What a job id may hold: any id the API issues, nothing that leaves its URL path segment."""

from __future__ import annotations

import re

# The reference shows UUIDs (8a8e8a97-8192-48ff-849a-d8a96e949732) but does not promise
# the form, so the tap accepts any id of letters, digits, '-' and '_': wide enough for
# other id schemes, and no '/', '?', '#', '%' or '.' that could make a URL path leave
# the job's own segment ('..' and '.' are collapsed by HTTP clients).
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHOWN = 60  # characters of a refused id quoted in a message
JOB_ID_RULE = (
    "a job id is 1 to 128 letters, digits, '-' or '_' (OpenFunnel's are UUIDs such as "
    "8a8e8a97-8192-48ff-849a-d8a96e949732)"
)


def job_id_problem(value: object) -> str | None:
    """Say why ``value`` cannot be a job id, or None when it can.

    Args:
        value: A job id from config, a submit answer or a state file.

    Returns:
        What is wrong, quoting (a shortened form of) the value, or None.
    """
    if not isinstance(value, str):
        return f"a JSON {type(value).__name__}, not a string"
    if JOB_ID_PATTERN.fullmatch(value):
        return None
    shown = repr(value[:_SHOWN]) + ("..." if len(value) > _SHOWN else "")
    return f"{shown}, which is not a job id: {JOB_ID_RULE}"
