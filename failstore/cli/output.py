"""Printing Arrow tables as a terminal table, JSON (a list of row objects) or CSV."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, TextIO

import pyarrow as pa
import typer


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


# The one output option every printing command takes (as sqlite-utils' output_options).
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="Output format: table, json or csv.")
]


MAX_LIST_SHOWN = 6  # lists longer than this are elided in table output
MAX_CELL = 80


def _is_vector(t: pa.DataType) -> bool:
    return (
        pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    ) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def iter_rows(table: pa.Table, batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()


def write_json(table: pa.Table, out: TextIO) -> None:
    """A JSON list of row objects, streamed batch by batch."""
    out.write("[")
    for i, row in enumerate(iter_rows(table)):
        out.write(", " if i else "")
        out.write(json.dumps(_jsonable(row), ensure_ascii=False))
    out.write("]\n")


def write_csv(table: pa.Table, out: TextIO) -> None:
    """CSV with a header; nested values (lists, structs, vectors) as JSON text."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(table.column_names)
    for row in iter_rows(table):
        cells = []
        for v in row.values():
            v = _jsonable(v)
            cells.append(json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v))
        w.writerow(cells)


def _cell(v: Any, t: pa.DataType) -> str:
    if v is None:
        return ""
    if _is_vector(t) and isinstance(v, list) and len(v) > MAX_LIST_SHOWN:
        kind = "float" if pa.types.is_floating(t.value_type) else "int"
        return f"<{kind}[{len(v)}]>"
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(_jsonable(v), ensure_ascii=False)
    else:
        text = str(v)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def render_table(table: pa.Table, out: TextIO | None = None, title: str | None = None) -> None:
    """A rich table; vectors and binary cells are elided."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, soft_wrap=False) if out is not None else Console()
    rt = Table(title=title, show_lines=False)
    for name in table.column_names:
        rt.add_column(name, overflow="fold")
    types = [f.type for f in table.schema]
    for row in iter_rows(table):
        rt.add_row(*[_cell(v, t) for v, t in zip(row.values(), types, strict=True)])
    console.print(rt)
    console.print(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})", style="dim")


def emit(table: pa.Table, fmt: Format, out: TextIO | None = None, title: str | None = None) -> None:
    import sys

    stream = out or sys.stdout
    if fmt is Format.json:
        write_json(table, stream)
    elif fmt is Format.csv:
        write_csv(table, stream)
    else:
        render_table(table, out, title)


def to_text(table: pa.Table, fmt: Format) -> str:
    buf = io.StringIO()
    emit(table, fmt, buf)
    return buf.getvalue()
