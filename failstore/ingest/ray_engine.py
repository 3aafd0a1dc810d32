"""The Ray engine of ``failstore ingest --engine ray``: decoding in Ray tasks, each model in its
own pool of Ray actors (``map_batches`` with ``concurrency`` and ``num_gpus``), results back to
the driver in input order.

The driver keeps everything that makes an ingest keyed and resumable (``pipeline``): the skip
plan, duplicate and label-conflict detection, ``Known`` and the commits every ``commit_every``
images. So the Ray engine writes exactly the local engine's rows (the models are run through
``encode.encode_crops`` in both, so even the floats are the same bits on CPU), a rerun adds
nothing and a killed run resumes. Where and why this differs from "workers write Lance
fragments": docs/scaling.md.

Ray is imported only when this engine is used (``failstore.cluster.start``).
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from failstore.cluster import start
from failstore.errors import ConfigError
from failstore.ingest.decode import DEFAULT_MAX_PIXELS, Decoded, decode_one
from failstore.ingest.sources import SourceItem
from failstore.models.protocol import Preprocess

DECODE_BLOCK = 32  # images per decode task


@dataclass(frozen=True)
class RayOptions:
    """``--address``: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``), or
    None to start a local one; per model, ``actors`` actors with ``gpus`` GPUs and ``cpus`` CPUs
    each."""

    address: str | None = None
    actors: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    decode_cpus: float = 1.0
    threads: int | None = None  # torch threads per model actor; default: its CPUs, at least 1

    def torch_threads(self) -> int:
        return self.threads if self.threads else max(1, math.ceil(self.cpus))

    def check(self) -> None:
        if self.actors < 1:
            raise ConfigError(f"--ray-actors must be >= 1, got {self.actors}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--ray-threads must be >= 1, got {self.threads}")
        if self.gpus < 0 or self.cpus <= 0 or self.decode_cpus <= 0:
            raise ConfigError(
                "--ray-gpus must be >= 0 and --ray-cpus, --ray-decode-cpus > 0, got "
                f"{self.gpus}, {self.cpus}, {self.decode_cpus}"
            )


def _decode_batch(
    batch: dict[str, np.ndarray], preprocesses: Sequence[Preprocess], max_pixels: int
) -> dict[str, np.ndarray]:
    """A Ray task: decode the images of one block; crops as one array per preprocess."""
    decoded = [
        decode_one(pickle.loads(raw), preprocesses, max_pixels=max_pixels) for raw in batch["item"]
    ]
    out: dict[str, Any] = {
        "pos": np.asarray(batch["pos"], np.int64),
        "image_id": np.array([d.image_id or "" for d in decoded], dtype=object),
        "ok": np.array([d.error is None for d in decoded], dtype=bool),
    }
    for j, pre in enumerate(preprocesses):
        crops = np.zeros((len(decoded), pre.crop, pre.crop, 3), np.uint8)
        for i, d in enumerate(decoded):
            if d.error is None:
                crops[i] = d.arrays[pre.key()]
        out[f"px{j}"] = crops
    out["decoded"] = np.array(
        [pickle.dumps(replace(d, arrays={}), protocol=5) for d in decoded], dtype=object
    )
    return out


class _ModelActor:
    """A Ray actor holding one model, reloaded from its ``models`` row (``load_model``): it
    encodes the crops of the images that do not have this model's columns yet."""

    def __init__(
        self,
        store_path: str,
        name: str,
        role: str,
        column: str,
        batch_size: int,
        device: str,
        threads: int,
        have: Any,
    ) -> None:
        import ray
        import torch

        from failstore.models.loading import load_model

        torch.set_num_threads(max(1, threads))
        if isinstance(have, ray.ObjectRef):
            have = ray.get(have)
        self.adapter = load_model(store_path, name, device)
        self.role, self.column, self.batch_size, self.device = role, column, batch_size, device
        self.have = have if isinstance(have, (set, frozenset)) else set(have)
        crop = self.adapter.preprocess.crop
        probe = self._encode([np.zeros((crop, crop, 3), np.uint8)])
        self.shapes = {k: v.shape[1:] for k, v in probe.items()}

    def _encode(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        from failstore.ingest.encode import encode_crops

        return encode_crops(self.adapter, crops, self.batch_size, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["pos"])
        pairs = zip(batch["ok"], batch["image_id"], strict=True)
        need = np.array([bool(ok) and i not in self.have for ok, i in pairs], dtype=bool)
        idx = np.flatnonzero(need)
        out = dict(batch)
        got = self._encode([batch[self.column][i] for i in idx]) if len(idx) else {}
        for k, shape in self.shapes.items():
            col = np.zeros((n, *shape), np.float32)
            if len(idx):
                col[idx] = got[k]
            out[f"{self.role}.{k}"] = col
        out[f"{self.role}.done"] = need
        return out


@dataclass(frozen=True)
class ModelJob:
    """One model to run in actors: its role, its name in the store, its preprocess."""

    role: str
    name: str
    preprocess: Preprocess


@contextlib.contextmanager
def decoded_stream(
    items: list[SourceItem],
    skipped: dict[int, str],
    preprocesses: Sequence[Preprocess],
    jobs: Sequence[ModelJob],
    have: dict[str, set[str]],
    *,
    store_path: Path,
    batch_size: int,
    device: str,
    ray_opts: RayOptions,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Iterator[Decoded]]:
    """Every item in order, like the local engine's decode pool: those in ``skipped`` as unread
    placeholders, the others decoded and encoded on Ray (``Decoded.outputs``)."""
    ray = start(ray_opts.address)
    todo = [
        {"pos": i, "item": pickle.dumps(it, protocol=5)}
        for i, it in enumerate(items)
        if i not in skipped
    ]
    results: Iterator[Decoded] = iter(())
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=math.ceil(len(todo) / DECODE_BLOCK))
        ds = ds.map_batches(
            _decode_batch,
            fn_kwargs={"preprocesses": list(preprocesses), "max_pixels": max_pixels},
            batch_size=DECODE_BLOCK,
            batch_format="numpy",
            num_cpus=ray_opts.decode_cpus,
        )
        keys = [p.key() for p in preprocesses]
        for job in jobs:
            ds = ds.map_batches(
                _ModelActor,
                fn_constructor_kwargs={
                    "store_path": str(store_path),
                    "name": job.name,
                    "role": job.role,
                    "column": f"px{keys.index(job.preprocess.key())}",
                    "batch_size": batch_size,
                    "device": device,
                    "threads": ray_opts.torch_threads(),
                    "have": ray.put(frozenset(have.get(job.role, ()))),
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=ray_opts.actors),
                num_gpus=ray_opts.gpus,
                num_cpus=ray_opts.cpus,
            )
        ds = ds.drop_columns([f"px{j}" for j in range(len(keys))])
        results = _rows(ds, [j.role for j in jobs])
    yield _in_order(items, skipped, results)


def _rows(ds: Any, roles: list[str]) -> Iterator[Decoded]:
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for i, raw in enumerate(batch["decoded"]):
            dec: Decoded = pickle.loads(raw)
            dec.outputs = {
                role: {
                    k.split(".", 1)[1]: batch[k][i]
                    for k in batch
                    if k.startswith(f"{role}.") and k != f"{role}.done"
                }
                for role in roles
                if batch[f"{role}.done"][i]
            }
            yield dec


def _in_order(
    items: list[SourceItem], skipped: dict[int, str], results: Iterator[Decoded]
) -> Iterator[Decoded]:
    for i, item in enumerate(items):
        image_id = skipped.get(i)
        yield Decoded(item, image_id, skipped=True) if image_id else next(results)
