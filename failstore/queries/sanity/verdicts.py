"""The rows a sanity run writes, and the verdict per method (pure: arrays and tables in and out).

Verdicts, on the run's ``metric`` (mean over images, NaN images left out):

* cascading: the mean after the last step (the whole schedule randomised). A method whose maps
  stay at least ``threshold``-similar to the trained model's **fails**: its maps do not depend
  on what the model learned. Otherwise it **passes**.
* independent: the lowest mean over the single-block steps. A method that stays at least
  ``threshold``-similar whichever block alone is randomised **fails**; otherwise it **passes**.
* spurious: mean on the suspected images minus mean on the control images, with a 95 %
  bootstrap interval: **shows the shortcut** when the interval lies above 0 (the maps look
  more like the background there), **does not show it** when at or below 0, else
  **undecided**.
* reference: the mean over images; **tells them apart** below ``threshold``, else **does not
  tell them apart**.

A verdict whose figure is NaN (every map degenerate: constant, or nearly all one value) is
**untestable**, with the reason. Images chosen but not compared (their file changed since the
ingest or cannot be decoded; for spurious, no mask or boxes) are counted in every reason, with
why ("; 3 images skipped: the file changed since it was ingested").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.queries.framework.intervals import diff_ci, mean_ci
from failstore.queries.sanity.similarity import METRICS

SCORES_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("method", pa.string()),
        pa.field("test", pa.string()),
        pa.field("step", pa.int32()),
        pa.field("layer", pa.string()),
        pa.field("layers", pa.list_(pa.string())),
        pa.field("group", pa.string()),
        pa.field("reference_model", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("explained", pa.string()),
        *[pa.field(m, pa.float64()) for m in METRICS],
    ]
)
VERDICTS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("method", pa.string()),
        pa.field("settings", pa.string()),
        pa.field("test", pa.string()),
        pa.field("reference_model", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("figure", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("sem", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("images", pa.int64()),
        pa.field("verdict", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
VERDICTS = {
    "cascading": ("passes", "fails"),
    "independent": ("passes", "fails"),
    "spurious": ("shows the shortcut", "does not show it", "undecided"),
    "reference": ("tells them apart", "does not tell them apart"),
}
UNTESTABLE = "untestable"


def score_rows(
    params: Mapping[str, Any],
    steps: Sequence[tuple[str | None, Any, Sequence[Any]]],
    class_names: Sequence[str],
) -> pa.Table:
    """One row per (method, step, image) of ``steps``: (group, pixels, [StepFigures])."""
    cols: dict[str, list[Any]] = {f.name: [] for f in SCORES_SCHEMA}
    for group, px, found in steps:
        n = len(px.ids)
        for f in found:
            names = [class_names[k] if 0 <= k < len(class_names) else None for k in f.explained]
            fixed = {
                "model": params["model"],
                "method": f.method,
                "test": params["test"],
                "step": f.step,
                "layer": f.layer,
                "layers": list(f.layers) if f.layers else None,
                "group": group,
                "reference_model": params["reference_model"],
            }
            for k, v in fixed.items():
                cols[k].extend([v] * n)
            cols["image_id"].extend(px.ids)
            cols["label"].extend(px.labels)
            cols["explained"].extend(names)
            for m in METRICS:
                cols[m].extend(np.asarray(f.figures[m], np.float64).tolist())
    return pa.table(
        {k: pa.array(v, SCORES_SCHEMA.field(k).type) for k, v in cols.items()}, schema=SCORES_SCHEMA
    )


def verdicts(
    params: Mapping[str, Any], scores: pa.Table, skipped: Sequence[tuple[str, str]] = ()
) -> pa.Table:
    """One verdict per method of the run (see the module docstring); ``skipped``: the
    (image_id, why) of the chosen images that were not compared, noted in every reason."""
    note = skipped_note(skipped)
    metric, threshold, test = params["metric"], float(params["threshold"]), params["test"]
    method_col = np.asarray(scores["method"].to_pylist(), dtype=object)
    step_col = scores["step"].to_numpy()
    values = np.asarray(scores[metric].to_numpy(zero_copy_only=False), np.float64)
    group_col = np.asarray(scores["group"].to_pylist(), dtype=object)
    layer_col = np.asarray(scores["layer"].to_pylist(), dtype=object)
    rows = []
    for method in params["methods"]:
        mine = method_col == method
        row: dict[str, Any] = {
            "model": params["model"],
            "method": method,
            "test": test,
            "settings": json.dumps(params["settings"][method], sort_keys=True),
            "reference_model": params["reference_model"],
            "metric": metric,
            "threshold": threshold if test != "spurious" else None,
        }
        if test == "spurious":
            a = values[mine & (group_col == "slice")]
            b = values[mine & (group_col == "control")]
            row.update(_spurious(a, b, metric))
        elif test == "independent":
            means = {}
            for s in sorted(set(step_col[mine].tolist())):
                at = mine & (step_col == s)
                means[s] = (
                    float(np.nanmean(values[at]))
                    if np.isfinite(values[at]).any()
                    else float("nan"),
                    str(layer_col[at][0]),
                )
            finite = {s: v for s, v in means.items() if np.isfinite(v[0])}
            low_step = min(finite, key=lambda s: finite[s][0]) if finite else None
            at = mine & (step_col == low_step) if low_step is not None else mine
            row.update(
                _against(
                    values[at],
                    threshold,
                    "independent",
                    means[low_step][1] if low_step is not None else None,
                )
            )
        elif test == "cascading":
            last = int(step_col[mine].max()) if mine.any() else 0
            step = min(int(params.get("verdict_step") or last), last)
            at = mine & (step_col == step)
            layer = str(layer_col[at][0]) if at.any() else None
            row.update(_against(values[at], threshold, test, layer, step, last))
            row["reason"] += _stays(values, step_col, layer_col, mine, threshold, last)
        else:
            row.update(_against(values[mine], threshold, test, None))
        row["reason"] += note
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA)


def skipped_note(skipped: Sequence[tuple[str, str]]) -> str:
    """'; 3 images skipped: the file changed since it was ingested', or with several reasons
    '; 3 images skipped: the file changed since it was ingested (2), file not found (1)'; an
    image is counted once (the first reason given for it); '' when none was skipped."""
    why_of: dict[str, str] = {}
    for image_id, why in skipped:
        why_of.setdefault(image_id, why)
    if not why_of:
        return ""
    n = len(why_of)
    counts = Counter(why_of.values()).most_common()
    whys = counts[0][0] if len(counts) == 1 else ", ".join(f"{w} ({k})" for w, k in counts)
    return f"; {n} image{'s' if n != 1 else ''} skipped: {whys}"


def _sem(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size >= 2 else float("nan")


def _stays(
    values: np.ndarray,
    steps: np.ndarray,
    layers: np.ndarray,
    mine: np.ndarray,
    threshold: float,
    last: int,
) -> str:
    """'; it stays >= 0.5 through 4 of 7 steps (down to features.3)': how far down the curve
    keeps the threshold."""
    kept, down_to = 0, None
    for s in range(1, last + 1):
        at = mine & (steps == s)
        v = values[at]
        if not np.isfinite(v).any() or float(np.nanmean(v)) < threshold:
            break
        kept, down_to = s, str(layers[at][0])
    where = f" (down to {down_to})" if down_to else ""
    return f"; it stays >= {threshold:g} through {kept} of {last} steps{where}"


def _against(
    v: np.ndarray, threshold: float, test: str, layer: str | None, step: int = 0, last: int = 0
) -> dict[str, Any]:
    mean, low, high = mean_ci(v)
    finite = int(np.isfinite(v).sum())
    out = {
        "figure": _num(mean),
        "low": _num(low),
        "high": _num(high),
        "sem": _num(_sem(v)),
        "images": finite,
    }
    if not finite:
        return {
            **out,
            "verdict": UNTESTABLE,
            "reason": f"all {v.size} comparisons are undefined (constant or nearly constant maps)",
        }
    similar = mean >= threshold
    if test == "reference":
        verdict = VERDICTS["reference"][1 if similar else 0]
        reason = f"mean {mean:.3f} {'>=' if similar else '<'} {threshold:g} over {finite} images"
    elif test == "cascading":
        verdict = VERDICTS["cascading"][1 if similar else 0]
        after = (
            "the whole model is randomised"
            if step == last
            else f"the top {step} of {last} blocks are randomised (down to {layer})"
        )
        reason = (
            f"after {after} its maps keep a mean of {mean:.3f} "
            f"({'>=' if similar else '<'} {threshold:g}) over {finite} images"
        )
    else:
        verdict = VERDICTS["independent"][1 if similar else 0]
        reason = (
            f"randomising {layer} alone changes it most: mean {mean:.3f} "
            f"({'>=' if similar else '<'} {threshold:g}) over {finite} images"
        )
    skipped = v.size - finite
    if skipped:
        reason += f"; {skipped} undefined comparisons left out"
    return {**out, "verdict": verdict, "reason": reason}


def _spurious(a: np.ndarray, b: np.ndarray, metric: str) -> dict[str, Any]:
    d, low, high = diff_ci(a, b)
    na, nb = int(np.isfinite(a).sum()), int(np.isfinite(b).sum())
    out = {"figure": _num(d), "low": _num(low), "high": _num(high), "sem": None, "images": na + nb}
    if not np.isfinite(d):
        return {
            **out,
            "verdict": UNTESTABLE,
            "reason": f"too few defined comparisons: {na} suspected, {nb} control",
        }
    ma, mb = float(np.nanmean(a)), float(np.nanmean(b))
    verdict = "shows the shortcut" if low > 0 else "does not show it" if high <= 0 else "undecided"
    reason = (
        f"{metric} to the background-only map: {ma:.3f} on {na} suspected images, "
        f"{mb:.3f} on {nb} control images; difference {d:+.3f} "
        f"[{low:+.3f}, {high:+.3f}]"
    )
    return {**out, "verdict": verdict, "reason": reason}


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
