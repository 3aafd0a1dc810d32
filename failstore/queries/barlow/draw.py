"""Pictures of a fitted Barlow run, from the store: for each valid leaf, per feature of its rule,
the group's most-activating images, their heatmaps and feature attacks (see ``pictures.py``),
written under a folder and listed in ``barlow_tree_pictures`` (stamped with the run's id).

The robust model is reloaded from its ``models`` row (``load_model``: the checkpoint's sha256 is
checked), and images are read back from their uris (their sha256 checked against image_id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import StoreError
from failstore.queries.barlow.pictures import (
    PICTURES_SCHEMA,
    PictureGroup,
    valid_leaves,
    write_pictures,
)
from failstore.queries.framework.frames import robust_matrix
from failstore.store import Store, equals, literal

PICTURES_TABLE = "barlow_tree_pictures"


def draw_pictures(
    est: Any,
    store: Store,
    out_dir: str | Path,
    *,
    top: int = 5,
    steps: int = 500,
    step_size: float = 1.0,
    device: str = "cpu",
    batch_size: int = 32,
) -> pa.Table:
    """Draw the pictures of ``est``'s fitted run into ``out_dir/<grouping>/<class>/...`` and
    record them (the run's earlier picture rows are replaced). Returns the rows."""
    from failstore.models.loading import load_model

    leaves = est.results_
    robust = sorted({r for r in leaves["robust_model"].to_pylist() if r})
    if not robust:
        return PICTURES_SCHEMA.empty_table()
    if len(robust) > 1:
        raise StoreError(
            f"the run used features of several robust models ({', '.join(robust)})",
            hint="re-ingest every image with one --robust model",
        )
    groups = list(_groups(est, store, leaves))
    rows = PICTURES_SCHEMA.empty_table()
    if groups:
        adapter: Any = load_model(store, robust[0], device)  # a FeatureAdapter (role robust)
        grouping = str(est.by)
        rows = write_pictures(
            adapter, groups, Path(out_dir) / grouping, top=top, steps=steps,
            step_size=step_size, device=device, batch_size=batch_size,
        )  # fmt: skip
    _record(store, est.run_id_, rows)
    return rows


def _groups(est: Any, store: Store, leaves: pa.Table) -> Any:
    members = est.read_table(store, "barlow_tree_members", ["class", "image_id"])
    for cls in sorted(set(leaves["class"].to_pylist())):
        rows = leaves.filter(pc.equal(leaves["class"], cls)).to_pylist()
        drawn = valid_leaves([r for r in rows if r["leaf"] is not None])
        if not drawn:
            continue
        ids = members.filter(pc.equal(members["class"], cls))["image_id"].to_pylist()
        flt = f"image_id IN ({', '.join(literal(i) for i in ids)})"
        images = store.read("images", ["image_id", "uri", "robust_features"], filter=flt)
        order = pc.sort_indices(images, [("image_id", "ascending")])
        images = images.take(order)
        yield PictureGroup(
            cls=cls,
            grouping=str(est.by),
            features=robust_matrix(images["robust_features"]),
            image_ids=images["image_id"].to_pylist(),
            uris=images["uri"].to_pylist(),
            leaves=drawn,
        )


def _record(store: Store, run_id: str, rows: pa.Table) -> None:
    full = pa.schema([*PICTURES_SCHEMA, pa.field("run_id", pa.string(), nullable=False)])
    stamped = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    with store.writing():
        if store.has_table(PICTURES_TABLE):
            store.delete(PICTURES_TABLE, equals("run_id", run_id))
        store.append(PICTURES_TABLE, stamped, schema=full)
