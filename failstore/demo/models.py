"""Train (or reuse) the three demo models into a cache directory.

Layout of ``cache_dir``::

    target/        target CNN as a state-dict directory: failstore_model.json (factory
                   failstore.demo.nets:BottleneckCNN + kwargs, class names, preprocessing,
                   metrics) + model.safetensors; the bottleneck is the input of ``head``
    robust/        adversarially trained CNN (PooledCNN), same format; robust features =
                   the input of ``head`` (the pooled penultimate features)
    clip/          open_clip local-dir: open_clip_config.json + open_clip_model.safetensors
    tags.txt       tag vocabulary with calibrated thresholds (read by the CLIP loader)
    metrics.json   fingerprint of data + settings, and every model's metrics

Files are reused when ``metrics.json`` records the same fingerprint (a hash of the world arrays,
``quick``, ``seed`` and the trainer version) and all files exist.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from failstore.demo.nets import Log, no_log
from failstore.demo.train_clip import CONFIG_FILE, WEIGHTS_FILE, ClipConfig, train_clip
from failstore.demo.train_robust import RobustConfig, train_robust
from failstore.demo.train_target import TargetConfig, train_target
from failstore.models.statedict import META_FILE
from failstore.models.statedict import WEIGHTS_FILE as STATE_DICT_FILE

TRAINER_VERSION = "3"  # 3: target/robust saved as state-dict directories, not TorchScript
METRICS_FILE = "metrics.json"


def data_fingerprint(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    captions: Sequence[str],
) -> str:
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(json.dumps(list(class_names)).encode())
    h.update("\n".join(np.asarray(split).astype(str).tolist()).encode())
    for k in sorted(attributes):
        h.update(k.encode())
        h.update("\n".join(np.asarray(attributes[k]).astype(str).tolist()).encode())
    h.update("\n".join(captions).encode())
    return h.hexdigest()


def model_paths(cache_dir: Path) -> dict[str, Path]:
    cache_dir = Path(cache_dir)
    return {
        "target": cache_dir / "target",
        "robust": cache_dir / "robust",
        "clip": cache_dir / "clip",
        "tags": cache_dir / "tags.txt",
        "metrics": cache_dir / METRICS_FILE,
    }


def ingest_specs(paths: Mapping[str, Path]) -> dict[str, str]:
    """Model specs for ``failstore ingest`` (``--target``, ``--robust``, ``--clip``, ``--tags``)."""
    return {
        "target": str(paths["target"]),
        "robust": str(paths["robust"]),
        "clip": f"local-dir:{paths['clip']}",
        "tags": str(paths["tags"]),
    }


def _complete(paths: Mapping[str, Path]) -> bool:
    clip = paths["clip"]
    nets = all(
        (paths[k] / META_FILE).is_file() and (paths[k] / STATE_DICT_FILE).is_file()
        for k in ("target", "robust")
    )
    return (
        nets
        and all(paths[k].is_file() for k in ("tags", "metrics"))
        and (clip / CONFIG_FILE).is_file()
        and (clip / WEIGHTS_FILE).is_file()
    )


def train_all(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    captions: Sequence[str],
    cache_dir: Path,
    quick: bool = False,
    seed: int = 0,
    log: Log = no_log,
    force: bool = False,
    configs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the target, robust and CLIP models (or reuse matching ones) into ``cache_dir``.

    Returns ``{"paths": {...}, "specs": {...}, "ingest_args": [...], "metrics": {...},
    "reused": bool}``. ``metrics`` has one entry per model plus ``seconds``. ``configs`` may
    override the per-model configs (keys ``target``, ``robust``, ``clip``); ``force`` retrains.
    """
    paths = model_paths(cache_dir)
    fingerprint = data_fingerprint(images, labels, class_names, split, attributes, captions)
    cfg = dict(configs or {})
    t_cfg = cfg.get("target") or (TargetConfig.quick() if quick else TargetConfig())
    r_cfg = cfg.get("robust") or (RobustConfig.quick() if quick else RobustConfig())
    c_cfg = cfg.get("clip") or (ClipConfig.quick() if quick else ClipConfig())
    settings = {
        "quick": bool(quick),
        "seed": int(seed),
        "trainer": TRAINER_VERSION,
        "configs": json.loads(json.dumps([asdict(t_cfg), asdict(r_cfg), asdict(c_cfg)])),
    }
    if not force and _complete(paths):
        try:
            stored = json.loads(paths["metrics"].read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = {}
        if stored.get("fingerprint") == fingerprint and stored.get("settings") == settings:
            log(f"models: reusing {cache_dir}")
            return _result(paths, stored["metrics"], reused=True)

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    paths["metrics"].unlink(missing_ok=True)  # a crash below must not leave a "valid" cache
    t0 = time.perf_counter()
    arrays = (images, labels, class_names, split)
    metrics: dict[str, Any] = {}
    metrics["target"] = train_target(*arrays, paths["target"], t_cfg, seed, log)
    metrics["robust"] = train_robust(*arrays, paths["robust"], r_cfg, seed, log)
    metrics["clip"] = train_clip(
        *arrays, attributes, captions, paths["clip"], paths["tags"],
        c_cfg, seed, log,
    )  # fmt: skip
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    record = {"fingerprint": fingerprint, "settings": settings, "metrics": metrics}
    tmp = paths["metrics"].with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(paths["metrics"])
    log(f"models: trained in {metrics['seconds']} s")
    return _result(paths, metrics, reused=False)


def _result(paths: Mapping[str, Path], metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    specs = ingest_specs(paths)
    args = ["--target", specs["target"], "--robust", specs["robust"], "--clip", specs["clip"]]
    args += ["--tags", specs["tags"]]
    return {
        "paths": {k: str(v) for k, v in paths.items()},
        "specs": specs,
        "ingest_args": args,
        "metrics": metrics,
        "reused": reused,
    }
