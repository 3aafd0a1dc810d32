"""The Typer app of the ``failstore`` command: its global options and its commands, built
from the command modules (imported by ``failstore.cli.app`` only when Typer has to answer)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from failstore.cli.state import State

COMMAND_MODULES = (
    "commands_store",
    "commands_sql",
    "commands_analyses",
    "commands_saliency",
    "commands_runs",
    "commands_feeds",
    "commands_serve",
    "commands_demo",
)  # the modules that register commands, in the order ``--help`` lists them


def _global(
    ctx: typer.Context,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            envvar="FAILSTORE_STORE",
            help="Store directory (a LanceDB directory). Default: ./failstore-store.",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Find and explain the failure modes of image classifiers, with SQL over one store.

    Example: failstore --store S ingest photos/ --target efficientnet_lite0
    """
    ctx.obj = State(store=store, debug=debug)


def build_app(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """The ``failstore`` app with the commands of ``modules`` (all of them by default)."""
    built = typer.Typer(
        name="failstore",
        help="Find and explain the failure modes of image classifiers, with SQL over one store.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )
    built.callback()(_global)
    for name in modules:
        importlib.import_module(f"failstore.cli.{name}").register(built)
    return built
