"""Ingest steps that run before any image is decoded: resolve model specs, check the device
and that the store's models agree with the new ones, and register model provenance rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from failstore import schemas
from failstore.errors import ConfigError, StoreError
from failstore.ingest import rows
from failstore.models.protocol import ModelAdapter
from failstore.store import Store

if TYPE_CHECKING:
    from failstore.ingest.options import IngestOptions


def resolve_models(opts: IngestOptions) -> dict[str, ModelAdapter]:
    from failstore.models import resolve

    adapters: dict[str, ModelAdapter] = {}
    if opts.target:
        adapters["target"] = resolve(
            "target", opts.target, layer=opts.layer, class_names=opts.class_names
        )
    if opts.robust:
        adapters["robust"] = resolve("robust", opts.robust, layer=opts.robust_layer)
    if opts.clip:
        adapters["clip"] = resolve(
            "clip", opts.clip, vocab=opts.tags, tag_threshold=opts.tag_threshold
        )
    return adapters


def unknown_labels_message(model: str, labels: list[str]) -> str:
    shown = ", ".join(labels[:20]) + (f" (+{len(labels) - 20} more)" if len(labels) > 20 else "")
    return (
        f"{len(labels)} dataset labels are not among {model}'s classes: {shown}; their images "
        "count as incorrect. Map them with --label-map FILE (JSON or CSV: dataset label -> "
        "model class)"
    )


def check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    ok = (device.startswith("cuda") and torch.cuda.is_available()) or (
        device == "mps" and torch.backends.mps.is_available()
    )
    if not ok:
        raise ConfigError(f"device '{device}' is not available here", hint="use --device cpu")


def check_image_columns(store: Store, metadata: pa.Schema, model_fields: list[pa.Field]) -> None:
    """The source's metadata columns and the models' columns fit the store's ``images`` table,
    checked before anything is written (the models row included)."""
    for f, had in store.type_conflicts("images", list(metadata)):
        raise StoreError(
            f"manifest column '{f.name}' is {f.type} here but {had} in {store.path}",
            hint=f"write '{f.name}' as {had} in the manifest (or rename the column), "
            "or use a new --store",
        )
    for f, had in store.type_conflicts("images", model_fields):
        raise StoreError(
            f"images column '{f.name}' is {had} in {store.path}, this model gives {f.type}",
            hint="the store was filled by another model of this role; use a new --store",
        )


def check_store_models(store: Store, records: dict[str, Any]) -> None:
    """One CLIP tagger and one robust model per store; a model name means one checkpoint."""
    roles_of: dict[str, list[str]] = {}
    for role, rec in records.items():
        roles_of.setdefault(rec.name, []).append(role)
    for name, roles in roles_of.items():
        if len(roles) > 1:
            flags = " and ".join(f"--{r}" for r in roles)
            raise ConfigError(
                f"{flags} name the same model '{name}'; a model has one role in a store",
                hint="give each role its own checkpoint (or a copy under another file name)",
            )
    if not store.has_table("models"):
        return
    have = store.read("models", ["name", "role", "checkpoint_sha256"]).to_pylist()
    for role, rec in records.items():
        for row in have:
            if row["name"] == rec.name and row["role"] != role:
                raise StoreError(
                    f"model '{rec.name}' is already in {store.path} as the {row['role']} model, "
                    f"not as {role}",
                    hint="give this role its own checkpoint (or a copy under another file name)",
                )
            if row["name"] == rec.name and row["checkpoint_sha256"] != rec.checkpoint_sha256:
                raise StoreError(
                    f"model '{rec.name}' is already in {store.path} with another checkpoint",
                    hint="rename the checkpoint file or use a new --store",
                )
            if role in ("clip", "robust") and row["role"] == role and row["name"] != rec.name:
                raise StoreError(
                    f"{store.path} already holds {role} columns from '{row['name']}', "
                    f"not '{rec.name}'",
                    hint=f"ingest with --{role} {row['name']} or use a new --store",
                )


def register_models(
    store: Store, records: dict[str, Any], label_map: dict[str, str], now: Any
) -> None:
    """Upsert each model's provenance row unless the store already holds the same row."""
    have: dict[str, dict[str, Any]] = {}
    if store.has_table("models"):
        have = {r["name"]: r for r in store.read("models").to_pylist()}
    for role, rec in records.items():
        extra = {"label_map": label_map} if role == "target" and label_map else None
        row = rows.model_table(rec, now, extra)
        new = row.to_pylist()[0]
        old = have.get(rec.name)
        if old is not None and all(old[k] == new[k] for k in new if k != "registered_at"):
            continue
        store.upsert("models", row, schema=schemas.MODELS_SCHEMA)
