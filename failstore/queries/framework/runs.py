"""Listing and dropping analysis runs (``failstore runs``).

A run is one row of ``analysis_runs`` plus its rows in its result table and the analysis's
extra tables (column ``run_id``).
Dropping a run deletes both (Lance deletions: a new version of each table, nothing rewritten);
``Store.compact`` later reclaims the space.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import StoreError
from failstore.schemas import ANALYSIS_RUNS_SCHEMA
from failstore.store import Store, equals, literal, utcnow

LISTED = ["run_id", "analysis", "result_table", "params", "source_versions", "rows", "seconds",
          "created_at", "used_at"]  # fmt: skip


def list_runs(store: Store, analysis: str | None = None) -> pa.Table:
    """Runs, most recently used first; only ``analysis``'s when given."""
    if not store.has_table("analysis_runs"):
        return pa.schema([ANALYSIS_RUNS_SCHEMA.field(c) for c in LISTED]).empty_table()
    flt = equals("analysis", analysis) if analysis else None
    runs = store.read("analysis_runs", LISTED, filter=flt)
    order = pc.sort_indices(runs, [("used_at", "descending"), ("run_id", "ascending")])
    return runs.take(order)


def resolve_run_ids(runs: pa.Table, given: Sequence[str]) -> list[str]:
    """Full run ids (of the ``list_runs`` table ``runs``) for ids or unique prefixes (at least
    4 characters), in the given order."""
    known = runs.column("run_id").to_pylist()
    out = []
    for g in given:
        matches = [r for r in known if r == g] or (
            [r for r in known if r.startswith(g)] if len(g) >= 4 else []
        )
        if len(matches) != 1:
            what = "matches several runs" if matches else "is not a run in this store"
            raise StoreError(f"run id {g!r} {what}", hint="see `failstore runs` for run ids")
        out.append(matches[0])
    return out


def drop_runs(
    store: Store,
    run_ids: Sequence[str] = (),
    *,
    older_than: timedelta | None = None,
    analysis: str | None = None,
) -> list[str]:
    """Delete runs (their result rows and their ``analysis_runs`` row); returns the ids.

    ``run_ids``: ids or unique prefixes. ``older_than``: also every run not used for that long
    (of ``analysis`` only, when given)."""
    runs = list_runs(store)
    ids = resolve_run_ids(runs, run_ids)
    if older_than is not None:
        cutoff = pa.scalar(utcnow() - older_than, pa.timestamp("us", tz="UTC"))
        old = runs.filter(pc.less(runs["used_at"], cutoff))
        if analysis:
            old = old.filter(pc.equal(old["analysis"], analysis))
        ids += [r for r in old.column("run_id").to_pylist() if r not in ids]
    if not ids:
        return []
    from failstore.queries.framework.registry import analyses

    known = analyses()
    info = zip(runs["run_id"].to_pylist(), runs["analysis"].to_pylist(),
               runs["result_table"].to_pylist(), strict=True)  # fmt: skip
    tables = {r: [t, *(known[a].extra_tables if a in known else ())] for r, a, t in info}
    by_table: dict[str, list[str]] = {}
    for r in ids:
        for table in tables[r]:
            by_table.setdefault(table, []).append(r)
    for table, rs in sorted(by_table.items()):
        if store.has_table(table):
            store.delete(table, f"run_id IN ({', '.join(literal(r) for r in rs)})")
    # The record goes last: a crash before it leaves a run that a refit recomputes.
    store.delete("analysis_runs", f"run_id IN ({', '.join(literal(r) for r in ids)})")
    return ids
