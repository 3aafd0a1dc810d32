"""Which analyses exist. Every ``Analysis`` subclass with a ``name`` registers itself (in
``analysis.REGISTERED``) when its module is imported; ``analyses()`` imports every analysis
package under ``failstore/queries`` (each package's ``__init__`` imports its estimator), so the
list is complete without a hand-kept table.
"""

from __future__ import annotations

import importlib
import pkgutil

from failstore.queries.framework.analysis import REGISTERED, Analysis

# The sub-packages of failstore.queries that are not an analysis (saliency computes keyed maps
# that the coverage analysis reads).
NOT_ANALYSES = ("sql", "framework", "saliency")
_discovered = False


def discover() -> None:
    """Import every analysis package under failstore/queries (once)."""
    global _discovered
    if _discovered:
        return
    import failstore.queries as root

    for info in pkgutil.iter_modules(root.__path__):
        if info.ispkg and info.name not in NOT_ANALYSES:
            importlib.import_module(f"failstore.queries.{info.name}")
    _discovered = True


def analyses() -> dict[str, type[Analysis]]:
    """Every analysis class shipped with failstore, by name."""
    discover()
    return dict(sorted(REGISTERED.items()))


def result_tables() -> dict[str, str]:
    """Every table an analysis writes (result and extra tables) -> the analysis."""
    return {table: name for name, cls in analyses().items() for table in cls.tables()}


def missing_table_message(table: str) -> str | None:
    """What to tell someone whose query reads an analysis table before the analysis ran."""
    wanted = table.lower()
    found = analyses()
    for name, cls in found.items():
        if wanted in (t.lower() for t in cls.tables()):
            return f"no `{name}` run yet: run `failstore {cls.command}`"
    if wanted == "analysis_runs":
        commands = ", ".join(f"`failstore {cls.command}`" for cls in found.values())
        return f"no analysis has run yet: run one of {commands}"
    return None
