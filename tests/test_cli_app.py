"""The CLI entry point: global options after the command word, and the start-up shortcut
that builds only the invoked command's module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from failstore.cli import app as app_module
from failstore.cli.app import (
    COMMAND_MODULES,
    CORE_COMMANDS,
    build_app,
    hoist_global_options,
    subcommand,
)
from failstore.queries.framework import registry


def _names(app: typer.Typer) -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_core_command_table_matches_what_each_module_registers():
    full = _names(app_module.app)
    owned: dict[str, set[str]] = {}
    for module in COMMAND_MODULES:
        names = _names(build_app((module,)))
        owned[module] = names
        for name in names:
            if name in CORE_COMMANDS:
                assert CORE_COMMANDS[name] == module, name
    assert set().union(*owned.values()) == full
    # every command not in the table is an analysis (found at run time)
    analyses = {cls.command for cls in registry.analyses().values()}
    assert full - set(CORE_COMMANDS) == analyses
    assert set(CORE_COMMANDS) <= full


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sql", "SELECT 1", "--store", "S"], ["--store", "S", "sql", "SELECT 1"]),
        (["sql", "--store=S", "SELECT 1"], ["--store=S", "sql", "SELECT 1"]),
        (["--store", "A", "sql", "q", "--debug"], ["--store", "A", "--debug", "sql", "q"]),
        # a store named like a command is the option's value, not the command
        (["--store", "sql", "info", "--store", "B"], ["--store", "sql", "--store", "B", "info"]),
        # after `--` nothing moves: it may be a query that starts with dashes
        (["sql", "--", "--store"], ["sql", "--", "--store"]),
        (
            ["queries", "save", "n", "q", "--store", "S"],
            ["--store", "S", "queries", "save", "n", "q"],
        ),
        (["--help"], ["--help"]),
        ([], []),
    ],
)
def test_global_options_are_hoisted_in_front_of_the_command(argv, expected):
    assert hoist_global_options(argv) == expected


def test_subcommand_skips_global_options_and_their_values():
    assert subcommand(["--store", "ingest", "sql"]) == "sql"
    assert subcommand(["--debug", "slices"]) == "slices"
    assert subcommand(["--store=x", "--help"]) is None
    assert subcommand(["--store"]) is None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_store_after_the_command_works_in_a_real_process(tmp_path):
    store = tmp_path / "s"
    assert _run("init", "--store", str(store)).returncode == 0
    r = _run("sql", "SELECT 41 + 1 AS n", "--format", "csv", "--store", str(store))
    assert (r.returncode, r.stdout, r.stderr) == (0, "n\n42\n", "")
    missing = tmp_path / "missing"
    r = _run("sql", "SELECT 1", "--store", str(missing))
    assert r.returncode != 0
    assert r.stderr.startswith(f"error: no store at {missing};")


def test_a_store_option_without_a_value_is_one_usage_error():
    r = _run("sql", "SELECT 1", "--store")
    assert r.returncode == 2
    assert r.stderr.strip() == "Error: Option '--store' requires an argument."


def test_a_query_on_a_fresh_store_says_there_are_no_tables_yet(tmp_path):
    store = tmp_path / "s"
    assert _run("init", "--store", str(store)).returncode == 0
    r = _run("sql", "SELECT count(*) FROM images", "--store", str(store))
    assert r.returncode != 0
    assert r.stderr == (
        "error: unknown table 'images': the store has no tables yet; "
        "run `failstore ingest` first\n"
    )
