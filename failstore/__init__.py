"""failstore: a data store that finds and explains the failure modes of image classifiers.

Importing ``failstore`` is cheap: torch, open_clip and the model code load only when an ingest or
an analysis that needs them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from failstore.store import Store

__all__ = ["Store", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from failstore.store import Store

        return Store
    raise AttributeError(name)
