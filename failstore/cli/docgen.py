"""Generate docs/cli.md from the Typer app, so the reference cannot drift from the code.

Run ``python -m failstore.cli.docgen > docs/cli.md``; a test checks the file is current.
"""

from __future__ import annotations

from typing import Any

import typer


def _help_text(cmd: Any, path: list[str]) -> str:
    ctx = cmd.context_class(
        cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100
    )
    return str(cmd.get_help(ctx))


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    out = [(path, cmd)]
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            out += _walk(cmd.commands[name], [*path, name])
    return out


def render(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated from the Typer app by `python -m failstore.cli.docgen > docs/cli.md`;",
        "`tests/test_cli_docs.py` fails when this file is out of date.",
        "",
    ]
    for path, cmd in _walk(root, ["failstore"]):
        lines += [
            f"## `{' '.join(path)}`",
            "",
            "```text",
            _help_text(cmd, path).rstrip(),
            "```",
            "",
        ]
    from failstore.cli.output import TABLE_RULES

    return "\n".join([*lines, TABLE_RULES])


def main() -> None:
    import os

    os.environ.setdefault("COLUMNS", "100")
    os.environ["TERM"] = "dumb"
    from failstore.cli.app import app

    print(render(app), end="")


if __name__ == "__main__":  # pragma: no cover
    main()
