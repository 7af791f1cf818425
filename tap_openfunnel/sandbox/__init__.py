"""A fake OpenFunnel API on loopback, for tests, demos and benchmarks without a key."""

from __future__ import annotations

from tap_openfunnel.sandbox.faults import Faults
from tap_openfunnel.sandbox.lifecycle import JobSpec
from tap_openfunnel.sandbox.server import FakeOpenFunnel, RequestRecord

__all__ = ["FakeOpenFunnel", "Faults", "JobSpec", "RequestRecord"]
