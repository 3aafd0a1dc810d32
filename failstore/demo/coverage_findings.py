"""The demo report's coverage section: where do the target's attributions lie on the test split?

The demo knows where its shortcuts are: the bird shortcut is in the background (water), the
horse shortcut on the object (its colour), the small-dogs-on-snow shortcut in the background plus
the object's size. Its masks are exact. For two saliency methods, per class and per planted
slice (split into the slice's mistakes and its correct images), the mean soft saliency coverage
(the share of |attribution| on the object) with a bootstrap 95 % interval, and the case mix.

Two expectations are checked with a bootstrap interval of the difference of means:

* birds' attributions lie less on the object than horses' (soft SC bird - horse < 0);
* the misclassified small dogs on snow less than the correctly classified dogs.

They are reported as measured (holds / does not hold / undecided when the interval spans 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from failstore.demo.spec import PlantedSlice
from failstore.queries.framework.intervals import diff_ci
from failstore.store import Store, equals

METHODS = ("gradient", "grad_cam")
LEVEL = 0.95


@dataclass
class CoverageFinding:
    method: str
    group: str  # "bird" (a class) or "small dogs on snow: wrong" (a planted slice's part)
    images: int
    soft_sc: float | None
    low: float | None  # the 95 % bootstrap interval of the mean
    high: float | None
    cases: str  # "12 distractor, 3 confuser, ..." (most frequent first)

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CoverageCheck:
    method: str
    claim: str
    difference: float | None  # mean soft SC of the first group minus the second
    low: float | None
    high: float | None
    verdict: str  # holds | does not hold | undecided | no data

    def row(self) -> dict[str, Any]:
        return asdict(self)


def coverage_findings(
    store: Store,
    planted: Sequence[PlantedSlice],
    split: str = "test",
    methods: Sequence[str] = METHODS,
    log: Any = None,
) -> tuple[list[CoverageFinding], list[CoverageCheck]]:
    from failstore.queries.coverage.estimator import Coverage
    from failstore.queries.saliency.compute import SaliencyOptions, compute_saliency

    attrs = sorted({a for p in planted for a, _, _ in p.conditions})
    images = store.read("images", ["image_id", "label", *attrs], filter=equals("split", split))
    ids = images["image_id"].to_pylist()
    labels = np.asarray(images["label"].to_pylist(), dtype=object)
    values = {a: np.asarray(images[a].to_pylist(), dtype=object) for a in attrs}
    findings: list[CoverageFinding] = []
    checks: list[CoverageCheck] = []
    for method in methods:
        report = compute_saliency(store, SaliencyOptions(method=method, split=split,
                                                         batch_size=64))  # fmt: skip
        if log:
            log(f"saliency {method}: {report.computed} maps computed, {report.already} stored")
        rows = Coverage(method=method, split=split).fit(store).results_
        by_id = {i: k for k, i in enumerate(rows["image_id"].to_pylist())}
        soft = np.asarray(rows["soft_sc"].to_pylist(), dtype=np.float64)
        correct = np.asarray(rows["correct"].to_pylist(), dtype=bool)
        cases = np.asarray(rows["case"].to_pylist(), dtype=object)
        row_label = np.asarray(rows["label"].to_pylist(), dtype=object)

        for cls in sorted(set(row_label.tolist())):
            findings.append(_finding(method, cls, np.flatnonzero(row_label == cls), soft, cases))
        parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for p in planted:
            inside = np.array([by_id[i] for i, m in zip(ids, p.mask(labels, values), strict=True)
                               if m and i in by_id], dtype=np.int64)  # fmt: skip
            wrong, right = inside[~correct[inside]], inside[correct[inside]]
            parts[p.name] = (wrong, right)
            findings.append(_finding(method, f"{p.name}: wrong", wrong, soft, cases))
            findings.append(_finding(method, f"{p.name}: right", right, soft, cases))
        bird, horse = np.flatnonzero(row_label == "bird"), np.flatnonzero(row_label == "horse")
        checks.append(_check(method, "birds' attributions lie less on the object than horses'",
                             soft[bird], soft[horse]))  # fmt: skip
        dogs_right = np.flatnonzero((row_label == "dog") & correct)
        wrong_dogs = parts.get("small dogs on snow", (np.zeros(0, np.int64),))[0]
        checks.append(_check(method, "misclassified small dogs on snow less than correctly "
                             "classified dogs", soft[wrong_dogs], soft[dogs_right]))  # fmt: skip
    return findings, checks


def _finding(
    method: str, group: str, idx: np.ndarray, soft: np.ndarray, cases: np.ndarray
) -> CoverageFinding:
    from failstore.queries.coverage.scores import mean_ci

    mean, lo, hi = mean_ci(soft[idx]) if idx.size else (float("nan"),) * 3
    mix = ", ".join(f"{n} {c}" for c, n in Counter(cases[idx].tolist()).most_common())
    return CoverageFinding(method, group, int(idx.size), _num(mean), _num(lo), _num(hi), mix)


def _check(method: str, claim: str, a: np.ndarray, b: np.ndarray) -> CoverageCheck:
    d, lo, hi = diff_ci(a, b)
    if not np.isfinite(d):
        verdict = "no data"
    elif hi < 0:
        verdict = "holds"
    elif lo > 0:
        verdict = "does not hold"
    else:
        verdict = "undecided"
    return CoverageCheck(method, claim, _num(d), _num(lo), _num(hi), verdict)


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
