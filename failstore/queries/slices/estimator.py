"""``Slices``: PRIME minimal tag-combination failure slices over the store.

Reads one target model's predictions and the images' tags (CLIP ``tags`` or categorical columns
given by ``tags_from``), groups images by class (``by='label'`` or ``'prediction'``) and runs the
exact pruned search of :mod:`failstore.queries.slices.search` per class. Results go to the table
``prime_slices`` (one set of rows per run) and the stored query ``slices`` shows the latest run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import (
    GROUPINGS,
    check_known,
    default_model,
    groups,
    load_frame,
    tag_columns,
    tag_matrix,
    tag_source,
)
from failstore.queries.framework.params import Param
from failstore.queries.framework.per_class import ENGINE_PARAMS, map_classes
from failstore.queries.slices.search import (
    SEARCH_PARAMS,
    SliceParams,
    find_slices,
    slice_schema,
)
from failstore.store import Store

__all__ = ["Slices", "load_frame"]  # load_frame: also used by the CLI's empty-result message

RESULT_SCHEMA = pa.schema(
    [
        pa.field("class", pa.string()),
        pa.field("grouping", pa.string()),
        pa.field("model", pa.string()),
        pa.field("tag_source", pa.string()),
        *slice_schema(with_eval=True),
    ]
)


class Slices(Analysis):
    """PRIME failure slices. Parameters mirror ``failstore slices`` options."""

    name = "slices"
    result_table = "prime_slices"
    result_schema = RESULT_SCHEMA
    params = (
        Param(
            "classes", None, "Only this class (repeatable; default: all classes).",
            optional=True, many=True, flag="--class",
        ),
        Param("by", "label", "Group images by 'label' or 'prediction'.", choices=GROUPINGS),
        Param("split", None, "Only images of this split (default: all).", optional=True),
        Param(
            "model", None, "Target model (default: the last ingested).", optional=True,
        ),
        Param(
            "tags_from", None,
            "Slice on categorical columns COL,COL,... (tags COL=value) instead of CLIP tags.",
            optional=True, many=True, csv=True,
        ),
        *SEARCH_PARAMS,
        Param(
            "eval_split", None,
            "Also evaluate each slice on this split "
            "(eval_size, eval_error_rate, eval_accuracy_drop, holds).",
            optional=True,
        ),
        *ENGINE_PARAMS,
    )  # fmt: skip
    view_params = ("classes",)  # results cover all classes; `classes` filters what is returned
    exec_params = ("engine", "address")  # where the classes are searched, not what is found
    run_key = ("model", "by", "tags_from")

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        by: str = "label",
        split: str | None = None,
        model: str | None = None,
        tags_from: Sequence[str] | None = None,
        max_tags: int = 3,
        min_size: int = 30,
        min_drop: float = 0.2,
        min_gain: float = 0.1,
        eval_split: str | None = None,
        engine: str = "local",
        address: str | None = None,
    ) -> None:
        self.classes = classes
        self.by = by
        self.split = split
        self.model = model
        self.tags_from = tags_from
        self.max_tags = max_tags
        self.min_size = min_size
        self.min_drop = min_drop
        self.min_gain = min_gain
        self.eval_split = eval_split
        self.engine = engine
        self.address = address

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        for name in ("split", "eval_split"):
            if params[name] is not None:
                check_known(store, "split", [params[name]], name)
        if self.classes:  # a view parameter, already checked: only its values are left
            check_known(store, "label", list(self.classes), "classes")
        return params

    def fit(self, store: Store, *, reuse: bool = True) -> Slices:
        super().fit(store, reuse=reuse)
        if self.classes:
            wanted = pa.array(list(self.classes), pa.string())
            self.results_ = self.results_.filter(pc.is_in(self.results_["class"], wanted))
        return self

    def _compute(self, store: Store, params: dict[str, Any]) -> pa.Table:
        model = params["model"]
        source = tag_source(params["tags_from"])
        cols = tag_columns(store, params["tags_from"])
        data = load_frame(store, model, cols, params["split"])
        tags = tag_matrix(store, data, params["tags_from"])
        ev = None
        if params["eval_split"]:
            ev_data = load_frame(store, model, cols, params["eval_split"])
            ev = (ev_data, tag_matrix(store, ev_data, params["tags_from"], names=tags.names))
        sp = SliceParams(
            max_tags=int(params["max_tags"]),
            min_size=int(params["min_size"]),
            min_drop=float(params["min_drop"]),
            min_gain=float(params["min_gain"]),
        )
        by = params["by"]
        keys = np.asarray(data[by].to_numpy(zero_copy_only=False), dtype=object)
        correct = data["correct"].to_numpy(zero_copy_only=False).astype(bool)
        ev_groups: dict[str, np.ndarray] = {}
        ev_correct = np.zeros(0, bool)
        if ev is not None:
            ev_keys = np.asarray(ev[0][by].to_numpy(zero_copy_only=False), dtype=object)
            ev_groups = dict(groups(ev_keys))
            ev_correct = ev[0]["correct"].to_numpy(zero_copy_only=False).astype(bool)
        jobs = []
        for cls, idx in groups(keys):
            ev_tags = ev_right = None
            if ev is not None:
                eidx = ev_groups.get(cls, np.zeros(0, np.int64))
                ev_tags, ev_right = ev[1].matrix[eidx], ev_correct[eidx]
            jobs.append((tags.matrix[idx], correct[idx], tags.names, sp, cls, ev_tags, ev_right))
        found = map_classes(_class_slices, jobs, engine=self.engine, address=self.address)
        parts: list[pa.Table] = []
        for (*_, cls, _e, _c), t in zip(jobs, found, strict=True):
            if t.num_rows:
                n = t.num_rows
                t = t.add_column(0, "tag_source", pa.array([source] * n, pa.string()))
                t = t.add_column(0, "model", pa.array([model] * n, pa.string()))
                t = t.add_column(0, "grouping", pa.array([by] * n, pa.string()))
                t = t.add_column(0, "class", pa.array([cls] * n, pa.string()))
                parts.append(t)
        if not parts:
            return _empty(ev is not None)
        out = pa.concat_tables(parts)
        order = pc.sort_indices(
            out,
            sort_keys=[
                ("importance", "descending"),
                ("size", "descending"),
                ("class", "ascending"),
            ],
        )
        return out.take(order)


def _class_slices(
    tags: Any,
    correct: np.ndarray,
    names: Sequence[str],
    sp: SliceParams,
    cls: str,
    eval_tags: Any | None,
    eval_correct: np.ndarray | None,
) -> pa.Table:
    """The slices of one class (a Ray task with ``engine="ray"``)."""
    kwargs: dict[str, Any] = {}
    if eval_tags is not None:
        kwargs = {"eval_tags": eval_tags, "eval_correct": eval_correct}
    return find_slices(tags, correct, names, sp, class_name=cls, **kwargs)


def _empty(with_eval: bool) -> pa.Table:
    head = [pa.field(c, pa.string()) for c in ("class", "grouping", "model", "tag_source")]
    return pa.schema(head + list(slice_schema(with_eval))).empty_table()
