"""Start local-bigquery 0.3.2 offline (tests only; run with the emulator's Python 3.13).

Its DuckDB would download the ducklake and spatial extensions and ICU: they are
installed from the duckdb-extension-* wheels instead, into DUCKDB_EXTENSION_DIR (never
~/.duckdb), and TimeZone is set after connecting (setting it in the config autoloads
ICU, which fails offline). From ../shared/warehouses. Arguments: those of
``local-bigquery`` (--data-dir, --port, --grpc-port ...).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import duckdb

EXTENSIONS = [
    path
    for name in ("ducklake", "spatial")
    for path in Path(importlib.util.find_spec(f"duckdb_extension_{name}").origin).parent.glob(
        "extensions/*/*.duckdb_extension"
    )
]
_connect = duckdb.connect


def connect(*args, **kwargs):
    """duckdb.connect with the extensions installed from local files."""
    config = dict(kwargs.pop("config", None) or {})
    timezone = config.pop("TimeZone", None)
    config.setdefault("extension_directory", os.environ["DUCKDB_EXTENSION_DIR"])
    connection = _connect(*args, config=config, **kwargs)
    for extension in EXTENSIONS:
        # A local INSTALL makes the emulator's own "INSTALL spatial" a no-op.
        connection.execute(f"INSTALL '{extension}'; LOAD '{extension}'")
    if timezone:
        connection.execute(f"SET TimeZone='{timezone}'")
    return connection


def main() -> None:
    """Run the emulator's CLI with the patched connect."""
    if not EXTENSIONS:
        sys.exit("The duckdb-extension-ducklake/-spatial wheels are not installed.")
    duckdb.connect = connect
    from local_bigquery.cli import main as emulator  # noqa: PLC0415

    emulator(sys.argv[1:])


if __name__ == "__main__":
    main()
