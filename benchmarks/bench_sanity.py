"""Benchmark of the cascading model-randomisation test (``failstore sanity``).

    .venv/bin/python benchmarks/bench_sanity.py            # 100 images, five methods
    .venv/bin/python benchmarks/bench_sanity.py --quick    # 20 images, gradient and grad_cam
    .venv/bin/python benchmarks/bench_sanity.py --images 10 --methods smoothgrad --repeat 1

integrated_gradients and smoothgrad (50 steps / samples, the reference's settings) cost about
50 gradient passes each: the default run takes well over half an hour on 2 CPU threads.

The store is bench_saliency's: the demo's target architecture (``BottleneckCNN``, 64 x 64 input)
with random weights, saved as a state-dict directory, and N random 64 x 64 PNGs in two class
folders, ingested (not timed). For each method alone, then all of them in one run:

* ``Sanity(test="cascading", methods=[m], images=N).fit(store, reuse=False)``: its wall time
  (total: model load, decoding, attributions, comparisons, writing the run), the attribution
  time and pass count of its clock (``est.clock_``);
* one bare attribution pass over the same images with the trained model
  (``runner.attributions``, batch 16, the test's own method settings; the median of --repeat
  calls after a warm-up call before the method's own fit and as many after it, as every part
  timed on its own: the machine may be shared), x (steps + 1): the floor a cascading test
  cannot go under (the trained maps, then one pass per randomised block);
* the ratio total / ((steps + 1) x pass), and where the rest (total - attribution) goes,
  estimated from parts timed separately: explained classes (steps + 1 forward passes),
  copying and re-initialising the blocks, comparing the maps (``similarity.prepare`` of the
  original maps once, then ``similarity.compare`` x steps);
  "other" is what is left (loading, decoding, writing the run).

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = ("gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "grad_cam")
QUICK = ("gradient", "grad_cam")


def make_store(n: int) -> Any:
    """bench_saliency's store: random-weight BottleneckCNN, N random PNGs in folders a and b."""
    import torch
    from PIL import Image

    from failstore.demo.nets import BottleneckCNN
    from failstore.ingest.pipeline import IngestOptions, ingest
    from failstore.models import save_state_dict_dir
    from failstore.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench_sanity_"))
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
    return Store(tmp / "s")


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def samples(repeat: int, fn: Any, *args: Any) -> tuple[Any, list[float]]:
    """The result and the times of ``repeat`` calls after one untimed warm-up call (lazy
    imports, torch's first-call set-up)."""
    out = fn(*args)
    return out, [timed(fn, *args)[1] for _ in range(repeat)]


def run(n: int, methods: tuple[str, ...], batch: int, repeat: int) -> None:
    from failstore.models.loading import load_model
    from failstore.queries.sanity import Sanity, runner
    from failstore.queries.sanity.randomise import blocks, cascading
    from failstore.queries.sanity.selection import chosen_images, load_pixels, method_settings
    from failstore.queries.sanity.similarity import compare, prepare

    store, t_store = timed(make_store, n)
    print(f"sanity cascading: {n} random 64 x 64 images, BottleneckCNN (random weights), "
          f"batch {batch}; store built in {t_store:.1f} s (not timed below)")  # fmt: skip
    # the same images and model as the test, for the bare parts
    params = Sanity(test="cascading", methods=list(methods), images=n).resolved_params(store)
    adapter: Any = load_model(store, params["model"], "cpu")
    module = adapter.module
    px = load_pixels(store, adapter, chosen_images(store, params)[None], "cpu")
    layers = blocks(module, px.x[:1])
    steps = len(layers)
    settings = method_settings(list(methods))
    targets, explain_s = samples(repeat, runner.explained_classes, module, px.x, "prediction",
                                 px.label_index, batch)  # fmt: skip
    t_randomise = median(samples(repeat, lambda: [0 for _ in cascading(module, layers, 0)])[1])
    print(f"  images {len(px.ids)} (split {params['split']}), steps {steps} "
          f"({', '.join(reversed(layers))})")  # fmt: skip
    passes: dict[str, list[float]] = {}
    compares: dict[str, list[float]] = {}
    prepares: dict[str, list[float]] = {}

    def bare(m: str) -> None:
        """Time the bare parts of ``m`` (again): the median of the calls before and after the
        method's fit is taken (the machine may be shared)."""
        a0, t = samples(repeat, runner.attributions, module, px.x, targets, m, settings[m],
                        px.stats, batch, runner.Clock())  # fmt: skip
        passes.setdefault(m, []).extend(t)
        noisy = (a0 + np.random.default_rng(1).normal(0, a0.std() + 1e-6, a0.shape)).astype(
            np.float32
        )
        ref, t = samples(repeat, prepare, a0)
        prepares.setdefault(m, []).extend(t)
        compares.setdefault(m, []).extend(samples(repeat, compare, ref, noisy)[1])
        explain_s.append(timed(runner.explained_classes, module, px.x, "prediction",
                               px.label_index, batch)[1])  # fmt: skip

    runs = [(m,) for m in methods] + ([methods] if len(methods) > 1 else [])
    fits = []
    for group in runs:
        for m in group:
            if m not in passes:
                bare(m)
        est = Sanity(test="cascading", methods=list(group), images=n)
        _, total = timed(est.fit, store, reuse=False)
        fits.append((group, total, est.clock_))
        if len(group) == 1:
            bare(group[0])
    t_explain = median(explain_s)
    pass_s = {m: median(v) for m, v in passes.items()}
    compare_s = {m: median(v) for m, v in compares.items()}
    prepare_s = {m: median(v) for m, v in prepares.items()}
    print(f"  shared parts: explained classes {t_explain * 1000:.1f} ms per pass, "
          f"copy + re-initialise all {steps} blocks {t_randomise * 1000:.1f} ms")  # fmt: skip
    print("  one bare pass, median (min-max) of the calls; in the test, the mean per pass:")
    for group, _, clock in fits:
        if len(group) == 1:
            m = group[0]
            print(f"    {m:<22}{pass_s[m]:8.3f} s ({min(passes[m]):.3f}-{max(passes[m]):.3f}); "
                  f"in the test {clock.attribution_s / clock.passes:.3f} s")  # fmt: skip
    print(f"  {'method':<22}{'steps':>6}{'total s':>9}{'attr s':>8}{'passes':>7}"
          f"{'(k+1)xpass s':>13}{'ratio':>7}{'rest s':>8}   rest: explain / randomise / "
          "compare / other s")  # fmt: skip
    for group, total, clock in fits:
        floor = (steps + 1) * sum(pass_s[m] for m in group)
        rest = total - clock.attribution_s
        explain = (steps + 1) * t_explain * len(group)
        randomise = t_randomise * len(group)
        comp = sum(prepare_s[m] + steps * compare_s[m] for m in group)
        other = rest - explain - randomise - comp
        name = group[0] if len(group) == 1 else "all together"
        print(f"  {name:<22}{steps:>6}{total:>9.2f}{clock.attribution_s:>8.2f}{clock.passes:>7}"
              f"{floor:>13.2f}{total / floor:>7.2f}{rest:>8.2f}   {explain:.2f} / "
              f"{randomise:.2f} / {comp:.2f} / {other:.2f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 images; gradient and grad_cam")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--repeat", type=int, default=3, help="timed calls of each bare part")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    methods = QUICK if args.quick else ALL
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    run(20 if args.quick else args.images, methods, args.batch, max(1, args.repeat))


if __name__ == "__main__":
    main()
