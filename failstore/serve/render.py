"""The Jinja2 environment of the pages (templates/ in this package), with cell formatting."""

from __future__ import annotations

import functools
import math
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

HIDDEN = {"run_id", "map", "probabilities", "embedding", "clip_embedding", "robust_features",
          "tag_scores", "mask"}  # fmt: skip


def cell(v: Any) -> str:
    """A value as short text for a table cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        if len(v) > 8 and all(isinstance(x, (int, float)) for x in v):
            return f"[{len(v)} numbers]"
        return ", ".join(cell(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={cell(x)}" for k, x in v.items())
    text = str(v)
    return text if len(text) <= 160 else text[:157] + "..."


def shown(columns: list[str], hide: tuple[str, ...] | list[str] = ()) -> list[str]:
    return [c for c in columns if c not in HIDDEN and c not in hide]


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("failstore.serve", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = cell
    env.globals["shown"] = shown
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(**context)
