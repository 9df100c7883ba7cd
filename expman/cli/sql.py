"""``expman sql QUERY [BASE_DIR]``: the CLI face of expman.sql (expman.sqlviews: DuckDB over the runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from expman.cli._common import BASE, DIGITS, JSON, add_base_positional, base_arg, command, need_base
from expman.cli._text import emit_json, num_columns, out, table

HELP = "SQL over the runs, live ones included: views runs, params, metrics, events, artifacts"
EXAMPLE = ("expman sql \"select p.number as lr, min(m.value) from metrics m join params p "
           "using (run) where p.key = 'lr' and m.metric = 'loss' group by 1\"")


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "sql", HELP, EXAMPLE, run, [BASE, JSON, DIGITS])
    p.add_argument("query", metavar="QUERY", help="one SQL statement (DuckDB's dialect)")
    add_base_positional(p)
    p.add_argument("--csv", action="store_true", help="CSV output (a header line, then rows)")


def _plain(v: Any) -> Any:
    """A DuckDB value as JSON can hold it: a DECIMAL as a number, a BLOB as hex;
    lists and structs inside out (dates, times and UUIDs orjson spells itself)."""
    from decimal import Decimal
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def run(args: argparse.Namespace) -> int:
    from expman.cli._text import CliError
    from expman.sqlviews import connect
    if args.json and args.csv:
        raise CliError("--json and --csv: give one")
    base = need_base(base_arg(args, args.base))
    import duckdb
    try:
        result = connect(base, args.query).sql(args.query)
    except duckdb.Error as e:
        raise CliError(f"sql: {e}") from None
    if result is None:          # a statement without rows (SET, CREATE ...)
        return 0
    names, rows = result.columns, result.fetchall()
    if args.json:
        emit_json([{k: _plain(v) for k, v in zip(names, r)} for r in rows])
    elif args.csv:
        import csv
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(names)
        w.writerows(rows)
    else:
        out(table(names, num_columns(rows),
                  right=[i for i, t in enumerate(result.types)
                         if str(t) in ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "HUGEINT")]))
    return 0
