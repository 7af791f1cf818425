"""Print what the dbt models in transform/ say: each entry's current market and its latest changes.

Run it with a Python that has duckdb 1.2.2 after `dbt build`, e.g.:

    .meltano/utilities/dbt-duckdb/venv/bin/python scripts/show_models.py output/demo.duckdb

Exit codes: 0 after printing, 2 when the file or the models are missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the DuckDB file")
    parser.add_argument("--schema", default="analytics", help="schema of the models")
    parser.add_argument("--rows", type=int, default=5, help="rows to show of each list")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the models' answers; return the exit code."""
    args = parse_args(argv)
    if not args.path.is_file():
        sys.stderr.write(f"No DuckDB file at {args.path}\n")
        return 2
    with duckdb.connect(str(args.path), read_only=True) as con:
        catalog = con.execute("SELECT current_database()").fetchone()[0]
        schema = f'"{catalog}"."{args.schema}"'
        present = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                [args.schema],
            ).fetchall()
        }
        if not {"entry_refreshes", "current_companies", "company_changes"} <= present:
            sys.stderr.write(f"The models are not in schema {args.schema!r}: run dbt build.\n")
            return 2
        print("Entries (an entry: one tam_builds/lookalike_searches entry, or a job id):")
        con.sql(
            f"SELECT entry_id, job_type, count(*) AS refreshes, "  # noqa: S608
            f"max(CASE WHEN is_latest THEN rows_loaded END) AS companies_now, "
            f"max(observed_at) AS latest FROM {schema}.entry_refreshes "
            "GROUP BY entry_id, job_type ORDER BY latest DESC"
        ).show(max_width=160)
        # The demo entry: the one refreshed most, most recently.
        entry = con.execute(
            f"SELECT entry_id, max(refresh_number) AS n FROM {schema}.entry_refreshes "  # noqa: S608
            "GROUP BY entry_id ORDER BY n DESC, max(observed_at) DESC LIMIT 1"
        ).fetchone()
        if entry is None:
            print("No complete job yet: nothing to show.")
            return 0
        entry_id, refreshes = entry
        print(f"Current market of entry {entry_id} (first {args.rows} by rank):")
        con.sql(
            f"SELECT rank, name, domain, first_seen_refresh, refreshes_seen "  # noqa: S608
            f"FROM {schema}.current_companies WHERE entry_id = ? ORDER BY rank LIMIT ?",
            params=[entry_id, args.rows],
        ).show(max_width=160)
        if refreshes < 2:  # noqa: PLR2004
            print(f"Entry {entry_id} has one complete refresh so far: no changes to show yet.")
            return 0
        counts = dict(
            con.execute(
                f"SELECT change, count(*) FROM {schema}.company_changes "  # noqa: S608
                "WHERE entry_id = ? AND refresh_number = ? GROUP BY change",
                [entry_id, refreshes],
            ).fetchall()
        )
        print(
            f"Latest changes of entry {entry_id} (refresh {refreshes} against {refreshes - 1}): "
            f"{counts.get('added', 0)} added, {counts.get('dropped', 0)} dropped; the first "
            f"{args.rows} of each:"
        )
        con.sql(
            f"SELECT change, rank, name, domain FROM ("  # noqa: S608
            f"SELECT *, row_number() OVER (PARTITION BY change ORDER BY rank) AS n "
            f"FROM {schema}.company_changes WHERE entry_id = ? AND refresh_number = ?) "
            "WHERE n <= ? ORDER BY change, rank",
            params=[entry_id, refreshes, args.rows],
        ).show(max_width=160)
    return 0


if __name__ == "__main__":
    sys.exit(main())
