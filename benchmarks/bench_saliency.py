"""Benchmark of saliency maps and Shared-Interest coverage (issue 12).

    .venv/bin/python benchmarks/bench_saliency.py            # 2,000 images; 1,000,000 maps
    .venv/bin/python benchmarks/bench_saliency.py --quick    # 400 images; 100,000 maps

1. ``compute_saliency`` (method gradient, batch 32, decoding in this process) over N images of a
   store, against the same model's bare forward + backward on the same batches already in
   memory as tensors: the ratio of throughputs (target >= 0.8). The model is the demo's target
   architecture (64 x 64 input) with random weights, saved as a state-dict directory and ingested.
   Also the stored bytes per map at resolutions 64, 32, 16 and 8 (Lance's on-disk size).
2. ``Coverage.fit`` over M synthetic 14 x 14 maps of M images with one box each (a store built
   here, not timed), reading 1,024 maps at a time: time and peak RSS, against the RSS of the
   process before (the bound: the batch, the image index and the result table, not the maps).

Each part runs in its own child process so that its peak RSS is its own. Timings are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def saliency_part(n: int, batch: int) -> None:
    import torch
    from PIL import Image

    from failstore.demo.nets import BottleneckCNN
    from failstore.ingest.pipeline import IngestOptions, ingest
    from failstore.models import save_state_dict_dir
    from failstore.models.loading import load_model
    from failstore.queries.saliency.compute import SaliencyOptions, compute_saliency
    from failstore.store import Store

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_saliency_"))
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp / "img" / c).mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp / "img" / ("a" if i % 2 else "b") / f"{i}.png")
    torch.manual_seed(0)
    net = BottleneckCNN(2).eval()
    save_state_dict_dir(net, tmp / "model", "failstore.demo.nets:BottleneckCNN",
                        {"num_classes": 2}, class_names=["a", "b"],
                        preprocess={"resize": 64, "crop": 64})  # fmt: skip
    ingest(tmp / "s", IngestOptions(source=tmp / "img", target=str(tmp / "model"), workers=0))
    store = Store(tmp / "s")
    t0 = time.perf_counter()
    report = compute_saliency(store, SaliencyOptions(method="gradient", batch_size=batch))
    t_sal = time.perf_counter() - t0
    # the bare forward + backward on the same batches, already normalised tensors in memory
    module = load_model(store, report.model).module  # type: ignore[attr-defined]
    x = torch.randn(batch, 3, 64, 64)
    t1 = time.perf_counter()
    done = 0
    while done < n:
        xb = x.clone().requires_grad_(True)
        out = module(xb)
        out[:, 0].sum().backward()
        done += batch
    t_bare = time.perf_counter() - t1
    rate, bare = report.computed / t_sal, done / t_bare
    print(f"saliency: {n:,} images of 64 x 64, gradient, batch {batch}")
    print(f"  failstore saliency: {t_sal:.2f} s ({rate:.0f} images/s; attribution "
          f"{report.attribute_seconds:.2f} s of it)")  # fmt: skip
    print(f"  bare forward + backward: {t_bare:.2f} s ({bare:.0f} images/s)")
    print(f"  ratio: {rate / bare:.2f} (target >= 0.8)")
    base = dir_bytes(tmp / "s" / "saliency_maps.lance")
    print(f"  stored at 64 x 64: {base / report.computed / 1024:.1f} KiB per map on disk")
    for r in (32, 16, 8):
        before = dir_bytes(tmp / "s" / "saliency_maps.lance")
        t2 = time.perf_counter()
        rep = compute_saliency(store, SaliencyOptions(method="gradient", batch_size=batch,
                                                      resolution=r))  # fmt: skip
        grown = dir_bytes(tmp / "s" / "saliency_maps.lance") - before
        print(f"  stored at {r} x {r}: {grown / rep.computed / 1024:.2f} KiB per map on disk "
              f"({time.perf_counter() - t2:.2f} s)")  # fmt: skip
    print(f"  peak RSS: {peak_rss_mib():.0f} MiB")


def coverage_part(m: int) -> None:
    import pyarrow as pa

    from failstore import schemas
    from failstore.queries.coverage.estimator import Coverage
    from failstore.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench_coverage_"))
    store = Store.init(tmp / "s")
    rng = np.random.default_rng(0)
    chunk = 100_000
    settings = '{"layer": null, "method": "gradient", "params": {}, "resolution": 14}'
    base = pa.schema(schemas.IMAGE_BASE_FIELDS)
    for s in range(0, m, chunk):
        k = min(chunk, m - s)
        ids = [f"{i:064x}" for i in range(s, s + k)]
        cols = {f.name: pa.nulls(k, f.type) for f in base}
        x0 = rng.uniform(0, 40, k)
        cols.update(image_id=pa.array(ids), uri=pa.array(["/x"] * k), label=pa.array(["a"] * k),
                    split=pa.array(["test"] * k),
                    boxes=pa.array([[{"label": "a", "x0": a, "y0": a, "x1": a + 20, "y1": a + 20}]
                                    for a in x0.tolist()], pa.list_(schemas.BOX_TYPE)))  # fmt: skip
        store.append("images", pa.table(cols, schema=base), schema=base)
        preds = {f.name: pa.nulls(k, f.type) for f in schemas.PREDICTIONS_SCHEMA}
        preds.update(model=pa.array(["m"] * k), image_id=pa.array(ids),
                     prediction=pa.array(["a"] * k),
                     correct=pa.array(rng.random(k) < 0.8))  # fmt: skip
        store.append("predictions", pa.table(preds, schema=schemas.PREDICTIONS_SCHEMA),
                     schema=schemas.PREDICTIONS_SCHEMA)  # fmt: skip
        maps = rng.normal(size=(k, 14 * 14)).astype(np.float32)
        sal = {
            "model": ["m"] * k, "method": ["gradient"] * k, "settings": [settings] * k,
            "explain": ["prediction"] * k, "image_id": ids, "class": ["a"] * k,
            "class_index": np.zeros(k, np.int32), "height": np.full(k, 14, np.int32),
            "width": np.full(k, 14, np.int32),
            "map": pa.ListArray.from_arrays(pa.array(np.arange(k + 1) * 196, pa.int32()),
                                            pa.array(maps.reshape(-1))),
            "x0": np.zeros(k), "y0": np.zeros(k), "x1": np.full(k, 64.0), "y1": np.full(k, 64.0),
            "computed_at": pa.nulls(k, pa.timestamp("us", tz="UTC")),
        }  # fmt: skip
        store.append("saliency_maps", pa.table(sal, schema=schemas.SALIENCY_MAPS_SCHEMA),
                     schema=schemas.SALIENCY_MAPS_SCHEMA)  # fmt: skip
    models = pa.Table.from_pylist([{"name": "m", "role": "target", "class_names": ["a"]}],
                                  schema=schemas.MODELS_SCHEMA)  # fmt: skip
    store.upsert("models", models, schema=schemas.MODELS_SCHEMA)
    size = dir_bytes(tmp / "s" / "saliency_maps.lance")
    rss0 = peak_rss_mib()
    print(f"coverage: {m:,} maps of 14 x 14 ({size / 2**20:.0f} MiB on disk), one box each; "
          f"peak RSS after building the store {rss0:.0f} MiB")  # fmt: skip
    t0 = time.perf_counter()
    est = Coverage(method="gradient").fit(store)
    took = time.perf_counter() - t0
    print(f"  Coverage.fit: {took:.1f} s ({m / took:,.0f} maps/s), {est.results_.num_rows:,} rows")
    print(f"  peak RSS: {peak_rss_mib():.0f} MiB (maps on disk {size / 2**20:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 images; 100,000 maps")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--maps", type=int, default=1_000_000)
    ap.add_argument("--part", choices=("saliency", "coverage"), default=None)
    args = ap.parse_args()
    if args.quick:
        args.images, args.maps = 400, 100_000
    ctx = mp.get_context("spawn")
    parts = []
    if args.part in (None, "saliency"):
        parts.append((saliency_part, (args.images, args.batch)))
    if args.part in (None, "coverage"):
        parts.append((coverage_part, (args.maps,)))
    for target, part_args in parts:
        child = ctx.Process(target=target, args=part_args)
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"{target.__name__} failed with exit code {child.exitcode}")


if __name__ == "__main__":
    main()
