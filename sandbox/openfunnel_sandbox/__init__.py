"""A fake OpenFunnel API on loopback, for tests, demos and benchmarks without a key."""

from __future__ import annotations

from openfunnel_sandbox.faults import Faults
from openfunnel_sandbox.lifecycle import JobSpec
from openfunnel_sandbox.server import FakeOpenFunnel, RequestRecord

__all__ = ["FakeOpenFunnel", "Faults", "JobSpec", "RequestRecord"]
