"""Benchmark of ``failstore ingest --engine ray`` on this machine, and the per-image costs that
docs/scaling.md plans a cluster ingest with.

    .venv/bin/python benchmarks/bench_ray.py                 # 1,500 images, all parts
    .venv/bin/python benchmarks/bench_ray.py --images 300 --part overhead

Part "overhead": the same folder of N PNG images (96 x 96) ingested with three models
(target: the real EfficientNet-Lite0, 1,000 ImageNet classes; robust and CLIP: the demo's
formats, small) by the local engine (decode workers, models in the process) and by the Ray
engine on a local Ray cluster of this machine's cores (decode tasks, one actor per model). The
Ray run also ingests 16 images first in a separate store, to tell the fixed start-up (worker
processes importing torch, actors loading their model) from the per-image cost. Prints both
times and the ratios (target <= 1.3).

Part "stages": per-image costs of each stage, measured alone in this process: reading +
hashing + decoding + cropping (``decode_one``), each model's forward pass (``encode_crops``
at the batch size), and the driver's commit (``Buffer.flush`` of ``images`` + ``predictions``
upserts, 1,024 images per commit).

Part "commit": the cost of one 1,024-image upsert into ``images`` as the table grows (10k,
100k, 1M rows already in it): Lance's merge_insert finds the keys by scanning, so a serial
driver's commit cost grows with the store; the number the plan needs.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def write_folder(root: Path, n: int, size: int = 96) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = ["red", "green", "blue"]
    for i in range(n):
        d = root / labels[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        arr[..., i % 3] = np.maximum(arr[..., i % 3], 160)
        Image.fromarray(arr).save(d / f"{i}.png")
    return root


def write_models(root: Path) -> dict[str, str]:
    """Target: EfficientNet-Lite0 (weights ship with its package); robust and CLIP: small, in
    the demo's formats (tests/test_ingest_ray.py)."""
    import torch
    from test_models_clip import TAGS, write_tiny_clip

    from failstore.demo.nets import PooledCNN, export_model
    from failstore.models import write_vocab

    torch.manual_seed(11)
    names, mean, std = ["red", "green", "blue"], [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    rkw = {"num_classes": 3, "widths": [16, 32, 64, 128]}
    export_model(PooledCNN(**rkw), root / "robust", "failstore.demo.nets:PooledCNN", rkw,
                 names, mean, std, {}, size=64)  # fmt: skip
    clip = write_tiny_clip(root / "tiny-clip")
    vocab = write_vocab(root / "tags.txt", TAGS, [0.1, None, -0.05], ["a photo of {}."],
                        [None, None, None])  # fmt: skip
    return {"target": "efficientnet_lite0", "robust": str(root / "robust"),
            "clip": f"local-dir:{clip}", "tags": str(vocab)}  # fmt: skip


def overhead(n: int, batch: int) -> None:
    import ray

    from failstore import config
    from failstore.ingest.pipeline import IngestOptions, ingest
    from failstore.ingest.ray_engine import RayOptions

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    folder = write_folder(tmp / "imgs", n)
    warm = write_folder(tmp / "warm", 16)
    models = write_models(tmp)
    base = dict(batch_size=batch, **models)
    workers = config.default_workers()
    t = time.perf_counter()
    ingest(tmp / "warm-local", IngestOptions(source=warm, workers=workers, **base))
    local16 = time.perf_counter() - t
    t = time.perf_counter()
    ingest(tmp / "local", IngestOptions(source=folder, workers=workers, **base))
    local = time.perf_counter() - t

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    # Three actors and the decode tasks share the cores (Ray's CPU numbers are bookkeeping);
    # each actor may use every core (torch threads), as the local engine's models do.
    ropts = RayOptions(actors=1, cpus=cpus / 4, decode_cpus=cpus / 8, threads=cpus)
    try:
        t = time.perf_counter()
        ingest(tmp / "warm-ray", IngestOptions(source=warm, engine="ray", ray=ropts, **base))
        startup = time.perf_counter() - t
        t = time.perf_counter()
        ingest(tmp / "ray", IngestOptions(source=folder, engine="ray", ray=ropts, **base))
        remote = time.perf_counter() - t
    finally:
        ray.shutdown()
    print(f"{n:,} images, 3 models, batch {batch}, {cpus} cores:")
    print(f"  local engine  {local:7.1f} s  ({n / local:6.1f} images/s); 16 images "
          f"{local16:5.1f} s")  # fmt: skip
    print(f"  ray engine    {remote:7.1f} s  ({n / remote:6.1f} images/s); 16 images "
          f"{startup:5.1f} s (the first also starts Ray's worker processes)")  # fmt: skip
    marginal = (remote - startup) / max(local - local16, 1e-9)
    print(f"  ratio ray / local {remote / local:.2f} (target <= 1.3); per image beyond the "
          f"first 16 (start-up left out) {marginal:.2f}")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


def stages(n: int, batch: int) -> None:
    import torch

    from failstore.ingest.decode import decode_one
    from failstore.ingest.encode import encode_crops
    from failstore.ingest.pipeline import IngestOptions, ingest
    from failstore.ingest.sources import SourceItem
    from failstore.models.loading import load_model
    from failstore.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_stages_"))
    folder = write_folder(tmp / "imgs", n)
    models = write_models(tmp)
    files = sorted(folder.rglob("*.png"))
    # a store with the three models registered (and n images: the commit figure below)
    ingest(tmp / "s", IngestOptions(source=folder, workers=0, batch_size=batch, **models))
    store = Store(tmp / "s")
    names = {r["role"]: r["name"] for r in store.read("models", ["name", "role"]).to_pylist()}
    adapters = {role: load_model(store, name) for role, name in names.items()}
    pres = list({a.preprocess.key(): a.preprocess for a in adapters.values()}.values())
    torch.set_num_threads(1)  # per core
    t = time.perf_counter()
    decoded = [decode_one(SourceItem(str(f), None, None, None, None), pres) for f in files]
    per = (time.perf_counter() - t) / len(files)
    print(f"per image, one core ({len(files):,} images of 96 x 96 PNG):")
    print(f"  decode (read, sha256, decode, crop x{len(pres)})  {per * 1e3:7.2f} ms")
    for role, a in adapters.items():
        crops = [d.arrays[a.preprocess.key()] for d in decoded]
        encode_crops(a, crops[:batch], batch)  # warm-up
        t = time.perf_counter()
        encode_crops(a, crops, batch)
        per = (time.perf_counter() - t) / len(crops)
        print(f"  {role:7s} {a.name:38s} {per * 1e3:7.2f} ms")
    # the driver's commit: time the Buffer.flush calls of a fresh ingest with every model
    from failstore.ingest import buffer

    spent = [0.0]
    real = buffer.Buffer.flush

    def timed(self, *a, **kw):
        t = time.perf_counter()
        real(self, *a, **kw)
        spent[0] += time.perf_counter() - t

    buffer.Buffer.flush = timed  # type: ignore[method-assign]
    try:
        ingest(tmp / "s2", IngestOptions(source=folder, workers=0, batch_size=batch,
                                         commit_every=1024, **models))  # fmt: skip
    finally:
        buffer.Buffer.flush = real  # type: ignore[method-assign]
    print(f"  commit (images + predictions upserts)              "
          f"{spent[0] / len(files) * 1e3:7.2f} ms")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


def commit(sizes: list[int]) -> None:
    import pyarrow as pa

    from failstore.store import Store

    def rows(start: int, n: int) -> pa.Table:
        ids = [f"{i:064x}" for i in range(start, start + n)]
        vec = pa.FixedSizeListArray.from_arrays(
            pa.array(np.random.default_rng(start).random(n * 512, np.float32)), 512
        )
        return pa.table({"image_id": ids, "uri": [f"/data/{i}.jpg" for i in ids],
                         "label": ["x"] * n, "clip_embedding": vec})  # fmt: skip

    print("one upsert of 1,024 new images into `images` holding N rows (512-d vectors):")
    for size in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bench_ray_commit_"))
        store = Store.init(tmp / "s")
        for start in range(0, size, 100_000):
            store.append("images", rows(start, min(100_000, size - start)))
        times = []
        for k in range(3):
            t = time.perf_counter()
            store.upsert("images", rows(size + k * 1024, 1024))
            times.append(time.perf_counter() - t)
        print(f"  N = {size:>9,}: {sorted(times)[1]:6.2f} s  "
              f"({sorted(times)[1] / 1024 * 1e3:.2f} ms per image)")  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--part", choices=["all", "overhead", "stages", "commit"], default="all")
    ap.add_argument("--commit-sizes", default="10000,100000,1000000")
    args = ap.parse_args()
    if args.part in ("all", "overhead"):
        overhead(args.images, args.batch_size)
    if args.part in ("all", "stages"):
        stages(min(args.images, 600), args.batch_size)
    if args.part in ("all", "commit"):
        commit([int(s) for s in args.commit_sizes.split(",")])


if __name__ == "__main__":
    main()
