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


PIXELS = 48  # with_model: image side (HOG, one of the sanity figures, needs 48)
COLOURS = {"water": (40, 90, 200), "sand": (220, 200, 120), "snow": (245, 245, 250),
           "cat": (230, 120, 30), "dog": (110, 70, 40)}  # fmt: skip


def planted_model():  # a python.module:factory target (spec "planted_store:planted_model")
    import torch

    from failstore.demo.nets import BottleneckCNN

    torch.manual_seed(0)
    net = BottleneckCNN(num_classes=len(CLASSES), widths=(8, 16), bottleneck=EMBED_DIM).eval()
    pre = {"resize": PIXELS, "crop": PIXELS, "mean": [0.5] * 3, "std": [0.25] * 3}
    return net, CLASSES, pre


def _write_images(folder: Path, label, bg, size, rng) -> tuple[list[str], list[str]]:
    """One PNG per image: its background colour, a square of its class's colour (the box
    12..36 for large animals, 18..30 for small ones), noise; ids are the files' sha256."""
    import hashlib

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ids, uris = [], []
    for i, (lab, b, sz) in enumerate(zip(label, bg, size, strict=True)):
        arr = np.empty((PIXELS, PIXELS, 3), np.float64)
        arr[:] = COLOURS[b]
        lo, hi = (12, 36) if sz == "large" else (18, 30)
        arr[lo:hi, lo:hi] = COLOURS[lab]
        arr += rng.normal(0, 12, arr.shape)
        path = folder / f"{i}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
        ids.append(hashlib.sha256(path.read_bytes()).hexdigest())
        uris.append(str(path))
    return ids, uris


def build(path: Path, n: int = 1200, seed: int = 0, with_model: bool = False) -> Store:
    """The planted store; ``with_model``: real image files and a real (untrained) target ``m``
    reloadable by ``load_model``, for the analyses that run the model again (sanity)."""
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
    uris = [f"/x/{i}.png" for i in range(n)]
    side, box = 8, (2.0, 6.0)
    if with_model:
        ids, uris = _write_images(Path(f"{path}-images"), label, bg, size, rng)
        side = PIXELS
        box = (12.0, 36.0)  # the large square; the small one lies inside it
    images = pa.table(
        {
            "image_id": ids,
            "uri": uris,
            "split": split,
            "label": label,
            "width": np.full(n, side, np.int32),
            "height": np.full(n, side, np.int32),
            "boxes": [
                [{"label": b, "x0": box[0], "y0": box[0], "x1": box[1], "y1": box[1]}]
                for b in label
            ],
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
    if with_model:
        _register_model(store)
    _saliency_maps(store, ids, pred, wrong, rng, side)
    return store


def _register_model(store: Store) -> None:
    """Replace target ``m``'s row by the real factory model's (its own head)."""
    import dataclasses

    from failstore.ingest.rows import model_table
    from failstore.models.specs import resolve
    from failstore.store import utcnow

    adapter = resolve("target", "planted_store:planted_model")
    adapter.load("cpu")
    record = dataclasses.replace(adapter.record(), name="m")
    store.upsert("models", model_table(record, utcnow()), schema=schemas.MODELS_SCHEMA)


def _saliency_maps(store: Store, ids: list[str], pred: np.ndarray, wrong: np.ndarray,
                   rng: np.random.Generator, side: int = 8) -> None:  # fmt: skip
    """8 x 8 'gradient' maps over the whole side x side image: noise, plus a bump on the box
    (map pixels 2..5) for correct predictions and off it (the corner) for wrong ones."""
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
            "x0": np.zeros(n), "y0": np.zeros(n), "x1": np.full(n, float(side)),
            "y1": np.full(n, float(side)),
            "computed_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.SALIENCY_MAPS_SCHEMA,
    )  # fmt: skip
    store.upsert("saliency_maps", table, schema=schemas.SALIENCY_MAPS_SCHEMA)
