"""Which mistakes ``Explain`` explains: all of a target model's mistakes, narrowed by one image,
classes, a split, a slice of the latest ``failstore slices`` run, or a SQL condition over the
stored query ``samples``. Every filter that names something unknown says so in one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import ConfigError
from failstore.queries.framework.frames import load_frame, tag_columns, tag_matrix
from failstore.store import Store, equals, literal


def mistakes(store: Store, model: str, params: dict[str, Any]) -> pa.Table:
    """image_id, label, target, prediction of the model's selected mistakes, by image_id."""
    images = store.read("images", ["image_id", "label", "split"])
    preds = store.read("predictions", ["image_id", "target", "prediction", "correct"],
                       filter=equals("model", model))  # fmt: skip
    pos = pc.index_in(preds["image_id"], value_set=images["image_id"])
    keep = pc.and_(pc.is_valid(pos), pc.invert(pc.fill_null(preds["correct"], False)))
    preds, pos = preds.filter(keep), pc.drop_null(pos.filter(keep))
    table = preds.append_column("label", images["label"].take(pos)).append_column(
        "split", images["split"].take(pos)
    )
    if params["image"]:
        table = table.filter(pc.equal(table["image_id"], params["image"]))
        if table.num_rows == 0:
            raise ConfigError(f"image: {params['image']} is not a mistake of '{model}'",
                              hint="see `failstore sql \"SELECT image_id FROM samples WHERE "
                              "NOT correct\"`")  # fmt: skip
    if params["classes"] and not params.get("slice_tags"):  # with a slice: which slice's class
        table = table.filter(pc.is_in(table["label"], pa.array(list(params["classes"]))))
    if params["split"]:
        table = table.filter(pc.equal(table["split"], params["split"]))
    if params.get("slice_tags"):
        members = slice_members(store, model, params["slice_tags"], params["classes"])
        table = table.filter(pc.is_in(table["image_id"], members))
    if params["where"]:
        from failstore.queries.sql.session import samples_matching

        chosen = samples_matching(store, model, params['where'])
        table = table.filter(pc.is_in(table["image_id"], chosen))
    order = pc.sort_indices(table, [("image_id", "ascending")])
    return table.take(order)


def slice_members(
    store: Store, model: str, tags: Sequence[str], classes: Sequence[str] | None
) -> pa.Array:
    """The image ids of the slice with exactly these ``tags`` in the latest ``failstore slices``
    run of ``model`` (of one of ``classes`` when given): images of its class (by its grouping)
    carrying every tag of its tag source."""
    row = find_slice(store, model, tags, classes)
    tags_from = None if row["tag_source"] == "tags" else row["tag_source"].split(",")
    data = load_frame(store, model, tag_columns(store, tags_from), None)
    matrix = tag_matrix(store, data, tags_from)
    index = {t: j for j, t in enumerate(matrix.names)}
    keys = np.asarray(data[row["grouping"]].to_pylist(), dtype=object)
    inside = keys == row["class"]
    for t in row["tags"]:
        inside &= matrix.matrix[:, index[t]] if t in index else False
    return data["image_id"].combine_chunks().filter(pa.array(inside, pa.bool_()))


def find_slice(
    store: Store, model: str, tags: Sequence[str], classes: Sequence[str] | None
) -> dict[str, Any]:
    """The latest slices row of ``model`` whose tags are ``tags`` (in any order)."""
    from failstore.queries.sql.session import run_sql

    if not store.has_table("prime_slices"):
        raise ConfigError("slice: the store has no slices yet",
                          hint="run `failstore slices` first")  # fmt: skip
    rows = run_sql(
        store,
        "SELECT class, grouping, tag_source, tags FROM slices "
        f"WHERE model = {literal(model)}",
    ).to_pylist()
    wanted = sorted(tags)
    same = [r for r in rows if sorted(r["tags"]) == wanted]
    if classes:
        same = [r for r in same if r["class"] in set(classes)]
    shown = " + ".join(wanted)
    if not same:
        where = f" of class {', '.join(classes)}" if classes else ""
        known = sorted({" + ".join(sorted(r["tags"])) for r in rows})
        listing = "; ".join(known[:8]) + (" ..." if len(known) > 8 else "")
        raise ConfigError(
            f"slice: no slice '{shown}'{where} in the latest `failstore slices` run of '{model}'"
            + (f" (it has: {listing})" if known else " (it found none)"),
            hint="see `failstore slices`; give the tags exactly as it prints them",
        )
    if len(same) > 1:
        which = ", ".join(sorted(f"{r['class']} (by {r['grouping']})" for r in same))
        raise ConfigError(f"slice: '{shown}' is a slice of several classes: {which}",
                          hint="add --class to say which")  # fmt: skip
    return same[0]
