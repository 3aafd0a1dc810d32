"""The batched, resumable ingest: source -> decode workers -> models -> keyed upserts.

Order of work, so that a broken input never writes anything and a killed run resumes:

1. open the source (a manifest is validated whole), resolve model specs, read the label map;
2. load the models (weights are read here: a missing file fails before any write);
3. read what the store already holds: image ids, which of them have CLIP / robust columns,
   and which have predictions of this target model; leave out the files whose path, size and
   mtime match a row that has every requested model (``skip.plan``: they are not even opened);
4. decode the others in spawn-started worker processes; for each batch run only the models
   whose columns are missing; every ``commit_every`` images, upsert ``images`` then
   ``predictions`` then ``ingest_errors`` (each one atomic Lance commit, keyed, so a rerun adds
   nothing).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from failstore import schemas
from failstore.errors import IngestError
from failstore.ingest import preflight, rows, skip
from failstore.ingest.buffer import Buffer, Known
from failstore.ingest.decode import Decoded
from failstore.ingest.encode import encode_crops
from failstore.ingest.labels import load_label_map, map_labels, unknown_labels
from failstore.ingest.options import IngestOptions, check_options
from failstore.ingest.progress import Progress, open_progress, progress_seconds, say
from failstore.ingest.report import IngestReport
from failstore.models.protocol import ModelAdapter, Preprocess
from failstore.store import Store, utcnow


def ingest(
    store_path: str | Path | None,
    opts: IngestOptions,
    *,
    warn: Callable[[str], None] | None = None,
    progress: bool = False,
) -> IngestReport:
    """Ingest ``opts.source`` into the store at ``store_path``; see the module docstring."""
    from failstore.ingest.sources import open_source

    warn = warn or (lambda msg: None)
    check_options(opts)
    if progress:
        progress_seconds()  # a bad $FAILSTORE_PROGRESS_SECONDS fails before any write
    source = open_source(
        opts.source,
        split=opts.split,
        path_column=opts.path_column,
        label_column=opts.label_column,
    )
    items = list(source)
    if opts.limit is not None:
        items = items[: opts.limit]
    adapters = preflight.resolve_models(opts)
    label_map = load_label_map(opts.label_map) if opts.label_map else {}
    preflight.check_device(opts.device)
    if progress and adapters:
        names = ", ".join(f"{a.name} ({role})" for role, a in adapters.items())
        say(f"loading models: {names}...")
    for adapter in adapters.values():
        adapter.load(opts.device)
    records = {role: a.record() for role, a in adapters.items()}

    target = adapters.get("target")
    class_names: Sequence[str] = records["target"].class_names or [] if target else []
    report = IngestReport(models=[a.name for a in adapters.values()])
    if target:
        report.unknown_labels = unknown_labels((i.label for i in items), class_names, label_map)
        if report.unknown_labels:
            warn(preflight.unknown_labels_message(target.name, report.unknown_labels))

    if opts.engine == "ray":  # reach the cluster before anything is written
        from failstore.ingest import ray_engine

        ray_engine.start(opts.ray.address)
    store = Store.init(store_path)
    preflight.check_store_models(store, records)
    clip, robust = adapters.get("clip"), adapters.get("robust")
    model_fields: list[pa.Field] = []
    if clip:
        rec = records["clip"]
        model_fields += schemas.clip_fields(int(rec.embedding_dim or 0), len(rec.tags or []))
    if robust:
        model_fields += schemas.robust_fields(int(records["robust"].embedding_dim or 0))
    preflight.check_image_columns(store, source.metadata_schema, model_fields)
    now = utcnow()
    preflight.register_models(store, records, label_map, now)

    report.store = str(store.path)
    image_schema = pa.schema(
        schemas.IMAGE_BASE_FIELDS
        + schemas.FILE_FIELDS
        + list(source.metadata_schema)
        + model_fields
    )
    store.ensure_columns(
        "images", schemas.FILE_FIELDS + list(source.metadata_schema) + model_fields
    )
    known = Known(store, target.name if target else None)
    todo = skip.plan(store, items, known, list(adapters), reread=opts.reread)
    thresholds = np.asarray(records["clip"].thresholds, np.float32) if clip else None

    prepro = {a.preprocess.key(): a.preprocess for a in adapters.values()}
    start = time.perf_counter()
    buf = Buffer()
    tags = list(records["clip"].tags or []) if clip else []
    run = _Run(
        adapters,
        known,
        class_names,
        label_map,
        thresholds,
        source.metadata_schema,
        tags,
        opts.device,
        buf,
        report,
        opts.batch_size,
    )
    bar: Progress | None = None
    if progress:
        if todo.skip:
            say(
                f"ingest: {len(todo.skip)} of {len(items)} files unchanged since the last "
                "ingest (same path, size and mtime), not read again"
            )
        bar = open_progress(len(items) - len(todo.skip))
    try:
        _loop(items, todo, prepro, opts, run, store, image_schema, bar)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    if report.label_conflicts:
        warn(
            f"{report.label_conflicts} files have the same bytes as an earlier file with another "
            'label; each is a row of ingest_errors (failstore sql "SELECT * FROM ingest_errors")'
        )
    if not store.has_table("ingest_errors"):  # present, empty, from the first ingest on
        store.append(
            "ingest_errors", schemas.INGEST_ERRORS_SCHEMA.empty_table(),
            schema=schemas.INGEST_ERRORS_SCHEMA,
        )  # fmt: skip
    if report.ok == 0 and report.seen > 0:
        raise IngestError(
            f"nothing was ingested: all {report.seen} images failed to decode",
            hint='see `failstore sql "SELECT * FROM ingest_errors"`',
        )
    if opts.strict and report.errors:
        raise IngestError(
            f"{report.errors} of {report.seen} images failed (--strict)",
            hint="the others were ingested; see the ingest_errors table",
        )
    return report


def _loop(
    items: list[Any],
    todo: skip.Plan,
    prepro: dict[Any, Preprocess],
    opts: IngestOptions,
    run: _Run,
    store: Store,
    image_schema: pa.Schema,
    bar: Progress | None,
) -> None:
    """Decode, batch, encode and commit every ``commit_every`` rows."""

    report, buf = run.report, run.buf
    seen: dict[str, tuple[str, str | None]] = {}  # image_id -> (first uri, its label)
    with _engine(items, todo, prepro, opts, run, store) as decoded:
        batch: list[Any] = []
        for dec in decoded:
            report.seen += 1
            if dec.skipped:
                report.skipped += 1
            else:
                _note_stats(dec, todo.recorded, buf)
            if dec.error is not None:
                report.errors += 1
                buf.errors.append((dec.item.uri, dec.error))
            elif dec.image_id is None or dec.image_id in seen:
                report.duplicates += 1  # same bytes as an earlier file of this run
                first_uri, first_label = seen.get(dec.image_id or "", (None, None))
                if first_uri is not None and dec.item.label != first_label:
                    report.label_conflicts += 1
                    buf.errors.append((dec.item.uri, _conflict(first_uri, first_label, dec)))
                else:
                    buf.ok_uris.append(dec.item.uri)
            else:
                seen[dec.image_id] = (dec.item.uri, dec.item.label)
                buf.ok_uris.append(dec.item.uri)
                if dec.skipped:
                    report.unchanged += 1  # every requested model has it (skip.plan)
                else:
                    batch.append(dec)
            if len(batch) >= opts.batch_size:
                _run_batch(batch, run)
                batch = []
            if buf.pending >= opts.commit_every:
                buf.flush(store, image_schema, run.known)
            if bar is not None and not dec.skipped:
                bar.advance()
        if batch:
            _run_batch(batch, run)
        buf.flush(store, image_schema, run.known)


@contextlib.contextmanager
def _engine(
    items: list[Any],
    todo: skip.Plan,
    prepro: dict[Any, Preprocess],
    opts: IngestOptions,
    run: _Run,
    store: Store,
) -> Iterator[Iterator[Decoded]]:
    """Every item decoded, in order: by local worker processes (the models then run in this
    process), or on Ray (decoding and the models there; ``ray_engine``)."""
    if opts.engine == "ray":
        from failstore.ingest import ray_engine

        jobs = [ray_engine.ModelJob(role, a.name, a.preprocess) for role, a in run.adapters.items()]
        have = {"clip": run.known.with_clip, "robust": run.known.with_robust,
                "target": run.known.predicted}  # fmt: skip
        with ray_engine.decoded_stream(
            items, todo.skip, list(prepro.values()), jobs, have, store_path=store.path,
            batch_size=opts.batch_size, device=opts.device, ray_opts=opts.ray,
        ) as decoded:  # fmt: skip
            yield decoded
        return
    from failstore.ingest.decode_pool import DecodePool

    with DecodePool(list(prepro.values()), workers=opts.workers) as pool:
        yield _decoded(items, todo.skip, pool)


def _decoded(items: list[Any], skipped: dict[int, str], pool: Any) -> Iterator[Decoded]:
    """Every item in order: those in ``skipped`` (index -> image id) as unread placeholders,
    the others decoded by ``pool``."""
    results = pool.imap(it for i, it in enumerate(items) if i not in skipped)
    try:
        for i, item in enumerate(items):
            image_id = skipped.get(i)
            yield Decoded(item, image_id, skipped=True) if image_id else next(results)
    finally:
        results.close()


def _note_stats(dec: Decoded, recorded: skip.Recorded, buf: Buffer) -> None:
    """Queue new ``stat_*`` values for the row of a file read again (touched, or a row from
    before the stat columns), so that the next rerun can skip it."""
    key = (dec.item.uri, dec.image_id or "")
    now = (dec.stat_size, dec.stat_mtime_ns)
    if dec.error is None and key in recorded and recorded[key] != now and now[0] is not None:
        recorded[key] = now
        buf.stats.append((key[1], int(now[0]), int(dec.stat_mtime_ns or 0)))


def _conflict(first_uri: str, first_label: str | None, dec: Any) -> str:
    return (
        f"same bytes as {first_uri}, which is labelled {first_label!r}; this file says "
        f"{dec.item.label!r}: the image keeps {first_label!r} (fix the label of one of them)"
    )


@dataclass
class _Run:
    """State of one ingest run shared by its batches."""

    adapters: dict[str, ModelAdapter]
    known: Known
    class_names: Sequence[str]
    label_map: dict[str, str]
    thresholds: np.ndarray | None
    metadata_schema: pa.Schema
    tags: list[str]
    device: str
    buf: Buffer
    report: IngestReport
    batch_size: int


def _run_batch(batch: list[Any], run: _Run) -> None:
    """Run each model on the images of ``batch`` that lack its columns; queue the rows."""
    adapters, known, buf, report = run.adapters, run.known, run.buf, run.report
    new = [d for d in batch if d.image_id not in known.images]
    need: dict[str, list[Any]] = {}
    if "clip" in adapters:
        need["clip"] = [d for d in batch if d.image_id not in known.with_clip]
    if "robust" in adapters:
        need["robust"] = [d for d in batch if d.image_id not in known.with_robust]
    if "target" in adapters:
        need["target"] = [d for d in batch if d.image_id not in known.predicted]
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for role, decs in need.items():
        if decs:
            outputs[role] = _outputs(role, decs, run)
    now = utcnow()
    if new:
        base = rows.image_base_table(new, run.metadata_schema, now)
        buf.new_images.append(_with_models(base, new, need, outputs, run))
        known.images.update(d.image_id for d in new)
        report.new_images += len(new)
    new_ids = {d.image_id for d in new}
    old_need = {
        r: [d for d in decs if d.image_id not in new_ids]
        for r, decs in need.items()
        if r in ("clip", "robust")
    }
    updated = {d.image_id for decs in old_need.values() for d in decs}
    for role, decs in old_need.items():
        if decs:
            cols = {"image_id": pa.array([d.image_id for d in decs], pa.string())}
            out = _subset(outputs[role], need[role], decs)
            cols.update(_model_cols(role, run, out))
            buf.image_updates.append(pa.table(cols))
    report.updated_images += len(updated)
    if "clip" in need:
        known.with_clip.update(d.image_id for d in need["clip"])
    if "robust" in need:
        known.with_robust.update(d.image_id for d in need["robust"])
    if need.get("target"):
        decs = need["target"]
        targets = map_labels([d.item.label for d in decs], run.class_names, run.label_map)
        buf.predictions.append(
            rows.prediction_table(
                adapters["target"].name,
                [d.image_id for d in decs],
                targets,
                outputs["target"],
                run.class_names,
                now,
            )
        )
        known.predicted.update(d.image_id for d in decs)
        report.predictions += len(decs)
    touched = new_ids | updated | {d.image_id for d in need.get("target", [])}
    report.unchanged += len(batch) - len(touched)


def _outputs(role: str, decs: list[Any], run: _Run) -> dict[str, np.ndarray]:
    """The model's outputs for ``decs``: computed by the engine already (Ray: in its model
    actors, ``Decoded.outputs``), else here."""
    if all(d.outputs is not None and role in d.outputs for d in decs):
        names = decs[0].outputs[role].keys()
        return {k: np.stack([d.outputs[role][k] for d in decs]) for k in names}
    a = run.adapters[role]
    crops = [d.arrays[a.preprocess.key()] for d in decs]
    return encode_crops(a, crops, run.batch_size, run.device)


def _subset(out: dict[str, np.ndarray], decs: list[Any], keep: list[Any]) -> dict[str, np.ndarray]:
    pos = {d.image_id: i for i, d in enumerate(decs)}
    idx = np.array([pos[d.image_id] for d in keep], dtype=np.int64)
    return {k: v[idx] for k, v in out.items()}


def _model_cols(role: str, run: _Run, out: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    name = run.adapters[role].name
    if role == "clip":
        assert run.thresholds is not None
        return rows.clip_columns(name, out, run.tags, run.thresholds)
    return rows.robust_columns(name, out)


def _with_models(
    base: pa.Table,
    new: list[Any],
    need: dict[str, list[Any]],
    outputs: dict[str, dict[str, np.ndarray]],
    run: _Run,
) -> pa.Table:
    for role in ("clip", "robust"):
        if role in need:
            out = _subset(outputs[role], need[role], new)
            for name, arr in _model_cols(role, run, out).items():
                base = base.append_column(name, arr)
    return base
