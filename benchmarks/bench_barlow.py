"""Benchmark of Barlow's pure algorithm on groups of the ImageNet training shape, read from Lance.

    .venv/bin/python benchmarks/bench_barlow.py            # 100 classes x 1,300 images x 2,048
    .venv/bin/python benchmarks/bench_barlow.py --quick    # 10 classes

Synthetic data, written to a Lance dataset in a temporary directory by a child process (so the
peak RSS printed is the analysis's own): one row per image with ``label`` (int32), ``correct``
(bool) and ``features`` (fixed-size list of 2,048 float32), classes stored one after the other
as an ingest of class folders would. Features are non-negative like pooled ReLU activations
(about a third exact zeros); each class has a base error rate in [0.05, 0.35] and one planted
feature whose high values fail more often.

The timed loop does, per class: read only that class's rows and the two needed columns (a
filter on ``label``, a column projection), ``mutual_info`` over all 2,048 features, the top 20,
the depth-1 tree, leaf metrics and validity (``explain_group``'s steps, timed apart). Then
scikit-learn's ``mutual_info_classif`` runs on a few classes for the speed ratio and the check
that both agree. The noise matrix (1,300 x 2,048 normals) is drawn once and cached, since every
class has 1,300 images here; its cost is printed apart. Timings are printed, never asserted.
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

from failstore.queries.barlow import mutual_info as mi_module
from failstore.queries.barlow.explain import BarlowParams, default_threads, leaf_is_valid
from failstore.queries.barlow.mutual_info import mutual_info, select_top_k
from failstore.queries.barlow.tree import average_leaf_error_rate, fit_tree, leaf_metrics


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_class(rng: np.random.Generator, c: int, n: int, d: int):
    """Features (n x d float32), correct (n bools) of one synthetic class."""
    scale = rng.gamma(2.0, 0.5, size=d).astype(np.float32)
    x = np.maximum(rng.normal(0.45, 1.0, size=(n, d)).astype(np.float32), 0) * scale
    planted = int(rng.integers(d))
    base = rng.uniform(0.05, 0.35)
    high = x[:, planted] > np.quantile(x[:, planted], 0.7)
    p_fail = np.where(high, min(0.9, 2.5 * base), base * 0.5)
    return x, rng.random(n) >= p_fail


def write_store(path: str, classes: int, n: int, d: int, seed: int) -> None:
    import lance
    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field("label", pa.int32()),
            pa.field("correct", pa.bool_()),
            pa.field("features", pa.list_(pa.float32(), d)),
        ]
    )

    def batches():
        rng = np.random.default_rng(seed)
        for c in range(classes):
            x, correct = one_class(rng, c, n, d)
            values = pa.array(x.ravel(), type=pa.float32())
            yield pa.record_batch(
                [
                    pa.array(np.full(n, c, dtype=np.int32)),
                    pa.array(correct),
                    pa.FixedSizeListArray.from_arrays(values, d),
                ],
                schema=schema,
            )

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    lance.write_dataset(reader, path, schema=schema, max_rows_per_group=8192)


def read_class(ds, c: int, d: int):
    table = ds.to_table(columns=["features", "correct"], filter=f"label = {c}")
    values = table.column("features").combine_chunks().values.to_numpy(zero_copy_only=False)
    x = np.asarray(values, dtype=np.float32).reshape(-1, d)
    return x, ~table.column("correct").to_numpy(zero_copy_only=False)


def analyse(x: np.ndarray, fail: np.ndarray, params: BarlowParams, block: int, jobs: int):
    """explain_group's steps, timed apart: (MI seconds, tree+metrics seconds, valid leaves)."""
    t0 = time.perf_counter()
    mi = mutual_info(x, fail, random_state=params.random_state, block_size=block, n_jobs=jobs)
    t1 = time.perf_counter()
    selected = select_top_k(mi, params.top_k)
    tree = fit_tree(x, fail, selected, max_depth=params.max_depth, min_leaf=params.min_leaf)
    table = leaf_metrics(tree.member_leaf, fail).to_pydict()
    n, f = fail.size, int(fail.sum())
    average_leaf_error_rate(table["n"], table["failures"])
    valid = sum(
        leaf_is_valid(a, e, n, f, delta=params.delta, tau=params.tau)
        for a, e in zip(table["n"], table["failures"], strict=True)
    )
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, valid, mi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10 classes")
    ap.add_argument("--images", type=int, default=1300, help="images per class")
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--block", type=int, default=128, help="mutual_info block size")
    ap.add_argument(
        "--jobs", type=int, default=0, help="mutual_info threads (0: explain_group's default)"
    )
    ap.add_argument("--sklearn-classes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    classes = 10 if args.quick else args.classes
    n, d = args.images, args.features
    jobs = args.jobs or default_threads()
    import lance

    with tempfile.TemporaryDirectory(prefix="bench_barlow_") as tmp:
        path = str(Path(tmp) / "images.lance")
        t = time.perf_counter()
        child = mp.get_context("spawn").Process(
            target=write_store, args=(path, classes, n, d, args.seed)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("writing the Lance dataset failed")
        size_gib = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**30
        print(
            f"store: {classes} classes x {n} images x {d} float32 features, "
            f"{size_gib:.2f} GiB, written in {time.perf_counter() - t:.1f} s"
        )
        params = BarlowParams()
        ds = lance.dataset(path)
        x, fail = read_class(ds, 0, d)
        mutual_info(x[:, :8], fail)  # imports (scipy.special) outside the timings
        fit_tree(x[:, :2], fail, [0, 1])
        mi_module.clear_noise_cache()
        t = time.perf_counter()
        mi_module._noise(n, d, params.random_state)
        noise_s = time.perf_counter() - t
        rss_before = rss_mib()
        reads, mis, trees, valid, cpu = [], [], [], 0, time.process_time()
        wall = time.perf_counter()
        for c in range(classes):
            t = time.perf_counter()
            x, fail = read_class(ds, c, d)
            reads.append(time.perf_counter() - t)
            mi_s, tree_s, v, _ = analyse(x, fail, params, args.block, jobs)
            mis.append(mi_s)
            trees.append(tree_s)
            valid += v
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        per = wall / classes
        print(f"mutual information: {jobs} thread(s), blocks of {args.block} features")
        print(f"noise matrix ({n} x {d} normals, drawn once, cached): {noise_s:.3f} s")
        print(
            f"per class (mean over {classes}): read {np.mean(reads):.3f} s, "
            f"mutual information {np.mean(mis):.3f} s, tree + metrics {np.mean(trees):.3f} s; "
            f"total {per:.3f} s wall, {cpu / classes:.3f} s CPU"
        )
        print(
            f"per class (median): read {np.median(reads):.3f} s, MI {np.median(mis):.3f} s, "
            f"tree + metrics {np.median(trees):.3f} s"
        )
        print(
            f"projected 1,000 classes: {per * 1000 / 60:.1f} min "
            f"(target 10 min = 0.6 s per class); valid top leaves found: {valid}"
        )
        one = n * d * 4 / 2**20
        print(
            f"RSS before the loop {rss_before:.0f} MiB (libraries, noise matrix, one class), after "
            f"{rss_mib():.0f} MiB, peak {peak_rss_mib():.0f} MiB "
            f"(one class of float32 features: {one:.0f} MiB)"
        )
        if args.sklearn_classes:
            from sklearn.feature_selection import mutual_info_classif

            ratios, worst = [], 0.0
            for c in range(min(args.sklearn_classes, classes)):
                x, fail = read_class(ds, c, d)
                t = time.perf_counter()
                ours = mutual_info(x, fail, block_size=args.block, n_jobs=jobs)
                ours_s = time.perf_counter() - t
                t = time.perf_counter()
                ref = mutual_info_classif(
                    x, fail, discrete_features=False, n_neighbors=3, random_state=0
                )
                ref_s = time.perf_counter() - t
                worst = max(worst, float(np.abs(ours - ref).max()))
                same_top = select_top_k(ours, 20).tolist() == select_top_k(ref, 20).tolist()
                ratios.append(ref_s / ours_s)
                print(
                    f"class {c}: scikit-learn {ref_s:.1f} s, ours {ours_s:.3f} s "
                    f"(x{ref_s / ours_s:.0f}), max |diff| {np.abs(ours - ref).max():.1e}, "
                    f"same top 20: {same_top}"
                )
            print(f"scikit-learn / ours: x{np.mean(ratios):.0f}; max |diff| {worst:.1e}")


if __name__ == "__main__":
    main()
