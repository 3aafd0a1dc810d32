"""The paper's figures of a sanity run, drawn from its ``sanity_scores`` rows.

:func:`curve_table` reduces the per-image rows to the numbers plotted: per (test, method, step,
layer, group, metric) the mean over images and its standard error, undefined (NaN) comparisons
left out (as the ``sanity_curves`` query). :func:`curve_plots` draws one PNG per test present:

* ``cascading`` / ``independent``: one panel per metric, x = "original" (the trained model,
  1.0 by definition, not stored) then each step's randomised block in step order, one line per
  method with standard-error bars;
* ``spurious``: per metric defined for it (rank_abs, ssim, ssim_range1), bars per method of the
  suspected ("slice") and "control" groups;
* ``reference``: one panel per metric, one bar per method.

matplotlib (Agg backend) is imported inside :func:`curve_plots` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.queries.sanity.estimator import SPURIOUS_METRICS
from failstore.queries.sanity.similarity import METRICS

CURVES_SCHEMA = pa.schema(
    [
        pa.field("test", pa.string()),
        pa.field("method", pa.string()),
        pa.field("step", pa.int32()),
        pa.field("layer", pa.string()),
        pa.field("group", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("mean", pa.float64()),
        pa.field("sem", pa.float64()),
        pa.field("images", pa.int64()),
    ]
)
RANDOMISATION = ("cascading", "independent")
GROUPS = ("slice", "control")
PLOT_METRICS = ("rank_abs", "rank_signed", "ssim", "hog")


def _mean_sem(v: np.ndarray) -> tuple[float, float, int]:
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sem = float(v.std(ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")
    return mean, sem, n


def curve_table(scores: pa.Table, *, metrics: Sequence[str] = METRICS) -> pa.Table:
    """One row per (test, method, step, layer, group, metric) of ``scores``: ``mean`` and
    ``sem`` (sample std / sqrt(n)) over the images whose figure is defined, ``images`` = n.
    Rows keep the order of first appearance of test and method, then step and group."""
    cols = {c: scores[c].to_pylist() for c in ("test", "method", "step", "layer", "group")}
    keys = list(zip(*cols.values(), strict=True))
    first: dict[tuple[str, ...], int] = {}  # (test,) and (test, method): first appearance
    for k in keys:
        first.setdefault((k[0],), len(first))
        first.setdefault((k[0], k[1]), len(first))

    def rank(k: tuple[Any, ...]) -> tuple[Any, ...]:
        group = GROUPS.index(k[4]) if k[4] in GROUPS else len(GROUPS)
        return first[(k[0],)], first[(k[0], k[1])], k[2], group, str(k[3])

    order = sorted(set(keys), key=rank)
    index = {k: i for i, k in enumerate(order)}
    key_index = np.array([index[k] for k in keys], dtype=np.int64)
    values = {m: np.asarray(scores[m].to_numpy(zero_copy_only=False), np.float64) for m in metrics}
    rows: list[dict[str, Any]] = []
    for i, (test, method, step, layer, group) in enumerate(order):
        at = key_index == i
        for m in metrics:
            mean, sem, n = _mean_sem(values[m][at])
            rows.append(
                {"test": test, "method": method, "step": step, "layer": layer, "group": group,
                 "metric": m, "mean": mean, "sem": sem, "images": n}
            )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CURVES_SCHEMA)


def curve_plots(
    scores: pa.Table, out_dir: Path, *, metrics: Sequence[str] = PLOT_METRICS
) -> list[Path]:
    """Write ``<test>.png`` into ``out_dir`` for each test of ``scores``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = curve_table(scores, metrics=metrics).to_pylist()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for test in dict.fromkeys(r["test"] for r in table):
        rows = [r for r in table if r["test"] == test]
        shown = [m for m in metrics if test != "spurious" or m in SPURIOUS_METRICS]
        if not shown:
            continue
        fig, axes = plt.subplots(
            1, len(shown), figsize=(4.2 * len(shown), 4.4), squeeze=False, constrained_layout=True
        )
        for ax, metric in zip(axes[0], shown, strict=True):
            mine = [r for r in rows if r["metric"] == metric]
            if test in RANDOMISATION:
                _curves(ax, mine)
            elif test == "spurious":
                _group_bars(ax, mine)
            else:
                _bars(ax, mine)
            ax.set_title(metric)
            ax.grid(True, axis="y", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
        fig.suptitle(f"sanity: {test}")
        path = out_dir / f"{test}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _sem(r: dict[str, Any]) -> float:
    return float(r["sem"]) if np.isfinite(r["sem"]) else 0.0


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _curves(ax: Any, rows: list[dict[str, Any]]) -> None:
    """x = original, then each step's layer; one line per method with SEM bars."""
    steps = sorted({r["step"]: r["layer"] for r in rows}.items())
    where = {s: i + 1 for i, (s, _) in enumerate(steps)}
    for method in _methods(rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["step"])
        x = [0, *(where[r["step"]] for r in mine)]
        y = [1.0, *(r["mean"] for r in mine)]
        err = [0.0, *(_sem(r) for r in mine)]
        ax.errorbar(x, y, yerr=err, marker="o", markersize=3, capsize=2, label=method)
    ax.set_xticks(range(len(steps) + 1))
    ax.set_xticklabels(
        ["original", *(str(layer) for _, layer in steps)], rotation=60, ha="right", fontsize=8
    )
    ax.axhline(0.0, color="grey", linewidth=0.6)


def _group_bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Per method, a bar of each group (slice, control) with SEM bars."""
    methods = _methods(rows)
    width = 0.8 / len(GROUPS)
    for g, group in enumerate(GROUPS):
        got = {r["method"]: r for r in rows if r["group"] == group}
        x = [i + (g - (len(GROUPS) - 1) / 2) * width for i in range(len(methods))]
        y = [got[m]["mean"] if m in got else np.nan for m in methods]
        err = [_sem(got[m]) if m in got else 0.0 for m in methods]
        ax.bar(x, y, width, yerr=err, capsize=3, label=group)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)


def _bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """One bar per method with SEM bars."""
    methods = _methods(rows)
    for i, method in enumerate(methods):
        r = next(r for r in rows if r["method"] == method)
        ax.bar([i], [r["mean"]], 0.7, yerr=[_sem(r)], capsize=3, label=method)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)


__all__ = ["CURVES_SCHEMA", "PLOT_METRICS", "curve_plots", "curve_table"]
