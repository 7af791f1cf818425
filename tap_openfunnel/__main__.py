"""Run the tap as ``python -m tap_openfunnel``."""

from __future__ import annotations

from tap_openfunnel.tap import TapOpenFunnel

TapOpenFunnel.cli()
