"""Turning decoded images and model outputs into Arrow rows of the store's tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from failstore import schemas


def fixed_vectors(matrix: np.ndarray, dim: int | None = None) -> pa.FixedSizeListArray:
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    d = dim if dim is not None else m.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), d)


def variable_vectors(matrix: np.ndarray) -> pa.ListArray:
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = m.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1)))


def boxes_value(boxes: Sequence[tuple[Any, ...]] | None) -> list[dict[str, Any]] | None:
    if boxes is None:
        return None
    return [
        {"label": b[0], "x0": float(b[1]), "y0": float(b[2]), "x1": float(b[3]), "y1": float(b[4])}
        for b in boxes
    ]


def image_base_table(decoded: Sequence[Any], metadata_schema: pa.Schema, now: datetime) -> pa.Table:
    """Base, file (``stat_*``) and metadata columns of new ``images`` rows."""
    cols: dict[str, pa.Array] = {
        "image_id": pa.array([d.image_id for d in decoded], pa.string()),
        "uri": pa.array([d.item.uri for d in decoded], pa.string()),
        "split": pa.array([d.item.split for d in decoded], pa.string()),
        "label": pa.array([d.item.label for d in decoded], pa.string()),
        "width": pa.array([d.width for d in decoded], pa.int32()),
        "height": pa.array([d.height for d in decoded], pa.int32()),
        "boxes": pa.array([boxes_value(d.item.boxes) for d in decoded], pa.list_(schemas.BOX_TYPE)),
        "mask": pa.array([d.mask_png for d in decoded], pa.binary()),
        "ingested_at": pa.array([now] * len(decoded), pa.timestamp("us", tz="UTC")),
        "stat_size": pa.array([d.stat_size for d in decoded], pa.int64()),
        "stat_mtime_ns": pa.array([d.stat_mtime_ns for d in decoded], pa.int64()),
    }
    for field in metadata_schema:
        cols[field.name] = pa.array(
            [d.item.metadata.get(field.name) for d in decoded], type=field.type
        )
    return pa.table(cols)


def clip_columns(
    model: str, out: Mapping[str, np.ndarray], tags: Sequence[str], thresholds: np.ndarray
) -> dict[str, pa.Array]:
    scores = out["tag_scores"]
    hits = scores >= thresholds[None, :]
    names = np.asarray(tags, dtype=object)
    return {
        "clip_model": pa.array([model] * len(scores), pa.string()),
        "clip_embedding": fixed_vectors(out["clip_embedding"]),
        "tag_scores": fixed_vectors(scores, len(tags)),
        "tags": pa.array([list(names[row]) for row in hits], pa.list_(pa.string())),
    }


def robust_columns(model: str, out: Mapping[str, np.ndarray]) -> dict[str, pa.Array]:
    feats = out["robust_features"]
    return {
        "robust_model": pa.array([model] * len(feats), pa.string()),
        "robust_features": fixed_vectors(feats),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z, dtype=np.float64)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def prediction_table(
    model: str,
    image_ids: Sequence[str],
    targets: Sequence[str | None],
    out: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    now: datetime,
) -> pa.Table:
    probs = softmax(out["logits"])
    idx = probs.argmax(axis=1)
    names = np.asarray(class_names, dtype=object)
    predicted = names[idx]
    correct = [t is not None and t == p for t, p in zip(targets, predicted, strict=True)]
    return pa.table(
        {
            "model": pa.array([model] * len(image_ids), pa.string()),
            "image_id": pa.array(list(image_ids), pa.string()),
            "target": pa.array(list(targets), pa.string()),
            "prediction": pa.array(list(predicted), pa.string()),
            "prediction_index": pa.array(idx.astype(np.int32), pa.int32()),
            "confidence": pa.array(probs[np.arange(len(idx)), idx], pa.float32()),
            "correct": pa.array(correct, pa.bool_()),
            "probabilities": variable_vectors(probs),
            "embedding": variable_vectors(out["embedding"]),
            "predicted_at": pa.array([now] * len(image_ids), pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.PREDICTIONS_SCHEMA,
    )


def error_table(rows: Sequence[tuple[str, str]], now: datetime) -> pa.Table:
    return pa.table(
        {
            "uri": pa.array([r[0] for r in rows], pa.string()),
            "reason": pa.array([r[1] for r in rows], pa.string()),
            "time": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.INGEST_ERRORS_SCHEMA,
    )


def model_table(record: Any, now: datetime, extra: Mapping[str, Any] | None = None) -> pa.Table:
    """One ``models`` row from a ``ModelRecord``."""
    import json

    w = record.head_weight
    b = record.head_bias
    info = dict(record.extra or {})
    info.update(extra or {})
    row = {
        "name": record.name,
        "role": record.role,
        "spec": record.spec,
        "checkpoint_sha256": record.checkpoint_sha256,
        "preprocess": record.preprocess.to_json(),
        "layer": record.layer,
        "embedding_dim": record.embedding_dim,
        "class_names": list(record.class_names) if record.class_names is not None else None,
        "tags": list(record.tags) if record.tags is not None else None,
        "prompts": list(record.prompts) if record.prompts is not None else None,
        "thresholds": [float(t) for t in record.thresholds]
        if record.thresholds is not None
        else None,
        "head_rows": int(w.shape[0]) if w is not None else None,
        "head_cols": int(w.shape[1]) if w is not None else None,
        "head_weight": np.asarray(w, np.float32).reshape(-1).tolist() if w is not None else None,
        "head_bias": np.asarray(b, np.float32).reshape(-1).tolist() if b is not None else None,
        "extra": json.dumps(info, sort_keys=True, default=str),
        "registered_at": now,
    }
    return pa.Table.from_pylist([row], schema=schemas.MODELS_SCHEMA)
