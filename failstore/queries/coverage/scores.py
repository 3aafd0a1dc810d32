"""Shared Interest coverage (Boggust et al., CHI 2022), the pure algorithm: numpy in, numpy out.

Each image has a ground-truth region G (bool mask: where the labelled object is) and a saliency
region S (bool mask: the most salient pixels of its saliency map, from ``saliency_region``).
``coverage_scores`` compares them:

* IoU = |G ∩ S| / |G ∪ S|;
* GTC (ground-truth coverage) = |G ∩ S| / |G|: the share of the object the model relied on;
* SC (saliency coverage) = |G ∩ S| / |S|: the share of the relied-on pixels inside the object;
* soft SC = sum(|saliency| over G) / sum(|saliency|): SC weighted by the absolute saliency.

A score whose denominator is 0 is NaN and the image gets a ``reason``. ``assign_cases`` puts each
image in one of Shared Interest's eight recurring cases (four for a correct prediction, four for
a wrong one) from IoU, SC and GTC; ``mean_ci`` averages a score with a bootstrap interval.
Batches are processed in chunks, so the working memory beyond inputs and outputs is bounded.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from failstore.errors import InputError
from failstore.queries.framework.intervals import mean_ci

__all__ = ["mean_ci"]  # re-exported: it lived here first

RULES = ("std", "top_percent")
CASES_CORRECT = ("human aligned", "sufficient subset", "sufficient context", "context dependent")
CASES_WRONG = ("confuser", "insufficient subset", "context confusion", "distractor")
UNDEFINED = "undefined"

_CHUNK_MAPS = 256  # at most this many maps per chunk...
_CHUNK_ELEMENTS = 1 << 22  # ...and at most this many values (32 MiB of float64), if > 1 map
# Row 0: wrong prediction, row 1: correct; column 0: undefined, then the cases in rule order.
_CASE_TABLE = np.array([[UNDEFINED, *CASES_WRONG], [UNDEFINED, *CASES_CORRECT]], dtype=object)
# Indexed by 1 * (G empty) + 2 * (S empty) + 4 * (all-zero saliency).
_REASONS = np.array(
    [
        None,
        "empty ground truth",
        "empty saliency region",
        "empty ground truth and saliency region",
        "all-zero saliency",
        "empty ground truth; all-zero saliency",
        "empty saliency region; all-zero saliency",
        "empty ground truth and saliency region; all-zero saliency",
    ],
    dtype=object,
)


def _chunks(n: int, per_item: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, each of at most ``_CHUNK_MAPS`` items and, when
    longer than one item, at most ``_CHUNK_ELEMENTS`` values (``per_item`` values per item)."""
    step = max(1, min(_CHUNK_MAPS, _CHUNK_ELEMENTS // max(per_item, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _check_maps(name: str, maps: npt.ArrayLike) -> np.ndarray:
    """``maps`` as an array, if it is a real-valued (integer or float) array of shape (N, H, W)
    with H, W >= 1 (N may be 0); otherwise an InputError naming ``name`` and the shape."""
    arr = np.asarray(maps)
    real = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0 or not real:
        raise InputError(
            f"{name}: expected a float array of shape (N, H, W) with H, W >= 1, "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    return arr


def _check_finite(name: str, chunk: np.ndarray, start: int) -> None:
    """InputError naming the first map of ``chunk`` (numbered from ``start``) holding a NaN or
    an infinite value, if any."""
    finite = np.isfinite(chunk).all(axis=(1, 2))
    if not finite.all():
        k = start + int(np.argmin(finite))
        raise InputError(f"{name}: map {k} has NaN or infinite values")


def _normalise(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each map of ``chunk`` (n, H, W) min-max normalised to [0, 1] in float64, i.e.
    (m - min) / (max - min), and a bool (n,) marking the constant maps (max == min; these are
    returned as all zeros). A map whose range overflows float64 is halved first (exact)."""
    x = chunk.astype(np.float64)
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    with np.errstate(over="ignore"):
        span = hi - lo
    if np.isinf(span).any():
        scale = np.where(np.isinf(span), 0.5, 1.0)
        x *= scale
        lo, hi = lo * scale, hi * scale
        span = hi - lo
    constant = span == 0
    x -= lo
    x /= np.where(constant, 1.0, span)
    return x, constant[:, 0, 0]


def saliency_region(
    maps: npt.ArrayLike, rule: str = "std", top_percent: float = 10.0
) -> np.ndarray:
    """The saliency region S of each of N signed saliency maps (N, H, W): bool (N, H, W).

    Each map is min-max normalised to [0, 1]; then a pixel is in S when its normalised value is
    >= the map's threshold (ties are inside):

    * ``rule="std"``: the threshold is mean + 1 * std (population std, ddof=0) of the normalised
      map. It can exceed 1 (e.g. one low pixel among equal high ones): the region is then empty.
    * ``rule="top_percent"``: the threshold is ``np.percentile(normalised, 100 - top_percent)``
      (linear interpolation), so S holds about the top ``top_percent`` % of pixels.

    A constant map gives an empty region. ``top_percent`` must be in (0, 100] (checked whatever
    the rule). Computed in float64 whatever the input dtype.
    """
    if rule not in RULES:
        raise InputError(f"rule: unknown rule {rule!r}; allowed rules are 'std', 'top_percent'")
    if not (isinstance(top_percent, numbers.Real) and 0.0 < top_percent <= 100.0):
        raise InputError(f"top_percent: must be a number in (0, 100], got {top_percent!r}")
    arr = _check_maps("maps", maps)
    n, h, w = arr.shape
    out = np.zeros(arr.shape, dtype=bool)
    for part in _chunks(n, h * w):
        chunk = arr[part]
        _check_finite("maps", chunk, part.start)
        x, constant = _normalise(chunk)
        if rule == "std":
            threshold = x.mean(axis=(1, 2)) + x.std(axis=(1, 2))
        else:
            threshold = np.percentile(x, 100.0 - float(top_percent), axis=(1, 2))
        region = x >= threshold[:, None, None]
        region[constant] = False
        out[part] = region
    return out


@dataclass(frozen=True, eq=False)
class CoverageScores:
    """Shared Interest scores of N images: float64 arrays (N,) ``iou``, ``gtc``, ``sc``,
    ``soft_sc`` (NaN where undefined) and an object array (N,) ``reason``: None, or one line
    saying why some score is NaN ("empty ground truth", "empty saliency region", "empty ground
    truth and saliency region", "all-zero saliency", joined with "; ")."""

    iou: np.ndarray
    gtc: np.ndarray
    sc: np.ndarray
    soft_sc: np.ndarray
    reason: np.ndarray

    def __post_init__(self) -> None:
        shapes = [np.shape(getattr(self, f)) for f in ("iou", "gtc", "sc", "soft_sc", "reason")]
        if len(shapes[0]) != 1 or any(shape != shapes[0] for shape in shapes):
            raise InputError(f"scores: expected five arrays of the same shape (N,), got {shapes}")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0 (no warning)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def coverage_scores(
    ground_truth: npt.ArrayLike, region: npt.ArrayLike, saliency: npt.ArrayLike
) -> CoverageScores:
    """IoU, GTC, SC and soft SC (module docstring) of N images from bool masks ``ground_truth``
    G and ``region`` S and the signed ``saliency`` maps, all (N, H, W).

    Undefined scores are NaN: empty G -> GTC NaN; empty S -> SC NaN; both empty -> IoU NaN too
    (one of them empty -> IoU 0); all-zero saliency -> soft SC NaN. Soft SC uses |saliency|
    (each map divided by its largest |value| first, so sums cannot overflow) and is capped at 1
    against float rounding. A NaN or infinite saliency value is an InputError.
    """
    g, s, sal = np.asarray(ground_truth), np.asarray(region), np.asarray(saliency)
    if g.ndim != 3 or g.shape != s.shape or g.shape != sal.shape:
        raise InputError(
            "ground_truth, region, saliency: expected three arrays of the same shape (N, H, W), "
            f"got {g.shape}, {s.shape} and {sal.shape}"
        )
    for name, mask in (("ground_truth", g), ("region", s)):
        if mask.dtype != np.bool_:
            raise InputError(f"{name}: expected a bool array, got dtype {mask.dtype}")
    _check_maps("saliency", sal)
    n, h, w = g.shape
    n_inter, n_g, n_s = (np.zeros(n, dtype=np.int64) for _ in range(3))
    inside, total = np.zeros(n), np.zeros(n)
    for part in _chunks(n, h * w):
        chunk = sal[part]
        _check_finite("saliency", chunk, part.start)
        n_inter[part] = np.count_nonzero(g[part] & s[part], axis=(1, 2))
        n_g[part] = np.count_nonzero(g[part], axis=(1, 2))
        n_s[part] = np.count_nonzero(s[part], axis=(1, 2))
        a = np.abs(chunk.astype(np.float64))
        peak = a.max(axis=(1, 2), keepdims=True)
        a /= np.where(peak > 0, peak, 1.0)
        inside[part] = np.sum(a, axis=(1, 2), where=g[part])
        total[part] = a.sum(axis=(1, 2))
    code = (n_g == 0) * 1 + (n_s == 0) * 2 + (total == 0) * 4
    return CoverageScores(
        iou=_ratio(n_inter, n_g + n_s - n_inter),
        gtc=_ratio(n_inter, n_g),
        sc=_ratio(n_inter, n_s),
        soft_sc=np.minimum(_ratio(inside, total), 1.0),
        reason=_REASONS[code],
    )


@dataclass(frozen=True)
class CaseThresholds:
    """Thresholds of ``assign_cases``, each in [0, 1]; a score >= its threshold is high."""

    iou: float = 0.5
    sc: float = 0.5
    gtc: float = 0.5

    def __post_init__(self) -> None:
        for name in ("iou", "sc", "gtc"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
                raise InputError(f"{name}: threshold must be a number in [0, 1], got {value!r}")


def assign_cases(
    correct: npt.ArrayLike, scores: CoverageScores, thresholds: CaseThresholds = CaseThresholds()
) -> np.ndarray:
    """Shared Interest's case of each image (object array of str, (N,)), ``correct`` (bool (N,))
    choosing the correct-prediction name (``CASES_CORRECT``) or the wrong one (``CASES_WRONG``).
    With t = ``thresholds``, the first rule that holds decides:

    a. IoU, SC or GTC is NaN -> ``UNDEFINED``;
    b. IoU >= t.iou, or SC >= t.sc and GTC >= t.gtc -> "human aligned" / "confuser";
    c. SC >= t.sc -> "sufficient subset" / "insufficient subset";
    d. GTC >= t.gtc -> "sufficient context" / "context confusion";
    e. otherwise -> "context dependent" / "distractor".
    """
    ok = np.asarray(correct)
    n = scores.iou.shape[0]
    if ok.dtype != np.bool_ or ok.shape != (n,):
        raise InputError(
            f"correct: expected a bool array of shape ({n},), got {ok.dtype} of shape {ok.shape}"
        )
    iou, sc, gtc, t = scores.iou, scores.sc, scores.gtc, thresholds
    kind = np.select(
        [
            np.isnan(iou) | np.isnan(sc) | np.isnan(gtc),
            (iou >= t.iou) | ((sc >= t.sc) & (gtc >= t.gtc)),
            sc >= t.sc,
            gtc >= t.gtc,
        ],
        [0, 1, 2, 3],
        default=4,
    )
    return _CASE_TABLE[ok.astype(np.intp), kind]
