"""``Coverage``: Shared-Interest scores and cases of a model's stored saliency maps.

For every map of one (model, method, settings, explain) in ``saliency_maps`` (computed by
``failstore saliency``): the ground-truth region G is the image's mask, else the union of its
boxes, rasterised in the map's frame (:mod:`failstore.queries.saliency.geometry`); the saliency
region S comes from the map by ``rule`` (:func:`failstore.queries.coverage.scores.saliency_region`);
then IoU, GTC, SC and soft SC (:func:`~failstore.queries.coverage.scores.coverage_scores`) and
one of the eight cases (:func:`~failstore.queries.coverage.scores.assign_cases`). Maps are read
in batches, and each batch's images (their masks and boxes) with them, so memory is bounded by
the batch, not the store. A run appends one row per map to ``coverage_scores``; the stored query
``coverage`` shows the latest run of each model, method and explained class kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import StoreError
from failstore.queries.coverage.scores import (
    CaseThresholds,
    assign_cases,
    coverage_scores,
    saliency_region,
)
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import check_known, default_model
from failstore.queries.framework.params import Param
from failstore.queries.saliency.geometry import Frame, truth_region
from failstore.store import Store, equals, literal

CASES = (
    "human aligned",
    "sufficient subset",
    "sufficient context",
    "context dependent",
    "confuser",
    "insufficient subset",
    "context confusion",
    "distractor",
    "undefined",
)
COVERAGE_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("method", pa.string()),
        pa.field("settings", pa.string()),
        pa.field("explain", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("class", pa.string()),
        pa.field("truth", pa.string()),
        pa.field("truth_pixels", pa.int64()),
        pa.field("saliency_pixels", pa.int64()),
        pa.field("iou", pa.float64()),
        pa.field("gtc", pa.float64()),
        pa.field("sc", pa.float64()),
        pa.field("soft_sc", pa.float64()),
        pa.field("case", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
MAP_COLUMNS = ["image_id", "class", "height", "width", "map", "x0", "y0", "x1", "y1"]


class Coverage(Analysis):
    """Shared-Interest coverage of stored saliency maps; parameters mirror `failstore coverage`."""

    name = "coverage"
    result_table = "coverage_scores"
    result_schema = COVERAGE_SCHEMA
    reads = ("images", "predictions", "models", "saliency_maps")
    params = (
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param("method", "gradient", "Saliency method whose maps are scored."),
        Param(
            "settings",
            None,
            "The maps' settings JSON (default: the latest computed for the method).",
            optional=True,
        ),
        Param(
            "explain",
            "prediction",
            "Maps of the predicted or the true class.",
            choices=("prediction", "label"),
        ),
        Param(
            "rule",
            "std",
            "Saliency region: 'std' (>= mean + 1 std of the min-max "
            "normalised map) or 'top_percent'.",
            choices=("std", "top_percent"),
        ),
        Param(
            "top_percent",
            10.0,
            "With --rule top_percent: the share of pixels kept.",
            kind=float,
            low=0.001,
            high=100,
        ),
        Param("iou_high", 0.5, "Cases: IoU at or above this is high.", kind=float, low=0, high=1),
        Param(
            "sc_high",
            0.5,
            "Cases: saliency coverage at or above this is high.",
            kind=float,
            low=0,
            high=1,
        ),
        Param(
            "gtc_high",
            0.5,
            "Cases: ground-truth coverage at or above this is high.",
            kind=float,
            low=0,
            high=1,
        ),
        Param("split", None, "Only images of this split.", optional=True),
        Param("case", None, "Show only this case.", optional=True, choices=CASES),
        Param(
            "classes",
            None,
            "Show only images of this class (repeatable).",
            optional=True,
            many=True,
            flag="--class",
        ),
        Param(
            "batch_size",
            1024,
            "Maps read and scored at a time (bounds the memory).",
            kind=int,
            low=1,
        ),
    )
    view_params = ("case", "classes", "batch_size")
    derived_params = ()
    run_key = ("model", "method", "explain")

    def __init__(
        self,
        model: str | None = None,
        method: str = "gradient",
        settings: str | None = None,
        explain: str = "prediction",
        rule: str = "std",
        top_percent: float = 10.0,
        iou_high: float = 0.5,
        sc_high: float = 0.5,
        gtc_high: float = 0.5,
        split: str | None = None,
        case: str | None = None,
        classes: Sequence[str] | None = None,
        batch_size: int = 1024,
    ) -> None:
        self.model = model
        self.method = method
        self.settings = settings
        self.explain = explain
        self.rule = rule
        self.top_percent = top_percent
        self.iou_high = iou_high
        self.sc_high = sc_high
        self.gtc_high = gtc_high
        self.split = split
        self.case = case
        self.classes = classes
        self.batch_size = batch_size

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        if params["split"] is not None:
            check_known(store, "split", [params["split"]], "split")
        if self.classes:
            check_known(store, "label", list(self.classes), "classes")
        params["settings"] = params["settings"] or _latest_settings(
            store, params["model"], params["method"], params["explain"]
        )
        return params

    def fit(self, store: Store, *, reuse: bool = True) -> Coverage:
        super().fit(store, reuse=reuse)
        t = self.results_
        if self.case:
            t = t.filter(pc.equal(t["case"], self.case))
        if self.classes:
            t = t.filter(pc.is_in(t["label"], pa.array(list(self.classes), pa.string())))
        self.results_ = t
        return self

    def _compute(self, store: Store, params: dict[str, Any]) -> pa.Table:
        model = params["model"]
        where = " AND ".join(
            [
                equals("model", model),
                equals("method", params["method"]),
                f"settings = {literal(params['settings'])}",
                equals("explain", params["explain"]),
            ]
        )
        preds = store.read(
            "predictions", ["image_id", "prediction", "correct"], filter=equals("model", model)
        )
        thresholds = CaseThresholds(
            iou=float(params["iou_high"]),
            sc=float(params["sc_high"]),
            gtc=float(params["gtc_high"]),
        )
        dataset = store.dataset("images")  # one version: row positions stay valid
        images = _image_index(dataset, params["split"])
        maps_ds = store.dataset("saliency_maps")  # one version: both scans see the same rows
        # Each map's image and prediction, looked up once for all maps (one hash table each;
        # per batch it would be rebuilt over every image: quadratic in the store's size).
        all_ids = maps_ds.to_table(columns=["image_id"], filter=where)["image_id"]
        all_ipos = pc.index_in(all_ids, value_set=images["image_id"])
        all_ppos = pc.index_in(all_ids, value_set=preds["image_id"])
        parts = []
        start = 0
        batches = maps_ds.to_batches(
            columns=MAP_COLUMNS, filter=where, batch_size=int(self.batch_size)
        )
        for batch in batches:
            n = batch.num_rows
            if n:
                ids = all_ids.slice(start, n)
                if not ids.equals(pa.chunked_array([batch.column("image_id")])):
                    raise StoreError(
                        "saliency_maps changed while coverage read it",
                        hint="run `failstore coverage` again",
                    )
                part = _score_batch(
                    dataset,
                    pa.Table.from_batches([batch]),
                    images,
                    preds,
                    (all_ipos.slice(start, n), all_ppos.slice(start, n)),
                    params,
                    thresholds,
                )
                start += n
                if part.num_rows:
                    parts.append(part)
        if not parts:
            return COVERAGE_SCHEMA.empty_table()
        out = pa.concat_tables(parts)
        return out.take(pc.sort_indices(out, [("image_id", "ascending")]))


def _latest_settings(store: Store, model: str, method: str, explain: str) -> str:
    if not store.has_table("saliency_maps"):
        raise StoreError(
            "the store has no saliency maps yet",
            hint=f"run `failstore saliency --method {method}` first",
        )
    where = (
        f"{equals('model', model)} AND {equals('method', method)} AND {equals('explain', explain)}"
    )
    rows = store.read("saliency_maps", ["settings", "computed_at"], filter=where)
    if rows.num_rows == 0:
        raise StoreError(
            f"no saliency maps of model '{model}' by method '{method}' (explain {explain})",
            hint=f"run `failstore saliency --method {method}` first",
        )
    order = pc.sort_indices(rows, [("computed_at", "descending", "at_end")])
    return str(rows["settings"][order[0].as_py()].as_py())


def _image_index(ds: Any, split: str | None) -> pa.Table:
    """image_id, label, boxes, has_mask and the row position of every image (of the split):
    what every batch needs, read once; the masks themselves are taken per batch by position."""
    t = ds.to_table(columns=["image_id", "label", "split", "boxes"])
    t = t.append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int64)))
    with_mask = ds.to_table(columns=["image_id"], filter="mask IS NOT NULL")["image_id"]
    t = t.append_column("has_mask", pc.is_in(t["image_id"], value_set=with_mask.combine_chunks()))
    if split:
        t = t.filter(pc.equal(t["split"], split))
    return t


def _score_batch(
    dataset: Any,
    maps: pa.Table,
    images: pa.Table,
    preds: pa.Table,
    positions: tuple[pa.ChunkedArray, pa.ChunkedArray],
    params: dict[str, Any],
    t: CaseThresholds,
) -> pa.Table:
    """The rows of one batch of maps; ``positions``: each map's row in ``images`` and in
    ``preds`` (null: not there)."""
    ipos, ppos = (pa.concat_arrays(p.chunks) if p.num_chunks else pa.array([], pa.int32())
                  for p in positions)  # fmt: skip
    keep = pc.and_(pc.is_valid(ipos), pc.is_valid(ppos))
    maps, ipos, ppos = maps.filter(keep), ipos.filter(keep), ppos.filter(keep)
    n = maps.num_rows
    if n == 0:
        return COVERAGE_SCHEMA.empty_table()
    h = maps["height"].to_numpy()
    w = maps["width"].to_numpy()
    if (h != h[0]).any() or (w != w[0]).any():
        raise StoreError(
            "saliency maps of one setting have different sizes",
            hint="recompute them with `failstore saliency`",
        )
    hh, ww = int(h[0]), int(w[0])
    sal = np.asarray(
        pc.list_flatten(maps["map"]).to_numpy(zero_copy_only=False), dtype=np.float32
    ).reshape(n, hh, ww)
    truth = np.zeros((n, hh, ww), dtype=bool)
    kinds: list[str | None] = []
    rows = images.take(ipos).to_pylist()
    masked = [r["row"] for r in rows if r["has_mask"]]
    masks = dict(zip(masked, dataset.take(masked, columns=["mask"])["mask"]
                     .to_pylist(), strict=True)) if masked else {}  # fmt: skip
    windows = maps.select(["x0", "y0", "x1", "y1"]).to_pylist()
    for k, (img, win) in enumerate(zip(rows, windows, strict=True)):
        frame = Frame(win["x0"], win["y0"], win["x1"], win["y1"], hh, ww)
        truth[k], kind = truth_region(masks.get(img["row"]), img["boxes"], frame)
        kinds.append(kind)
    region = saliency_region(sal, rule=params["rule"], top_percent=float(params["top_percent"]))
    scores = coverage_scores(truth, region, sal)
    correct = np.asarray(preds["correct"].take(ppos).to_pylist(), dtype=object)
    correct = np.array([bool(c) for c in correct])
    cases = assign_cases(correct, scores, t)
    reasons = [
        "the image has no mask or boxes" if kind is None else r
        for kind, r in zip(kinds, scores.reason.tolist(), strict=True)
    ]
    return pa.table(
        {
            "model": [params["model"]] * n,
            "method": [params["method"]] * n,
            "settings": [params["settings"]] * n,
            "explain": [params["explain"]] * n,
            "image_id": maps["image_id"],
            "label": images["label"].take(ipos),
            "prediction": preds["prediction"].take(ppos),
            "correct": correct,
            "class": maps["class"],
            "truth": pa.array(kinds, pa.string()),
            "truth_pixels": truth.sum(axis=(1, 2)).astype(np.int64),
            "saliency_pixels": region.sum(axis=(1, 2)).astype(np.int64),
            "iou": scores.iou,
            "gtc": scores.gtc,
            "sc": scores.sc,
            "soft_sc": scores.soft_sc,
            "case": pa.array(list(cases), pa.string()),
            "reason": pa.array(reasons, pa.string()),
        },
        schema=COVERAGE_SCHEMA,
    )


def settings_summary(settings: str) -> str:
    """'integrated_gradients n_steps=50 ... at 224 x 224' for people."""
    s = json.loads(settings)
    params = " ".join(f"{k}={v}" for k, v in sorted((s.get("params") or {}).items()))
    layer = f" layer {s['layer']}" if s.get("layer") else ""
    r = s.get("resolution")
    return f"{s.get('method')} {params}{layer} at {r} x {r}".replace("  ", " ")


__all__ = ["CASES", "COVERAGE_SCHEMA", "Coverage", "settings_summary"]
