"""A synthetic store with a planted failure, for analysis tests (no model runs).

Two classes (cat, dog) on three backgrounds and two sizes. Dogs that are small AND on snow are
misclassified 80 % of the time, every other image 5 %. The store holds what every analysis reads:
``images`` (CLIP-style ``tags``, ``attr_*`` columns, ``robust_features``, ``clip_embedding``),
``predictions`` of target model ``m`` (probabilities, bottleneck ``embedding``) and the ``models``
row with the head's W and b. The robust features carry the planted cause in two dimensions
(snow, small) plus noise; the bottleneck embedding likewise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from failstore import schemas
from failstore.store import Store

BACKGROUNDS = ["water", "sand", "snow"]
SIZES = ["small", "large"]
CLASSES = ["cat", "dog"]
ROBUST_DIM = 8
EMBED_DIM = 6
CLIP_DIM = 4


def build(path: Path, n: int = 1200, seed: int = 0) -> Store:
    rng = np.random.default_rng(seed)
    label = rng.choice(CLASSES, n)
    bg = rng.choice(BACKGROUNDS, n)
    size = rng.choice(SIZES, n)
    split = np.where(np.arange(n) % 2 == 0, "val", "test")
    bad = (label == "dog") & (bg == "snow") & (size == "small")
    wrong = rng.random(n) < np.where(bad, 0.8, 0.05)
    pred = np.where(wrong, np.where(label == "dog", "cat", "dog"), label)
    ids = [f"{i:064x}" for i in range(n)]
    cause = np.stack([(bg == "snow"), (size == "small")], axis=1).astype(np.float32)

    def features(dim: int, scale: float) -> np.ndarray:
        f = rng.normal(0, scale, (n, dim)).astype(np.float32)
        f[:, :2] += 2.0 * cause
        return f

    robust, clip, emb = features(ROBUST_DIM, 0.5), features(CLIP_DIM, 0.5), features(EMBED_DIM, 0.3)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    meta = [
        pa.field("attr_background", pa.string()),
        pa.field("attr_size", pa.string()),
        *schemas.clip_fields(CLIP_DIM, 0)[:1],
        pa.field("clip_embedding", schemas.vector(CLIP_DIM)),
        pa.field("tags", pa.list_(pa.string())),
        *schemas.robust_fields(ROBUST_DIM),
    ]
    sch = pa.schema(schemas.IMAGE_BASE_FIELDS + meta)
    images = pa.table(
        {
            "image_id": ids,
            "uri": [f"/x/{i}.png" for i in range(n)],
            "split": split,
            "label": label,
            "width": np.full(n, 8, np.int32),
            "height": np.full(n, 8, np.int32),
            "boxes": [[{"label": b, "x0": 2.0, "y0": 2.0, "x1": 6.0, "y1": 6.0}] for b in label],
            "mask": pa.nulls(n, pa.binary()),
            "ingested_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
            "attr_background": bg,
            "attr_size": size,
            "clip_model": ["clip"] * n,
            "clip_embedding": pa.FixedSizeListArray.from_arrays(clip.reshape(-1), CLIP_DIM),
            "tags": [[b, s] for b, s in zip(bg, size, strict=True)],
            "robust_model": ["robust"] * n,
            "robust_features": pa.FixedSizeListArray.from_arrays(robust.reshape(-1), ROBUST_DIM),
        },
        schema=sch,
    )
    store = Store.init(path)
    store.upsert("images", images, schema=sch)
    head_w = rng.normal(0, 1, (len(CLASSES), EMBED_DIM)).astype(np.float32)
    head_b = np.zeros(len(CLASSES), np.float32)
    logits = emb @ head_w.T + head_b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    preds = pa.table(
        {
            "model": ["m"] * n,
            "image_id": ids,
            "target": label,
            "prediction": pred,
            "prediction_index": np.array([CLASSES.index(p) for p in pred], np.int32),
            "confidence": np.where(wrong, 0.6, 0.9).astype(np.float32),
            "correct": pred == label,
            "probabilities": [list(map(float, p)) for p in probs],
            "embedding": [list(map(float, e)) for e in emb],
            "predicted_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.PREDICTIONS_SCHEMA,
    )
    store.upsert("predictions", preds, schema=schemas.PREDICTIONS_SCHEMA)
    models = pa.Table.from_pylist(
        [
            {
                "name": "m", "role": "target", "class_names": CLASSES,
                "embedding_dim": EMBED_DIM, "head_rows": len(CLASSES), "head_cols": EMBED_DIM,
                "head_weight": head_w.reshape(-1).tolist(), "head_bias": head_b.tolist(),
            },
            {"name": "robust", "role": "robust", "embedding_dim": ROBUST_DIM},
            {"name": "clip", "role": "clip", "embedding_dim": CLIP_DIM,
             "tags": [*BACKGROUNDS, *SIZES]},
        ],
        schema=schemas.MODELS_SCHEMA,
    )  # fmt: skip
    store.upsert("models", models, schema=schemas.MODELS_SCHEMA)
    _saliency_maps(store, ids, pred, wrong, rng)
    return store


def _saliency_maps(store: Store, ids: list[str], pred: np.ndarray, wrong: np.ndarray,
                   rng: np.random.Generator) -> None:  # fmt: skip
    """8 x 8 'gradient' maps over the whole 8 x 8 image: noise, plus a bump on the box (2..5)
    for correct predictions and off it (the corner) for wrong ones."""
    n = len(ids)
    maps = rng.normal(0, 0.3, (n, 8, 8)).astype(np.float32)
    maps[~wrong, 2:6, 2:6] += 2.0
    maps[wrong, 5:8, 0:3] += 2.0
    settings = '{"layer": null, "method": "gradient", "params": {"abs": true}, "resolution": 8}'
    table = pa.table(
        {
            "model": ["m"] * n, "method": ["gradient"] * n, "settings": [settings] * n,
            "explain": ["prediction"] * n, "image_id": ids, "class": pred,
            "class_index": np.array([CLASSES.index(p) for p in pred], np.int32),
            "height": np.full(n, 8, np.int32), "width": np.full(n, 8, np.int32),
            "map": [m.reshape(-1).tolist() for m in maps],
            "x0": np.zeros(n), "y0": np.zeros(n), "x1": np.full(n, 8.0), "y1": np.full(n, 8.0),
            "computed_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.SALIENCY_MAPS_SCHEMA,
    )  # fmt: skip
    store.upsert("saliency_maps", table, schema=schemas.SALIENCY_MAPS_SCHEMA)
