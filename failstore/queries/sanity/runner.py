"""The torch side of the debugging tests: attributions of a batch of images under a model, its
randomised copies or another model, compared per image (:func:`similarity.compare`).

Every attribution keeps its colour channels (``attribute(..., channels=True)``): the reference's
normalisations sum |m| or m over channels themselves. The explained class is the argmax of the
model being explained, recomputed for every randomised copy (the reference), or the label.
Each method is run on its own (methods outer, steps inner), so only one method's original
maps are held at a time, prepared once for the comparisons (``similarity.prepare``: their
normalisations, ranks, SSIM means and variances and HOG features). torch is imported inside
the functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from failstore.queries.sanity.similarity import (
    abs_norm,
    compare,
    prepare,
    spearman_rows,
    ssim_to_map,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

PixelStats = tuple[Sequence[float], Sequence[float]]


@dataclass
class Clock:
    """Where a test's time goes: attribution passes, the rest (copies, re-initialisation,
    explained classes, comparisons) is total minus these."""

    attribution_s: float = 0.0
    passes: int = 0  # attribution passes over the whole image batch
    started: float = field(default_factory=time.perf_counter)

    def total(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class StepFigures:
    """One comparison of a method's maps: per image figures (``similarity.METRICS``)."""

    method: str
    step: int
    layer: str | None
    layers: tuple[str, ...]
    explained: np.ndarray  # class index explained in the compared maps, per image
    figures: dict[str, np.ndarray]


def explained_classes(
    module: Any, x: torch.Tensor, explain: str, labels: np.ndarray, batch_size: int
) -> np.ndarray:
    """The class explained per image: the module's top class, or ``labels`` (indices)."""
    import torch

    if explain == "label":
        return np.asarray(labels, dtype=np.int64)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(module(x[i : i + batch_size]).argmax(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def attributions(
    module: Any,
    x: torch.Tensor,
    targets: np.ndarray,
    method: str,
    params: Mapping[str, Any],
    pixel_stats: PixelStats,
    batch_size: int,
    clock: Clock,
) -> np.ndarray:
    """``(N, C, H, W)`` float32 maps of ``method`` for class ``targets[i]`` of image i."""
    import torch

    from failstore.queries.saliency.methods import attribute

    t0 = time.perf_counter()
    parts = []
    for i in range(0, len(x), batch_size):
        target = torch.as_tensor(targets[i : i + batch_size], dtype=torch.long)
        parts.append(
            attribute(
                module,
                x[i : i + batch_size],
                target,
                method,
                dict(params),
                pixel_stats=pixel_stats,
                channels=True,
            )
        )
    clock.attribution_s += time.perf_counter() - t0
    clock.passes += 1
    return np.concatenate(parts)


def randomisation(
    module: Any,
    x: torch.Tensor,
    labels: np.ndarray,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    schedule: str,
    layers: Sequence[str],
    seed: int,
    explain: str,
    pixel_stats: PixelStats,
    batch_size: int,
    clock: Clock,
) -> Iterator[StepFigures]:
    """Model randomisation: for each method, its maps under the trained ``module`` against
    those under each step of ``schedule`` ('cascading': the top k blocks of ``layers``
    (bottom-up) re-initialised; 'independent': one block at a time)."""
    from failstore.queries.sanity.randomise import cascading, independent

    steps = cascading if schedule == "cascading" else independent
    for method, params in methods.items():
        t0 = explained_classes(module, x, explain, labels, batch_size)
        a0 = attributions(module, x, t0, method, params, pixel_stats, batch_size, clock)
        original = prepare(a0)  # its normalisations, ranks and SSIM blurs: once, not per step
        del a0
        for k, (done, copy) in enumerate(steps(module, layers, seed), start=1):
            t = explained_classes(copy, x, explain, labels, batch_size)
            a = attributions(copy, x, t, method, params, pixel_stats, batch_size, clock)
            yield StepFigures(method, k, done[-1], tuple(done), t, compare(original, a))


def model_vs_model(
    module: Any,
    x: torch.Tensor,
    labels: np.ndarray,
    other: Any,
    x_other: torch.Tensor,
    labels_other: np.ndarray,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    explain: str,
    stats: tuple[PixelStats, PixelStats],
    batch_size: int,
    clock: Clock,
) -> Iterator[StepFigures]:
    """The maps of the same images under two models (each explaining its own top class, or the
    label), compared per method."""
    for method, params in methods.items():
        t = explained_classes(module, x, explain, labels, batch_size)
        a = attributions(module, x, t, method, params, stats[0], batch_size, clock)
        t2 = explained_classes(other, x_other, explain, labels_other, batch_size)
        b = attributions(other, x_other, t2, method, params, stats[1], batch_size, clock)
        yield StepFigures(method, 0, None, (), t, compare(a, b))


def background_likeness(
    module: Any,
    x: torch.Tensor,
    labels: np.ndarray,
    background: np.ndarray,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    explain: str,
    pixel_stats: PixelStats,
    batch_size: int,
    clock: Clock,
) -> Iterator[StepFigures]:
    """Spurious correlation: each map against the ideal "background only" map ``background``
    ``(N, H, W)`` (1 off the object, 0 on it): ``ssim`` / ``ssim_range1`` =
    ``ssim_to_map(m, background)`` with data range 2 / 1, ``rank_abs`` = Spearman between
    ``abs_norm(m)`` and the background map; the other figures are NaN."""
    nan = np.full(len(x), np.nan)
    for method, params in methods.items():
        t = explained_classes(module, x, explain, labels, batch_size)
        a = attributions(module, x, t, method, params, pixel_stats, batch_size, clock)
        figures = {
            "rank_abs": spearman_rows(abs_norm(a), background),
            "rank_signed": nan,
            "ssim": ssim_to_map(a, background, data_range=2.0),
            "ssim_range1": ssim_to_map(a, background, data_range=1.0),
            "hog": nan,
        }
        yield StepFigures(method, 0, None, (), t, figures)
