"""``runs`` (list and drop analysis runs) and ``compact``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import typer

from failstore.cli.output import Format, FormatOpt, emit
from failstore.cli.state import state
from failstore.errors import ConfigError

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, flag: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> timedelta."""
    m = DURATION_RE.match(text)
    if not m:
        raise ConfigError(
            f"{flag} {text!r} is not a duration", hint="write a number and a unit: 30m, 12h, 7d, 2w"
        )
    return timedelta(**{UNITS[m.group(2)]: float(m.group(1))})


runs_app = typer.Typer(
    help="Analysis runs: every run's parameters, source versions, rows and time.\n\n"
    "Example: failstore runs --analysis slices",
    invoke_without_command=True,
)


@runs_app.callback()
def runs(
    ctx: typer.Context,
    analysis: Annotated[
        str | None, typer.Option(help="Only runs of this analysis (e.g. slices).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """List analysis runs, most recently used first.

    Example: failstore runs --analysis slices --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    from failstore.queries.framework.runs import list_runs

    emit(list_runs(state(ctx).open_store(), analysis), fmt)


@runs_app.command("drop")
def drop(
    ctx: typer.Context,
    run_id: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or unique prefixes of 4+ characters).")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Also drop runs not used for this long: 30m, 12h, 7d, 2w.")
    ] = None,
    analysis: Annotated[
        str | None, typer.Option(help="With --older-than: only runs of this analysis.")
    ] = None,
) -> None:
    """Delete runs: their rows in the result table and their analysis_runs row.

    Example: failstore runs drop 3f2a9c1e --older-than 30d
    """
    from failstore.queries.framework.runs import drop_runs

    if not run_id and older_than is None:
        raise ConfigError("nothing to drop", hint="give RUN_ID... or --older-than DURATION")
    age = parse_duration(older_than, "--older-than") if older_than is not None else None
    dropped = drop_runs(state(ctx).open_store(), run_id or [], older_than=age, analysis=analysis)
    typer.echo(f"dropped {len(dropped)} run{'s' if len(dropped) != 1 else ''}")
    for r in dropped:
        typer.echo(r)


def compact(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(help="Remove table versions older than this (30m, 12h, 7d, 0s = all)."),
    ] = "7d",
    fmt: FormatOpt = Format.table,
) -> None:
    """Compact every table and remove old Lance versions (time travel to them is lost).

    Example: failstore compact --older-than 1d
    """
    import pyarrow as pa

    from failstore.cli.commands_store import refresh_read_cache

    age = parse_duration(older_than, "--older-than")
    store = state(ctx).open_store()
    done = store.compact(older_than=age)
    refresh_read_cache(store)  # compaction made new versions of every table
    emit(pa.Table.from_pylist(done), fmt)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
    app.command("compact")(compact)
