"""Stored queries: named, parameterised SELECTs usable as tables in SQL.

Built-in queries live in ``failstore/queries/sql/builtin/*.sql`` and each analysis's
``failstore/queries/<analysis>/*.sql``; user queries are saved in the store's
``saved_queries`` table. A ``.sql`` file starts with a header of ``--`` comment lines::

    -- name: class_error_rates
    -- description: Error rate per class for each model.
    -- param: grouping = 'label' -- 'label' or 'prediction'
    -- param: model = NULL -- only this model

followed by the body: one read-only query. ``$name`` placeholders in the body take the value
given with ``params`` or the parameter's default (SQL literal text); a parameter without a
default is required.

Stored SQL may also use schema templates, filled from the store's actual ``images`` columns
(model columns are optional, so a query cannot name them all statically):

* ``{{ column(TABLE, ALIAS, COLUMN) }}``: ``ALIAS."COLUMN"`` when the table has the column,
  else a typed ``NULL AS "COLUMN"`` for the optional model columns (tags, clip_model...).
* ``{{ other_columns(TABLE, ALIAS, COL, ...) }}``: ``, ALIAS."c"`` for every column of the table
  that is neither listed nor a fixed-size vector (``FLOAT[D]``), in table order.
* ``{{ table_or_empty(TABLE) }}``: the analysis table ``TABLE`` when the store has it, else an
  empty subquery with its declared columns, so a query can join an analysis that may not have
  run yet (e.g. ``coverage`` shows each method's sanity verdict when there is one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from importlib.resources.abc import Traversable

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from failstore.errors import InputError, SqlRefused

STORED_PREFIX = "_stored_"  # CTE name prefix of a stored query expanded into a query
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_RE = re.compile(r"^--\s*([A-Za-z_]+)\s*:\s?(.*)$")
HEADER_KEYS = ("name", "description", "param")
TEMPLATE_RE = re.compile(r"\{\{\s*(column|other_columns|table_or_empty)\s*\(([^)]*)\)\s*\}\}")

# SQL types of the optional model columns of `images`, for a NULL stand-in when absent.
OPTIONAL_COLUMN_TYPES = {
    "clip_model": "VARCHAR",
    "clip_embedding": "FLOAT[]",
    "tag_scores": "FLOAT[]",
    "tags": "VARCHAR[]",
    "robust_model": "VARCHAR",
    "robust_features": "FLOAT[]",
}


@dataclass(frozen=True)
class Param:
    """A stored query parameter; ``default`` is SQL literal text (``'label'``, ``30``, ``NULL``)
    or None when the parameter is required."""

    name: str
    default: str | None
    description: str = ""


@dataclass(frozen=True)
class StoredQuery:
    name: str
    description: str
    parameters: tuple[Param, ...]
    sql: str
    source: str  # "builtin" or "store"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.parameters if p.name == name), None)

    def to_row(self) -> dict:
        """A row of the store's ``saved_queries`` table (SAVED_QUERIES_SCHEMA)."""
        return {
            "name": self.name,
            "sql": self.sql,
            "description": self.description,
            "parameters": json.dumps({p.name: p.default for p in self.parameters}),
            "saved_at": datetime.now(timezone.utc),
        }

    @classmethod
    def from_row(cls, row: Mapping) -> StoredQuery:
        try:
            params = json.loads(row.get("parameters") or "{}")
        except json.JSONDecodeError as e:
            raise InputError(
                f"saved query {row.get('name')!r} has broken parameters JSON ({e.msg})",
                hint="drop and save it again",
            ) from e
        return cls(
            name=row["name"],
            description=row.get("description") or "",
            parameters=tuple(Param(k, v, "") for k, v in params.items()),
            sql=row["sql"],
            source="store",
        )


def _split_default_and_description(text: str) -> tuple[str | None, str]:
    """``'a -- b' -- desc`` -> ("'a -- b'", "desc"): a ``--`` inside a string literal stays."""
    in_string = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            in_string = not in_string
        elif not in_string and text.startswith("--", i):
            return text[:i].strip() or None, text[i + 2 :].strip()
        i += 1
    return text.strip() or None, ""


def _parse_param(value: str, where: str) -> Param:
    decl, description = _split_default_and_description(value)
    if decl is None:
        raise InputError(f"{where}: empty param line", hint="write '-- param: NAME [= DEFAULT]'")
    name, eq, default = decl.partition("=")
    name = name.strip()
    if not NAME_RE.match(name):
        raise InputError(
            f"{where}: bad parameter name {name!r}", hint="use letters, digits and underscores"
        )
    default_text = default.strip() if eq else None
    if eq and not default_text:
        raise InputError(f"{where}: parameter {name!r} has '=' but no default value")
    if default_text is not None:
        check_literal(default_text, f"{where}: default of parameter {name!r}")
    return Param(name, default_text, description)


def check_literal(text: str, what: str) -> None:
    """Raise InputError unless ``text`` is one SQL literal (string, number, NULL, boolean)."""
    try:
        node = sqlglot.parse_one(text, read="duckdb")
    except ParseError:
        node = None
    if isinstance(node, exp.Neg):
        node = node.this if isinstance(node.this, exp.Literal) and node.this.is_number else None
    if not isinstance(node, (exp.Literal, exp.Null, exp.Boolean)):
        raise InputError(
            f"{what} is not a SQL literal: {text!r}",
            hint="use a quoted string ('label'), a number, NULL, TRUE or FALSE",
        )


NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
QUOTED_RE = re.compile(r"^'((?:[^']|'')*)'$")


def param_literal(value: str) -> exp.Expr:
    """Text given for a parameter -> a SQL literal: numbers stay numbers, ``'quoted'`` text is
    unquoted, anything else becomes a string literal. Never spliced into SQL text."""
    text = value.strip()
    if NUMBER_RE.match(text):
        return exp.Literal.number(text)
    m = QUOTED_RE.match(text)
    return exp.Literal.string(m.group(1).replace("''", "'") if m else value)


def default_literal(text: str) -> exp.Expr:
    """A stored query parameter default (checked SQL literal text) -> expression."""
    return sqlglot.parse_one(text, read="duckdb")


def parse_sql_file(text: str, source: str, *, filename: str = "<sql>") -> StoredQuery:
    """Parse a stored query file: ``--`` header lines, then the SQL body."""
    fields: dict[str, str] = {}
    descriptions: list[str] = []
    params: list[Param] = []
    lines = text.splitlines()
    body_start = len(lines)
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            body_start = lineno - 1
            break
        m = HEADER_RE.match(line)
        if not m:
            continue  # a free comment line
        key, value = m.group(1).lower(), m.group(2).strip()
        where = f"{filename}:{lineno}"
        if key not in HEADER_KEYS:
            raise InputError(
                f"{where}: unknown header key {key!r}", hint=f"use one of {', '.join(HEADER_KEYS)}"
            )
        if key == "param":
            param = _parse_param(value, where)
            if any(p.name == param.name for p in params):
                raise InputError(f"{where}: parameter {param.name!r} declared twice")
            params.append(param)
        elif key == "description":
            descriptions.append(value)
        elif key in fields:
            raise InputError(f"{where}: header key 'name' given twice")
        else:
            fields[key] = value
    name = fields.get("name", "")
    if not name:
        raise InputError(f"{filename}:1: missing '-- name: NAME' header line")
    if not NAME_RE.match(name):
        raise InputError(
            f"{filename}: bad query name {name!r}", hint="use letters, digits and underscores"
        )
    body = "\n".join(lines[body_start:]).strip().rstrip(";").strip()
    if not body:
        raise InputError(f"{filename}: no SQL after the header", hint="add one SELECT query")
    return StoredQuery(name, " ".join(descriptions), tuple(params), body, source)


def _sql_folders() -> list[tuple[str, Traversable]]:
    """Folders of shipped ``.sql`` files: the SQL side's ``builtin/`` and every analysis
    package under ``failstore/queries`` (found as package data, nothing is imported)."""
    root = resources.files("failstore.queries")
    folders = [("failstore/queries/sql/builtin", root.joinpath("sql").joinpath("builtin"))]
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and entry.name not in ("sql", "__pycache__"):
            folders.append((f"failstore/queries/{entry.name}", entry))
    return folders


def builtin_queries() -> dict[str, StoredQuery]:
    """The stored queries shipped with failstore: ``failstore/queries/sql/builtin/*.sql`` and
    each analysis's ``failstore/queries/<analysis>/*.sql``."""
    queries: dict[str, StoredQuery] = {}
    for where, folder in _sql_folders():
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".sql"):
                continue
            filename = f"{where}/{entry.name}"
            query = parse_sql_file(entry.read_text(encoding="utf-8"), "builtin", filename=filename)
            if query.name != entry.name[:-4]:
                raise InputError(
                    f"{filename}: header name {query.name!r} differs from the file name"
                )
            if query.name in queries:
                raise InputError(f"{filename}: stored query {query.name!r} is defined twice")
            queries[query.name] = query
    return queries


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def expand_templates(sql: str, tables: Mapping[str, pa.Schema] | None) -> str:
    """Fill ``{{ column(...) }}`` / ``{{ other_columns(...) }}`` from the table schemas.

    With ``tables=None`` (a shape check without a store) templates become NULL / nothing."""

    def fill(m: re.Match) -> str:
        kind = m.group(1)
        args = [a.strip() for a in m.group(2).split(",") if a.strip()]
        if kind == "table_or_empty":
            return _table_or_empty(m.group(0), args, tables)
        if len(args) < 2 + (kind == "column") or not all(NAME_RE.match(a) for a in args):
            raise SqlRefused(f"bad template {m.group(0)!r}; write {kind}(TABLE, ALIAS, COLUMN...)")
        table, alias, *cols = args
        if tables is None:
            return "NULL" if kind == "column" else ""
        schema = tables.get(table)
        if schema is None:
            raise SqlRefused(f"template {m.group(0)!r} names unknown table {table!r}")
        if kind == "column":
            col = cols[0]
            if col in schema.names:
                return f"{alias}.{_quote(col)}"
            if col in OPTIONAL_COLUMN_TYPES:
                return f"CAST(NULL AS {OPTIONAL_COLUMN_TYPES[col]}) AS {_quote(col)}"
            raise SqlRefused(f"template {m.group(0)!r}: table {table!r} has no column {col!r}")
        skip = set(cols)
        return "".join(
            f", {alias}.{_quote(f.name)}"
            for f in schema
            if f.name not in skip and not pa.types.is_fixed_size_list(f.type)
        )

    return TEMPLATE_RE.sub(fill, sql)


def _table_or_empty(template: str, args: list[str], tables: Mapping[str, pa.Schema] | None) -> str:
    from failstore.queries.framework import registry

    if len(args) != 1 or not NAME_RE.match(args[0]):
        raise SqlRefused(f"bad template {template!r}; write table_or_empty(TABLE)")
    (table,) = args
    if tables is not None and table in tables:
        return _quote(table)
    declared = {t: a for t, a in registry.result_tables().items()}
    if table not in declared:
        raise SqlRefused(f"template {template!r} names {table!r}, which no analysis writes")
    schema = registry.analyses()[declared[table]].tables()[table]
    columns = [*schema, pa.field("run_id", pa.string())]
    select = ", ".join(f"CAST(NULL AS {sql_type(f.type)}) AS {_quote(f.name)}" for f in columns)
    return f"(SELECT {select} WHERE FALSE)"


def sql_type(t: pa.DataType) -> str:
    """Arrow type -> DuckDB type text for sqlglot's schema."""
    if pa.types.is_fixed_size_list(t):
        return f"{sql_type(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{sql_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        fields = ", ".join(f'"{f.name}" {sql_type(f.type)}' for f in t)
        return f"STRUCT({fields})"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    simple = {
        pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INT", pa.int64(): "BIGINT",
        pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER",
        pa.uint64(): "UBIGINT", pa.float16(): "FLOAT", pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE", pa.binary(): "BLOB", pa.large_binary(): "BLOB",
        pa.date32(): "DATE", pa.null(): "VARCHAR",
    }  # fmt: skip
    return simple.get(t, "VARCHAR")
