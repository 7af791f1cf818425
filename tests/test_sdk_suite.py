"""The Singer SDK's own tap test suite, run against a fake OpenFunnel server."""

from __future__ import annotations

import atexit

import pytest
from singer_sdk.testing import SuiteConfig, get_tap_test_class
from singer_sdk.testing.templates import AttributeTestTemplate

from openfunnel_sandbox import FakeOpenFunnel, JobSpec
from tap_openfunnel.tap import TapOpenFunnel

# A suite check that finds no record to look at passes with only this warning: make it
# fail instead, so that no check passes by having nothing to check.
pytestmark = pytest.mark.filterwarnings("error:No records were available to test")

# get_tap_test_class builds a tap while pytest collects this module, so the server and
# its jobs must exist by then.
_SERVER = FakeOpenFunnel(api_keys=("of_suite_key",), seed=0).start()
atexit.register(_SERVER.stop)

CONFIG = {
    "api_key": "of_suite_key",
    "api_url": _SERVER.url,
    # Fields the schema does not name, in rows, manifests and poll answers: without
    # them the suite's checks of the `_extra` columns would find nothing to check.
    "tam_job_ids": [_SERVER.add_job(JobSpec(kind="tam", rows=230, quirks={"extra_fields"}))],
    "lookalike_job_ids": [
        _SERVER.add_job(JobSpec(kind="lookalike", rows=120, quirks={"extra_fields"})),
    ],
    # One submitted job too: only a submitted job has a `request` (and `submitted_at`),
    # so without it the suite's checks of those columns would find nothing to check.
    "tam_builds": [{"query": "cloud observability tools"}],
    "poll_interval": 0.05,
}


class PlannedTap(TapOpenFunnel):
    """The tap as an embedder builds it: planned by one explicit call before any sync.

    The suite creates a tap for each check and calls its (final) ``sync_all()`` itself,
    so the plan is made when the tap is created; the command line plans on its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan_run()


def catalog_selecting_every_stream() -> dict:
    """Discovery's catalog with credits_balance (not selected by default) selected too."""
    catalog = TapOpenFunnel(config=CONFIG).catalog_dict
    for entry in catalog["streams"]:
        for item in entry["metadata"]:
            if not item["breadcrumb"]:
                item["metadata"]["selected"] = True
    return catalog


TestTapOpenFunnel = get_tap_test_class(
    PlannedTap,
    config=CONFIG,
    catalog=catalog_selecting_every_stream(),
    suite_config=SuiteConfig(max_records_limit=1000),
    # The SDK's default (True) reads TAP_OPENFUNNEL_* from the environment and from the
    # first .env found above the SDK's own files: the checkout's, where `meltano config
    # set tap-openfunnel api_key ...` puts the user's key. That key then replaced the
    # suite's and every check failed with HTTP 401. The suite's config is complete.
    parse_env_config=False,
)


@pytest.fixture(autouse=True)
def each_attribute_check_reads_its_own_attribute():
    """The SDK makes one template object per attribute check and runs it once per
    attribute, but caches the values it checks (``non_null_attribute_values``, a
    cached_property) on that object: every attribute after the first would be checked
    with the first one's values, and a check of an attribute no record carries would
    pass on another's. Forget the values before each check."""
    for name in dir(TestTapOpenFunnel):
        template = getattr(getattr(TestTapOpenFunnel, name), "__self__", None)
        if isinstance(template, AttributeTestTemplate):
            vars(template).pop("non_null_attribute_values", None)
