"""Which files a rerun need not read: those whose path, size and mtime match an ``images`` row
(``uri``, ``stat_size``, ``stat_mtime_ns``) and whose image already has every requested model.

Checked before any file is opened, with one ``os.stat`` per file and one Arrow join against
the store. Files listed in ``ingest_errors`` have no row of their own, so they are always read
again (their problem may have been fixed without touching the file, e.g. by a chmod). See
docs/ingest-sources.md ("Reruns").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.ingest.buffer import Known
from failstore.ingest.sources import SourceItem
from failstore.store import Store

Recorded = dict[tuple[str, str], tuple[int | None, int | None]]


@dataclass
class Plan:
    """``skip``: item index -> image id of the files not to read. ``recorded``: (uri, image
    id) -> (size, mtime_ns) of the rows of the files that are read, so that a row whose file
    was only touched, or that has no stats yet (older stores), gets the new ones."""

    skip: dict[int, str] = field(default_factory=dict)
    recorded: Recorded = field(default_factory=dict)


def file_stats(items: Sequence[SourceItem]) -> tuple[list[int | None], list[int | None]]:
    """(size, mtime_ns) of each item's file; None where it is not a readable regular file."""
    sizes: list[int | None] = []
    mtimes: list[int | None] = []
    for item in items:
        st = None
        if item.error is None:
            try:
                st = os.stat(item.uri)
            except (OSError, ValueError):
                st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            sizes.append(None)
            mtimes.append(None)
        else:
            sizes.append(int(st.st_size))
            mtimes.append(int(st.st_mtime_ns))
    return sizes, mtimes


def plan(
    store: Store,
    items: Sequence[SourceItem],
    known: Known,
    roles: Sequence[str],
    *,
    reread: bool = False,
) -> Plan:
    """The files of ``items`` that need not be read (``roles``: the requested models); with
    ``reread`` none, but the rows' stats are still refreshed."""
    out = Plan()
    if not items or not store.has_table("images"):
        return out
    if not {"stat_size", "stat_mtime_ns"} <= set(store.schema("images").names):
        return out
    uris = pa.array([i.uri for i in items], pa.string())
    rows = store.read("images", ["image_id", "uri", "stat_size", "stat_mtime_ns"])
    rows = rows.filter(pc.is_in(rows["uri"], value_set=uris))
    if rows.num_rows == 0 or reread:
        out.recorded = _recorded(rows)
        return out
    sizes, mtimes = file_stats(items)
    src = pa.table(
        {
            "i": pa.array(np.arange(len(items), dtype=np.int64)),
            "uri": uris,
            "stat_size": pa.array(sizes, pa.int64()),
            "stat_mtime_ns": pa.array(mtimes, pa.int64()),
        }
    )
    src = src.filter(pc.is_valid(src["stat_size"]))
    keys = ["uri", "stat_size", "stat_mtime_ns"]
    hits = src.join(rows.filter(pc.is_valid(rows["stat_size"])), keys=keys, join_type="inner")
    have = [known.images]
    have += [s for role, s in _role_sets(known).items() if role in roles]
    for i, image_id in zip(hits["i"].to_pylist(), hits["image_id"].to_pylist(), strict=True):
        if all(image_id in s for s in have):
            out.skip[i] = image_id
    if out.skip:
        read = [u for i, u in enumerate(uris.to_pylist()) if i not in out.skip]
        rows = rows.filter(pc.is_in(rows["uri"], value_set=pa.array(read, pa.string())))
    out.recorded = _recorded(rows)
    return out


def _recorded(rows: pa.Table) -> Recorded:
    cols = (rows[c].to_pylist() for c in ("uri", "image_id", "stat_size", "stat_mtime_ns"))
    return {(u, i): (s, m) for u, i, s, m in zip(*cols, strict=True)}


def _role_sets(known: Known) -> dict[str, set[str]]:
    return {"target": known.predicted, "clip": known.with_clip, "robust": known.with_robust}
