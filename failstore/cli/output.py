"""Printing Arrow tables as a terminal table, JSON (a list of row objects) or CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import pyarrow as pa

from failstore.queries.sql.values import jsonable

if TYPE_CHECKING:
    import typer


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


# The one output option every printing command takes (as sqlite-utils' output_options).
# Built on first use (module ``__getattr__``): printing needs no Typer (``failstore sql``'s
# fast path, failstore/cli/fast_sql.py, never imports it).
FORMAT_HELP = "Output format: table, json or csv."
if TYPE_CHECKING:
    FormatOpt = Annotated[Format, typer.Option("--format", "-f", help=FORMAT_HELP)]


def __getattr__(name: str) -> Any:
    if name == "FormatOpt":
        import typer

        opt = Annotated[Format, typer.Option("--format", "-f", help=FORMAT_HELP)]
        globals()["FormatOpt"] = opt
        return opt
    raise AttributeError(name)


MAX_LIST_SHOWN = 6  # lists longer than this are elided in table output
MAX_CELL = 200  # characters of one value shown in table output (longer ones wrap)
ID_CHARS = 8  # ids (run_id, image_id, ...) are shown by their first 8 characters
MIN_TEXT = 16  # text values fold down to this width before columns are left out
SEPARATOR = 3  # " │ " between columns

# The rules of table output, appended to docs/cli.md by failstore.cli.docgen.
TABLE_RULES = f"""\
## Table output

`-f table` (the default of every command that prints rows) is for reading in a terminal;
`-f csv` and `-f json` (and `failstore sql --out`) are for programs and always hold every
column and the full values.

- **Width.** A table fits the terminal's width (`COLUMNS` when set, else the terminal's;
  80 when the output is not a terminal).
- **Headers** are never broken inside a word: a long column name breaks only after a `_`
  (`error_` / `rate`).
- **Values.** Numbers and booleans are never broken; text wraps at spaces, and folds down to
  {MIN_TEXT} characters (times to `2026-01-02` / `10:11:12Z`). Columns that do not fit even then are
  left out, from the right, and named under the table:
  `(3 rows; too wide to show tags, width: select fewer columns, or use -f csv or -f json)`.
- **Short forms.** Ids (a column `id` or `*_id`: `run_id`, `image_id`) show their first {ID_CHARS}
  characters (enough for `failstore runs drop`, which takes unique prefixes); paths (`uri`,
  `path`, `*_uri`, `*_path`) show the file name; times are shown to the second (`Z`: UTC);
  vectors as `<float[512]>`, binary values as `<N bytes>`, and values past {MAX_CELL} characters end
  in `…`.
- **`failstore slices`** shows the description first and leaves out the run's constant
  columns `grouping` and `model` (they are in `-f csv` / `-f json`).

Example: `COLUMNS=120 failstore runs` (a wider table); `failstore runs -f csv` (every column,
full values).
"""


def _is_vector(t: pa.DataType) -> bool:
    return (
        pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    ) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))


def iter_rows(table: pa.Table, batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()


def write_json(table: pa.Table, out: TextIO) -> None:
    """A JSON list of row objects, streamed batch by batch."""
    out.write("[")
    for i, row in enumerate(iter_rows(table)):
        out.write(", " if i else "")
        out.write(json.dumps(jsonable(row), ensure_ascii=False))
    out.write("]\n")


def write_csv(table: pa.Table, out: TextIO) -> None:
    """CSV with a header; nested values (lists, structs, vectors) as JSON text."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(table.column_names)
    for row in iter_rows(table):
        cells = []
        for v in row.values():
            v = jsonable(v)
            cells.append(json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v))
        w.writerow(cells)


def _is_id(name: str) -> bool:
    return name == "id" or name.endswith("_id")


def _is_path(name: str) -> bool:
    return name in ("uri", "path") or name.endswith(("_uri", "_path"))


def _when(v: datetime | date) -> str:
    if not isinstance(v, datetime):
        return v.isoformat()
    if v.tzinfo is not None and v.utcoffset() == timedelta(0):
        return v.strftime("%Y-%m-%d %H:%M:%SZ")
    return v.isoformat(sep=" ", timespec="seconds")


def _cell(v: Any, t: pa.DataType, name: str = "") -> str:
    """One value as table text: ids shortened, paths as their file name, vectors elided."""
    if v is None:
        return ""
    if isinstance(v, str) and _is_id(name):
        return v[:ID_CHARS]
    if isinstance(v, str) and _is_path(name):
        return v.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or v
    if _is_vector(t) and isinstance(v, list) and len(v) > MAX_LIST_SHOWN:
        kind = "float" if pa.types.is_floating(t.value_type) else "int"
        return f"<{kind}[{len(v)}]>"
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (datetime, date)):
        return _when(v)
    if isinstance(v, (list, dict)):
        text = json.dumps(jsonable(v), ensure_ascii=False)
    else:
        text = str(v)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _header_parts(name: str) -> list[str]:
    """A header's words: it may break after "_" or a space, never inside a word."""
    return re.findall(r"[^_ ]*[_ ]|[^_ ]+", name) or [name]


def _header(name: str, width: int) -> str:
    from rich.cells import cell_len

    lines = [""]
    for part in _header_parts(name):
        if lines[-1] and cell_len(lines[-1] + part.rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class _Layout:
    columns: list[int]  # the columns shown, in order
    widths: list[int]  # their widths
    hidden: list[str]  # the names of the columns left out


def _layout(names: list[str], rows: list[list[str]], fold: list[int | None], width: int) -> _Layout:
    """Column widths that fit ``width``: every header whole (it breaks only after "_"),
    values folded down to ``fold[i]`` characters (None: never broken); columns that do not
    fit at their minimum are left out, from the right."""
    from rich.cells import cell_len  # terminal cells: wide characters count twice

    natural, minimum = [], []
    for i, name in enumerate(names):
        cells = max((cell_len(line) for r in rows for line in r[i].splitlines()), default=0)
        head = max(cell_len(p.rstrip()) for p in _header_parts(name))
        natural.append(max(cell_len(name), cells, 1))
        least = fold[i]
        minimum.append(min(max(head, cells if least is None else min(cells, least), 1), width))
    shown: list[int] = []
    used = 0
    for i in range(len(names)):
        need = minimum[i] + (SEPARATOR if shown else 0)
        if shown and used + need > width:
            break
        shown.append(i)
        used += need
    widths = {i: minimum[i] for i in shown}
    extra = width - used
    for first in (False, True):  # share the rest out: text columns first, then headers
        wanting = [i for i in shown if natural[i] > widths[i] and (fold[i] is None) == first]
        while extra > 0 and wanting:
            share = max(1, extra // len(wanting))
            for i in list(wanting):
                give = min(share, natural[i] - widths[i], extra)
                widths[i] += give
                extra -= give
                if widths[i] >= natural[i]:
                    wanting.remove(i)
    hidden = [names[i] for i in range(len(names)) if i not in widths]
    return _Layout(shown, [widths[i] for i in shown], hidden)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _fold_to(t: pa.DataType) -> int | None:
    """How narrow a column's values may fold: numbers and booleans never break, times break
    at the space (``2026-01-02`` / ``10:11:12Z``), other text down to ``MIN_TEXT``."""
    if _is_number(t) or pa.types.is_boolean(t):
        return None
    return 10 if pa.types.is_temporal(t) else MIN_TEXT


def render_table(table: pa.Table, out: TextIO | None = None, title: str | None = None) -> None:
    """A rich table that fits the terminal (``COLUMNS`` respected): see docs/cli.md, "Table
    output". Vectors and binary cells are elided, ids shortened, paths shown as file names."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, soft_wrap=False) if out is not None else Console()
    names, types = table.column_names, [f.type for f in table.schema]
    rows = [
        [_cell(v, t, n) for v, t, n in zip(row.values(), types, names, strict=True)]
        for row in iter_rows(table)
    ]
    fold = [_fold_to(t) for t in types]
    layout = _layout(names, rows, fold, console.width)
    rt = Table(title=title, box=box.SQUARE, show_edge=False, pad_edge=False)
    for i, w in zip(layout.columns, layout.widths, strict=True):
        rt.add_column(
            _header(names[i], w), width=w, no_wrap=fold[i] is None, overflow="fold",
            justify="right" if _is_number(types[i]) else "left",
        )  # fmt: skip
    for r in rows:
        rt.add_row(*[r[i] for i in layout.columns])
    console.print(rt)
    n = table.num_rows
    note = f"{n} row{'s' if n != 1 else ''}"
    if layout.hidden:
        note += (
            f"; too wide to show {', '.join(layout.hidden)}: select fewer columns, or use "
            "-f csv or -f json"
        )
    console.print(f"({note})", style="dim")


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
