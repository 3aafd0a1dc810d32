"""failstore: a data store that finds and explains the failure modes of image classifiers.

Importing ``failstore`` is cheap: torch, open_clip and the model code load only when an ingest or
an analysis that needs them runs.

From Python (a notebook)::

    import failstore
    df = failstore.sql("failstore-store", "SELECT * FROM samples LIMIT 5").to_pandas()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from failstore.store import Store

__all__ = ["Store", "__version__", "sql"]


def sql(
    store: Store | str | Path,
    query: str,
    *,
    params: Mapping[str, str] | None = None,
    dialect: str | None = None,
    timeout_s: float | None = None,
) -> pa.Table:
    """Run one read-only query over a store (a ``Store`` or its directory), as ``failstore sql``
    does: every table, stored and saved query, ``$name`` parameters, the same limits. Returns a
    ``pyarrow.Table``: call ``.to_pandas()`` (needs pandas: ``pip install "failstore[notebook]"``)
    or ``polars.from_arrow(...)`` on it."""
    from failstore import config
    from failstore.queries.sql.session import run_sql
    from failstore.store import Store

    opened = store if isinstance(store, Store) else Store(Path(store))
    return run_sql(
        opened,
        query,
        params=params,
        dialect=dialect,
        timeout_s=config.DEFAULT_SQL_TIMEOUT_S if timeout_s is None else timeout_s,
    )


def __getattr__(name: str) -> Any:
    if name == "Store":
        from failstore.store import Store

        return Store
    raise AttributeError(name)
