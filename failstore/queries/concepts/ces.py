"""Conceptual explanation scores (CES; Abid & Zou, "Meaningfully Explaining a Model's
Mistakes", Section 3) through a linear head. See docs/concepts.md.

The target model's head is linear: p(e) = softmax(e W^T + b) for a bottleneck embedding e
(m values), W (K x m), b (K). A concept is a unit direction v (its CAV). For an image with true
class y:

* step mode (the paper): CES(v) = p_y(e + delta v) - p_y(e);
* derivative mode (the limit delta -> 0, divided by delta): d/dt p_y(e + t v) at t = 0. With
  u = W v, z(t) = z + t u, so d log p_y / dt = u_y - sum_k p_k u_k and
  CES'(v) = p_y (u_y - sum_k p_k u_k). ``delta`` is not used.

Positive: moving the embedding towards the concept raises the probability of the true class
(the image "needs more" of it); negative: moving away would.

Computation (``ces_scores``): u = V W^T is computed once for all concepts (C x K). The perturbed
logits of image n and concept c are l_n + delta u_c, so the softmax denominator is
sum_k exp(l_nk - max_n) exp(delta u_ck - max_c) times exp(max_n + max_c): a matrix product
A B^T of the row-shifted exponentials (N x K by K x C), in float64 by BLAS, per chunk of
images; no (N, C, K) array is ever made. Memory: about 8 x chunk x (3K + 4C) bytes besides the
inputs and the output. The product's largest term is at least
exp(-min(range of l_n, range of delta u_c)); when both ranges exceed 600 (logits spread by more
than 600 on one image, which trained heads do not do) the pair is recomputed exactly by a
log-sum-exp over its K logits, so no term that matters underflows. Matrix products run on
blocks of exactly 256 rows, so an image's scores are the same bits whatever the chunk and
whichever images are scored with it (BLAS chooses its kernel by shape).

Sets of images (``set_scores``): the paper sums the per-image differences. It then "normalises
to [-1, 1]" without saying how; ``normalise`` divides by the largest |score| over the concepts
("max_abs", the default: the paper's Fig. 2 turns normalisation off "to allow comparisons
across images", which fits a per-explanation rescaling); "mean" divides by the number of images
instead (in [-1, 1] in step mode, comparable across sets); "none" keeps the sums.

delta: the paper uses 10,000 at a SqueezeNet middle layer. Through a linear head, as delta
grows the perturbed softmax becomes one-hot at argmax_k u_ck, so CES -> 1[argmax_k u_ck = y] -
p_y(e): every concept whose direction favours y ties at 1 - p_y and the ranking no longer
depends on the image. ``default_delta`` puts delta on the scale of the bottleneck instead (the
spread of the embeddings along a typical direction), and ``rank`` reports ties.

Ranking (``rank``): by |score| descending, exact ties by the lower concept position; the report
lists every concept tied (within a relative 1e-9) with the last one shown, so a saturated
explanation is visible as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from failstore.errors import InputError
from failstore.queries.framework.params import Param, check_params

STEP, DERIVATIVE = "step", "derivative"
MAX_ABS, MEAN, NONE = "max_abs", "mean", "none"
_BLOCK = 256  # rows per matrix product: fixed, so that results do not depend on the chunk
_SAFE_RANGE = 600.0  # exp(-600) ~ 2.6e-261: far above float64's smallest normal (2.2e-308)

# The explanation's parameters, declared once: CESParams and the analysis that explains (and so
# the CLI) check them with these limits and messages.
CES_PARAMS: tuple[Param, ...] = (
    Param(
        "delta",
        None,
        "Step along each unit concept direction, in embedding units (step mode); default: the "
        "RMS standard deviation of the model's embedding coordinates.",
        kind=float,
        optional=True,
        low=1e-8,
    ),
    Param(
        "mode",
        STEP,
        "step: p_y(e + delta v) - p_y(e) (the paper); derivative: d p_y(e + t v)/dt at t = 0.",
        choices=(STEP, DERIVATIVE),
    ),
    Param(
        "normalise",
        MAX_ABS,
        "Scores of a set: max_abs divides the sums by the largest |sum|, mean by the number of "
        "images, none keeps the sums.",
        choices=(MAX_ABS, MEAN, NONE),
    ),
    Param("top", 3, "Report this many concepts, by |score|.", kind=int, low=1),
)


@dataclass(frozen=True)
class CESParams:
    delta: float | None = None
    mode: str = STEP
    normalise: str = MAX_ABS
    top: int = 3

    def __post_init__(self) -> None:
        checked = check_params(CES_PARAMS, {p.name: getattr(self, p.name) for p in CES_PARAMS})
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def ces_scores(
    embeddings: np.ndarray,
    classes: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    directions: np.ndarray,
    *,
    delta: float | None = None,
    mode: str = STEP,
    chunk: int = 2048,
) -> np.ndarray:
    """Raw CES (N x C float64) of N images (embeddings N x m, true classes N indices into the
    head's K rows) for C concepts (``directions`` C x m, unit length, e.g. ``kept_directions``)
    through the head ``weight`` (K x m), ``bias`` (K). ``delta`` (> 0) is required in step mode
    and ignored in derivative mode.

    ``chunk`` images are processed at a time (rounded up to a multiple of 256); it changes
    memory and speed, never the result: the matrix products run on blocks of exactly 256 rows
    (the last one padded), so an image's scores are the same bits whatever the chunk and
    whichever other images are scored with it."""
    e, y, w, b, v = _check(embeddings, classes, weight, bias, directions)
    if mode not in (STEP, DERIVATIVE):
        raise InputError(f"mode must be {STEP!r} or {DERIVATIVE!r}, got {mode!r}")
    if mode == STEP and (delta is None or not np.isfinite(delta) or not delta > 0):
        raise InputError(f"step mode needs a finite delta > 0, got {delta!r}")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    n, c = e.shape[0], v.shape[0]
    out = np.empty((n, c), dtype=np.float64)
    if n == 0 or c == 0:
        return out
    u = v @ w.T  # (C, K): the logit change per unit step along each concept
    if mode == STEP:
        du = float(delta) * u  # type: ignore[arg-type]
        top_c = du.max(axis=1)
        b_exp = np.exp(du - top_c[:, None])  # (C, K), every row's max is 1
        wide_c = np.flatnonzero(top_c - du.min(axis=1) > _SAFE_RANGE)
    step = -(-chunk // _BLOCK) * _BLOCK
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        yy = y[rows]
        logits, a_exp, total = _softmax_parts(e[rows], w, b)
        at = np.arange(yy.size)
        base = a_exp[at, yy] / total
        if mode == DERIVATIVE:
            expected = _block_product(a_exp, u.T) / total[:, None]  # sum_k p_k u_ck
            out[rows] = base[:, None] * (u[:, yy].T - expected)
            continue
        denominator = _block_product(a_exp, b_exp.T)  # (n, C)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 only on wide pairs
            stepped = (a_exp[at, yy][:, None] * b_exp[:, yy].T) / denominator
        wide_n = np.flatnonzero(logits.max(axis=1) - logits.min(axis=1) > _SAFE_RANGE)
        if wide_n.size and wide_c.size:
            exact = _exact_step(logits[wide_n], yy[wide_n], du[wide_c])
            stepped[np.ix_(wide_n, wide_c)] = exact
        out[rows] = stepped - base[:, None]
    return out


def true_class_probability(
    embeddings: np.ndarray,
    classes: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    chunk: int = 2048,
) -> np.ndarray:
    """p_y(e) for each image (N float64), the same bits as the p_y(e) inside ``ces_scores``:
    the saturated score 1 - p_y is what every concept favouring y reaches when delta is very
    large."""
    w = np.asarray(weight)
    e, y, w, b, _ = _check(embeddings, classes, w, bias, np.zeros((0, w.shape[-1])))
    out = np.empty(e.shape[0], dtype=np.float64)
    step = -(-max(1, chunk) // _BLOCK) * _BLOCK
    for start in range(0, e.shape[0], step):
        rows = slice(start, min(e.shape[0], start + step))
        _, a_exp, total = _softmax_parts(e[rows], w, b)
        out[rows] = a_exp[np.arange(total.size), y[rows]] / total
    return out


def default_delta(embeddings: np.ndarray) -> float:
    """The default step: the root mean square of the embedding coordinates' standard
    deviations, sqrt(trace(Cov(E)) / m), i.e. the spread of the data along a typical direction,
    so that delta v moves an embedding by an in-distribution amount.

    Pass the embeddings of the whole dataset (or a large sample), not only the images being
    explained, so that every explanation of a model uses the same delta.

    Measured on the demo's target model (96-d, a full demo store, 6 tag CAVs kept): the default
    is 1.2; the planted cause was in the top 3 of single mistakes as often (birds 1.00, small
    dogs on snow 0.93, horses 1.00) for any delta from 0.001 to 4.8, and as in derivative mode;
    at 9.9 (the median distance to the mean) small dogs fell to 0.32, at 15.9 (the median norm)
    to 0.05, and at 10,000 to 0.00 with every ranking tied."""
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] < 1:
        raise InputError(f"default_delta needs at least 2 embeddings (N x m), got {e.shape}")
    if not np.isfinite(e).all():
        raise InputError("embeddings hold NaN or infinite values")
    total = 0.0
    width = max(
        1, (1 << 22) // e.shape[0]
    )  # column blocks of ~4M values: float64 copies stay small
    for start in range(0, e.shape[1], width):
        block = e[:, start : start + width].astype(np.float64)
        total += float(block.var(axis=0).sum())
    delta = float(np.sqrt(total / e.shape[1]))
    if not delta > 0:
        raise InputError("the embeddings are all equal: pass delta explicitly")
    return delta


def set_scores(raw: np.ndarray) -> np.ndarray:
    """The paper's scores of a set of images: the sum over images of their raw scores (N x C ->
    C float64)."""
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 2:
        raise InputError(f"raw scores must be images x concepts, got shape {r.shape}")
    return r.sum(axis=0)


def normalise(summed: np.ndarray, how: str = MAX_ABS, *, n_images: int | None = None) -> np.ndarray:
    """Scores of a set in [-1, 1]: "max_abs" divides by the largest |score| (all zeros stay
    zeros), "mean" by ``n_images`` (required), "none" returns a copy."""
    s = np.array(summed, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise InputError("scores hold NaN or infinite values")
    if how == NONE:
        return s
    if how == MEAN:
        if n_images is None or n_images < 1:
            raise InputError(f"mean normalisation needs n_images >= 1, got {n_images!r}")
        return s / n_images
    if how != MAX_ABS:
        raise InputError(f"how must be one of {MAX_ABS!r}, {MEAN!r}, {NONE!r}, got {how!r}")
    largest = float(np.abs(s).max()) if s.size else 0.0
    return s / largest if largest > 0 else np.zeros_like(s)


@dataclass(frozen=True)
class Ranking:
    """The top concepts of an explanation. ``order``: concept positions, best first (|score|
    descending, exact ties by lower position first); ``scores``: their signed scores; ``tied``:
    every concept whose |score| ties with the last one shown (within ``rtol``), itself included,
    ascending. ``ambiguous``: some of them are left out, so which concepts are shown depends on
    the tie rule (typical of a saturating delta)."""

    order: np.ndarray
    scores: np.ndarray
    tied: np.ndarray

    @property
    def ambiguous(self) -> bool:
        return bool(np.setdiff1d(self.tied, self.order).size)


def rank(scores: np.ndarray, top: int = 3, *, rtol: float = 1e-9) -> Ranking:
    """The ``top`` concepts by |score| (fewer when there are fewer), with the tie report."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if top < 1:
        raise InputError(f"top must be >= 1, got {top}")
    if not np.isfinite(s).all():
        raise InputError("scores hold NaN or infinite values")
    size = np.abs(s)
    order = np.lexsort((np.arange(s.size), -size))[:top]
    if order.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Ranking(empty, np.zeros(0), empty)
    cut = size[order[-1]]
    tied = np.flatnonzero(np.abs(size - cut) <= rtol * cut)
    return Ranking(order.astype(np.int64), s[order], tied.astype(np.int64))


# ----------------------------------------------------------------------------- internals


def _softmax_parts(
    e: np.ndarray, w: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits l = e W^T + b (float64), a = exp(l - max_k l) (every row's max is 1), sum_k a."""
    logits = _block_product(e, w.T)
    logits += b
    a_exp = np.exp(logits - logits.max(axis=1)[:, None])
    return logits, a_exp, a_exp.sum(axis=1)


def _block_product(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a @ bt in float64, on blocks of exactly _BLOCK rows of a (the last one zero-padded): BLAS
    picks its kernel by shape, so fixed shapes give every row the same bits whatever the number
    of rows."""
    n = a.shape[0]
    out = np.empty((n, bt.shape[1]), dtype=np.float64)
    for s in range(0, n, _BLOCK):
        part = a[s : s + _BLOCK]
        if part.shape[0] == _BLOCK:
            out[s : s + _BLOCK] = part.astype(np.float64, copy=False) @ bt
        else:
            padded = np.zeros((_BLOCK, a.shape[1]), dtype=np.float64)
            padded[: part.shape[0]] = part
            out[s:] = (padded @ bt)[: part.shape[0]]
    return out


def _exact_step(logits: np.ndarray, y: np.ndarray, du: np.ndarray) -> np.ndarray:
    """p_y(l + delta u) by a log-sum-exp over the K logits of every (image, concept) pair:
    logits (n x K), du (C x K) -> (n x C). Blocks of at most ~2^22 values."""
    n, k = logits.shape
    out = np.empty((n, du.shape[0]))
    per = max(1, (1 << 22) // max(1, k * du.shape[0]))
    for s in range(0, n, per):
        z = logits[s : s + per, None, :] + du[None, :, :]  # (b, C, K)
        top = z.max(axis=2, keepdims=True)
        lse = np.log(np.exp(z - top).sum(axis=2)) + top[:, :, 0]
        zy = z[np.arange(z.shape[0])[:, None], np.arange(z.shape[1])[None, :], y[s : s + per, None]]
        out[s : s + per] = np.exp(zy - lse)
    return out


def _check(embeddings, classes, weight, bias, directions):
    e = np.asarray(embeddings)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    v = np.asarray(directions, dtype=np.float64)
    y = np.asarray(classes)
    if e.ndim != 2 or w.ndim != 2 or v.ndim != 2:
        raise InputError(
            f"embeddings {e.shape}, weight {w.shape} and directions {v.shape} must be 2-D"
        )
    k, m = w.shape
    if e.shape[1] != m or v.shape[1] != m or b.shape != (k,):
        raise InputError(
            f"embeddings {e.shape}, weight {w.shape}, bias {b.shape} and directions {v.shape} "
            "do not match (N x m, K x m, K, C x m)"
        )
    if y.shape != (e.shape[0],) or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise InputError(f"classes must be {e.shape[0]} class indices, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise InputError(f"classes must be indices into the head's {k} classes")
    for name, a in (("embeddings", e), ("weight", w), ("bias", b), ("directions", v)):
        if not np.isfinite(a).all():
            raise InputError(f"{name} hold NaN or infinite values")
    return e, y.astype(np.int64), w, b, v
