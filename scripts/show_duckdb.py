"""Print what a pipeline loaded into DuckDB: each table's row count and a few rows.

Run it with a Python that has duckdb 1.2.2, e.g. the target-duckdb plugin's own:

    .meltano/loaders/target-duckdb/venv/bin/python scripts/show_duckdb.py \
        output/openfunnel.duckdb --expect tam_companies=1234

Exit codes: 0 when every --expect holds, 1 when one does not, 2 when the file or schema
is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb

KEYS = {
    "tam_companies": ("job_id", "rank"),
    "lookalike_companies": ("job_id", "rank"),
    "jobs": ("job_id",),
}
SAMPLE_COLUMNS = (
    "rank",
    "name",
    "domain",
    "employee_count",
    "hq_country",
    "funding_stage",
    "source_band",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the DuckDB file")
    parser.add_argument("--schema", default="openfunnel", help="schema of the tables")
    parser.add_argument("--rows", type=int, default=3, help="rows of tam_companies to show")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="TABLE=COUNT",
        help="fail unless TABLE holds exactly COUNT rows (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print counts as JSON only")
    return parser.parse_args(argv)


def quote(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def qualified(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """A table's name with its catalog.

    Without it, a file named like the schema (openfunnel.duckdb holding the schema
    openfunnel) makes "openfunnel.tam_companies" ambiguous to DuckDB.
    """
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    return f"{quote(catalog)}.{quote(schema)}.{quote(table)}"


def summarise(con: duckdb.DuckDBPyConnection, schema: str) -> dict[str, dict[str, int]]:
    """Rows and duplicated key values per table of ``schema``."""
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    tables = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = ? AND table_schema = ? ORDER BY table_name",
            [catalog, schema],
        ).fetchall()
    ]
    summary = {}
    for table in tables:
        full = qualified(con, schema, table)
        rows = con.execute(f"SELECT count(*) FROM {full}").fetchone()[0]  # noqa: S608
        keys = ", ".join(quote(key) for key in KEYS.get(table, ()))
        duplicates = 0
        if keys:
            duplicates = con.execute(
                f"SELECT count(*) FROM (SELECT {keys} FROM {full} "  # noqa: S608
                f"GROUP BY {keys} HAVING count(*) > 1)"
            ).fetchone()[0]
        summary[table] = {"rows": rows, "duplicate_keys": duplicates}
    return summary


def check(summary: dict[str, dict[str, int]], expectations: list[str]) -> list[str]:
    """Messages for each --expect that does not hold, and for duplicated keys."""
    problems = []
    for expectation in expectations:
        table, _, count = expectation.partition("=")
        actual = summary.get(table, {}).get("rows")
        if actual != int(count):
            problems.append(f"{table}: expected {int(count):,} rows, found {actual}")
    problems += [
        f"{table}: {info['duplicate_keys']} duplicated key value(s)"
        for table, info in summary.items()
        if info["duplicate_keys"]
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Show or check the file; return the exit code."""
    args = parse_args(argv)
    if not args.path.is_file():
        sys.stderr.write(f"No DuckDB file at {args.path}\n")
        return 2
    with duckdb.connect(str(args.path), read_only=True) as con:
        summary = summarise(con, args.schema)
        if args.json:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            print_report(con, args, summary)
    if not summary:
        sys.stderr.write(f"No tables in schema {args.schema!r} of {args.path}\n")
        return 2
    problems = check(summary, args.expect)
    for problem in problems:
        sys.stderr.write(f"CHECK FAILED: {problem}\n")
    return 1 if problems else 0


def print_report(
    con: duckdb.DuckDBPyConnection, args: argparse.Namespace, summary: dict[str, dict[str, int]]
) -> None:
    """Print the row counts and the first rows of tam_companies."""
    width = max([len(table) for table in summary] + [5])
    print(f"DuckDB {args.path} (schema {args.schema}):")
    print(f"  {'table':<{width}}  {'rows':>7}")
    for table, info in summary.items():
        print(f"  {table:<{width}}  {info['rows']:>7,}")
    if "tam_companies" in summary and args.rows > 0:
        full = qualified(con, args.schema, "tam_companies")
        present = {row[0] for row in con.execute(f"DESCRIBE {full}").fetchall()}
        columns = ", ".join(quote(c) for c in SAMPLE_COLUMNS if c in present) or "*"
        print(f"\nFirst {args.rows} rows of tam_companies (some columns):")
        con.sql(
            f"SELECT {columns} FROM {full} ORDER BY job_id, rank LIMIT {int(args.rows)}"  # noqa: S608
        ).show(max_width=160)


if __name__ == "__main__":
    sys.exit(main())
