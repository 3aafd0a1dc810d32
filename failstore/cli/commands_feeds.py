"""``publish`` (to PostgreSQL) and ``export`` (to files): feeds for BI dashboards."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qsl

import typer

from failstore.cli.commands_sql import parse_params
from failstore.cli.state import state
from failstore.errors import ConfigError

QueryOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--query",
        help="Also publish this stored query with other parameters: NAME with --param, or "
        "'NAME?k=v&k2=v2' (repeatable). Published as NAME__k_v unless --as names it.",
    ),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", help="KEY=VALUE for the one --query given; repeatable."),
]
AsOpt = Annotated[
    str | None, typer.Option("--as", help="The name the one --query is published under.")
]
VectorsOpt = Annotated[
    bool,
    typer.Option(
        "--with-vectors",
        help="Keep the bulky columns (embeddings, probabilities, maps, masks); left out by "
        "default.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a JSON summary instead of the summary line.")
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing on success (errors still go to stderr)."),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Time limit in seconds for each table or query read.")
]


def requests(queries: list[str] | None, params: list[str] | None, as_name: str | None) -> list:
    """``--query/--param/--as`` as catalog requests."""
    from failstore.feeds.catalog import QueryRequest

    specs = queries or []
    if (params or as_name) and len(specs) != 1:
        raise ConfigError(
            "--param and --as go with exactly one --query",
            hint="for several, write --query 'NAME?k=v&k2=v2'",
        )
    out = []
    for spec in specs:
        name, _, query = spec.partition("?")
        given = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        given.update(parse_params(params))
        out.append(QueryRequest(name.strip(), given, as_name))
    return out


def _report(summary: object, as_json: bool, quiet: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))  # type: ignore[attr-defined]
    elif not quiet:
        typer.echo(summary.line())  # type: ignore[attr-defined]
        for s in summary.skipped:  # type: ignore[attr-defined]
            typer.echo(f"  skipped {s.name}: {s.reason}", err=True)


def _progress(quiet: bool, as_json: bool):  # type: ignore[no-untyped-def]
    if quiet or as_json:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def publish(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            help="postgresql://USER@HOST:PORT/DATABASE (password from the URL, PGPASSWORD or "
            "~/.pgpass; never printed)."
        ),
    ],
    schema: Annotated[str, typer.Option("--schema", help="PostgreSQL schema.")] = "failstore",
    query: QueryOpt = None,
    param: ParamOpt = None,
    as_name: AsOpt = None,
    with_vectors: VectorsOpt = False,
    full: Annotated[
        bool, typer.Option("--full", help="Copy everything, even tables that did not change.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Copy every table and stored query result into a PostgreSQL schema, switched atomically.

    Only what changed since the last publish is copied; dashboards see the previous complete
    state or the new one. Exit codes: 0 done, 1 bad input or store, 2 usage, 3 the server
    refused (nothing changed).

    Example: failstore publish postgresql://bi@db.example/dash --query 'slices?model=target'
    """
    from failstore.feeds.publish import publish as run

    store = state(ctx).open_store()
    summary = run(
        store,
        url,
        schema=schema,
        with_vectors=with_vectors,
        requests=requests(query, param, as_name),
        full=full,
        timeout_s=timeout,
        say=_progress(quiet, as_json),
    )
    _report(summary, as_json, quiet)


def export(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder to write into (created if missing).")],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="parquet (a file each), csv, or duckdb (one file)."),
    ] = "parquet",
    query: QueryOpt = None,
    param: ParamOpt = None,
    as_name: AsOpt = None,
    with_vectors: VectorsOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Write every table and stored query result to files, with publish's column conventions.

    Example: failstore export bi-files --format duckdb
    """
    from failstore.feeds.export import export as run

    store = state(ctx).open_store()
    summary = run(
        store,
        folder,
        fmt=fmt,
        with_vectors=with_vectors,
        requests=requests(query, param, as_name),
        timeout_s=timeout,
        say=_progress(quiet, as_json),
    )
    _report(summary, as_json, quiet)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("export")(export)
