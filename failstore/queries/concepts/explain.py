"""``Explain``: conceptual explanation scores (CES) of a target model's mistakes, over the store.

The concepts are the kept CAVs of the model's concept bank (``ConceptBank`` with the same
``tags_from`` or ``folder``, fitted or reused; or a fitted bank given to ``fit``); the head is
the model's ``models`` row (W, b); the images are the model's mistakes, all of them or those
selected by ``image``, ``classes``, ``split``, ``slice_tags`` (a slice of the latest
``failstore slices`` run) or a ``where`` condition over the stored query ``samples``
(:mod:`failstore.queries.concepts.selection`). Scores come from
:func:`failstore.queries.concepts.ces.ces_scores`. A set is the mistakes of one (label,
prediction) pair: its scores are summed over its images and normalised, and ranked. A run writes
one row per (set, concept) to ``ces_sets`` and one per (image, concept) to ``ces_images``; the
stored query ``ces`` shows the latest explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import StoreError
from failstore.queries.concepts.bank import ConceptBank, bottleneck
from failstore.queries.concepts.ces import CES_PARAMS, ces_scores, default_delta, normalise, rank
from failstore.queries.concepts.selection import mistakes as select_mistakes
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import check_known, default_model
from failstore.queries.framework.params import Param
from failstore.store import Store, equals

SETS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("tag_source", pa.string()),
        pa.field("label", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("images", pa.int64()),
        pa.field("concept", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("raw", pa.float64()),
        pa.field("rank", pa.int32()),
        pa.field("tied", pa.bool_()),
        pa.field("delta", pa.float64()),
        pa.field("mode", pa.string()),
    ]
)
IMAGES_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("concept", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int32()),
    ]
)


class Explain(Analysis):
    """CES of a model's mistakes. Parameters mirror ``failstore explain``."""

    name = "explain"
    result_table = "ces_sets"
    result_schema = SETS_SCHEMA
    extra_tables = {"ces_images": IMAGES_SCHEMA}  # noqa: RUF012
    query = "ces"
    params = (
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param(
            "tags_from", None,
            "Concepts of the bank learnt from these categorical columns (default: CLIP tags).",
            optional=True, many=True, csv=True,
        ),
        Param("folder", None, "Concepts of the bank learnt from this concept library "
              "(see `failstore concepts --folder`).", optional=True),
        Param("negatives", None, "With --folder: the bank's negatives folder.", optional=True),
        Param("image", None, "Explain this one image (its image_id).", optional=True),
        Param("classes", None, "Only mistakes on this class (repeatable).", optional=True,
              many=True, flag="--class"),
        Param("split", None, "Only mistakes in this split.", optional=True),
        Param("slice_tags", None, "Only mistakes in this slice of the latest `failstore slices` "
              "run: its tags TAG,TAG,... (with --class if several classes have it).",
              optional=True, many=True, csv=True, flag="--slice"),
        Param("where", None, "Only mistakes matching this SQL condition over `samples`.",
              optional=True),
        *CES_PARAMS,
    )  # fmt: skip
    derived_params = ("tag_source", "bank_run")
    run_key = ("model", "tag_source")

    def __init__(
        self,
        model: str | None = None,
        tags_from: Sequence[str] | None = None,
        folder: str | None = None,
        negatives: str | None = None,
        image: str | None = None,
        classes: Sequence[str] | None = None,
        split: str | None = None,
        slice_tags: Sequence[str] | None = None,
        where: str | None = None,
        delta: float | None = None,
        mode: str = "step",
        normalise: str = "max_abs",
        top: int = 3,
    ) -> None:
        self.model = model
        self.tags_from = tags_from
        self.folder = folder
        self.negatives = negatives
        self.image = image
        self.classes = classes
        self.split = split
        self.slice_tags = slice_tags
        self.where = where
        self.delta = delta
        self.mode = mode
        self.normalise = normalise
        self.top = top

    def fit(
        self, store: Store, bank: ConceptBank | None = None, *, reuse: bool = True
    ) -> Explain:
        """Explain (or reuse an identical run). ``bank``: a fitted ``ConceptBank`` to take the
        concepts from (e.g. one fitted on arrays) instead of the bank of ``tags_from`` or
        ``folder``."""
        self._bank = bank
        try:
            super().fit(store, reuse=reuse)
        finally:
            del self._bank
        return self

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        if params["split"] is not None:
            check_known(store, "split", [params["split"]], "split")
        if params["classes"]:
            check_known(store, "label", list(params["classes"]), "classes")
        given = getattr(self, "_bank", None)
        if given is not None:
            if not hasattr(given, "run_id_"):
                raise StoreError("the bank given to Explain.fit is not fitted",
                                 hint="call its fit(store) first")  # fmt: skip
            params["bank_run"] = given.run_id_
            params["tag_source"] = given.results_["tag_source"][0].as_py() if len(
                given.results_) else "arrays"
            return params
        bank = self._bank_of(params).resolved_params(store)
        params["bank_run"] = None
        params["tag_source"] = bank["tag_source"]
        params["folder"], params["negatives"] = bank["folder"], bank["negatives"]
        return params

    @staticmethod
    def _bank_of(params: dict[str, Any]) -> ConceptBank:
        return ConceptBank(model=params["model"], tags_from=params["tags_from"],
                           folder=params["folder"], negatives=params["negatives"])  # fmt: skip

    def _compute(self, store: Store, params: dict[str, Any]) -> dict[str, pa.Table]:
        model = params["model"]
        given = getattr(self, "_bank", None)
        bank = (given or self._bank_of(params).fit(store)).results_
        bank = bank.filter(pc.equal(bank["kept"], True))
        if bank.num_rows == 0:
            raise StoreError(
                f"the concept bank of '{model}' keeps no concept",
                hint="see `failstore concepts`: lower --min-accuracy there",
            )
        names = bank["concept"].to_pylist()
        directions = np.array(bank["direction"].to_pylist(), dtype=np.float64)
        weight, bias, class_names = _head(store, model)
        mistakes = select_mistakes(store, model, params)
        index = {c: k for k, c in enumerate(class_names)}
        known = [t in index for t in mistakes["target"].to_pylist()]
        mistakes = mistakes.filter(pa.array(known, pa.bool_()))
        source = params["tag_source"]
        if mistakes.num_rows == 0:
            return {self.result_table: SETS_SCHEMA.empty_table(),
                    "ces_images": IMAGES_SCHEMA.empty_table()}  # fmt: skip
        delta = params["delta"]
        if params["mode"] == "step" and delta is None:  # every embedding, read once
            every = store.read("predictions", ["image_id"], filter=equals("model", model))
            all_emb = bottleneck(store, model, every["image_id"])
            delta = default_delta(all_emb)
            rows_of = pc.index_in(mistakes["image_id"], value_set=every["image_id"])
            emb = all_emb[rows_of.to_numpy(zero_copy_only=False)]
        else:
            emb = bottleneck(store, model, mistakes["image_id"])
        y = np.array([index[t] for t in mistakes["target"].to_pylist()], dtype=np.int64)
        raw = ces_scores(emb, y, weight, bias, directions, delta=delta, mode=params["mode"])
        labels = mistakes["label"].to_pylist()
        preds = mistakes["prediction"].to_pylist()
        set_rows: list[dict[str, Any]] = []
        members: dict[tuple[str, str], list[int]] = {}
        for i, lp in enumerate(zip(labels, preds, strict=True)):
            members.setdefault(lp, []).append(i)
        for key in sorted(members):
            rows = members[key]
            summed = raw[rows].sum(axis=0)
            scores = normalise(summed, params["normalise"], n_images=len(rows))
            ranking = rank(scores, top=len(names))
            tied = set(rank(scores, top=int(params["top"])).tied.tolist())
            for r, c in enumerate(ranking.order.tolist(), start=1):
                set_rows.append({
                    "model": model, "tag_source": source, "label": key[0], "prediction": key[1],
                    "images": len(rows), "concept": names[c], "score": float(scores[c]),
                    "raw": float(summed[c]), "rank": r, "tied": c in tied and len(tied) > 1,
                    "delta": None if params["mode"] != "step" else float(delta),
                    "mode": params["mode"],
                })  # fmt: skip
        order = np.argsort(np.argsort(-np.abs(raw), axis=1, kind="stable"), axis=1) + 1
        n, c = raw.shape
        images = pa.table(
            {
                "model": pa.array([model] * (n * c), pa.string()),
                "image_id": np.repeat(np.asarray(mistakes["image_id"].to_pylist(), object), c),
                "label": np.repeat(np.asarray(labels, object), c),
                "prediction": np.repeat(np.asarray(preds, object), c),
                "concept": np.tile(np.asarray(names, object), n),
                "score": raw.reshape(-1),
                "rank": order.reshape(-1).astype(np.int32),
            },
            schema=IMAGES_SCHEMA,
        )
        return {
            self.result_table: pa.Table.from_pylist(set_rows, schema=SETS_SCHEMA),
            "ces_images": images,
        }


def _head(store: Store, model: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = store.read(
        "models", ["head_rows", "head_cols", "head_weight", "head_bias", "class_names"],
        filter=f"{equals('name', model)} AND role = 'target'",
    ).to_pylist()  # fmt: skip
    if not rows or not rows[-1]["head_weight"]:
        raise StoreError(f"model '{model}' has no linear head in the store",
                         hint="CES needs a target whose last layer is an nn.Linear")  # fmt: skip
    r = rows[-1]
    weight = np.asarray(r["head_weight"], np.float64).reshape(r["head_rows"], r["head_cols"])
    return weight, np.asarray(r["head_bias"], np.float64), list(r["class_names"] or [])


def sentence(rows: list[dict[str, Any]], top: int) -> str:
    """ "dog -> cat on 41 images: would be right with more grass (+0.81), less snow (-0.77)" """
    first = rows[0]
    parts = [
        f"{'more' if r['score'] > 0 else 'less'} {r['concept']} ({r['score']:+.2f})"
        for r in rows[:top]
    ]
    n = first["images"]
    return (f"{first['label']} -> {first['prediction']} on {n} image{'s' if n != 1 else ''}: "
            f"would be right with {', '.join(parts)}")  # fmt: skip
