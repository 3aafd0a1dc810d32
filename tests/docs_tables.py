"""Reading what docs/ documents: the backticked names in the first cell of markdown tables."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROW = re.compile(r"^\|\s*([^|]*?)\s*\|")
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def doc_columns(path: Path, heading: str) -> list[str]:
    """Names in backticks in the first cell of table rows under the heading that starts with
    ``heading`` (until the next heading of the same or a higher level), in document order."""
    level = len(heading) - len(heading.lstrip("#"))
    names: list[str] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            this = len(line) - len(line.lstrip("#"))
            if line.startswith(heading):
                inside = True
                continue
            if inside and this <= level:
                break
        if inside:
            m = ROW.match(line)
            if m and not set(m.group(1)) <= set("-: "):
                names += [n for n in NAME.findall(m.group(1)) if n not in names]
    if not names:
        raise AssertionError(f"{path.name}: no table under a heading starting {heading!r}")
    return names
