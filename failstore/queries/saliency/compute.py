"""``compute_saliency``: attribution maps of a target model's images, stored in ``saliency_maps``.

The first analysis step that runs the target model again: it is reloaded from its ``models`` row
(``load_model``: the recorded weights, checked). Images are read from their ``uri`` and decoded,
cropped and normalised by the ingest's own code (``failstore.ingest.files.decode_files``), then
attributed in batches (:func:`failstore.queries.saliency.methods.attribute`), averaged down to
the stored resolution (:func:`failstore.queries.saliency.geometry.downsample`) and upserted with
the window they cover in the image (:func:`failstore.queries.saliency.geometry.frame_of`).

Keyed by (model, method, settings, explain, image_id): maps already stored are not computed again,
and every ``COMMIT_EVERY`` maps are one commit, so a killed run resumes where it stopped.
``settings`` is the canonical JSON of everything that changes a map (the method's parameters,
the resolved layer, the resolution).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from failstore import schemas
from failstore.errors import ConfigError, StoreError
from failstore.queries.framework.frames import check_known, default_model
from failstore.queries.saliency.geometry import downsample, frame_of
from failstore.store import Store, equals, literal, utcnow

EXPLAIN = ("prediction", "label")
TABLE = "saliency_maps"
COMMIT_EVERY = 256  # maps per commit: a killed run loses at most this many (one keyed upsert)


@dataclass
class SaliencyOptions:
    """What ``failstore saliency`` computes (its options, one to one)."""

    model: str | None = None
    method: str = "gradient"
    params: dict[str, Any] = field(default_factory=dict)
    explain: str = "prediction"
    classes: Sequence[str] | None = None
    split: str | None = None
    where: str | None = None
    resolution: int | None = None  # default: the model's input size
    batch_size: int = 16
    device: str = "cpu"
    workers: int = 0
    limit: int | None = None


@dataclass
class SaliencyReport:
    model: str
    method: str
    settings: str
    selected: int = 0
    already: int = 0
    computed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    seconds: float = 0.0
    attribute_seconds: float = 0.0


def settings_json(method: str, params: dict[str, Any], layer: str | None, resolution: int) -> str:
    return json.dumps(
        {"method": method, "params": params, "layer": layer, "resolution": resolution},
        sort_keys=True,
    )


def compute_saliency(
    store: Store,
    opts: SaliencyOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SaliencyReport:
    """Compute (or find stored) the maps of the selected images; see the module docstring."""
    from failstore.ingest.files import as_items, decode_files
    from failstore.models.loading import load_model
    from failstore.queries.saliency.methods import method_params, resolved_layer

    if opts.explain not in EXPLAIN:
        raise ConfigError(f"explain must be one of 'prediction', 'label', got {opts.explain!r}")
    if opts.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {opts.batch_size}")
    model = opts.model or default_model(store)
    params = method_params(opts.method, opts.params)
    chosen = select_images(store, model, opts)
    adapter: Any = load_model(store, model, opts.device)
    pre = adapter.preprocess
    resolution = opts.resolution or pre.crop
    if not 1 <= resolution <= pre.crop:
        raise ConfigError(
            f"resolution must be between 1 and the model's input size {pre.crop}, got {resolution}"
        )
    layer = resolved_layer(adapter.module, params)
    settings = settings_json(opts.method, params, layer, resolution)
    report = SaliencyReport(model, opts.method, settings, selected=chosen.num_rows)
    done = _stored(store, model, opts.method, settings, opts.explain)
    todo = chosen.filter(
        pc.invert(pc.is_in(chosen["image_id"], pa.array(sorted(done), pa.string())))
    )
    report.already = chosen.num_rows - todo.num_rows
    rows = todo.to_pylist()
    by_uri = {r["uri"]: r for r in rows}
    start = time.perf_counter()
    batch: list[tuple[dict[str, Any], Any]] = []
    pending: list[pa.Table] = []  # computed maps not yet committed

    def commit() -> None:
        if pending:
            store.upsert(TABLE, pa.concat_tables(pending), schema=schemas.SALIENCY_MAPS_SCHEMA)
            report.computed += sum(t.num_rows for t in pending)
            pending.clear()
            if progress:
                progress(report.computed, len(rows))

    for dec in decode_files(as_items([r["uri"] for r in rows]), pre, opts.workers):
        row = by_uri[dec.item.uri]
        if dec.error is not None:
            report.errors.append((dec.item.uri, dec.error))
        elif dec.image_id != row["image_id"]:
            report.errors.append(
                (
                    dec.item.uri,
                    "the file changed since it was ingested (its sha256 differs); re-ingest it",
                )
            )
        else:
            batch.append((row, dec))
        if len(batch) >= opts.batch_size:
            pending.append(_run_batch(adapter, batch, opts, params, settings, resolution, report))
            batch = []
            if sum(t.num_rows for t in pending) >= COMMIT_EVERY:
                commit()
    if batch:
        pending.append(_run_batch(adapter, batch, opts, params, settings, resolution, report))
    commit()
    report.seconds = time.perf_counter() - start
    return report


def _run_batch(
    adapter: Any,
    batch: list[tuple[dict[str, Any], Any]],
    opts: SaliencyOptions,
    params: dict[str, Any],
    settings: str,
    resolution: int,
    report: SaliencyReport,
) -> pa.Table:
    """The rows of one batch's maps (committed by the caller)."""
    import torch

    from failstore.models.pixels import normalise
    from failstore.queries.saliency.methods import attribute

    pre = adapter.preprocess
    x = normalise(np.stack([d.arrays[pre.key()] for _, d in batch]), pre, opts.device)
    target = torch.tensor([r["class_index"] for r, _ in batch], dtype=torch.long, device=x.device)
    t0 = time.perf_counter()
    maps = attribute(
        adapter.module, x, target, opts.method, params, pixel_stats=(pre.mean, pre.std)
    )
    report.attribute_seconds += time.perf_counter() - t0
    small = downsample(maps, resolution)
    now = utcnow()
    out: dict[str, list[Any]] = {f.name: [] for f in schemas.SALIENCY_MAPS_SCHEMA}
    for (row, dec), m in zip(batch, small, strict=True):
        frame = frame_of(int(dec.width), int(dec.height), pre.resize, pre.crop, resolution)
        values = {
            "model": report.model,
            "method": opts.method,
            "settings": settings,
            "explain": opts.explain,
            "image_id": row["image_id"],
            "class": row["class"],
            "class_index": row["class_index"],
            "height": resolution,
            "width": resolution,
            "map": m.reshape(-1),
            "x0": frame.x0,
            "y0": frame.y0,
            "x1": frame.x1,
            "y1": frame.y1,
            "computed_at": now,
        }
        for k, v in values.items():
            out[k].append(v)
    table = pa.table(
        {k: pa.array(v, type=schemas.SALIENCY_MAPS_SCHEMA.field(k).type) for k, v in out.items()},
        schema=schemas.SALIENCY_MAPS_SCHEMA,
    )
    return table


def _stored(store: Store, model: str, method: str, settings: str, explain: str) -> set[str]:
    if not store.has_table(TABLE):
        return set()
    where = " AND ".join(
        [
            equals("model", model),
            equals("method", method),
            f"settings = {literal(settings)}",
            equals("explain", explain),
        ]
    )
    return set(store.read(TABLE, ["image_id"], filter=where)["image_id"].to_pylist())


def select_images(store: Store, model: str, opts: SaliencyOptions) -> pa.Table:
    """image_id, uri, class (explained), class_index of the selected images, by image_id."""
    if opts.split is not None:
        check_known(store, "split", [opts.split], "split")
    if opts.classes:
        check_known(store, "label", list(opts.classes), "classes")
    names = class_names(store, model)
    images = store.read("images", ["image_id", "uri", "label", "split"])
    preds = store.read(
        "predictions", ["image_id", "target", "prediction"], filter=equals("model", model)
    )
    pos = pc.index_in(images["image_id"], value_set=preds["image_id"])
    keep = pc.is_valid(pos)
    images, pos = images.filter(keep), pc.drop_null(pos.filter(keep))
    if opts.classes:
        mask = pc.is_in(images["label"], pa.array(list(opts.classes)))
        images, pos = images.filter(mask), pos.filter(mask)
    if opts.split:
        mask = pc.equal(images["split"], opts.split)
        images, pos = images.filter(mask), pos.filter(mask)
    column = "prediction" if opts.explain == "prediction" else "target"
    explained = preds[column].take(pos).to_pylist()
    index = {c: k for k, c in enumerate(names)}
    ids, uris, classes, idx = [], [], [], []
    for image_id, uri, cls in zip(
        images["image_id"].to_pylist(), images["uri"].to_pylist(), explained, strict=True
    ):
        if cls in index:  # a label that is not one of the model's classes cannot be explained
            ids.append(image_id)
            uris.append(uri)
            classes.append(cls)
            idx.append(index[cls])
    table = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "uri": pa.array(uris, pa.string()),
            "class": pa.array(classes, pa.string()),
            "class_index": pa.array(idx, pa.int32()),
        }
    )
    if opts.where:
        from failstore.queries.sql.session import samples_matching

        chosen = samples_matching(store, model, opts.where)
        table = table.filter(pc.is_in(table["image_id"], chosen))
    table = table.take(pc.sort_indices(table, [("image_id", "ascending")]))
    return table.slice(0, opts.limit) if opts.limit is not None else table


def class_names(store: Store, model: str) -> list[str]:
    rows = store.read(
        "models", ["class_names"], filter=f"{equals('name', model)} AND role = 'target'"
    ).to_pylist()
    if not rows or not rows[-1]["class_names"]:
        raise StoreError(
            f"model '{model}' has no class names in the store", hint="re-ingest it with --target"
        )
    return list(rows[-1]["class_names"])
