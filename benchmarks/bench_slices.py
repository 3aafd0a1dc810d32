"""Benchmark of the exact failure-slice search on a synthetic 1M-image, 1000-class tag store.

    .venv/bin/python benchmarks/bench_slices.py                      # full run
    .venv/bin/python benchmarks/bench_slices.py --classes 50 --images 50000   # quick run

Synthetic data: 200 tags with a realistic skew (five common tags with p in 0.3-0.5, the rest
falling Zipf-like from ~0.2 to ~0.001), per-class lognormal modulation of the tag rates, some
parent -> child tag correlations, and per class 0-2 planted failure combinations (2-3 tags whose
joint images are misclassified with probability ~0.65 against a base error rate ~0.2).

The timed part groups the rows by class once (argsort) and runs ``find_slices`` class by class
with the default parameters (L = 3, s = 30, a = 0.2, b = 0.1). Then ``brute_force_slices`` runs
on ONE class and the per-class brute/pruned time ratio is printed. Timings are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from failstore.queries.slices import search as slice_search
from failstore.queries.slices.search import (
    SliceParams,
    brute_force_slices,
    find_slices,
)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def tag_rates(n_tags: int, rng: np.random.Generator) -> np.ndarray:
    common = rng.uniform(0.3, 0.5, size=min(5, n_tags))
    rest = 0.2 / np.arange(1, max(0, n_tags - 5) + 1) ** 1.0
    return np.concatenate([common, rest])[:n_tags]


def generate(n_images: int, n_classes: int, n_tags: int, seed: int):
    """Tag matrix (N x T bool), class labels (N,) and correctness (N,), classes interleaved."""
    rng = np.random.default_rng(seed)
    base = tag_rates(n_tags, rng)
    weights = rng.gamma(20.0, size=n_classes)
    sizes = rng.multinomial(n_images, weights / weights.sum())
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int32), sizes))
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    parents = rng.choice(min(n_tags, 40), size=min(30, n_tags), replace=True)
    children = rng.choice(n_tags, size=len(parents), replace=True)
    pool = min(n_tags, 40)
    combos = (
        [rng.choice(pool, size=rng.integers(2, 4), replace=False) for _ in range(50)]
        if pool >= 3
        else []
    )
    tags = np.zeros((n_images, n_tags), dtype=bool)
    correct = np.zeros(n_images, dtype=bool)
    planted = 0
    for c in range(n_classes):
        idx = order[bounds[c] : bounds[c + 1]]
        n = len(idx)
        rates = np.minimum(base * rng.lognormal(0.0, 0.8, size=n_tags), 0.9)
        mine = [combos[i] for i in rng.choice(len(combos), rng.integers(0, 3))] if combos else []
        for combo in mine:
            rates[combo] = np.maximum(rates[combo], 0.35)
        x = rng.random((n, n_tags)) < rates
        for p, ch in zip(parents, children, strict=True):
            x[:, ch] |= x[:, p] & (rng.random(n) < 0.6)
        error = np.full(n, rng.beta(2.0, 8.0))
        for combo in mine:
            error[x[:, combo].all(axis=1)] = 0.65
            planted += 1
        tags[idx] = x
        correct[idx] = rng.random(n) >= error
    return tags, labels, correct, planted


def same_tables(a, b) -> bool:
    ra, rb = a.to_pylist(), b.to_pylist()
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb, strict=True):
        for k, v in x.items():
            if isinstance(v, float):
                if not math.isclose(v, y[k], rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif v != y[k]:
                return False
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--tags", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-brute", action="store_true", help="skip the brute-force comparison")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    tags, labels, correct, planted = generate(args.images, args.classes, args.tags, args.seed)
    names = [f"tag{i:03d}" for i in range(args.tags)]
    print(f"generated {args.images:,} images x {args.tags} tags, {args.classes} classes, "
          f"{planted} planted combos in {time.perf_counter() - t0:.1f} s; "
          f"mean tags/image {tags.sum(1).mean():.2f}, accuracy {correct.mean():.3f}")  # fmt: skip
    rss_before = rss_mib()

    params = SliceParams()
    t0, cpu0 = time.perf_counter(), time.process_time()
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(args.classes + 1))
    n_slices = 0
    per_class = np.zeros(args.classes)
    for c in range(args.classes):
        tc = time.perf_counter()
        idx = order[bounds[c] : bounds[c + 1]]
        table = find_slices(tags[idx], correct[idx], names, params, class_name=f"class{c}")
        n_slices += table.num_rows
        per_class[c] = time.perf_counter() - tc
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"find_slices over all {args.classes} classes: {total:.2f} s wall, {cpu:.2f} s CPU "
          f"({1000 * per_class.mean():.2f} ms/class mean, {1000 * per_class.max():.1f} ms max), "
          f"{n_slices} slices")  # fmt: skip
    print(f"RSS before search {rss_before:.0f} MiB, peak RSS {peak_rss_mib():.0f} MiB")

    if args.no_brute:
        return
    class_sizes = np.diff(bounds)
    c = int(np.argmin(np.abs(class_sizes - np.median(class_sizes))))  # a median-size class
    idx = order[bounds[c] : bounds[c + 1]]
    x, ok = tags[idx], correct[idx]
    t_fast = math.inf
    for _ in range(5):  # best of 5: the pruned search takes milliseconds
        t0 = time.perf_counter()
        fast = find_slices(x, ok, names, params, class_name=f"class{c}")
        t_fast = min(t_fast, time.perf_counter() - t0)
    _, levels = slice_search._search(slice_search._check(x, ok, len(names)), params)
    t0 = time.perf_counter()
    brute = brute_force_slices(x, ok, names, params, class_name=f"class{c}")
    t_brute = time.perf_counter() - t0
    n_combos = sum(math.comb(args.tags, k) for k in range(1, params.max_tags + 1))
    n_supported = sum(len(r) for r in levels.rows)
    print(f"one class (class{c}, {len(idx)} images): pruned {1000 * t_fast:.1f} ms, "
          f"brute force {t_brute:.2f} s, ratio brute/pruned {t_brute / t_fast:.0f}x; "
          f"{levels.candidates:,} of {n_combos:,} tag sets counted, {n_supported} supported, "
          f"{fast.num_rows} slices; identical tables: {same_tables(fast, brute)}")  # fmt: skip


if __name__ == "__main__":
    main()
