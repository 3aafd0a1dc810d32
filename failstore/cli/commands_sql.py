"""``sql`` and ``queries save|list|show|drop``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from failstore import config
from failstore.cli.output import Format, FormatOpt, emit
from failstore.cli.sql_run import parse_params, run_sql_command
from failstore.cli.state import state


def sql(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(help="One read-only query (SELECT/WITH/UNION...); - reads stdin.")
    ],
    fmt: FormatOpt = Format.table,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the result to a file instead of printing it: .parquet, .csv or .json.",
        ),
    ] = None,
    dialect: Annotated[
        str | None,
        typer.Option(
            help="Read the query in this dialect "
            "(postgres, bigquery, snowflake, tsql, mysql, ...) and run it on DuckDB."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="KEY=VALUE for $KEY placeholders and stored-query parameters; repeatable.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Time limit in seconds.")
    ] = config.DEFAULT_SQL_TIMEOUT_S,
) -> None:
    """Run one read-only SQL query over every table and stored query.

    Example: failstore sql "SELECT label, count(*) AS n FROM images GROUP BY label" -f json
    """
    run_sql_command(state(ctx).store, query, fmt, out, dialect, parse_params(param), timeout)


def schema(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Argument(help="Only this table (default: all).")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Show the columns and SQL types of the store's tables.

    Example: failstore schema images
    """
    import difflib

    import pyarrow as pa

    from failstore.errors import StoreError
    from failstore.queries.sql.stored import sql_type

    store = state(ctx).open_store()
    names = store.table_names()
    if table is not None and table not in names:
        close = difflib.get_close_matches(table, names, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise StoreError(
            f"no table '{table}' in {store.path}", hint=f"{guess}tables: {', '.join(names)}"
        )
    rows = [
        {"table": name, "column": f.name, "type": sql_type(f.type), "nullable": f.nullable}
        for name in ([table] if table else names)
        for f in store.schema(name)
    ]
    schema_ = pa.schema(
        [("table", pa.string()), ("column", pa.string()), ("type", pa.string()),
         ("nullable", pa.bool_())]
    )  # fmt: skip
    emit(pa.Table.from_pylist(rows, schema=schema_), fmt)


queries_app = typer.Typer(
    help="Stored queries: built-ins shipped with failstore and queries saved in the store.",
    no_args_is_help=True,
)


@queries_app.command("list")
def list_queries(ctx: typer.Context, fmt: FormatOpt = Format.table) -> None:
    """List stored queries (built-in and saved).

    Example: failstore queries list
    """
    import pyarrow as pa

    from failstore.queries.sql.session import session

    stored = session(state(ctx).open_store()).stored_queries()
    rows = [
        {
            "name": q.name,
            "source": q.source,
            "description": q.description,
            "parameters": ", ".join(p.name for p in q.parameters),
        }
        for q in sorted(stored.values(), key=lambda q: q.name)
    ]
    emit(pa.Table.from_pylist(rows), fmt)


@queries_app.command("show")
def show_query(ctx: typer.Context, name: str) -> None:
    """Print a stored query's header and SQL.

    Example: failstore queries show class_error_rates
    """
    from failstore.errors import StoreError
    from failstore.queries.sql.session import session

    stored = session(state(ctx).open_store()).stored_queries()
    if name not in stored:
        raise StoreError(f"no stored query '{name}'", hint=f"known: {', '.join(sorted(stored))}")
    q = stored[name]
    typer.echo(f"-- name: {q.name}\n-- description: {q.description}\n-- source: {q.source}")
    for p in q.parameters:
        default = f" = {p.default}" if p.default is not None else ""
        typer.echo(
            f"-- param: {p.name}{default}" + (f" -- {p.description}" if p.description else "")
        )
    typer.echo(q.sql.strip())


@queries_app.command("save")
def save_query(
    ctx: typer.Context,
    name: str,
    query: Annotated[str, typer.Argument(help="The SQL; may use $param placeholders.")],
    description: Annotated[str, typer.Option(help="One line saying what it returns.")] = "",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="NAME=DEFAULT (a SQL literal) for a $NAME placeholder; repeatable."
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a saved query of the same name.")
    ] = False,
) -> None:
    """Save a query in the store; it can then be used as a table in SQL.

    Example: failstore queries save wrong "SELECT * FROM samples WHERE NOT correct"
    """
    from failstore.queries.sql.session import make_user_query, session

    store = state(ctx).open_store()
    q = make_user_query(name, query, description, parse_params(param))
    session(store).save_query(q, replace=replace)
    typer.echo(f"saved query '{name}'")


@queries_app.command("drop")
def drop_query(ctx: typer.Context, name: str) -> None:
    """Remove a saved query from the store.

    Example: failstore queries drop wrong_birds
    """
    from failstore.queries.sql.session import session

    session(state(ctx).open_store()).drop_query(name)
    typer.echo(f"dropped query '{name}'")


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
    app.command("schema")(schema)
    app.add_typer(queries_app, name="queries")
