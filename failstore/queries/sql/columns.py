"""Column checks of the SQL guard: unknown columns found with sqlglot's qualifier, explained
in one line (``unknown column 'x' in table 't'; did you mean 'y'?``)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.schema import MappingSchema

from failstore.errors import SqlRefused
from failstore.queries.sql.stored import STORED_PREFIX, sql_type

COLUMN_ERROR_RE = re.compile(
    r"Column '([^']+)' could not be resolved(?: for table: '([^']+)')?|Unknown column: (\S+)"
)


def _source_columns(source: object, tables: Mapping[str, pa.Schema]) -> list[str]:
    if isinstance(source, exp.Table) and source.name in tables:
        return list(tables[source.name].names)
    if isinstance(source, Scope):
        selects: list[str] = getattr(source.expression, "named_selects", [])
        return [c for c in selects if c != "*"]
    if isinstance(source, exp.Expr):
        alias = source.args.get("alias")
        if isinstance(alias, exp.TableAlias):
            return [c.name for c in alias.columns]
    return []


def _source_label(alias: str, source: object) -> str:
    if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
        return source.name.removeprefix(STORED_PREFIX)
    return alias


def _unknown_column_message(
    error: str, tree: exp.Expr, tables: Mapping[str, pa.Schema]
) -> str | None:
    """sqlglot's column error -> ``unknown column 'x' in table 't'; did you mean 'y'?``.

    None when the name is a select alias (DuckDB allows aliases in WHERE/GROUP BY)."""
    m = COLUMN_ERROR_RE.search(error)
    if not m:
        return None
    name, qualifier = m.group(1) or m.group(3), m.group(2)
    if any(a.alias.lower() == name.lower() for a in tree.find_all(exp.Alias)):
        return None
    for scope in traverse_scope(tree.copy()):
        for col in scope.columns:
            if col.name.lower() != name.lower():
                continue
            if qualifier and col.table.lower() != qualifier.lower():
                continue
            sources = {alias: src for alias, (_, src) in scope.selected_sources.items()}
            if col.table and col.table not in sources:
                here = ", ".join(sources) or "none"
                return f"unknown table or alias {col.table!r}; tables and aliases here: {here}"
            picked = {col.table: sources[col.table]} if col.table else sources
            candidates = [c for src in picked.values() for c in _source_columns(src, tables)]
            labels = [repr(_source_label(a, s)) for a, s in picked.items()]
            where = f"table {labels[0]}" if len(labels) == 1 else f"tables {', '.join(labels)}"
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
            if close:
                return f"unknown column {name!r} in {where}; did you mean {close[0]!r}?"
            listed = ", ".join(candidates[:40]) + (", ..." if len(candidates) > 40 else "")
            return f"unknown column {name!r} in {where}; its columns are: {listed or 'none'}"
    return f"unknown column {name!r}"


PICKS_COLUMNS = frozenset({"columns", "unpack"})


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def check_columns(tree: exp.Query, tables: Mapping[str, pa.Schema]) -> frozenset[str] | None:
    """Refuse a column no table has (one line, with the closest name). Returns the names of
    the columns the query reads, stars expanded, lower-cased (the read cache serves a table
    only when none of them is a column it leaves out), or None when sqlglot cannot follow the
    query (DuckDB then checks the columns, and every table is read from Lance)."""
    schema = MappingSchema(
        {name: {f.name: sql_type(f.type) for f in s} for name, s in tables.items()},
        dialect="duckdb",
    )
    try:
        qualified = qualify(
            tree.copy(), schema=schema, dialect="duckdb", validate_qualify_columns=True
        )
    except OptimizeError as e:
        message = _unknown_column_message(str(e), tree, tables)
        if message:
            raise SqlRefused(message) from e
        return None
    except Exception:  # sqlglot cannot follow some DuckDB syntax: DuckDB checks it
        return None
    if any(not isinstance(s.parent, exp.Count) for s in qualified.find_all(exp.Star)):
        return None  # a star sqlglot did not expand (count(*) reads no column)
    if next(qualified.find_all(exp.TableColumn), None) is not None:
        return None  # a table used as a value (``SELECT to_json(i) FROM images i``): every column
    if any(_function_name(f) in PICKS_COLUMNS for f in qualified.find_all(exp.Func)):
        return None  # DuckDB's COLUMNS(...) picks columns by pattern, out of sqlglot's sight
    return frozenset(c.name.lower() for c in qualified.find_all(exp.Column))


def at_parameter_hint(error: SqlRefused, sql: str) -> SqlRefused:
    """``@name`` is DuckDB's absolute value, but people write it for a parameter (T-SQL,
    MySQL): when it names an unknown column, say how parameters are written here."""
    m = re.match(r"unknown column '([^']+)'", error.message)
    if m and re.search(rf"(?<![\w@])@{re.escape(m.group(1))}\b", sql):
        name = m.group(1)
        return SqlRefused(
            f"unknown column {name!r}: @{name} is the absolute value of a column in DuckDB",
            hint=f"write ${name} for a parameter and give it with --param {name}=VALUE",
        )
    return error
