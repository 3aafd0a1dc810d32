"""What ``failstore sql`` does once its options are parsed, without Typer: the Typer command
(``commands_sql.sql``) and the start-up fast path (``fast_sql``) both call
``run_sql_command``."""

from __future__ import annotations

import sys
from pathlib import Path

from failstore.cli.output import Format, emit
from failstore.errors import ConfigError


def parse_params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--param '{item}' is not KEY=VALUE", hint="e.g. --param grouping=label"
            )
        out[key.strip()] = value
    return out


def run_sql_command(
    store_path: Path | None,
    query: str,
    fmt: Format,
    out: Path | None,
    dialect: str | None,
    params: dict[str, str],
    timeout: float,
) -> None:
    """Run one query (``-``: read from stdin) and print it, or write it to ``out``."""
    from failstore.queries.sql.session import run_sql
    from failstore.store import Store

    if query == "-":
        query = sys.stdin.read()
    kind = out_kind(out, fmt) if out is not None else None
    store = Store(store_path)
    table = run_sql(store, query, params=params, dialect=dialect, timeout_s=timeout)
    if out is not None:
        write_out(table, out, kind)
        print(f"wrote {table.num_rows} rows to {out}")
        return
    emit(table, fmt)


OUT_KINDS = {".parquet": "parquet", ".csv": "csv", ".json": "json"}


def out_kind(out: Path, fmt: Format) -> str:
    """The file type --out asks for, checked before the query runs."""
    kind = OUT_KINDS.get(out.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"--out {out}: unknown file type {out.suffix or '(no extension)'!r}",
            hint="end the name with .parquet, .csv or .json",
        )
    if fmt is not Format.table and fmt.value != kind:
        raise ConfigError(f"--out {out} is {kind} but --format is {fmt.value}; drop --format")
    if not out.parent.is_dir():
        raise ConfigError(
            f"--out {out}: folder {out.parent} does not exist", hint="create it first"
        )
    return kind


def write_out(table: object, out: Path, kind: str | None) -> None:
    import pyarrow as pa

    from failstore.cli.output import write_csv, write_json

    assert isinstance(table, pa.Table)
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return
    with out.open("w", encoding="utf-8", newline="") as f:
        (write_csv if kind == "csv" else write_json)(table, f)
