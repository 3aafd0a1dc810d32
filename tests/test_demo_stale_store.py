"""A demo store filled by an earlier demo with other demo models is rebuilt, not refused;
stores holding anything else are left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from test_models_clip import MODEL_CFG, PRE_CFG

from failstore import config, schemas
from failstore.demo.nets import BottleneckCNN, export_model
from failstore.demo.run import _drop_stale_demo_store
from failstore.errors import StoreError
from failstore.models.weights import sha256_file
from failstore.store import Store


def _models(cache: Path, seed: int) -> dict[str, str]:
    root = cache / "demo" / "abc" / "models"
    torch.manual_seed(seed)
    kw = {"num_classes": 2, "widths": [4, 4, 4, 4], "bottleneck": 4}
    for role in ("target", "robust"):
        export_model(BottleneckCNN(**kw), root / role, "failstore.demo.nets:BottleneckCNN", kw,
                     ["a", "b"], [0.5] * 3, [0.2] * 3, {}, size=16)  # fmt: skip
    clip = root / "clip"
    clip.mkdir(exist_ok=True)
    (clip / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PRE_CFG})
    )
    (clip / "open_clip_model.safetensors").write_bytes(b"weights" * 10)
    return {"target": str(root / "target"), "robust": str(root / "robust"),
            "clip": f"local-dir:{clip}"}  # fmt: skip


def _store_with(path: Path, specs: dict[str, str], extra_row: bool = False) -> Path:
    def digest(role: str, spec: str) -> str:
        if role == "clip":
            return sha256_file(Path(spec[len("local-dir:") :]) / "open_clip_model.safetensors")
        return sha256_file(Path(spec) / "model.safetensors")

    rows = [
        {"name": role, "role": role, "spec": spec, "checkpoint_sha256": digest(role, spec)}
        for role, spec in specs.items()
    ]
    if extra_row:
        rows.append({"name": "mine", "role": "target", "spec": "/elsewhere/m.pt"})
    store = Store.init(path)
    store.upsert("models", pa.Table.from_pylist(rows, schema=schemas.MODELS_SCHEMA))
    return path


def test_older_demo_models_rebuild_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    log: list[str] = []
    old = _models(tmp_path / "cache", seed=1)
    store = _store_with(tmp_path / "demo-store", old)
    _drop_stale_demo_store(store, old, log.append)  # the same models: kept
    assert store.is_dir() and log == []
    new = _models(tmp_path / "cache", seed=2)  # retrained in place: other weights
    _drop_stale_demo_store(store, new, log.append)
    assert not store.exists()
    assert log == [f"store: {store} holds older demo models (target, robust); rebuilding it"]


def test_a_store_with_other_models_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    old = _models(tmp_path / "cache", seed=1)
    store = _store_with(tmp_path / "mixed", old, extra_row=True)
    new = _models(tmp_path / "cache", seed=2)
    _drop_stale_demo_store(store, new, lambda _m: None)
    assert store.is_dir()
    _drop_stale_demo_store(tmp_path / "nothing", new, lambda _m: None)  # no store: nothing
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nothing")
