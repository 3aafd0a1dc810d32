"""``Slices``: PRIME minimal tag-combination failure slices over the store.

Reads one target model's predictions and the images' tags (CLIP ``tags`` or categorical columns
given by ``tags_from``), groups images by class (``by='label'`` or ``'prediction'``) and runs the
exact pruned search of :mod:`failstore.queries.slices.search` per class. Results go to the table
``prime_slices`` (one set of rows per run) and the stored query ``slices`` shows the latest run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import ConfigError, StoreError
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.params import Param
from failstore.queries.slices.search import (
    SEARCH_PARAMS,
    SliceParams,
    find_slices,
    slice_schema,
)
from failstore.store import Store, equals

GROUPINGS = ("label", "prediction")


@dataclass
class TagMatrix:
    """Images x tags, boolean, with the tag names."""

    matrix: np.ndarray
    names: list[str]


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
    )  # fmt: skip
    view_params = ("classes",)  # results cover all classes; `classes` filters what is returned
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

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or _default_model(store)
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
        data = load_frame(store, model, params["tags_from"], params["split"])
        tags = tag_matrix(store, data, params["tags_from"])
        ev = None
        if params["eval_split"]:
            ev_data = load_frame(store, model, params["tags_from"], params["eval_split"])
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
            ev_groups = dict(_groups(ev_keys))
            ev_correct = ev[0]["correct"].to_numpy(zero_copy_only=False).astype(bool)
        parts: list[pa.Table] = []
        for cls, idx in _groups(keys):
            kwargs: dict[str, Any] = {}
            if ev is not None:
                eidx = ev_groups.get(cls, np.zeros(0, np.int64))
                kwargs = {"eval_tags": ev[1].matrix[eidx], "eval_correct": ev_correct[eidx]}
            t = find_slices(
                tags.matrix[idx], correct[idx], tags.names, sp, class_name=cls, **kwargs
            )
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


def _empty(with_eval: bool) -> pa.Table:
    head = [pa.field(c, pa.string()) for c in ("class", "grouping", "model", "tag_source")]
    return pa.schema(head + list(slice_schema(with_eval))).empty_table()


def tag_source(tags_from: Sequence[str] | None) -> str:
    """What a run's tags come from: ``tags`` (CLIP) or the columns, comma-separated."""
    return ",".join(tags_from) if tags_from else "tags"


def _groups(keys: np.ndarray) -> list[tuple[str, np.ndarray]]:
    valid = np.array([k is not None for k in keys], dtype=bool)
    ks = keys[valid].astype(str)
    pos = np.flatnonzero(valid)
    order = np.argsort(ks, kind="stable")
    ks, pos = ks[order], pos[order]
    uniq, starts = np.unique(ks, return_index=True)
    ends = np.append(starts[1:], len(ks))
    return [(str(u), pos[s:e]) for u, s, e in zip(uniq, starts, ends, strict=True)]


def _default_model(store: Store) -> str:
    names = store.model_names("target")
    if not names:
        raise StoreError(
            f"{store.path} has no target model predictions",
            hint="ingest with --target first",
        )
    return names[-1]


def load_frame(
    store: Store, model: str, tags_from: Sequence[str] | None, split: str | None
) -> pa.Table:
    """label, prediction, correct and tag columns of the images of one split (or all)."""
    if not store.has_table("images") or not store.has_table("predictions"):
        raise StoreError(f"{store.path} has no images/predictions", hint="run `failstore ingest`")
    schema = store.schema("images")
    have = schema.names
    tag_cols = list(tags_from) if tags_from else ["tags"]
    for col in tags_from or []:
        if col in ("image_id", "uri", "label"):
            raise ConfigError(
                f"tags_from cannot use '{col}'", hint="slices are searched within each class; "
                "give categorical metadata columns such as attr_background"
            )  # fmt: skip
        t = schema.field(col).type if col in have else None
        if t is not None and not (
            pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)
            or pa.types.is_integer(t) or pa.types.is_dictionary(t)
        ):  # fmt: skip
            raise ConfigError(
                f"tags_from column '{col}' is {t}, not categorical",
                hint="use columns of strings, booleans or integers (bin a number into a "
                "text column first)",
            )
    for col in tag_cols:
        if col not in have:
            from difflib import get_close_matches

            close = get_close_matches(col, have, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "images has no such column"
            if col == "tags":
                hint = "ingest with --clip (CLIP tags), or pass --tags-from COL,COL"
            raise ConfigError(f"images has no column '{col}'", hint=hint)
    flt = None
    if split is not None:
        flt = equals("split", split)
    images = store.read("images", ["image_id", "label", *tag_cols], filter=flt)
    preds = store.read(
        "predictions",
        ["image_id", "prediction", "correct"],
        filter=equals("model", model),
    )
    if preds.num_rows == 0:
        known = ", ".join(store.model_names("target")) or "(none)"
        raise StoreError(f"no predictions of model '{model}'", hint=f"target models: {known}")
    # Hash join on image_id (Arrow's join cannot carry list columns such as tags).
    pos = pc.index_in(images["image_id"], value_set=preds["image_id"])
    keep = pc.is_valid(pos)
    images = images.filter(keep)
    matched = preds.take(pc.drop_null(pos))
    joined = images.append_column("prediction", matched["prediction"]).append_column(
        "correct", matched["correct"]
    )
    order = pc.sort_indices(joined, sort_keys=[("image_id", "ascending")])
    return joined.take(order)


def check_known(store: Store, column: str, wanted: Sequence[str], param: str) -> None:
    """Every value of ``wanted`` occurs in ``images.column``; else one line with a guess. The
    happy path only counts matching rows; the column's values are read for the message."""
    from difflib import get_close_matches

    for value in wanted:
        if store.count("images", equals(column, value)) == 0:
            values = pc.unique(store.read("images", [column]).column(column)).to_pylist()
            known = {v for v in values if v}
            close = get_close_matches(value, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else ""
            listed = ", ".join(sorted(known)[:12]) + (" ..." if len(known) > 12 else "")
            raise ConfigError(
                f"{param}: no image has {column} '{value}'",
                hint=f"{hint} known: {listed}".strip(),
            )


def tag_matrix(
    store: Store, data: pa.Table, tags_from: Sequence[str] | None, names: list[str] | None = None
) -> TagMatrix:
    """Boolean images x tags matrix; tags are CLIP tags, or ``COL=value`` for categorical
    columns. ``names`` fixes the tag order (to evaluate on another split)."""
    n = data.num_rows
    if tags_from:
        cols: list[tuple[str, np.ndarray]] = []
        for col in tags_from:
            vals = data[col].cast(pa.string()).to_numpy(zero_copy_only=False)
            cols.append((col, np.asarray(vals, dtype=object)))
        if names is None:
            names = sorted({f"{c}={v}" for c, vals in cols for v in vals if v is not None})
        index = {t: j for j, t in enumerate(names)}
        m = np.zeros((n, len(names)), dtype=bool)
        for c, vals in cols:
            for v in {v for v in vals if v is not None}:
                j = index.get(f"{c}={v}")
                if j is not None:
                    m[vals == v, j] = True
        return TagMatrix(m, names)
    lists = data["tags"].combine_chunks() if n else pa.array([], pa.list_(pa.string()))
    flat = pc.list_flatten(lists)
    rows = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False) if n else np.zeros(0, int)
    if names is None:
        vocab = _clip_vocabulary(store)
        present = set(flat.unique().to_pylist()) if len(flat) else set()
        names = vocab if vocab else sorted(present)
        names = [t for t in names if t in present] if vocab else names
    index = pa.array(names, pa.string())
    cols_idx = pc.fill_null(pc.index_in(flat, value_set=index), -1).to_numpy()
    m = np.zeros((n, len(names)), dtype=bool)
    good = cols_idx >= 0
    m[rows[good], cols_idx[good]] = True
    return TagMatrix(m, list(names))


def _clip_vocabulary(store: Store) -> list[str]:
    models = store.read("models", ["role", "tags"], filter="role = 'clip'").to_pylist()
    return list(models[-1]["tags"] or []) if models else []
