"""docs/ describes everything a user meets (in the spirit of sqlite-utils' and Datasette's
test_docs): every CLI command, every store table, every column of every result table and of
analysis_runs, and every stored query. docs/cli.md is generated, so it does not count here."""

from __future__ import annotations

import re

import pytest
import typer
from docs_tables import DOCS

from failstore import schemas
from failstore.cli.app import app
from failstore.queries.framework import registry
from failstore.queries.sql.stored import builtin_queries

ROOT = DOCS.parent
WRITTEN = {
    p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")) if p.name != "cli.md"
}
WRITTEN["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
ALL_TEXT = "\n".join(WRITTEN.values())


def _commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append(" ".join((*prefix, name)))
        if hasattr(cmd, "commands"):  # a group (Typer ships its own click)
            out += _commands(cmd, (*prefix, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_the_command_list_is_read():
    assert {"sql", "slices", "runs", "runs drop", "compact", "queries save"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented(command):
    words = r"\s+".join(map(re.escape, command.split()))
    pattern = rf"failstore(?:\s+--store\s+\S+)?\s+{words}\b"
    assert re.search(pattern, ALL_TEXT), f"`failstore {command}` appears in no doc but cli.md"


STORE_TABLES = sorted({*schemas.KEYS, *schemas.CORE_TABLES, *registry.result_tables()})


@pytest.mark.parametrize("table", STORE_TABLES)
def test_every_table_is_in_store_schema(table):
    assert f"`{table}`" in WRITTEN["store-schema.md"], f"docs/store-schema.md lacks `{table}`"


def test_every_analysis_runs_column_is_documented():
    text = WRITTEN["store-schema.md"]
    missing = [c for c in schemas.ANALYSIS_RUNS_SCHEMA.names if f"`{c}`" not in text]
    assert not missing, f"docs/store-schema.md lacks analysis_runs columns {missing}"


@pytest.mark.parametrize("name", sorted(registry.analyses()))
def test_every_result_column_is_in_the_analysis_page(name):
    cls = registry.analyses()[name]
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"analysis {name!r} needs docs/{name}.md"
    text = page.read_text(encoding="utf-8")
    for table, schema in cls.tables().items():
        missing = [c for c in [*schema.names, "run_id"] if f"`{c}`" not in text]
        assert not missing, f"docs/{name}.md lacks columns {missing} of {table}"
    for p in cls.params:
        assert p.cli_flag in text or p.name in text, f"docs/{name}.md lacks parameter {p.name}"


@pytest.mark.parametrize("query", sorted(builtin_queries()))
def test_every_stored_query_is_documented(query):
    assert f"`{query}`" in ALL_TEXT, f"stored query `{query}` appears in no doc"


# Options named in text that are not failstore's: pip's, the benchmarks' scripts', help text.
NOT_OURS = {
    "--no-deps",
    "--classes",
    "--images",
    "--rows",
    "--reuse",
    "--help",
    "--name-with-dashes",
    "--no-",
}


def _cli_options() -> set[str]:
    found: set[str] = set()

    def walk(command: object) -> None:
        for p in getattr(command, "params", []):
            found.update(getattr(p, "opts", []))
            found.update(getattr(p, "secondary_opts", []))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def test_every_option_named_in_messages_and_docs_exists():
    texts = [p for p in (ROOT / "failstore").rglob("*.py")] + sorted(DOCS.glob("*.md"))
    texts.append(ROOT / "README.md")
    known = _cli_options() | NOT_OURS
    missing: dict[str, list[str]] = {}
    for path in texts:
        for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)", path.read_text(encoding="utf-8")):
            if m.group(1) not in known:
                missing.setdefault(m.group(1), []).append(path.name)
    assert not missing, f"options named but not defined: {missing}"
    assert {"--path-column", "--label-column", "--tags-from", "--older-than"} <= known
