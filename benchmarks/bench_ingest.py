"""Ingest overhead: `failstore ingest` throughput / forward-pass-only throughput.

Generates N JPEG images (default 2000, 320x240, 10 labels), then measures
  A. the full ingest (decode workers, preprocessing, model, Arrow rows, Lance upserts), and
  B. the same model's forward passes over pre-decoded, pre-normalised tensors, same batch size,
and prints A/B (target >= 0.8). Model: efficientnet_lite0 (the real ImageNet model).

Usage: .venv/bin/python benchmarks/bench_ingest.py [--images 2000] [--batch-size 64] [--workers N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from failstore import config  # noqa: E402


def make_images(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"label_{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((320, 240), Image.BILINEAR)
        img.save(d / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=config.default_workers())
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / "out" / "ingest")
    args = ap.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    data = args.dir / "images"
    make_images(data, args.images)

    import torch

    from failstore.ingest.decode_pool import DecodePool
    from failstore.ingest.pipeline import IngestOptions, _normalise, ingest
    from failstore.ingest.sources import open_source
    from failstore.models import resolve

    # B: forward passes only, on tensors decoded and normalised beforehand.
    adapter = resolve("target", args.model)
    adapter.load("cpu")
    pre = adapter.preprocess
    with DecodePool([pre], workers=args.workers) as pool:
        arrays = [d.arrays[pre.key()] for d in pool.imap(list(open_source(data)))]
    batches = [
        _normalise(arrays[i : i + args.batch_size], pre, "cpu")
        for i in range(0, len(arrays), args.batch_size)
    ]
    adapter.encode(batches[0])  # warm-up
    t0 = time.perf_counter()
    for x in batches:
        adapter.encode(x)
    fwd = time.perf_counter() - t0
    del batches
    # A: the whole ingest.
    opts = IngestOptions(
        source=data, target=args.model, batch_size=args.batch_size, workers=args.workers
    )
    t0 = time.perf_counter()
    report = ingest(args.dir / "store", opts)
    full = time.perf_counter() - t0
    n = args.images
    print(
        f"torch threads {torch.get_num_threads()}, decode workers {args.workers}, "
        f"batch {args.batch_size}, {n} images, model {args.model}"
    )
    print(f"forward only : {n / fwd:7.1f} images/s ({fwd:.1f} s)")
    print(f"ingest       : {n / full:7.1f} images/s ({full:.1f} s)  [{report.summary()}]")
    print(f"ratio ingest/forward = {fwd / full:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
