"""``failstore sql`` without Typer: the start-up fast path.

Typer (with the pydantic adapters it loads to convert options) costs a new process ~0.1 s
before any work, as much as the query itself on a selective dashboard query. ``main`` first
offers the arguments to ``parse``: a plain call of ``sql`` (global ``--store``, one query, and
only ``--format/-f``, ``--out``, ``--dialect``, ``--param`` and ``--timeout`` with valid
values) runs ``run_sql_command`` directly; anything else (``--help``, ``--debug``, an unknown
option, a missing or bad value, ``--``) returns None and the Typer app answers as always,
with its own messages. ``tests/test_cli_fast_sql.py`` runs the same argument lists both ways
and compares stdout, stderr and the exit code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from failstore import config
from failstore.cli.output import Format

VALUED = {"--format", "-f", "--out", "--dialect", "--param", "--timeout"}
NO_FAST_ENV = "FAILSTORE_CLI_NO_FAST_PATH"  # set (to anything) to always go through Typer


@dataclass
class SqlCall:
    store: Path | None = None
    query: str | None = None
    fmt: Format = Format.table
    out: Path | None = None
    dialect: str | None = None
    params: list[str] = field(default_factory=list)
    timeout: float = config.DEFAULT_SQL_TIMEOUT_S


def parse(args: list[str]) -> SqlCall | None:
    """The call ``args`` (global options hoisted before the command) make, if it is a plain
    ``sql`` call; None otherwise."""
    if os.environ.get(NO_FAST_ENV):
        return None
    call = SqlCall()  # no --store: Store(None) reads $FAILSTORE_STORE, as Typer's envvar
    i = 0
    while i < len(args) and args[i] != "sql":
        name, has_value, value = _split(args[i])
        if name != "--store":
            return None  # --debug, --help, another command
        if not has_value:
            if i + 1 >= len(args):
                return None
            value, i = args[i + 1], i + 1
        if not value:
            return None
        call.store = Path(value)
        i += 1
    i += 1  # the command word
    if i > len(args):
        return None
    while i < len(args):
        arg = args[i]
        if arg == "-" or not arg.startswith("-"):
            if call.query is not None:
                return None  # a second positional argument: Typer's error
            call.query = arg
            i += 1
            continue
        name, has_value, value = _split(arg)
        if name not in VALUED or (name == "-f" and has_value):
            return None
        if not has_value:
            if i + 1 >= len(args):
                return None
            value, i = args[i + 1], i + 1
        if not _take(call, name, value):
            return None
        i += 1
    return call if call.query is not None else None


def _split(arg: str) -> tuple[str, bool, str]:
    name, sep, value = arg.partition("=")
    return (name, True, value) if sep and arg.startswith("--") else (arg, False, "")


def _take(call: SqlCall, name: str, value: str) -> bool:
    if name in ("--format", "-f"):
        if value not in Format.__members__:
            return False
        call.fmt = Format(value)
    elif name == "--out":
        if not value:
            return False
        call.out = Path(value)
    elif name == "--dialect":
        call.dialect = value
    elif name == "--param":
        call.params.append(value)
    else:
        try:
            call.timeout = float(value)
        except ValueError:
            return False
        if not math.isfinite(call.timeout):
            return False
    return True


def run(call: SqlCall) -> None:
    from failstore.cli.sql_run import parse_params, run_sql_command

    run_sql_command(
        call.store,
        call.query or "",
        call.fmt,
        call.out,
        call.dialect,
        parse_params(call.params),
        call.timeout,
    )
