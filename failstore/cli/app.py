"""The ``failstore`` command: a thin Typer layer over the library.

Commands only parse options, call the library and print. Errors a user can cause are one line
on stderr with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from failstore.cli import (
    commands_analyses,
    commands_demo,
    commands_runs,
    commands_sql,
    commands_store,
)
from failstore.cli.state import State

app = typer.Typer(
    name="failstore",
    help="Find and explain the failure modes of image classifiers, with SQL over one store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
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


commands_store.register(app)
commands_sql.register(app)
commands_analyses.register(app)
commands_runs.register(app)
commands_demo.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning failstore errors into one line and an exit code."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    from failstore.errors import FailstoreError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="failstore", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except NoArgsIsHelpError as e:
        e.show()
        sys.exit(0)
    except ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except FailstoreError as e:
        from failstore.queries.framework.params import ParamError

        if isinstance(e, ParamError):  # an analysis parameter given on the command line
            e = e.for_cli()
        if debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(
            f"error: {type(e).__name__}: {msg} (rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
