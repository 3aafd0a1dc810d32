"""The ``failstore`` command: a thin Typer layer over the library.

Commands only parse options, call the library and print. Errors a user can cause are one line
on stderr with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from failstore.cli import fast_sql

if TYPE_CHECKING:
    import typer

# Typer is imported only when it has to answer: a plain `failstore sql` never loads it (see
# failstore/cli/fast_sql.py); the app itself is in failstore/cli/typer_app.py.
# Which module registers each command that does not depend on the analyses found at run time.
# ``main`` builds only that module's commands when one of these is invoked, so `failstore sql`
# does not import the analysis packages (tests/test_cli_app.py checks the table against the
# full app).
CORE_COMMANDS = {
    "init": "commands_store",
    "info": "commands_store",
    "ingest": "commands_store",
    "sql": "commands_sql",
    "schema": "commands_sql",
    "queries": "commands_sql",
    "runs": "commands_runs",
    "compact": "commands_runs",
    "demo": "commands_demo",
    "saliency": "commands_saliency",
    "publish": "commands_feeds",
    "export": "commands_feeds",
    "serve": "commands_serve",
    "report": "commands_serve",
}
GLOBAL_OPTIONS = {"--store": True, "--debug": False}  # option -> takes a value


def command_index(args: list[str]) -> int | None:
    """Where the command word is in ``args`` (the first argument that is not a global option
    or its value); None for ``--help``, a typo'd option, or no command."""
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            return i + 1 if i + 1 < len(args) else None
        if name in GLOBAL_OPTIONS:
            i += 2 if GLOBAL_OPTIONS[name] and "=" not in arg else 1
        elif arg.startswith("-"):
            return None  # --help, or an unknown option: the full app answers
        else:
            return i
    return None


def subcommand(args: list[str]) -> str | None:
    """The command word in ``args``, if there is one."""
    i = command_index(args)
    return None if i is None else args[i]


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options given after the command word in front of it, so
    `failstore sql "..." --store S` works like `failstore --store S sql "..."`.
    Arguments after ``--`` are left alone (they may be a query that starts with dashes)."""
    at = command_index(args)
    if at is None:
        return list(args)
    moved: list[str] = []
    rest: list[str] = []
    i = at + 1
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest += args[i:]
            break
        if name in GLOBAL_OPTIONS:
            width = 2 if GLOBAL_OPTIONS[name] and "=" not in arg else 1
            if i + width > len(args):
                from typer._click.exceptions import UsageError

                raise UsageError(f"Option '{name}' requires an argument.")
            moved += args[i : i + width]
            i += width
        else:
            rest.append(arg)
            i += 1
    return [*args[:at], *moved, args[at], *rest]


def app_for(args: list[str]) -> typer.Typer:
    """The app ``main`` runs for ``args``: only the invoked core command's module when there is
    one (faster start-up), the full app otherwise (help, analyses, typos)."""
    from failstore.cli.typer_app import build_app

    module = CORE_COMMANDS.get(subcommand(args) or "")
    return build_app((module,)) if module else build_app()


def __getattr__(name: str) -> Any:
    """``app`` (the full app, built on first use: docs, tests and ``python -m``), and the
    Typer module's ``build_app`` and ``COMMAND_MODULES``."""
    if name not in ("app", "build_app", "COMMAND_MODULES"):
        raise AttributeError(name)
    from failstore.cli import typer_app

    if name == "app":
        built = globals()["app"] = typer_app.build_app()
        return built
    return getattr(typer_app, name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning failstore errors into one line and an exit code."""
    from failstore.errors import FailstoreError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        call = _plain_sql(args)
        if call is not None:  # a plain `failstore sql`: no Typer (see fast_sql)
            fast_sql.run(call)
            return
        _run_typer(args)
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


def _plain_sql(args: list[str]) -> fast_sql.SqlCall | None:
    if "sql" not in args:
        return None
    try:
        hoisted = hoist_global_options(args)
    except Exception:  # a usage error: Typer words it
        return None
    return fast_sql.parse(hoisted) if subcommand(hoisted) == "sql" else None


def _run_typer(args: list[str]) -> None:
    """Run the Typer app; its own exits and usage errors become exit codes here."""
    import typer
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        args = hoist_global_options(args)
        app_for(args)(args=args, prog_name="failstore", standalone_mode=False)
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


if __name__ == "__main__":  # pragma: no cover
    main()
