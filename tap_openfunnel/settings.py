"""The tap's settings: JSON Schema for config, and a typed view of it."""

from __future__ import annotations

import difflib
import ipaddress
import re
import typing as t
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from singer_sdk import typing as th

from tap_openfunnel.bounds import check_job_ids
from tap_openfunnel.budget import cap_setting
from tap_openfunnel.entries import BuildEntry, parse_entries
from tap_openfunnel.exceptions import ConfigurationError
from tap_openfunnel.families import FAMILIES
from tap_openfunnel.job_ids import job_id_problem
from tap_openfunnel.journal import default_path

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from tap_openfunnel.jobs import JobType

# The entries' constraints (lengths, ranges, enums) are checked by the tap itself
# before anything is sent, so that a bad entry gets a message naming the entry and the
# field; the JSON Schema only describes their shape.
TAM_BUILD = th.ObjectType(th.Property("query", th.StringType()))

LOOKALIKE_SEARCH = th.ObjectType(
    th.Property("query", th.StringType()),
    th.Property("seed_domains", th.ArrayType(th.StringType())),
    th.Property("limit", th.IntegerType()),
    th.Property("min_employees", th.IntegerType()),
    th.Property("max_employees", th.IntegerType()),
    th.Property("funding_stages", th.ArrayType(th.StringType())),
    th.Property("locations", th.ArrayType(th.StringType())),
    th.Property("search_type", th.StringType()),
)

CONFIG_SCHEMA = th.PropertiesList(
    th.Property(
        "api_key",
        th.StringType(min_length=1),
        required=True,
        secret=True,
        title="API key",
        description="OpenFunnel API key (of_...), sent as the X-API-Key header.",
    ),
    th.Property(
        "api_url",
        th.StringType(),
        default="https://api.openfunnel.dev",
        title="API URL",
        description="Base URL of the API. Must be https, except for loopback addresses "
        "(a local fake server).",
    ),
    th.Property(
        "tam_job_ids",
        th.ArrayType(th.StringType(min_length=1)),
        default=[],
        title="TAM job ids",
        description="Existing TAM Builder jobs to extract into tam_companies.",
    ),
    th.Property(
        "lookalike_job_ids",
        th.ArrayType(th.StringType(min_length=1)),
        default=[],
        title="Lookalike job ids",
        description="Existing Search Lookalikes Bulk jobs to extract into lookalike_companies.",
    ),
    th.Property(
        "tam_builds",
        th.ArrayType(TAM_BUILD),
        default=[],
        title="TAM builds",
        description='TAM Builder jobs to submit, as objects {"query": "..."} (1-500 '
        "characters). Each entry is submitted once; state and the journal remember its job.",
    ),
    th.Property(
        "lookalike_searches",
        th.ArrayType(LOOKALIKE_SEARCH),
        default=[],
        title="Lookalike searches",
        description="Search Lookalikes Bulk jobs to submit: objects with query and/or "
        "seed_domains (up to 10), limit (1-10,000), min_employees, max_employees, "
        "funding_stages, locations (ISO alpha-3), search_type (semantic or agentic).",
    ),
    th.Property(
        "refresh_after",
        th.IntegerType(minimum=0),
        title="Refresh after (days)",
        description="Submit a tam_builds/lookalike_searches entry again once its last job "
        "is this many days old (a deliberate, billed refresh). Unset: never refresh an "
        "unchanged entry.",
    ),
    th.Property(
        "max_credits",
        th.NumberType(minimum=0),
        title="Max credits per run",
        description="Spend cap for this run's jobs together (the entries it submits, and "
        "builds of entries it re-attaches). Submits whose worst case could exceed it, or the "
        "balance, are refused; a TAM build whose next band would pass it is cancelled and "
        "what was delivered is extracted.",
    ),
    th.Property(
        "cancel_on_interrupt",
        th.BooleanType(),
        default=False,
        title="Cancel on interrupt",
        description="On SIGINT/SIGTERM, cancel the jobs this run submitted. By default "
        "they keep running and the next run re-attaches to them.",
    ),
    th.Property(
        "journal",
        th.BooleanType(),
        default=True,
        title="Submission journal",
        description="Remember every submit in a local journal (SQLite) beside Singer "
        "state, so that another pipeline, a full refresh or a lost state re-attaches to "
        "the job instead of buying it again, and a run killed mid-submit does not "
        "submit twice. Off: only the state passed to the run remembers submits.",
    ),
    th.Property(
        "journal_path",
        th.StringType(min_length=1),
        title="Journal path",
        description="The journal file. Unset: $XDG_STATE_HOME/tap-openfunnel/"
        "journal.sqlite3 (~/.local/state/... without XDG_STATE_HOME). Runs that share "
        "it never pay twice for one request.",
    ),
    th.Property(
        "unconfirmed_submits",
        th.StringType(),
        allowed_values=["fail", "resubmit"],
        default="fail",
        title="Unconfirmed submits",
        description="An entry whose last submit was cut off before OpenFunnel's answer "
        "was recorded may have been bought: 'fail' (at most once) fails that entry with "
        "what to do; 'resubmit' (at least once) submits it again.",
    ),
    th.Property(
        "poll_interval",
        th.NumberType(exclusive_minimum=0),
        default=5,
        title="Poll interval (s)",
        description="First wait between status polls of a job; doubles up to max_poll_interval.",
    ),
    th.Property(
        "max_poll_interval",
        th.NumberType(exclusive_minimum=0),
        default=60,
        title="Max poll interval (s)",
        description="Longest wait between status polls of a job.",
    ),
    th.Property(
        "job_timeout",
        th.NumberType(minimum=0),
        default=21600,
        title="Job timeout (s)",
        description="A job not terminal this long after the run began waiting for it "
        "fails the run with an error naming it (paused jobs included).",
    ),
    th.Property(
        "page_concurrency",
        th.IntegerType(minimum=1, maximum=32),
        default=4,
        title="Page concurrency",
        description="Read requests in flight at once, polls and result pages, across "
        "jobs: while one job's records are written, the next pages of it and of the "
        "following finished jobs are fetched (1: one at a time). Records are still "
        "emitted in job and page order.",
    ),
    th.Property(
        "request_timeout",
        th.NumberType(minimum=1),
        default=60,
        title="Request timeout (s)",
        description="Seconds to wait for an answer to one request.",
    ),
    th.Property(
        "max_response_mib",
        th.IntegerType(minimum=1, maximum=4096),
        default=64,
        title="Max answer size (MiB)",
        description="Largest API answer the tap reads, once decompressed; a larger one "
        "fails its job (read no further). Memory use grows with it: up to twice "
        "page_concurrency answers are held at once.",
    ),
    th.Property(
        "max_retries",
        th.IntegerType(minimum=0, maximum=50),
        default=8,
        title="Max retries",
        description="Retries of a request after 429, 5xx, dropped connections, timeouts "
        "and cut-off bodies. Submits are retried only when no job can have been created.",
    ),
    th.Property(
        "max_retry_wait",
        th.NumberType(minimum=0),
        default=120,
        title="Max retry wait (s)",
        description="Longest single wait between retries, Retry-After included.",
    ),
    th.Property(
        "dry_run",
        th.BooleanType(),
        default=False,
        title="Dry run",
        description="Print the run's plan on stderr (each job: attach, re-attach, skip, "
        "submit or refresh, and what submits could cost against the balance and "
        "max_credits), then exit 0: nothing is submitted, no page is read, state is "
        "left as it was.",
    ),
    th.Property(
        "strict_row_count",
        th.BooleanType(),
        default=False,
        title="Strict row count",
        description="Fail a job whose rows read disagree with its manifest, instead of "
        "warning. The job is then not marked done: the next run reads it whole again.",
    ),
    th.Property(
        "keep_unknown_fields",
        th.BooleanType(),
        default=True,
        title="Keep unknown fields",
        description="Keep what the API sends and the schemas do not name: unknown row "
        "fields in each company record's _extra object, and in the jobs stream the whole "
        "manifest (manifest) and unknown poll answer fields (_extra). Off: they are "
        "dropped, with a warning naming them, and those columns are not declared.",
    ),
    th.Property(
        "strict_row_shape",
        th.BooleanType(),
        default=False,
        title="Strict row shape",
        description="Fail a job when most rows of a page lack the fields that identify a "
        "company (name, domain) yet carry others (a changed API), instead of warning. "
        "State stays before that page.",
    ),
).to_dict()

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")

DEFAULTS: dict[str, t.Any] = {
    name: spec.get("default") for name, spec in CONFIG_SCHEMA["properties"].items()
}


def setting(config: Mapping[str, t.Any], name: str) -> t.Any:  # noqa: ANN401 - JSON values
    """One setting's value, or its default (defaults live in one place: the schema).

    Args:
        config: The tap's config.
        name: The setting.

    Returns:
        The value.
    """
    given = config.get(name)
    return DEFAULTS.get(name) if given is None else given


MISSING_API_KEY = (
    "Setting 'api_key' is missing or empty. Set it in the tap's config, in the "
    "environment variable TAP_OPENFUNNEL_API_KEY, or with `meltano config set "
    "tap-openfunnel api_key ...`; keys look like 'of_...'."
)


@dataclass(frozen=True)
class Settings:
    """The config, validated and typed, with defaults filled in."""

    api_key: str
    api_url: str
    # Each family's ids setting (tam_job_ids, ...): the jobs to attach, by family.
    attached_ids: Mapping[JobType, tuple[str, ...]]
    entries: tuple[BuildEntry, ...]
    refresh_after_days: float | None
    max_credits: float | None
    cancel_on_interrupt: bool
    poll_interval: float
    max_poll_interval: float
    job_timeout: float
    page_concurrency: int
    request_timeout: float
    max_response_mib: int
    max_retries: int
    max_retry_wait: float
    strict_row_count: bool

    dry_run: bool
    journal_path: Path | None = None
    resubmit_unconfirmed: bool = False

    def job_ids(self, job_type: JobType) -> tuple[str, ...]:
        """The jobs configured by id for one family.

        Args:
            job_type: The job family.

        Returns:
            Their ids, in config order.
        """
        return self.attached_ids.get(job_type, ())

    @classmethod
    def from_config(cls, config: Mapping[str, t.Any]) -> Settings:
        """Read settings, with checks JSON Schema cannot express.

        Args:
            config: The tap's config (already schema-validated by the SDK).

        Returns:
            The settings.

        Raises:
            ConfigurationError: A value is unusable.
        """
        api_key = config.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError(MISSING_API_KEY)
        api_key = api_key.strip()
        if not _PRINTABLE_ASCII.fullmatch(api_key):
            # The key is never echoed, not even in part: say what is wrong with it.
            msg = (
                "Setting 'api_key' holds characters an API key cannot have (a line break, "
                "a space, a control character or a non-ASCII letter), so it cannot be sent "
                "as the X-API-Key header. Copy the key again exactly as OpenFunnel issued it "
                "(keys look like 'of_...'), without quotes or line breaks."
            )
            raise ConfigurationError(msg)

        def value(name: str) -> t.Any:  # noqa: ANN401 - JSON values
            return setting(config, name)

        refresh = value("refresh_after")
        max_credits = value("max_credits")
        return cls(
            api_key=api_key,
            api_url=check_api_url(str(value("api_url"))),
            attached_ids={
                family.job_type: _job_ids(config, family.ids_setting) for family in FAMILIES
            },
            entries=tuple(
                parse_entries(*(value(family.entries_setting) or () for family in FAMILIES)),
            ),
            refresh_after_days=None if refresh is None else float(refresh),
            max_credits=cap_setting(max_credits),
            cancel_on_interrupt=bool(value("cancel_on_interrupt")),
            poll_interval=float(value("poll_interval")),
            max_poll_interval=float(value("max_poll_interval")),
            job_timeout=float(value("job_timeout")),
            page_concurrency=int(value("page_concurrency")),
            request_timeout=float(value("request_timeout")),
            max_response_mib=int(value("max_response_mib")),
            max_retries=int(value("max_retries")),
            max_retry_wait=float(value("max_retry_wait")),
            strict_row_count=bool(value("strict_row_count")),
            dry_run=bool(value("dry_run")),
            journal_path=_journal_path(config),
            resubmit_unconfirmed=value("unconfirmed_submits") == "resubmit",
        )


def check_known_settings(config: Mapping[str, t.Any], known: Iterable[str]) -> None:
    """Refuse settings the tap does not have: a typo would otherwise do nothing, quietly.

    Args:
        config: The tap's config.
        known: Every setting name, the SDK's built-in ones included.

    Raises:
        ConfigurationError: Naming the unknown setting and the closest known one.
    """
    names = list(known)
    unknown = sorted(key for key in config if key not in names)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    msg = (
        f"The config has setting(s) the tap does not know: {', '.join(hints)}. Fix or "
        "remove them; `tap-openfunnel --about` lists every setting."
    )
    raise ConfigurationError(msg)


def check_api_url(api_url: str) -> str:
    """Validate ``api_url``: HTTPS, or plain HTTP to loopback only.

    Args:
        api_url: The configured base URL.

    Returns:
        The URL without a trailing slash.

    Raises:
        ConfigurationError: When the URL would send the key in clear text.
    """
    parts = urlsplit(api_url.strip())
    try:
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        host = ""
    if parts.scheme not in {"http", "https"} or not host:
        msg = (
            f"Setting 'api_url' must be an absolute http(s) URL such as "
            f"https://api.openfunnel.dev, not {api_url!r}. Fix it in the tap's config."
        )
        raise ConfigurationError(msg)
    # Any '@' in the authority is user info, empty user or password included
    # ('https://@host', 'https://:secret@host'), which urlsplit reports as falsy.
    if parts.query or parts.fragment or "@" in parts.netloc:
        msg = (
            "Setting 'api_url' must be a plain base URL such as https://api.openfunnel.dev, "
            "without a query string, a fragment or credentials. Remove them from the URL."
        )
        raise ConfigurationError(msg)
    if "/api/" in f"{parts.path.rstrip('/')}/":
        msg = (
            f"Setting 'api_url' has the path {parts.path!r}, which looks like an endpoint; "
            "the tap adds '/api/v1/...' itself. Use the base URL only, such as "
            "https://api.openfunnel.dev (a proxy's own path prefix, like "
            "https://proxy.example/openfunnel, is fine)."
        )
        raise ConfigurationError(msg)
    if parts.scheme == "http" and not _is_loopback(host):
        msg = (
            f"Setting 'api_url' uses plain HTTP to {host}, which would send the API key "
            "unencrypted. Use an https:// URL; plain http is accepted only for loopback "
            "addresses such as a local fake server."
        )
        raise ConfigurationError(msg)
    return api_url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _job_ids(config: Mapping[str, t.Any], name: str) -> tuple[str, ...]:
    # A dict keeps the config's order and drops repeats without a quadratic scan.
    ids: dict[str, None] = {}
    check_job_ids(config.get(name) or (), name)
    for index, raw in enumerate(config.get(name) or ()):
        job_id = raw.strip() if isinstance(raw, str) else raw
        problem = job_id_problem(job_id)
        if problem is not None:
            msg = (
                f"Setting '{name}[{index}]' is {problem}. Use the job_id exactly as the "
                "submit call returned it; the tap refuses other ids so that a poll never "
                "asks for another path of the API."
            )
            raise ConfigurationError(msg)
        ids[job_id] = None
    return tuple(ids)


def _journal_path(config: Mapping[str, t.Any]) -> Path | None:
    if setting(config, "journal") is False:
        return None
    given = config.get("journal_path")
    return Path(given).expanduser() if isinstance(given, str) and given.strip() else default_path()
