"""``Barlow``: failure explanations from robust features (Singla et al.) over the store.

For each class group (images labelled k, or predicted k) it reads the robust model's features
and the target model's failures, one class at a time (memory bounded by one class), runs
:func:`failstore.queries.barlow.explain.explain_group` (mutual-information feature selection, a
shallow entropy tree, leaf error rate / coverage / importance) and describes each leaf by the
tags over-represented among its failures. A run writes one row per leaf to
``barlow_tree_leaves`` and the leaf of every image to ``barlow_tree_members``; the stored
queries ``barlow_leaves``, ``barlow_members`` and ``barlow_classes`` show the latest run of
each class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import StoreError
from failstore.queries.barlow.describe import TagEvidence, describe_leaves
from failstore.queries.barlow.explain import (
    BARLOW_PARAMS,
    GroupResult,
    barlow_params,
    explain_group,
)
from failstore.queries.barlow.pictures import PICTURES_SCHEMA
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import (
    GROUPINGS,
    check_known,
    default_model,
    groups,
    load_frame,
    robust_matrix,
    tag_columns,
    tag_matrix,
    tag_source,
)
from failstore.queries.framework.params import Param
from failstore.queries.framework.per_class import ENGINE_PARAMS, map_classes
from failstore.store import Store, equals, literal

CONDITION = pa.struct([("feature", pa.int32()), ("op", pa.string()), ("threshold", pa.float64())])

LEAVES_SCHEMA = pa.schema(
    [
        pa.field("class", pa.string()),
        pa.field("grouping", pa.string()),
        pa.field("model", pa.string()),
        pa.field("robust_model", pa.string()),
        pa.field("tag_source", pa.string()),
        pa.field("status", pa.string()),
        pa.field("group_size", pa.int64()),
        pa.field("group_failures", pa.int64()),
        pa.field("base_error_rate", pa.float64()),
        pa.field("aler", pa.float64()),
        pa.field("aler_gain", pa.float64()),
        pa.field("leaf", pa.int32()),
        pa.field("rank", pa.int32()),
        pa.field("rule", pa.string()),
        pa.field("conditions", pa.list_(CONDITION)),
        pa.field("size", pa.int64()),
        pa.field("failures", pa.int64()),
        pa.field("error_rate", pa.float64()),
        pa.field("error_coverage", pa.float64()),
        pa.field("importance", pa.float64()),
        pa.field("valid", pa.bool_()),
        pa.field("description", pa.string()),
        pa.field("description_tags", pa.list_(pa.string())),
        pa.field("tag_lifts", pa.list_(pa.float64())),
        pa.field("tag_p_values", pa.list_(pa.float64())),
        pa.field("selected_features", pa.list_(pa.int32())),
        pa.field("mutual_info", pa.list_(pa.float64())),
    ]
)

MEMBERS_SCHEMA = pa.schema(
    [
        pa.field("class", pa.string()),
        pa.field("grouping", pa.string()),
        pa.field("model", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("failure", pa.bool_()),
        pa.field("leaf", pa.int32()),
    ]
)


class Barlow(Analysis):
    """Barlow failure explanations. Parameters mirror ``failstore barlow`` options."""

    name = "barlow"
    result_table = "barlow_tree_leaves"
    result_schema = LEAVES_SCHEMA
    extra_tables = {  # noqa: RUF012
        "barlow_tree_members": MEMBERS_SCHEMA,
        "barlow_tree_pictures": PICTURES_SCHEMA,  # filled by pictures(), after fit
    }
    query = "barlow_leaves"
    params = (
        Param(
            "classes", None, "Only this class (repeatable; default: all classes).",
            optional=True, many=True, flag="--class",
        ),
        Param(
            "by", "label",
            "Group images by 'label' (explains false negatives) or 'prediction' "
            "(false positives).",
            choices=GROUPINGS,
        ),
        Param("split", None, "Only images of this split (default: all).", optional=True),
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param(
            "tags_from", None,
            "Describe leaves with categorical columns COL,COL,... instead of CLIP tags.",
            optional=True, many=True, csv=True,
        ),
        *BARLOW_PARAMS,
        *ENGINE_PARAMS,
    )  # fmt: skip
    run_key = ("model", "by", "tags_from")
    exec_params = ("engine", "address")  # where the trees are grown, not what they are

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        by: str = "label",
        split: str | None = None,
        model: str | None = None,
        tags_from: Sequence[str] | None = None,
        top_k: int = 20,
        max_depth: int = 1,
        min_leaf: int = 1,
        delta: float = 0.1,
        tau: float = 0.2,
        engine: str = "local",
        address: str | None = None,
    ) -> None:
        self.classes = classes
        self.by = by
        self.split = split
        self.model = model
        self.tags_from = tags_from
        self.top_k = top_k
        self.max_depth = max_depth
        self.min_leaf = min_leaf
        self.delta = delta
        self.tau = tau
        self.engine = engine
        self.address = address

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        if params["split"] is not None:
            check_known(store, "split", [params["split"]], "split")
        if params["classes"]:
            check_known(store, "label", list(params["classes"]), "classes")
            params["classes"] = sorted(set(params["classes"]))
        robust_columns(store)
        return params

    def _compute(self, store: Store, params: dict[str, Any]) -> dict[str, pa.Table]:
        model, by = params["model"], params["by"]
        bp = barlow_params(params)
        tags_cols = _describing_columns(store, params["tags_from"])
        source = tag_source(params["tags_from"])
        frame = load_frame(store, model, [], params["split"])
        keys = np.asarray(frame[by].to_numpy(zero_copy_only=False), dtype=object)
        wanted = set(params["classes"] or ())
        # Ray tasks open the store by its path and read only their class's rows.
        where: Store | str = store if self.engine == "local" else str(store.path)
        jobs = [
            (where, frame.take(pa.array(idx)), cls, params, tags_cols, source, bp)
            for cls, idx in groups(keys)
            if not wanted or cls in wanted
        ]
        done = map_classes(_class_rows, jobs, engine=self.engine, address=self.address)
        leaves = [leaf for leaf, _ in done]
        members = [member for _, member in done]
        return {
            self.result_table: _sorted(_concat(leaves, LEAVES_SCHEMA)),
            "barlow_tree_members": _concat(members, MEMBERS_SCHEMA),
            "barlow_tree_pictures": PICTURES_SCHEMA.empty_table(),
        }

    def pictures(
        self,
        store: Store,
        out_dir: str | Path,
        *,
        top: int = 5,
        steps: int = 500,
        step_size: float = 1.0,
        device: str = "cpu",
    ) -> pa.Table:
        """Draw the fitted run's pictures into ``out_dir`` (per valid leaf and feature of its
        rule: the ``top`` most-activating images of the group, their heatmaps, and feature
        attacks of ``steps`` gradient steps); rows also go to ``barlow_tree_pictures``."""
        from failstore.queries.barlow.draw import draw_pictures

        return draw_pictures(
            self, store, out_dir, top=top, steps=steps, step_size=step_size, device=device
        )


def robust_columns(store: Store) -> None:
    """The store has robust features; else one line saying how to get them."""
    if not store.has_table("images") or "robust_features" not in store.schema("images").names:
        raise StoreError(
            f"{store.path} has no robust features (images.robust_features)",
            hint="ingest with --robust MODEL first",
        )


def _describing_columns(store: Store, tags_from: Sequence[str] | None) -> list[str]:
    """Tag columns for leaf descriptions; none (no descriptions) when the store has no CLIP
    tags and no ``tags_from`` was given."""
    if not tags_from and "tags" not in store.schema("images").names:
        return []
    return tag_columns(store, tags_from)


def _class_rows(
    store: Store | str,
    frame_rows: pa.Table,
    cls: str,
    params: dict[str, Any],
    tags_cols: list[str],
    source: str,
    bp: Any,
) -> tuple[pa.Table, pa.Table]:
    """The leaves and members of one class's tree (a Ray task with ``engine="ray"``: then
    ``store`` is the store's path)."""
    store = store if isinstance(store, Store) else Store(store)
    by = params["by"]
    group = _read_group(store, frame_rows["image_id"], tags_cols, by, cls, params["split"])
    group = _align(group, frame_rows)
    features = robust_matrix(group["robust_features"])
    failure = ~group["correct"].to_numpy(zero_copy_only=False).astype(bool)
    result = explain_group(features, failure, bp)
    described = _describe(store, group, params["tags_from"], tags_cols, failure, result)
    head = {
        "class": cls,
        "grouping": by,
        "model": params["model"],
        "robust_model": _one(group["robust_model"]),
        "tag_source": source,
    }
    return _leaf_rows(head, result, described), _member_rows(head, group, failure, result)


def _read_group(
    store: Store, ids: pa.Array, tag_cols: list[str], by: str, cls: str, split: str | None
) -> pa.Table:
    """One class group's image rows (features, robust model, tag columns): by label with a
    filter on the label column (a scan of one small column), by prediction by image id."""
    cols = ["image_id", "robust_model", "robust_features", *tag_cols]
    if by == "label":
        flt = equals("label", cls) + ("" if split is None else f" AND {equals('split', split)}")
    else:
        flt = f"image_id IN ({', '.join(literal(i) for i in ids.to_pylist())})"
    return store.read("images", cols, filter=flt)


def _align(group: pa.Table, frame_rows: pa.Table) -> pa.Table:
    """``group`` in the order of ``frame_rows`` (sorted by image_id), with label, prediction
    and correct from the frame."""
    pos = pc.index_in(frame_rows["image_id"], value_set=group["image_id"])
    if pos.null_count:
        raise StoreError("images changed while Barlow was reading them", hint="run it again")
    out = group.take(pos)
    for name in ("label", "prediction", "correct"):
        out = out.append_column(name, frame_rows[name])
    return out


def _one(column: pa.ChunkedArray) -> str | None:
    values = [v for v in pc.unique(column).to_pylist() if v is not None]
    return ",".join(sorted(values)) if values else None


def _describe(
    store: Store,
    group: pa.Table,
    tags_from: Sequence[str] | None,
    tag_cols: list[str],
    failure: np.ndarray,
    result: GroupResult,
) -> dict[int, list[TagEvidence]]:
    if not tag_cols or not result.leaves:
        return {}
    tags = tag_matrix(store, group, tags_from)
    return describe_leaves(tags.matrix, tags.names, failure, result.member_leaf, result.leaves)


def _leaf_rows(
    head: dict[str, Any], result: GroupResult, described: dict[int, list[TagEvidence]]
) -> pa.Table:
    group = {
        **head,
        "status": result.status,
        "group_size": result.n,
        "group_failures": result.failures,
        "base_error_rate": result.ber,
        "aler": result.aler,
        "aler_gain": None if result.aler is None else result.aler - result.ber,
        "selected_features": [int(f) for f in result.selected],
        "mutual_info": [float(m) for m in result.mutual_info],
    }
    if not result.leaves:
        return pa.Table.from_pylist([group], schema=LEAVES_SCHEMA)
    rows = []
    for rank, leaf in enumerate(result.leaves, start=1):
        tags = described.get(leaf.node, [])
        rows.append(
            {
                **group,
                "leaf": leaf.node,
                "rank": rank,
                "rule": leaf.rule,
                "conditions": [
                    {"feature": int(f), "op": op, "threshold": float(t)}
                    for f, op, t in leaf.conditions
                ],
                "size": leaf.n,
                "failures": leaf.failures,
                "error_rate": leaf.error_rate,
                "error_coverage": leaf.error_coverage,
                "importance": leaf.importance,
                "valid": leaf.valid,
                "description": ", ".join(t for t, _, _ in tags),
                "description_tags": [t for t, _, _ in tags],
                "tag_lifts": [float(lift) for _, lift, _ in tags],
                "tag_p_values": [float(p) for _, _, p in tags],
            }
        )
    return pa.Table.from_pylist(rows, schema=LEAVES_SCHEMA)


def _member_rows(
    head: dict[str, Any], group: pa.Table, failure: np.ndarray, result: GroupResult
) -> pa.Table:
    n = group.num_rows
    leaf = np.asarray(result.member_leaf, dtype=np.int32)
    return pa.table(
        {
            "class": pa.array([head["class"]] * n, pa.string()),
            "grouping": pa.array([head["grouping"]] * n, pa.string()),
            "model": pa.array([head["model"]] * n, pa.string()),
            "image_id": group["image_id"],
            "label": group["label"],
            "prediction": group["prediction"],
            "failure": pa.array(failure, pa.bool_()),
            "leaf": pa.array(np.where(leaf >= 0, leaf, 0), pa.int32(), mask=leaf < 0),
        },
        schema=MEMBERS_SCHEMA,
    )


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _sorted(leaves: pa.Table) -> pa.Table:
    """Valid leaves first, then by importance (then class, rank); groups without a tree last."""
    if leaves.num_rows == 0:
        return leaves
    valid = pc.fill_null(leaves["valid"], False).to_numpy(zero_copy_only=False)
    has_tree = leaves["leaf"].is_valid().to_numpy(zero_copy_only=False)
    importance = pc.fill_null(leaves["importance"], -1.0).to_numpy()
    cls = np.asarray(leaves["class"].to_pylist(), dtype=object).astype(str)
    rank = pc.fill_null(leaves["rank"], 0).to_numpy()
    order = np.lexsort((rank, cls, -importance, ~has_tree, ~valid))
    return leaves.take(pa.array(order))
