"""docs/cli.md is generated from the app and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    out = subprocess.run(
        [sys.executable, "-m", "failstore.cli.docgen"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    current = (ROOT / "docs" / "cli.md").read_text()
    assert out == current, (
        "docs/cli.md is stale: run `.venv/bin/python -m failstore.cli.docgen > docs/cli.md`"
    )


def test_every_command_has_an_example():
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = text.split("\n## ")[1:]
    groups = {"`failstore`", "`failstore queries`"}
    for sec in sections:
        title = sec.splitlines()[0]
        if title not in groups:
            assert "Example:" in sec, f"{title} has no example in its help"
