"""The SQL guard: accept one read-only query over known tables, refuse everything else.

``guard()`` parses the query with sqlglot (in any sqlglot dialect), checks it, expands stored
queries referenced as tables into CTEs, substitutes ``$name`` parameters with literals and
returns DuckDB SQL regenerated from the checked tree (never the caller's text). DuckDB's own
lock-down (no external access, locked configuration) is the second line of defence.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from failstore.errors import SqlRefused
from failstore.queries.sql.columns import at_parameter_hint, check_columns
from failstore.queries.sql.messages import TOO_DEEP, quiet_sqlglot, refusal, statement_keyword
from failstore.queries.sql.plans import GuardedQuery
from failstore.queries.sql.stored import (
    STORED_PREFIX,
    default_literal,
    expand_templates,
    param_literal,
)

if TYPE_CHECKING:
    from failstore.queries.sql.stored import StoredQuery

ALLOWED = "only one read-only query is allowed: SELECT, WITH ... SELECT, UNION/INTERSECT/EXCEPT"
TABLE_FUNCTIONS_ALLOWED = ("unnest", "range", "generate_series")

# Statement nodes that must not occur anywhere in the tree.
FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = (
    exp.DDL, exp.DML, exp.Create, exp.Drop, exp.Alter, exp.Command, exp.Copy, exp.Attach,
    exp.Detach, exp.Pragma, exp.Set, exp.Install, exp.Use, exp.Into, exp.Describe, exp.Show,
    exp.Summarize, exp.Transaction, exp.Commit, exp.Rollback, exp.Export, exp.Analyze, exp.Grant,
    exp.Revoke, exp.Refresh, exp.Cache, exp.Uncache, exp.Kill, exp.LoadData, exp.Execute,
    exp.TruncateTable, exp.Put, exp.Get, exp.ListStage, exp.Declare, exp.Comment, exp.Undrop,
)  # fmt: skip
# Statement names whose node class is not the keyword.
STATEMENT_NAMES = {"EXECUTESQL": "EXECUTE", "TRUNCATETABLE": "TRUNCATE", "LISTSTAGE": "LIST"}

# Functions that read files, the environment, settings or secrets, or run SQL text.
FORBIDDEN_FUNCTION_PREFIXES = (
    "read_", "parquet_", "pragma_", "duckdb_", "file_", "sqlite_", "postgres_", "mysql_",
    "iceberg_", "delta_", "json_execute", "python_", "pandas_", "arrow_scan", "register_",
    "deregister_", "create_", "destroy_", "import_", "export_", "copy_", "load_", "install_",
    "enable_", "disable_", "truncate_", "force_", "http_", "st_read", "lance_",
)  # fmt: skip
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "glob", "getenv", "current_setting", "current_query", "sniff_csv", "query", "query_table",
        "which_secret", "checkpoint", "write_log", "summary", "seq_scan", "test_all_types",
        "test_vector_types", "system", "shell", "csv_scan", "json_scan", "repeat_row",
    }
)  # fmt: skip


def resolve_dialect(dialect: str | None) -> str:
    name = (dialect or "duckdb").strip().lower()
    valid = sorted(d.value for d in sqlglot.dialects.Dialects if d.value)
    if name not in valid:
        raise SqlRefused(f"unknown SQL dialect {dialect!r}; valid dialects: {', '.join(valid)}")
    return name


def _statement_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    kind = node.args.get("kind")
    name = type(node).__name__.upper()
    name = STATEMENT_NAMES.get(name, name)
    return f"{name} {kind}".upper() if isinstance(kind, str) and kind else name


# What sqlglot may raise on input it cannot read (the last four are sqlglot bugs on odd input;
# the query is refused all the same, in one line).
SQLGLOT_FAILURES = (SqlglotError, RecursionError, ValueError, TypeError, IndexError, KeyError)


def _parse(sql: str, read: str) -> list[exp.Expr]:
    try:
        with quiet_sqlglot():
            return [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except SQLGLOT_FAILURES as e:
        word = statement_keyword(sql)
        if word and not isinstance(e, RecursionError):  # e.g. EXPORT DATABASE, beyond sqlglot
            raise SqlRefused(f"{word} is not allowed; {ALLOWED}") from e
        raise refusal(e, sql, read) from e


def _to_duckdb(tree: exp.Expr, read: str) -> str:
    """The DuckDB SQL of a tree read in another dialect; refused when sqlglot says a part has
    no faithful DuckDB form (instead of logging a warning and running something else)."""
    try:
        with quiet_sqlglot():
            return tree.sql(
                dialect="duckdb", comments=False, unsupported_level=ErrorLevel.IMMEDIATE
            )
    except SQLGLOT_FAILURES as e:
        raise refusal(e, "", read) from e


def check_shape(sql: str, dialect: str | None) -> exp.Query:
    """Parse ``sql`` and return it as a DuckDB-dialect tree of one read-only query."""
    read = resolve_dialect(dialect)
    statements = _parse(sql, read)
    if not statements:
        raise SqlRefused(f"empty query; {ALLOWED}")
    if len(statements) > 1:
        raise SqlRefused(f"{len(statements)} statements given; {ALLOWED}")
    tree = statements[0]
    try:
        _check_read_only(tree)
        _check_sources(tree)
        if read != "duckdb":  # work on what DuckDB will actually run
            text = _to_duckdb(tree, read)
            try:
                statements = _parse(text, "duckdb")
            except SqlRefused as e:  # its positions are in the translation, not the query
                raise SqlRefused(f"the query's DuckDB translation is not valid SQL: {e}") from e
            if len(statements) != 1:
                raise SqlRefused(f"the query does not translate to one DuckDB query; {ALLOWED}")
            tree = statements[0]
            _check_read_only(tree)
        _check_functions(tree)
    except RecursionError as e:
        raise SqlRefused(TOO_DEEP) from e
    return tree  # type: ignore[return-value]


def _check_read_only(tree: exp.Expr) -> None:
    if not isinstance(tree, exp.Query):
        if isinstance(tree, (*FORBIDDEN_NODES, exp.Pivot)):
            raise SqlRefused(f"{_statement_name(tree)} is not allowed; {ALLOWED}")
        with quiet_sqlglot():
            text = tree.sql("duckdb", unsupported_level=ErrorLevel.IGNORE)
        raise SqlRefused(f"{text[:40]!r} is not a query; {ALLOWED}")
    for node in tree.walk():
        if isinstance(node, FORBIDDEN_NODES):
            what = "SELECT ... INTO" if isinstance(node, exp.Into) else _statement_name(node)
            raise SqlRefused(f"{what} inside the query is not allowed; {ALLOWED}")


def _function_names(node: exp.Func) -> set[str]:
    if isinstance(node, exp.Anonymous):
        return {str(node.name).lower()}
    return {n.lower() for n in type(node).sql_names()} | {node.key.lower()}


def _check_functions(tree: exp.Expr) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            _check_table_function(node)
        if isinstance(node, exp.Func):
            for name in _function_names(node):
                if name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_FUNCTION_PREFIXES):
                    raise SqlRefused(
                        f"function {name}() is not allowed: it reads files, settings or the "
                        "environment, or runs SQL; query the store's tables instead"
                    )
        elif isinstance(node, exp.Placeholder) and not node.this:
            raise SqlRefused("positional placeholders (?) are not supported; use $name")
        elif isinstance(node, exp.Parameter):
            raise SqlRefused(f"parameter {node.sql('duckdb')} is not supported; use $name")


def _check_sources(tree: exp.Expr) -> None:
    """FROM/JOIN sources that name files in the dialect as written (a Snowflake stage,
    ``@stage``, reads files; DuckDB would see a placeholder there)."""
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Var) and table.this.name.startswith("@"):
            raise SqlRefused(
                f"stage {table.this.name} is not allowed: it reads files; read the store's "
                "tables, stored queries or CTEs"
            )


def _check_table_function(table: exp.Table) -> None:
    func = table.this
    if isinstance(func, (exp.Placeholder, exp.Parameter)):
        raise SqlRefused(
            f"{func.name or '?'!r} in FROM/JOIN is a parameter or a stage, not a table; "
            "read the store's tables, stored queries or CTEs"
        )
    if not isinstance(func, exp.Func):
        raise SqlRefused(
            f"{func.sql('duckdb')[:40]!r} in FROM/JOIN is not a table; read the store's "
            "tables, stored queries or CTEs"
        )
    if isinstance(func, (exp.Unnest, exp.Explode, exp.GenerateSeries)):
        return
    names = type(func).sql_names() if not isinstance(func, exp.Anonymous) else [func.name]
    name = str(names[0] if names else func.key).lower()
    if isinstance(func, exp.Anonymous) and name in TABLE_FUNCTIONS_ALLOWED:
        return
    raise SqlRefused(
        f"table function {name}() is not allowed in FROM/JOIN; read the store's tables, "
        f"stored queries or CTEs (allowed table functions: {', '.join(TABLE_FUNCTIONS_ALLOWED)})"
    )


def placeholder_names(tree: exp.Expr) -> set[str]:
    return {str(p.this) for p in tree.find_all(exp.Placeholder) if p.this}


def _substitute(tree: exp.Expr, values: Mapping[str, exp.Expr], who: str) -> None:
    for node in list(tree.find_all(exp.Placeholder)):
        name = str(node.this)
        if name not in values:
            raise SqlRefused(
                f"missing parameter ${name} in {who}", hint=f"pass it with --param {name}=VALUE"
            )
        node.replace(values[name].copy())


def _visible_ctes(node: exp.Expr) -> set[str]:
    names: set[str] = set()
    parent = node.parent
    while parent is not None:
        with_ = parent.args.get("with_")
        if isinstance(with_, exp.With):
            names.update(cte.alias_or_name.lower() for cte in with_.expressions)
        parent = parent.parent
    return names


class _Expander:
    """Resolves table references and expands stored queries into CTEs."""

    def __init__(
        self,
        tables: Mapping[str, pa.Schema],
        stored: Mapping[str, StoredQuery],
        params: Mapping[str, str],
        missing_hint: Callable[[str], str | None] | None = None,
    ) -> None:
        self.tables = {k.lower(): k for k in tables}
        self.missing_hint = missing_hint
        self.schemas = tables
        self.stored = {k.lower(): v for k, v in stored.items()}
        self.params = params
        self.ctes: dict[str, exp.Expr] = {}  # in dependency order
        self.used_tables: set[str] = set()
        self.declared: set[str] = set()

    def resolve(self, tree: exp.Expr, chain: tuple[str, ...]) -> None:
        for table in list(tree.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                continue
            if table.args.get("db") or table.args.get("catalog"):
                raise SqlRefused(
                    f"qualified table name {table.sql('duckdb')!r} is not allowed; "
                    f"use the bare name. {self._known()}"
                )
            name = table.name.lower()
            if name in _visible_ctes(table):
                continue
            if name in self.tables and name in self.stored:
                raise SqlRefused(
                    f"{table.name!r} is both a table and a saved query",
                    hint=f"drop or rename the saved query (failstore queries drop {table.name})",
                )
            if name in self.tables:
                self.used_tables.add(self.tables[name])
            elif name in self.stored:
                self._expand(name, chain)
                alias = table.alias or table.name
                table.set("this", exp.to_identifier(STORED_PREFIX + name))
                table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            else:
                explained = self.missing_hint(name) if self.missing_hint else None
                if explained:
                    raise SqlRefused(explained)
                if not self.tables:
                    raise SqlRefused(
                        f"unknown table {table.name!r}: the store has no tables yet; "
                        "run `failstore ingest` first"
                    )
                known = [*self.tables.values(), *self.stored]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SqlRefused(f"unknown table {table.name!r}; {hint}{self._known()}")

    def _known(self) -> str:
        stored = ", ".join(sorted(self.stored)) or "none"
        return f"Known tables: {', '.join(sorted(self.tables.values()))}; stored queries: {stored}"

    def _expand(self, name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise SqlRefused(
                f"stored queries refer to each other in a cycle: {' -> '.join((*chain, name))}"
            )
        if name in self.ctes:
            return
        query = self.stored[name]
        who = f"stored query {query.name!r}"
        try:
            tree = check_shape(expand_templates(query.sql, self.schemas), "duckdb")
        except SqlRefused as e:
            raise SqlRefused(f"{who} is invalid: {e.one_line()}") from e
        values: dict[str, exp.Expr] = {}
        for p in query.parameters:
            self.declared.add(p.name)
            if p.name in self.params:
                values[p.name] = param_literal(self.params[p.name])
            elif p.default is not None:
                values[p.name] = default_literal(p.default)
        _substitute(tree, values, who)
        self.resolve(tree, (*chain, name))
        self.ctes[name] = tree


def _attach_ctes(tree: exp.Query, ctes: Mapping[str, exp.Expr]) -> exp.Query:
    if not ctes:
        return tree
    while isinstance(tree, exp.Subquery) and set(tree.args) - {"this"} == set():
        tree = tree.this
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        tree = exp.select("*").from_(tree.subquery("_q"))
    new = [
        exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(STORED_PREFIX + name)))
        for name, body in ctes.items()
    ]
    with_ = tree.args.get("with_")
    if isinstance(with_, exp.With):
        with_.set("expressions", new + list(with_.expressions))
    else:
        tree.set("with_", exp.With(expressions=new))
    return tree


def guard_query(
    sql: str,
    *,
    tables: Mapping[str, pa.Schema],
    stored: Mapping[str, StoredQuery],
    dialect: str | None = None,
    params: Mapping[str, str] | None = None,
    missing_hint: Callable[[str], str | None] | None = None,
) -> GuardedQuery:
    """``guard`` that also reports which base tables the query reads."""
    try:
        return _guard_query(sql, tables, stored, dialect, dict(params or {}), missing_hint)
    except RecursionError as e:  # deeply nested input: sqlglot's tree walks recurse
        raise SqlRefused(TOO_DEEP) from e


def _guard_query(
    sql: str,
    tables: Mapping[str, pa.Schema],
    stored: Mapping[str, StoredQuery],
    dialect: str | None,
    params: dict[str, str],
    missing_hint: Callable[[str], str | None] | None,
) -> GuardedQuery:
    tree = check_shape(sql, dialect)
    top_level = placeholder_names(tree)
    expander = _Expander(tables, stored, params, missing_hint)
    expander.resolve(tree, ())
    _substitute(tree, {k: param_literal(params[k]) for k in top_level if k in params}, "the query")
    unknown = sorted(set(params) - top_level - expander.declared)
    if unknown:
        takes = sorted(top_level | expander.declared)
        raise SqlRefused(
            f"unknown parameter(s) {', '.join(unknown)}; "
            f"this query takes: {', '.join(takes) if takes else 'no parameters'}"
        )
    tree = _attach_ctes(tree, expander.ctes)
    try:  # only the tables it reads: a table's schema may cost a read of its metadata
        columns = check_columns(tree, {t: tables[t] for t in sorted(expander.used_tables)})
    except SqlRefused as e:
        raise at_parameter_hint(e, sql) from e.__cause__
    with quiet_sqlglot():
        text = tree.sql(dialect="duckdb", comments=False)
    return GuardedQuery(text, frozenset(expander.used_tables), columns)


def guard(sql: str, **options: Any) -> str:
    """Check ``sql`` and return the DuckDB SQL to run; raise SqlRefused (one line) if refused.
    Takes ``guard_query``'s options (``tables``, ``stored``, ``dialect``, ``params``,
    ``missing_hint``)."""
    return guard_query(sql, **options).sql
