"""Which images a debugging test compares, their pixels, and the methods' settings.

Images are those the target model has predictions for, of the split, classes, slice and SQL
condition asked for, whose label is one of the model's classes (the label may be explained),
taken in image-id order (a content hash: a fixed, effectively random order) up to ``images``.
The ``spurious`` test has two groups: the suspected images (the slice or the SQL condition) and
a control group of the same classes and split outside them. Pixels are decoded, cropped and
normalised by the ingest's own code (``failstore.ingest.files``), as ``failstore saliency``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore.errors import ConfigError, StoreError
from failstore.queries.saliency.compute import SaliencyOptions, select_images
from failstore.queries.saliency.methods import method_params
from failstore.store import Store, equals, literal

TESTS = ("cascading", "independent", "spurious", "reference")

# The reference code's attribution settings where they differ from failstore's defaults: raw
# (signed) gradients, SmoothGrad over 50 samples without magnitude, IG 50 steps from zeros.
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {
    "gradient": {"abs": False},
    "smoothgrad": {"nt_samples": 50, "noise_level": 0.15, "abs": False},
    "integrated_gradients": {"n_steps": 50, "baseline": "zeros"},
}


def method_settings(methods: list[str]) -> dict[str, dict[str, Any]]:
    """Each method's full parameters as the tests use them (the reference's settings)."""
    return {m: method_params(m, REFERENCE_SETTINGS.get(m)) for m in methods}


def chosen_images(store: Store, params: dict[str, Any]) -> dict[str | None, pa.Table]:
    """image_id, uri, label, label_index of each group: ``None`` (every test but spurious), or
    ``"slice"`` and ``"control"``."""
    model, n, test = params["model"], int(params["images"]), params["test"]
    base = select_images(
        store,
        model,
        SaliencyOptions(
            model=model, explain="label", classes=params["classes"], split=params["split"]
        ),
    ).rename_columns(["image_id", "uri", "label", "label_index"])
    where = _where(params)
    chosen = base
    if params["slice_tags"]:
        from failstore.queries.concepts.selection import slice_members

        members = slice_members(store, model, params["slice_tags"], params["classes"])
        chosen = chosen.filter(pc.is_in(chosen["image_id"], members))
    if params["where"]:
        from failstore.queries.sql.session import samples_matching

        matching = samples_matching(store, model, params["where"])
        chosen = chosen.filter(pc.is_in(chosen["image_id"], matching))
    if test == "reference":
        other = store.read(
            "predictions", ["image_id"], filter=equals("model", params["reference_model"])
        )
        if other.num_rows == 0:
            raise StoreError(
                f"reference model '{params['reference_model']}' has no predictions in the store",
                hint="ingest with --target it",
            )
        chosen = chosen.filter(pc.is_in(chosen["image_id"], other["image_id"]))
    if test != "spurious":
        return {None: _enough(chosen.slice(0, n), f"images{where}", 2)}
    inside = _enough(chosen.slice(0, n), f"images in the suspected set{where}", 2)
    classes = pa.array(sorted(set(inside["label"].to_pylist())), pa.string())
    outside = base.filter(
        pc.and_(
            pc.is_in(base["label"], classes),
            pc.invert(pc.is_in(base["image_id"], chosen["image_id"])),
        )
    )
    control = _enough(outside.slice(0, n), "control images (same classes, outside the set)", 2)
    return {"slice": inside, "control": control}


def _where(params: dict[str, Any]) -> str:
    parts = [f"split {params['split']}"] if params["split"] else []
    if params["classes"]:
        parts.append("class " + ", ".join(params["classes"]))
    if params["slice_tags"]:
        parts.append("slice " + " + ".join(params["slice_tags"]))
    if params["where"]:
        parts.append(f"where {params['where']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _enough(t: pa.Table, what: str, least: int) -> pa.Table:
    if t.num_rows < least:
        raise ConfigError(
            f"found {t.num_rows} {what}; the test needs at least {least}",
            hint="widen --split/--class/--slice/--where",
        )
    return t


@dataclass
class Pixels:
    """A group's images ready for the model."""

    ids: list[str]
    labels: list[str]
    label_index: np.ndarray
    x: Any  # normalised (N, C, H, W) torch tensor
    stats: tuple[list[float], list[float]]  # preprocessing mean, std (for the methods)
    background: np.ndarray | None = None  # (N, H, W) float: 1 off the object, 0 on it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image_id, why)


def load_pixels(
    store: Store, adapter: Any, group: pa.Table, device: str, *, truth: bool = False
) -> Pixels:
    """Decode ``group``'s files for ``adapter``; with ``truth``, each image's ideal background
    map (1 - its mask, else its boxes) in the model's input frame; images without either (or
    whose file changed since ingest) are skipped, with the reason."""
    from failstore.ingest.files import as_items, decode_files
    from failstore.models.pixels import normalise
    from failstore.queries.saliency.geometry import frame_of, truth_region

    pre = adapter.preprocess
    rows = {r["uri"]: r for r in group.to_pylist()}
    regions: dict[str, tuple[Any, Any]] = {}
    if truth:
        ids = ", ".join(literal(i) for i in group["image_id"].to_pylist())
        cols = store.read("images", ["image_id", "mask", "boxes"], filter=f"image_id IN ({ids})")
        regions = {r["image_id"]: (r["mask"], r["boxes"]) for r in cols.to_pylist()}
    kept: list[tuple[dict[str, Any], Any, np.ndarray | None]] = []
    skipped: list[tuple[str, str]] = []
    for dec in decode_files(as_items(list(rows)), pre, 0):
        row = rows[dec.item.uri]
        if dec.error is not None:
            skipped.append((row["image_id"], dec.error))
            continue
        if dec.image_id != row["image_id"]:
            skipped.append((row["image_id"], "the file changed since it was ingested"))
            continue
        if truth:
            frame = frame_of(
                int(dec.width or 0), int(dec.height or 0), pre.resize, pre.crop, pre.crop
            )
            g, kind = truth_region(*regions.get(row["image_id"], (None, None)), frame)
            if kind is None:
                skipped.append((row["image_id"], "the image has no mask or boxes"))
                continue
            kept.append((row, dec, 1.0 - g.astype(np.float64)))
        else:
            kept.append((row, dec, None))
    if len(kept) < 2:
        why = "; ".join(sorted({w for _, w in skipped})) or "none selected"
        raise ConfigError(f"only {len(kept)} usable images of {group.num_rows} ({why})")
    kept.sort(key=lambda rd: rd[0]["image_id"])  # decode order is input order; keep id order
    x = normalise(np.stack([d.arrays[pre.key()] for _, d, _ in kept]), pre, device)
    return Pixels(
        ids=[r["image_id"] for r, _, _ in kept],
        labels=[r["label"] for r, _, _ in kept],
        label_index=np.array([r["label_index"] for r, _, _ in kept], np.int64),
        x=x,
        stats=(list(pre.mean), list(pre.std)),
        background=np.stack([b for _, _, b in kept]) if truth else None,  # type: ignore[misc]
        skipped=skipped,
    )
