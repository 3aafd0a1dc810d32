"""Reading what analyses share from the store: one target model's predictions joined with image
columns, groups by class, tag matrices (CLIP ``tags`` or categorical columns), and checks of
class, split and model names that answer with a did-you-mean.

Every analysis groups images by class (``by='label'`` or ``'prediction'``) and many describe
groups by tags; these helpers keep that one way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import ConfigError, StoreError
from failstore.store import Store, equals

GROUPINGS = ("label", "prediction")


@dataclass
class TagMatrix:
    """Images x tags, boolean, with the tag names."""

    matrix: np.ndarray
    names: list[str]


def tag_source(tags_from: Sequence[str] | None) -> str:
    """What a run's tags come from: ``tags`` (CLIP) or the columns, comma-separated."""
    return ",".join(tags_from) if tags_from else "tags"


def groups(keys: np.ndarray) -> list[tuple[str, np.ndarray]]:
    valid = np.array([k is not None for k in keys], dtype=bool)
    ks = keys[valid].astype(str)
    pos = np.flatnonzero(valid)
    order = np.argsort(ks, kind="stable")
    ks, pos = ks[order], pos[order]
    uniq, starts = np.unique(ks, return_index=True)
    ends = np.append(starts[1:], len(ks))
    return [(str(u), pos[s:e]) for u, s, e in zip(uniq, starts, ends, strict=True)]


def default_model(store: Store) -> str:
    names = store.model_names("target")
    if not names:
        raise StoreError(
            f"{store.path} has no target model predictions",
            hint="ingest with --target first",
        )
    return names[-1]


def tag_columns(store: Store, tags_from: Sequence[str] | None) -> list[str]:
    """The images columns tags come from (``tags``, or the checked ``tags_from`` columns)."""
    schema = store.schema("images")
    have = schema.names
    for col in tags_from or []:
        if col in ("image_id", "uri", "label"):
            raise ConfigError(
                f"tags_from cannot use '{col}'", hint="analyses look within each class; "
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
    cols = list(tags_from) if tags_from else ["tags"]
    for col in cols:
        if col not in have:
            from difflib import get_close_matches

            close = get_close_matches(col, have, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "images has no such column"
            if col == "tags":
                hint = "ingest with --clip (CLIP tags), or pass --tags-from COL,COL"
            raise ConfigError(f"images has no column '{col}'", hint=hint)
    return cols


def load_frame(
    store: Store, model: str, columns: Sequence[str] | None, split: str | None
) -> pa.Table:
    """``image_id``, ``label``, the images ``columns``, ``prediction`` and ``correct`` of
    ``model``, for the images of one split (or all), sorted by image_id."""
    if not store.has_table("images") or not store.has_table("predictions"):
        raise StoreError(f"{store.path} has no images/predictions", hint="run `failstore ingest`")
    flt = None
    if split is not None:
        flt = equals("split", split)
    extra = [c for c in columns or () if c not in ("image_id", "label")]
    wanted = ["image_id", "label", *extra]
    images = store.read("images", wanted, filter=flt)
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


def robust_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """``images.robust_features`` (a fixed-size-list column) as an (N, D) float32 matrix, in
    stored column order; one line when some image has none."""
    arr = column.combine_chunks()
    if arr.null_count:
        raise StoreError(
            "some images have no robust features", hint="rerun `failstore ingest --robust MODEL`"
        )
    width = arr.type.list_size
    return np.asarray(arr.values.to_numpy(zero_copy_only=False), np.float32).reshape(-1, width)
