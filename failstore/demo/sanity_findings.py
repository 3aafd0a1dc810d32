"""The demo report's sanity section: which attribution methods can be trusted on the target?

Two of Adebayo et al.'s debugging tests on the test split (``Sanity``, docs/sanity.md):

* cascading model randomisation of gradient, integrated gradients and guided backprop over
  ``IMAGES`` images: the paper's finding is that gradient and IG lose their similarity as the
  layers are re-initialised, while guided backprop keeps it (it is flagged);
* one curve comparison: guided backprop against the gradient after the top half of the blocks
  are randomised (the paper: modified backprop is invariant to the higher layers);
* spurious background on the bird shortcut: gradient and Grad-CAM maps of the planted bird
  slice (birds away from water, where the model fails) against the ideal background-only map,
  beside control birds (on water).

Each expectation is reported as measured (holds / does not hold), with its figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from failstore.demo.spec import PlantedSlice
from failstore.store import Store

METHODS = ("gradient", "integrated_gradients", "guided_backprop")
IMAGES = 40  # per test group; the cascading test costs (steps + 1) attribution passes per method
EXPECTED = {"gradient": "passes", "integrated_gradients": "passes", "guided_backprop": "fails"}
SHORTCUT_CLASS = "bird"


@dataclass
class SanityFinding:
    test: str
    method: str
    metric: str
    figure: float | None
    low: float | None
    high: float | None
    verdict: str
    expected: str
    holds: bool
    reason: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def sanity_findings(
    store: Store, planted: Sequence[PlantedSlice], split: str = "test", log: Any = None
) -> list[SanityFinding]:
    """The verdicts against their expectations, and one curve comparison (see the module
    docstring); each as measured."""
    from failstore.queries.framework.intervals import diff_ci
    from failstore.queries.sanity import Sanity

    out: list[SanityFinding] = []
    cascade = Sanity(methods=list(METHODS), split=split, images=IMAGES).fit(store)
    for v in cascade.results_.to_pylist():
        out.append(_finding(v, EXPECTED.get(v["method"], "passes")))
    # the paper's finding is about the higher layers: compare guided backprop with the gradient
    # after the top half of the blocks are randomised, image by image
    scores = cascade.read_table(store, "sanity_scores", ["method", "step", "layer", "rank_abs"])
    steps = np.asarray(scores["step"].to_numpy())
    methods = np.asarray(scores["method"].to_pylist(), dtype=object)
    half = int(np.ceil(steps.max() / 2)) if steps.size else 0
    at = steps == half
    values = np.asarray(scores["rank_abs"].to_numpy(zero_copy_only=False), np.float64)
    gbp, grad = values[at & (methods == "guided_backprop")], values[at & (methods == "gradient")]
    d, lo, hi = diff_ci(gbp, grad)
    layer = scores["layer"].filter(at)[0].as_py() if at.any() else "-"
    verdict = "holds" if lo > 0 else "does not hold" if hi <= 0 else "undecided"
    out.append(SanityFinding(
        test="cascading", method="guided_backprop - gradient", metric="rank_abs",
        figure=_num(d), low=_num(lo), high=_num(hi), verdict=verdict, expected="holds",
        holds=verdict == "holds",
        reason=f"after the top {half} blocks (down to {layer}) are randomised, guided backprop "
        f"keeps {np.nanmean(gbp):.3f} of its ranking, the gradient {np.nanmean(grad):.3f}",
    ))  # fmt: skip
    bird = [p for p in planted if SHORTCUT_CLASS in p.classes]
    if bird:
        spurious = Sanity(methods=["gradient", "grad_cam"], test="spurious", split=split,
                          images=IMAGES, where=bird[0].where("label"),
                          classes=[SHORTCUT_CLASS]).fit(store)  # fmt: skip
        for v in spurious.results_.to_pylist():
            out.append(_finding(v, "shows the shortcut"))
    if log:
        log(f"sanity: {sum(f.holds for f in out)} of {len(out)} expectations hold")
    return out


def _finding(v: dict[str, Any], expected: str) -> SanityFinding:
    return SanityFinding(
        test=v["test"], method=v["method"], metric=v["metric"], figure=v["figure"],
        low=v["low"], high=v["high"], verdict=v["verdict"], expected=expected,
        holds=v["verdict"] == expected, reason=v["reason"] or "",
    )  # fmt: skip


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
