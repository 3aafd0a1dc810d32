"""``ConceptBank``: concept activation vectors (CAVs) of one target model, learnt from the store.

A concept is a CLIP tag (or, with ``tags_from``, a value of a categorical column). Its positives
are images carrying it, its negatives as many images without it, balanced over classes
(:func:`failstore.queries.concepts.examples.tag_examples`); the CAV is a linear SVM separating
their bottleneck embeddings (``predictions.embedding`` of the target model: the input of its
final linear layer), kept when its held-out accuracy reaches ``min_accuracy``
(:func:`failstore.queries.concepts.cav.train_cavs`). A run writes one row per concept, kept or
not (with the reason), to ``concept_cavs``; the stored query ``concept_bank`` shows the latest
bank of each model and tag source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.errors import StoreError
from failstore.queries.concepts.cav import BANK_PARAMS, train_cavs
from failstore.queries.concepts.examples import tag_examples
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import (
    check_known,
    default_model,
    load_frame,
    tag_columns,
    tag_matrix,
    tag_source,
)
from failstore.queries.framework.params import Param
from failstore.store import Store, equals

BANK_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("tag_source", pa.string()),
        pa.field("concept", pa.string()),
        pa.field("kept", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("direction", pa.list_(pa.float32())),
        pa.field("bias", pa.float64()),
        pa.field("norm", pa.float64()),
        pa.field("svm_c", pa.float64()),
        pa.field("positives", pa.int64()),
        pa.field("negatives", pa.int64()),
        pa.field("train_size", pa.int64()),
        pa.field("val_size", pa.int64()),
        pa.field("train_accuracy", pa.float64()),
        pa.field("val_accuracy", pa.float64()),
        pa.field("main_class", pa.string()),
        pa.field("main_class_share", pa.float64()),
    ]
)


class ConceptBank(Analysis):
    """A bank of CAVs in a target model's bottleneck. Parameters mirror ``failstore concepts``."""

    name = "concepts"
    result_table = "concept_cavs"
    result_schema = BANK_SCHEMA
    query = "concept_bank"
    params = (
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param(
            "tags_from", None,
            "Concepts from categorical columns COL,COL,... (COL=value) instead of CLIP tags.",
            optional=True, many=True, csv=True,
        ),
        Param("split", None, "Learn from the images of this split (default: all).",
              optional=True),
        *BANK_PARAMS,
    )  # fmt: skip
    run_key = ("model", "tags_from")

    def __init__(
        self,
        model: str | None = None,
        tags_from: Sequence[str] | None = None,
        split: str | None = None,
        C: float = 0.001,
        holdout: float = 0.3,
        min_accuracy: float = 0.7,
        max_examples: int = 500,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tags_from = tags_from
        self.split = split
        self.C = C
        self.holdout = holdout
        self.min_accuracy = min_accuracy
        self.max_examples = max_examples
        self.seed = seed

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        if params["split"] is not None:
            check_known(store, "split", [params["split"]], "split")
        return params

    def _compute(self, store: Store, params: dict[str, Any]) -> pa.Table:
        model = params["model"]
        cols = tag_columns(store, params["tags_from"])
        data = load_frame(store, model, cols, params["split"])
        embeddings = bottleneck(store, model, data["image_id"])
        tags = tag_matrix(store, data, params["tags_from"])
        labels = np.asarray(data["label"].to_pylist(), dtype=object).astype(str)
        examples = tag_examples(
            tags.matrix, labels, max_examples=int(params["max_examples"]), seed=params["seed"]
        )
        cavs = train_cavs(
            embeddings, examples, C=float(params["C"]), holdout=float(params["holdout"]),
            seed=int(params["seed"]), min_accuracy=float(params["min_accuracy"]),
            max_examples=int(params["max_examples"]),
        )  # fmt: skip
        source = tag_source(params["tags_from"])
        rows = []
        for name, ex, cav in zip(tags.names, examples, cavs, strict=True):
            rows.append(
                {
                    "model": model, "tag_source": source, "concept": name, "kept": cav.kept,
                    "reason": cav.reason,
                    "direction": [float(v) for v in cav.direction] if cav.kept else None,
                    "bias": cav.bias, "norm": cav.norm, "svm_c": cav.C,
                    "positives": cav.n_pos, "negatives": cav.n_neg,
                    "train_size": cav.n_train, "val_size": cav.n_val,
                    "train_accuracy": cav.train_accuracy, "val_accuracy": cav.val_accuracy,
                    "main_class": None if ex.main_class is None else str(ex.main_class),
                    "main_class_share": ex.main_class_share,
                }
            )  # fmt: skip
        return pa.Table.from_pylist(rows, schema=BANK_SCHEMA)


def bottleneck(store: Store, model: str, image_ids: pa.ChunkedArray) -> np.ndarray:
    """The target model's bottleneck embeddings (N x m float64) of ``image_ids``, in order."""
    import pyarrow.compute as pc

    preds = store.read("predictions", ["image_id", "embedding"], filter=equals("model", model))
    pos = pc.index_in(image_ids, value_set=preds["image_id"])
    emb = preds["embedding"].take(pc.fill_null(pos, 0)).combine_chunks()
    if pos.null_count or emb.null_count:
        raise StoreError(
            f"model '{model}' has no bottleneck embedding for some images",
            hint="re-ingest with --target (its head must be a final nn.Linear)",
        )
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths[0] == 0):
        raise StoreError(f"model '{model}' has embeddings of different widths",
                         hint="re-ingest the model")  # fmt: skip
    width = int(lengths[0]) if len(lengths) else 0
    flat = np.asarray(emb.values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return flat.reshape(-1, width) if width else np.zeros((0, 0))
