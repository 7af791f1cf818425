"""Where the tap meets the Singer SDK: public seams, one pinned private method, an explicit plan."""

from __future__ import annotations

import pytest
from singer_sdk import Stream, Tap
from singer_sdk.contrib.msgspec import MsgSpecWriter
from support import API_KEY, base_config

from openfunnel_sandbox import JobSpec
from tap_openfunnel.exceptions import RunNotPreparedError
from tap_openfunnel.tap import TapOpenFunnel
from tap_openfunnel.writer import StateLines


def test_the_only_private_sdk_method_replaced_is_the_record_fast_path():
    """Every other seam with the SDK is public (docs/how-it-works.md): a private method
    overridden anew, which an SDK release may rename or drop, fails here first."""
    tap = TapOpenFunnel(config={"api_key": API_KEY}, parse_env_config=False)
    pairs = [
        (TapOpenFunnel, Tap),
        (type(tap.message_writer), MsgSpecWriter),
        *((type(stream), Stream) for stream in tap.streams.values()),
    ]
    replaced = {
        f"{base.__name__}.{name}"
        for cls, base in pairs
        for klass in cls.__mro__
        if klass.__module__.startswith("tap_openfunnel")
        for name, value in vars(klass).items()
        if name.startswith("_") and not name.startswith("__") and hasattr(base, name)
        if callable(value) or isinstance(value, (property, classmethod, staticmethod))
    }
    assert replaced == {"Stream._write_record_message"}
    # Nor is an SDK object swapped behind a private name: the streams' state writer is
    # the tap's through the public property, the SDK's own is left where it keeps it.
    assert type(tap.state_writer) is StateLines
    assert type(tap._state_writer).__module__.startswith("singer_sdk.")


def test_an_embedder_plans_the_run_by_one_explicit_call(server):
    """No stream plans behind the caller's back: asked for records before the run is
    planned, it sends nothing and says which call is missing; after it, it reads."""
    job = server.add_job(JobSpec(kind="tam", rows=3))
    tap = TapOpenFunnel(config=base_config(server, tam_job_ids=[job]), parse_env_config=False)
    stream = tap.streams["tam_companies"]
    with pytest.raises(RunNotPreparedError, match=r"tap\.plan_run\(\)"):
        list(stream.get_records(None))
    assert server.requests == []
    assert tap.current is None
    run = tap.plan_run()
    assert tap.current is run
    assert [record["rank"] for record in stream.get_records(None)] == [1, 2, 3]
