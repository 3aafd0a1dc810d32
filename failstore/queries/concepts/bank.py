"""``ConceptBank``: concept activation vectors (CAVs) of one target model.

Three sources of concepts (a run's ``tag_source``):

- ``tags`` (or, with ``tags_from``, the values of categorical columns): a concept's positives
  are the store's images carrying it, its negatives as many images without it, balanced over
  classes (:func:`failstore.queries.concepts.examples.tag_examples`); their embeddings are the
  stored ``predictions.embedding`` of the target model (the input of its final linear layer);
- ``folder:<path>``: a concept library, ``<path>/<concept>/*.jpg``, embedded with the target
  model by :mod:`failstore.queries.concepts.library` (nothing is added to the store's images);
  negatives from a ``negatives`` folder or the other concepts
  (:func:`failstore.queries.concepts.examples.folder_examples`);
- ``arrays``: positives and negatives given from Python, ``fit(store, concepts={...})``.

The CAV is a linear SVM separating positives from negatives, kept when its held-out accuracy
reaches ``min_accuracy`` (:func:`failstore.queries.concepts.cav.train_cavs`). A run writes one
row per concept, kept or not (with the reason), to ``concept_cavs``, and a folder run one row
per library image to ``concept_images``; the stored query ``concept_bank`` shows the latest
bank of each model and tag source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.errors import ConfigError, InputError, StoreError
from failstore.queries.concepts.cav import BANK_PARAMS, train_cavs
from failstore.queries.concepts.examples import ConceptExamples, folder_examples, tag_examples
from failstore.queries.concepts.library import (
    LIBRARY_SCHEMA,
    embed_library,
    open_library,
    tag_source_of,
)
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
    extra_tables = {"concept_images": LIBRARY_SCHEMA}  # noqa: RUF012
    query = "concept_bank"
    params = (
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param(
            "tags_from", None,
            "Concepts from categorical columns COL,COL,... (COL=value) instead of CLIP tags.",
            optional=True, many=True, csv=True,
        ),
        Param("folder", None, "Concepts from a library of image folders DIR/<concept>/*.jpg "
              "instead of tags.", optional=True),
        Param("negatives", None, "With --folder: negatives from this folder of images "
              "(default: the other concepts' images).", optional=True),
        Param("split", None, "Learn from the images of this split (default: all).",
              optional=True),
        *BANK_PARAMS,
    )  # fmt: skip
    derived_params = ("tag_source", "library")
    run_key = ("model", "tag_source")

    def __init__(
        self,
        model: str | None = None,
        tags_from: Sequence[str] | None = None,
        folder: str | None = None,
        negatives: str | None = None,
        split: str | None = None,
        C: float = 0.001,
        holdout: float = 0.3,
        min_accuracy: float = 0.7,
        max_examples: int = 500,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tags_from = tags_from
        self.folder = folder
        self.negatives = negatives
        self.split = split
        self.C = C
        self.holdout = holdout
        self.min_accuracy = min_accuracy
        self.max_examples = max_examples
        self.seed = seed

    def fit(
        self,
        store: Store,
        concepts: Mapping[str, tuple[Any, Any]] | None = None,
        *,
        reuse: bool = True,
    ) -> ConceptBank:
        """Learn the bank (or reuse an identical run). ``concepts``: instead of tags or a
        folder, {name: (positives, negatives)} embedding matrices (examples x the model's
        bottleneck width), e.g. computed in a notebook; the run's tag source is ``arrays``."""
        self._arrays = None if concepts is None else _checked_arrays(concepts)
        try:
            super().fit(store, reuse=reuse)
        finally:
            del self._arrays
        return self

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        if params["split"] is not None:
            check_known(store, "split", [params["split"]], "split")
        arrays = getattr(self, "_arrays", None)
        sources = [n for n, on in (("tags_from", params["tags_from"]), ("folder", params["folder"]),
                                   ("concepts", arrays is not None)) if on]  # fmt: skip
        if len(sources) > 1:
            raise ConfigError(f"{' and '.join(sources)} are two sources of concepts: give one")
        if params["negatives"] is not None and params["folder"] is None:
            raise ConfigError("negatives is a folder of negative images for a folder library",
                              hint="give folder too")  # fmt: skip
        params["library"] = None
        if params["folder"] is not None:
            library = open_library(params["folder"], params["negatives"])
            params["folder"] = library.root
            params["negatives"] = library.negatives
            params["library"] = library.fingerprint()  # a changed library is another run
            params["tag_source"] = tag_source_of(library.root)
        elif arrays is not None:
            params["library"] = arrays[0]
            params["tag_source"] = "arrays"
        else:
            params["tag_source"] = tag_source(params["tags_from"])
        return params

    def _compute(self, store: Store, params: dict[str, Any]) -> dict[str, pa.Table]:
        arrays = getattr(self, "_arrays", None)
        images = LIBRARY_SCHEMA.empty_table()
        if params["folder"] is not None:
            library = open_library(params["folder"], params["negatives"])
            embeddings, groups, images = embed_library(store, params["model"], library)
            names = library.names
            examples: list[ConceptExamples] = folder_examples(
                groups, names, max_examples=int(params["max_examples"]), seed=params["seed"]
            )
        elif arrays is not None:
            _, names, embeddings, examples = arrays
            _check_width(store, params["model"], embeddings)
        else:
            return {self.result_table: self._from_tags(store, params),
                    "concept_images": images}  # fmt: skip
        cavs = train_cavs(
            embeddings, examples, C=float(params["C"]), holdout=float(params["holdout"]),
            seed=int(params["seed"]), min_accuracy=float(params["min_accuracy"]),
            max_examples=int(params["max_examples"]),
        )  # fmt: skip
        rows = [
            _row(params["model"], params["tag_source"], name, cav, None, None)
            for name, cav in zip(names, cavs, strict=True)
        ]
        return {
            self.result_table: pa.Table.from_pylist(rows, schema=BANK_SCHEMA),
            "concept_images": images,
        }

    def _from_tags(self, store: Store, params: dict[str, Any]) -> pa.Table:
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
        rows = [
            _row(model, params["tag_source"], name, cav, ex.main_class, ex.main_class_share)
            for name, ex, cav in zip(tags.names, examples, cavs, strict=True)
        ]
        return pa.Table.from_pylist(rows, schema=BANK_SCHEMA)


def _row(
    model: str, source: str, name: str, cav: Any, main_class: Any, main_share: float | None
) -> dict[str, Any]:
    return {
        "model": model, "tag_source": source, "concept": name, "kept": cav.kept,
        "reason": cav.reason,
        "direction": [float(v) for v in cav.direction] if cav.kept else None,
        "bias": cav.bias, "norm": cav.norm, "svm_c": cav.C,
        "positives": cav.n_pos, "negatives": cav.n_neg,
        "train_size": cav.n_train, "val_size": cav.n_val,
        "train_accuracy": cav.train_accuracy, "val_accuracy": cav.val_accuracy,
        "main_class": None if main_class is None else str(main_class),
        "main_class_share": main_share,
    }  # fmt: skip


def _checked_arrays(
    concepts: Mapping[str, tuple[Any, Any]],
) -> tuple[str, list[str], np.ndarray, list[ConceptExamples]]:
    """(digest, names, stacked embeddings, examples as row ranges) of Python-given concepts."""
    if not isinstance(concepts, Mapping) or not concepts:
        raise InputError("concepts must be a non-empty {name: (positives, negatives)} mapping")
    digest = hashlib.sha256()
    blocks: list[np.ndarray] = []
    examples: list[ConceptExamples] = []
    start, width = 0, None
    for name in sorted(concepts):
        pair = concepts[name]
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InputError(f"concept '{name}': give a (positives, negatives) pair of matrices")
        idx = []
        for what, value in zip(("positives", "negatives"), pair, strict=True):
            x = np.ascontiguousarray(value, dtype=np.float64)
            if x.ndim != 2 or (width is not None and x.shape[1] != width):
                want = "examples x dimensions" if width is None else f"n x {width}"
                raise InputError(f"concept '{name}': {what} must be a {want} matrix, "
                                 f"got shape {x.shape}")  # fmt: skip
            if not np.isfinite(x).all():
                raise InputError(f"concept '{name}': {what} hold NaN or infinite values")
            width = x.shape[1]
            digest.update(f"{name}\0{what}\0{x.shape}".encode())
            digest.update(x.tobytes())
            blocks.append(x)
            idx.append(np.arange(start, start + x.shape[0]))
            start += x.shape[0]
        examples.append(ConceptExamples(idx[0], idx[1]))
    return digest.hexdigest()[:16], sorted(concepts), np.concatenate(blocks), examples


def _check_width(store: Store, model: str, embeddings: np.ndarray) -> None:
    where = f"{equals('name', model)} AND role = 'target'"
    rows = store.read("models", ["head_cols"], filter=where).to_pylist()
    width = rows[-1]["head_cols"] if rows else None
    if width is not None and embeddings.shape[1] != width:
        raise InputError(
            f"concepts have {embeddings.shape[1]} dimensions, the bottleneck of '{model}' has "
            f"{width}", hint="give embeddings from predictions.embedding of that model",
        )


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
