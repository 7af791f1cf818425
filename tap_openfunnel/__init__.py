"""tap-openfunnel: a Singer tap for OpenFunnel's TAM Builder and Search Lookalikes Bulk jobs."""

from __future__ import annotations

__version__ = "0.1.0"
