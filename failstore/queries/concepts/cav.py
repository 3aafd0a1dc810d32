"""Concept activation vectors (CAVs): a linear SVM per concept separating the bottleneck
embeddings of its positive examples from its negative ones (Kim et al. 2018, as used by Abid &
Zou for CES). See docs/concepts.md.

``train_cav(positives, negatives)`` trains one from two arrays of embeddings;
``train_cavs(embeddings, examples)`` trains many from row indices into one embedding matrix
(``examples.tag_examples`` builds them for the tag source).

How a CAV is trained:

* the examples are stacked, positives labelled 1 and negatives 0, and split once by
  ``sklearn.model_selection.train_test_split(test_size=holdout, stratify=labels,
  random_state=seed)`` (default 30 % held out, seed 0). The paper keeps "a hold-out validation
  set" without saying how it is drawn; the reference code takes the first 50 of each side in
  file order for training, which depends on file order, hence the stratified random split.
* the SVM is libsvm's C-SVM with a linear kernel, scikit-learn's ``SVC(kernel="linear", C=C)``
  as in the reference code. It is fitted as ``SVC(kernel="precomputed", C=C)`` on the Gram
  matrix X X^T of the training rows (float64, one BLAS product): libsvm solves the same dual
  problem, and the normal ``sum_i dual_coef_i x_i`` and ``intercept_`` equal the linear fit's
  ``coef_`` and ``intercept_`` to ~1e-14 (relative), about 5 times faster (libsvm's own linear
  kernel is a plain loop over the coordinates). ``LinearSVC`` (liblinear) was measured and not
  used: it penalises the intercept and by default the squared hinge, and its directions
  differed (cosine 0.97-0.99 on 1,280-d data).
* C = 0.001 by default: the C the reference README uses (its code builds one bank for each C in
  1e-5 ... 1). The paper does not give C.
* the sign: positives are label 1, so the CAV is ``+coef`` and points from the negatives to the
  positives (decision > 0 on the positive side). TCAV and Captum label the concept 0 and return
  ``-coef`` for the same reason; mixing the two conventions flips the sign of every CES.
* a normal of length 0, or below 1e-10 of its bound sum_i |alpha_i| max_i ||x_i|| (rounding
  noise: positives and negatives that cannot be told apart), is "degenerate: zero normal".
* ``direction`` is the unit normal (float32); ``bias`` is the intercept of the unit-normalised
  decision function ``direction . x + bias``; ``norm`` the L2 norm of the raw normal.
  Accuracies are of that stored hyperplane: a row counts as positive when
  ``x . direction + bias > 0`` (float64 arithmetic on the float32 direction).
* kept when the held-out accuracy >= ``min_accuracy`` (0.7, the paper's threshold; the reference
  code never filters), compared exactly: accuracy is a ratio of counts and 0.7 is read as 7/10.
  A dropped CAV says why in ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from failstore.errors import InputError
from failstore.queries.concepts.examples import ConceptExamples, cap, indices
from failstore.queries.framework.params import Param, check_params

# The concept bank's parameters, declared once: BankParams and the analysis that builds a bank
# (and so the CLI) check them with these limits and messages.
BANK_PARAMS: tuple[Param, ...] = (
    Param(
        "C",
        0.001,
        "The linear SVM's C (the CES reference code's README uses 0.001).",
        kind=float,
        low=1e-8,
        flag="--svm-c",
    ),
    Param(
        "holdout",
        0.3,
        "Share of each concept's examples held out (stratified) to measure its accuracy.",
        kind=float,
        low=0.05,
        high=0.95,
    ),
    Param(
        "min_accuracy",
        0.7,
        "Keep a concept when its held-out accuracy is at least this (the paper: 0.7).",
        kind=float,
        low=0,
        high=1,
    ),
    Param(
        "max_examples",
        500,
        "At most this many positives (and as many negatives) per concept, sampled with the seed.",
        kind=int,
        low=2,
    ),
    Param("seed", 0, "Seed of the example sampling and of the hold-out split.", kind=int, low=0),
)

FEWER_THAN_TWO = "fewer than 2 examples of each side"
_DEGENERATE = 1e-10  # a normal shorter than this share of its bound counts as zero
ZERO_NORMAL = "degenerate: zero normal"


@dataclass(frozen=True)
class BankParams:
    C: float = 0.001
    holdout: float = 0.3
    min_accuracy: float = 0.7
    max_examples: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        checked = check_params(BANK_PARAMS, {p.name: getattr(self, p.name) for p in BANK_PARAMS})
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class CAV:
    """One trained (or refused) concept activation vector.

    ``direction``: unit normal (m,) float32 pointing to the positives (all zeros when dropped
    before or by the fit); ``bias``: intercept of ``direction . x + bias``; ``norm``: L2 norm of
    the SVM's raw normal; ``n_pos``/``n_neg``: examples used (after sampling); ``n_train``/
    ``n_val``: sizes of the split; accuracies None when no SVM was fitted; ``kept``: held-out
    accuracy >= min_accuracy; ``reason``: why it was dropped (None when kept)."""

    direction: np.ndarray
    bias: float
    norm: float
    C: float
    n_pos: int
    n_neg: int
    n_train: int
    n_val: int
    train_accuracy: float | None
    val_accuracy: float | None
    kept: bool
    reason: str | None


def train_cav(
    positives: np.ndarray,
    negatives: np.ndarray,
    *,
    C: float = 0.001,
    holdout: float = 0.3,
    seed: int = 0,
    min_accuracy: float = 0.7,
) -> CAV:
    """Train one CAV from the embeddings of its positive (P x m) and negative (Q x m) examples
    (any float dtype; computed in float64). Rows are used in the order given."""
    pos = _matrix(positives, "positives")
    neg = _matrix(negatives, "negatives")
    if pos.shape[1] != neg.shape[1]:
        raise InputError(f"positives have {pos.shape[1]} columns but negatives {neg.shape[1]}")
    return _fit(pos, neg, C=C, holdout=holdout, seed=seed, min_accuracy=min_accuracy)


def train_cavs(
    embeddings: np.ndarray,
    examples: Sequence[ConceptExamples | tuple[Any, Any]],
    *,
    C: float = 0.001,
    holdout: float = 0.3,
    seed: int = 0,
    min_accuracy: float = 0.7,
    max_examples: int | None = 500,
    n_jobs: int = 1,
) -> list[CAV]:
    """One CAV per concept, in the order of ``examples``: each a ``ConceptExamples`` or a pair
    (positives, negatives) of row indices into ``embeddings`` (N x m) or boolean masks of N.

    Each side is capped at ``max_examples`` rows (None: no cap), a subset drawn without
    replacement by ``numpy.random.default_rng((seed, i))`` for concept i and kept in index
    order; then ``train_cav`` with the same C, holdout, seed and min_accuracy. A refused
    concept gets a dropped CAV with its reason, without a fit.

    ``n_jobs`` threads train concepts side by side; the result does not depend on it. The Gram
    matrix product, most of the time, already uses every core through BLAS: on a 2-core machine
    2 threads were slower than 1 (benchmarks/bench_ces.py)."""
    x = _matrix(embeddings, "embeddings")
    n, m = x.shape
    if n_jobs < 1:
        raise InputError(f"n_jobs must be >= 1, got {n_jobs}")
    if max_examples is not None and max_examples < 2:
        raise InputError(f"max_examples must be >= 2, got {max_examples}")
    items = [_as_examples(e, n, i) for i, e in enumerate(examples)]

    def one(i: int) -> CAV:
        ex = items[i]
        rng = np.random.default_rng((seed, i))
        pos = cap(ex.positives, max_examples, rng)
        neg = cap(ex.negatives, max_examples, rng)
        if ex.refused is not None:
            return _dropped(m, C, pos.size, neg.size, ex.refused)
        return _fit(x[pos], x[neg], C=C, holdout=holdout, seed=seed, min_accuracy=min_accuracy)

    if n_jobs == 1 or len(items) < 2:
        return [one(i) for i in range(len(items))]
    with ThreadPoolExecutor(max_workers=min(n_jobs, len(items))) as pool:
        return list(pool.map(one, range(len(items))))


def kept_directions(cavs: Sequence[CAV]) -> tuple[np.ndarray, np.ndarray]:
    """The directions of the kept CAVs stacked (C x m float32) and their positions in ``cavs``
    (what ``ces_scores`` takes as its concepts)."""
    where = np.array([i for i, c in enumerate(cavs) if c.kept], dtype=np.int64)
    if where.size == 0:
        m = cavs[0].direction.size if cavs else 0
        return np.zeros((0, m), dtype=np.float32), where
    return np.stack([cavs[i].direction for i in where]).astype(np.float32), where


# ----------------------------------------------------------------------------- internals


def _fit(
    pos: np.ndarray, neg: np.ndarray, *, C: float, holdout: float, seed: int, min_accuracy: float
) -> CAV:
    from sklearn.model_selection import train_test_split  # lazily: ~0.3 s of imports
    from sklearn.svm import SVC

    if not C > 0 or not 0 < holdout < 1 or not 0 <= min_accuracy <= 1:
        raise InputError(
            f"need C > 0, 0 < holdout < 1, 0 <= min_accuracy <= 1, got {C}, "
            f"{holdout}, {min_accuracy}"
        )
    m = pos.shape[1]
    p, q = pos.shape[0], neg.shape[0]
    if p < 2 or q < 2:
        return _dropped(m, C, p, q, FEWER_THAN_TWO)
    n_val = math.ceil(holdout * (p + q))
    if n_val < 2 or p + q - n_val < 2:
        return _dropped(m, C, p, q, f"too few examples for a {holdout:g} hold-out")
    x = np.concatenate([pos, neg]).astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise InputError("embeddings hold NaN or infinite values")
    labels = np.concatenate([np.ones(p, dtype=np.int64), np.zeros(q, dtype=np.int64)])
    train, val = train_test_split(
        np.arange(p + q), test_size=holdout, stratify=labels, random_state=seed
    )
    xt, yt = x[train], labels[train]
    if yt.min() == yt.max():  # a stratified split can leave one side out of a small train set
        return _dropped(m, C, p, q, f"too few examples for a {holdout:g} hold-out")
    svm = SVC(kernel="precomputed", C=C).fit(xt @ xt.T, yt)
    # positives are label 1 = classes_[1]: decision > 0 on their side, so the normal is +coef
    alpha = svm.dual_coef_.reshape(-1)
    support = xt[svm.support_]
    coef = alpha @ support
    norm = float(np.linalg.norm(coef))
    # ||coef|| <= sum |alpha_i| max ||x_i||; far below that bound it is cancellation noise
    # (e.g. identical positives and negatives), not a direction
    bound = float(np.abs(alpha).sum()) * float(np.sqrt((support * support).sum(axis=1).max()))
    if not math.isfinite(norm) or not norm > _DEGENERATE * bound:
        return _dropped(m, C, p, q, ZERO_NORMAL, len(train), len(val))
    direction = (coef / norm).astype(np.float32)
    bias = float(svm.intercept_[0]) / norm
    d64 = direction.astype(np.float64)
    right_train = int(np.count_nonzero((xt @ d64 + bias > 0) == (yt == 1)))
    right_val = int(np.count_nonzero((x[val] @ d64 + bias > 0) == (labels[val] == 1)))
    val_acc = Fraction(right_val, len(val))
    kept = val_acc >= Fraction(repr(float(min_accuracy)))
    reason = None if kept else f"held-out accuracy {float(val_acc):.4g} < {min_accuracy:g}"
    return CAV(
        direction=direction,
        bias=bias,
        norm=norm,
        C=float(C),
        n_pos=p,
        n_neg=q,
        n_train=len(train),
        n_val=len(val),
        train_accuracy=right_train / len(train),
        val_accuracy=float(val_acc),
        kept=bool(kept),
        reason=reason,
    )


def _dropped(
    m: int, C: float, p: int, q: int, reason: str, n_train: int = 0, n_val: int = 0
) -> CAV:
    return CAV(
        direction=np.zeros(m, dtype=np.float32),
        bias=0.0,
        norm=0.0,
        C=float(C),
        n_pos=p,
        n_neg=q,
        n_train=n_train,
        n_val=n_val,
        train_accuracy=None,
        val_accuracy=None,
        kept=False,
        reason=reason,
    )


def _as_examples(value: ConceptExamples | tuple[Any, Any], n: int, i: int) -> ConceptExamples:
    if isinstance(value, ConceptExamples):
        pos, neg = value.positives, value.negatives
    else:
        pos, neg = value
    pos = indices(pos, n, f"concept {i} positives")
    neg = indices(neg, n, f"concept {i} negatives")
    if np.intersect1d(pos, neg).size:
        raise InputError(f"concept {i}: some images are both positive and negative")
    refused = value.refused if isinstance(value, ConceptExamples) else None
    return ConceptExamples(pos, neg, refused)


def _matrix(value: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(value)
    if x.ndim != 2:
        raise InputError(f"{what} must be a 2-D (examples x dimensions) matrix, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or x.dtype == bool:
        raise InputError(f"{what} must hold numbers, got {x.dtype}")
    return x
