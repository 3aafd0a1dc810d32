"""Similarity of two batches of attribution maps of the same images (Adebayo et al., "Sanity
checks for saliency maps"): the reference's normalisations, Spearman rank correlation, SSIM and
the Spearman correlation of HOG features. Pure numpy / scipy / scikit-image; every function works
on a whole batch and returns one figure (or one map) per image.

Attribution batches are float arrays ``(N, C, H, W)``, channels first. ``C > 1`` (input
attributions, C = 3) follows PAIR saliency's visualisation; ``C == 1`` (Grad-CAM and other
single-channel maps) is a 2-D map, which the reference normalises by its maximum magnitude.
A figure that cannot be computed (a constant or empty map, a NaN in the input) is NaN; nothing
here returns inf or lets a numpy warning escape. scipy.stats and scikit-image are imported only
when a function needs them (they are slow to import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from failstore.errors import ConfigError

__all__ = [
    "METRICS",
    "Prepared",
    "abs_norm",
    "compare",
    "div_norm",
    "hog_rank",
    "minmax_norm",
    "prepare",
    "spearman_rows",
    "ssim",
    "ssim_to_map",
]

F64 = npt.NDArray[np.float64]

METRICS: tuple[str, ...] = ("rank_abs", "rank_signed", "ssim", "ssim_range1", "hog")
HOG_MIN = 48  # HOG's default block: 3 x 3 cells of 16 pixels
"""The keys of :func:`compare`, in order."""

_SIGMA = 1.5  # SSIM's Gaussian window, as scikit-image with gaussian_weights=True
_TRUNCATE = 3.5
_RADIUS = int(_TRUNCATE * _SIGMA + 0.5)  # 5, as scipy.ndimage: an 11 x 11 window
_WIN = 2 * _RADIUS + 1
_K1, _K2 = 0.01, 0.03
_HOG_CELLS_PER_BLOCK = 3  # skimage.feature.hog's default block of 3 x 3 cells
_HOG_ORIENTATIONS = 9  # skimage.feature.hog's default
_HOG_PPC = 16  # compare's pixels_per_cell (hog_rank's default)


def _batch(m: npt.ArrayLike, ndim: int = 4, name: str = "attribution maps") -> F64:
    a = np.asarray(m)
    if a.ndim != ndim:
        shape = "(N, C, H, W)" if ndim == 4 else "(N, H, W)"
        raise ConfigError(f"{name} must be a {ndim}-D array {shape}, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _has_nan(*batches: F64) -> npt.NDArray[np.bool_]:
    """Per image (first axis): does any of the batches hold a NaN in it?"""
    out = np.zeros(batches[0].shape[0], dtype=bool)
    for v in batches:
        out |= np.isnan(v.reshape(v.shape[0], -1)).any(axis=1)
    return out


def _nan_where(out: F64, bad: npt.NDArray[np.bool_]) -> F64:
    """Set the images (first axis) flagged in ``bad`` to NaN, in place."""
    out[bad] = np.nan
    return out


def _scale_2d(s: F64, num: F64, den: F64) -> F64:
    """``num / den`` per image (den of shape (N,)), NaN images where den is 0 or not finite."""
    bad = ~np.isfinite(den) | (den == 0) | _has_nan(s)
    with np.errstate(all="ignore"):
        out = num / np.where(bad, 1.0, den)[:, None, None]
    return _nan_where(out, bad)


def abs_norm(m: npt.ArrayLike) -> F64:
    """Magnitude map in 0..1 per image, ``(N, C, H, W) -> (N, H, W)`` float64.

    ``C > 1`` (PAIR ``VisualizeImageGrayscale``): ``s = sum_c |m|``; ``out = clip((s - min s) /
    (P99(s) - min s), 0, 1)`` with min and P99 (``np.percentile(., 99)``, linear interpolation)
    over the image's H * W values. ``C == 1``: ``|m| / max |m|``. A degenerate denominator
    (``P99 == min``, e.g. a constant map or one with >= 99 % equal lowest values; ``max |m| == 0``)
    or a NaN in the image gives an all-NaN image.
    """
    a = _batch(m)
    n = a.shape[0]
    if a.shape[1] == 1:
        s = np.abs(a[:, 0])
        return _scale_2d(s, s, s.reshape(n, -1).max(axis=1, initial=0.0))
    s = np.abs(a).sum(axis=1)
    flat = s.reshape(n, -1)
    lo = flat.min(axis=1, initial=np.inf)
    hi = np.percentile(flat, 99, axis=1) if flat.shape[1] else lo
    out = _scale_2d(s, s - lo[:, None, None], hi - lo)
    return np.clip(out, 0.0, 1.0)


def div_norm(m: npt.ArrayLike) -> F64:
    """Signed (diverging) map per image, ``(N, C, H, W) -> (N, H, W)`` float64.

    ``C > 1`` (PAIR ``VisualizeImageDiverging`` as the reference uses it): ``s = sum_c m``
    (signed); ``span = |P99(s)|``; ``out = clip((s + span) / (2 span), -1, 1)``. ``C == 1``:
    ``m / max |m|``. ``span == 0``, ``max |m| == 0`` or a NaN in the image gives an all-NaN image.
    """
    a = _batch(m)
    n = a.shape[0]
    if a.shape[1] == 1:
        s = a[:, 0]
        return _scale_2d(s, s, np.abs(s).reshape(n, -1).max(axis=1, initial=0.0))
    s = a.sum(axis=1)
    flat = s.reshape(n, -1)
    span = np.abs(np.percentile(flat, 99, axis=1)) if flat.shape[1] else np.zeros(n)
    out = _scale_2d(s, s + span[:, None, None], 2.0 * span)
    return np.clip(out, -1.0, 1.0)


def minmax_norm(m: npt.ArrayLike) -> F64:
    """``(m - min) / (max - min)`` per image, min and max over all its C * H * W values,
    ``(N, C, H, W) -> (N, C, H, W)`` float64. A constant image or a NaN in it gives all NaN."""
    a = _batch(m)
    flat = a.reshape(a.shape[0], -1)
    lo = flat.min(axis=1, initial=np.inf)
    hi = flat.max(axis=1, initial=-np.inf)
    den = hi - lo
    bad = ~np.isfinite(den) | (den == 0) | _has_nan(flat)
    with np.errstate(all="ignore"):
        out = (a - lo[:, None, None, None]) / np.where(bad, 1.0, den)[:, None, None, None]
    return _nan_where(out, bad)


def spearman_rows(a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    """Spearman rank correlation of ``a[i].ravel()`` with ``b[i].ravel()`` for each i, ``(N,)``.

    Ranks are scipy's ``rankdata(..., axis=1)`` (ties get their average rank); the figure is the
    Pearson correlation of the ranks, clipped to -1..1. NaN when either row is constant (or
    empty) or holds a NaN.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim < 1:
        raise ConfigError(f"spearman_rows needs two batches of one shape, got {x.shape}, {y.shape}")
    return _spearman(_Ranks.of(x), _Ranks.of(y))


@dataclass(frozen=True)
class _Ranks:
    """One side of :func:`spearman_rows`: each row's ranks minus their mean, their sum of
    squares, and the rows that give NaN whatever the other side (a NaN, fewer than 2 values)."""

    centred: F64
    squares: F64
    bad: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, x: F64) -> _Ranks:
        from scipy.stats import rankdata

        n = x.shape[0]
        x = x.reshape(n, -1)
        bad = _has_nan(x) | (x.shape[1] < 2)
        r = rankdata(np.where(bad[:, None], 0.0, x), axis=1)
        r -= r.mean(axis=1, keepdims=True)
        return cls(r, (r * r).sum(axis=1), bad)


def _spearman(x: _Ranks, y: _Ranks) -> F64:
    sxy = (x.centred * y.centred).sum(axis=1)
    den = x.squares * y.squares
    bad = x.bad | y.bad | (den == 0)
    with np.errstate(all="ignore"):
        r = np.clip(sxy / np.sqrt(np.where(bad, 1.0, den)), -1.0, 1.0)
    return _nan_where(r, bad)


def ssim(a: npt.ArrayLike, b: npt.ArrayLike, *, data_range: float = 2.0) -> F64:
    """Mean SSIM of each image pair of two ``(N, C, H, W)`` batches, ``(N,)`` float64.

    Exactly scikit-image's ``structural_similarity(x, y, data_range=data_range,
    gaussian_weights=True, use_sample_covariance=True, channel_axis=-1)`` on channels-last
    copies: Gaussian weights of sigma 1.5 truncated at 3.5 sigma (an 11 x 11 window), boundary
    mode ``"reflect"`` (as skimage), K1 = 0.01, K2 = 0.03, ``C1 = (K1 * data_range) ** 2``,
    ``C2 = (K2 * data_range) ** 2``, variances and covariance scaled by NP / (NP - 1) with
    NP = 121; each channel's SSIM map is averaged after cropping 5 pixels on every border, then
    the channel means are averaged. ``data_range=2.0`` is the reference's (old scikit-image took
    a float image's range as -1..1); 1.0 is right for maps in 0..1. A NaN anywhere in a pair gives
    NaN for that pair. Maps smaller than 11 x 11 raise ``ConfigError``.
    """
    x, y = _batch(a), _batch(b)
    if x.shape != y.shape:
        raise ConfigError(f"SSIM needs two batches of one shape, got {x.shape} and {y.shape}")
    _check_ssim_size(x.shape)
    (out,) = _ssim_pair(_SsimSide.of(x), _SsimSide.of(y), (data_range,))
    return out


def _check_ssim_size(shape: tuple[int, ...]) -> None:
    h, w = shape[2:]
    if h < _WIN or w < _WIN:
        raise ConfigError(
            f"SSIM needs maps of at least {_WIN} x {_WIN} pixels, got {h} x {w}",
            hint="use a larger --resolution",
        )


def _blur(v: F64) -> F64:
    from scipy.ndimage import gaussian_filter

    out: F64 = gaussian_filter(
        v, sigma=(0.0, 0.0, _SIGMA, _SIGMA), mode="reflect", truncate=_TRUNCATE
    )
    return out


_COV_NORM = _WIN**2 / (_WIN**2 - 1.0)


def _crop(v: F64) -> F64:
    """The part of an SSIM map that is averaged: ``_RADIUS`` pixels off every border."""
    r = _RADIUS
    return v[:, :, r : v.shape[2] - r, r : v.shape[3] - r]


@dataclass(frozen=True)
class _SsimSide:
    """One side of :func:`ssim`: the maps (zeroed where they hold a NaN), their local means and
    variances (two of the five Gaussian blurs of a pair) where the SSIM map is averaged, and
    the images holding a NaN."""

    maps: F64
    mean: F64
    var: F64
    bad: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, x: F64) -> _SsimSide:
        bad = _has_nan(x)
        x = np.where(bad[:, None, None, None], 0.0, x)
        mean = _crop(_blur(x))
        return cls(x, mean, _COV_NORM * (_crop(_blur(x * x)) - mean * mean), bad)


def _ssim_pair(x: _SsimSide, y: _SsimSide, data_ranges: tuple[float, ...]) -> list[F64]:
    """The SSIM of each pair at each data range: the covariance (the fifth blur) and every term
    but the constants are shared between the data ranges."""
    ux, uy = x.mean, y.mean
    vxy = _COV_NORM * (_crop(_blur(x.maps * y.maps)) - ux * uy)
    mean_num, mean_den = 2 * ux * uy, ux**2 + uy**2
    var_num, var_den = 2 * vxy, x.var + y.var
    bad = x.bad | y.bad
    out = []
    for data_range in data_ranges:
        c1 = (_K1 * data_range) ** 2
        c2 = (_K2 * data_range) ** 2
        with np.errstate(all="ignore"):
            s_map = ((mean_num + c1) * (var_num + c2)) / ((mean_den + c1) * (var_den + c2))
        per_channel = s_map.mean(axis=(2, 3), dtype=np.float64)
        out.append(_nan_where(per_channel.mean(axis=1), bad))
    return out


def hog_rank(a: npt.ArrayLike, b: npt.ArrayLike, *, pixels_per_cell: int = 16) -> F64:
    """Spearman rank correlation of the HOG features of two ``(N, H, W)`` batches, ``(N,)``.

    ``a`` and ``b`` are maps already in 0..1 (the output of :func:`abs_norm`). Features are
    ``skimage.feature.hog(map, pixels_per_cell=(ppc, ppc))`` with hog's other defaults (9
    orientations, blocks of 3 x 3 cells, L2-Hys); the figure is :func:`spearman_rows` of the two
    feature vectors. NaN if either map of a pair holds a NaN (or the features are constant, e.g.
    two flat maps). hog needs one whole block, so maps smaller than 3 * ppc pixels on a side
    (48 x 48 at the default 16) raise ``ConfigError``.
    """
    x = _batch(a, ndim=3, name="HOG maps")
    y = _batch(b, ndim=3, name="HOG maps")
    if x.shape != y.shape:
        raise ConfigError(f"HOG needs two batches of one shape, got {x.shape} and {y.shape}")
    if pixels_per_cell < 1:
        raise ConfigError(f"HOG pixels_per_cell must be >= 1, got {pixels_per_cell}")
    h, w = x.shape[1:]
    side = _HOG_CELLS_PER_BLOCK * pixels_per_cell
    if h < side or w < side:
        raise ConfigError(
            f"HOG needs maps of at least {side} x {side} pixels ({_HOG_CELLS_PER_BLOCK} x "
            f"{_HOG_CELLS_PER_BLOCK} cells of {pixels_per_cell} pixels), got {h} x {w}",
            hint="use a larger --resolution",
        )
    bad = _has_nan(x, y)
    fx = _hog_features(x, pixels_per_cell, bad)
    fy = _hog_features(y, pixels_per_cell, bad)
    return _nan_where(spearman_rows(fx, fy), bad)


def _hog_features(x: F64, pixels_per_cell: int, skip: npt.NDArray[np.bool_]) -> F64:
    """``(N, F)`` HOG features of ``(N, H, W)`` maps; rows of the images in ``skip`` are 0."""
    from skimage.feature import hog

    n, h, w = x.shape
    size = (
        (h // pixels_per_cell - _HOG_CELLS_PER_BLOCK + 1)
        * (w // pixels_per_cell - _HOG_CELLS_PER_BLOCK + 1)
        * _HOG_CELLS_PER_BLOCK**2
        * _HOG_ORIENTATIONS
    )
    out = np.zeros((n, size))
    ppc = (pixels_per_cell, pixels_per_cell)
    for i in np.flatnonzero(~skip):
        out[i] = hog(x[i], pixels_per_cell=ppc)
    return out


@dataclass(frozen=True)
class Prepared:
    """The original maps of :func:`compare`, normalised once (:func:`prepare`): the figures'
    original side, to compare with the maps of every randomisation step."""

    shape: tuple[int, ...]
    rank_abs: _Ranks
    rank_signed: _Ranks
    ssim: _SsimSide
    hog: _Ranks | None  # the ranks of abs_norm's HOG features (None below HOG_MIN pixels)
    hog_bad: npt.NDArray[np.bool_]  # images whose abs_norm holds a NaN


def _maps(m: npt.ArrayLike) -> F64:
    arr = np.asarray(m)
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(
            f"attribution maps must be a floating 4-D array (N, C, H, W), "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    return arr.astype(np.float64, copy=False)


def prepare(original: npt.ArrayLike) -> Prepared:
    """The ``original`` side of :func:`compare` ``(N, C, H, W)``, computed once: its
    normalisations, their ranks, its SSIM means and variances and its HOG features."""
    o = _maps(original)
    _check_ssim_size(o.shape)
    ao = abs_norm(o)
    bad = _has_nan(ao)
    hog = None
    if min(o.shape[2:]) >= HOG_MIN:
        hog = _Ranks.of(_hog_features(ao, _HOG_PPC, bad))
    return Prepared(
        o.shape,
        _Ranks.of(ao),
        _Ranks.of(div_norm(o)),
        _SsimSide.of(minmax_norm(o)),
        hog,
        bad,
    )


def compare(original: npt.ArrayLike | Prepared, other: npt.ArrayLike) -> dict[str, F64]:
    """The per-image figures ``(N,)`` of two batches ``(N, C, H, W)`` of maps of the same images,
    keys in the order of :data:`METRICS`:

    - ``rank_abs``: ``spearman_rows(abs_norm(o), abs_norm(x))``;
    - ``rank_signed``: ``spearman_rows(div_norm(o), div_norm(x))``;
    - ``ssim``: ``ssim(minmax_norm(o), minmax_norm(x), data_range=2.0)`` (the reference's);
    - ``ssim_range1``: the same with ``data_range=1.0`` (right for maps in 0..1);
    - ``hog``: ``hog_rank(abs_norm(o), abs_norm(x))``.

    ``original`` may be :func:`prepare`'s result, to compare one original with many others
    without normalising it again (the figures are the same). Both batches must be 4-D, of one
    shape and floating point (``ConfigError`` otherwise); ``hog`` is NaN for maps smaller than
    :data:`HOG_MIN` pixels a side (one HOG block) and the SSIMs need 11 x 11.
    """
    ref = original if isinstance(original, Prepared) else prepare(original)
    x = _maps(other)
    if ref.shape != x.shape:
        raise ConfigError(f"attribution batches differ in shape: {ref.shape} and {x.shape}")
    ax = abs_norm(x)
    ssim2, ssim1 = _ssim_pair(ref.ssim, _SsimSide.of(minmax_norm(x)), (2.0, 1.0))
    if ref.hog is not None:
        bad = ref.hog_bad | _has_nan(ax)
        hog = _nan_where(_spearman(ref.hog, _Ranks.of(_hog_features(ax, _HOG_PPC, bad))), bad)
    else:
        hog = np.full(len(x), np.nan)
    return {
        "rank_abs": _spearman(ref.rank_abs, _Ranks.of(ax)),
        "rank_signed": _spearman(ref.rank_signed, _Ranks.of(div_norm(x))),
        "ssim": ssim2,
        "ssim_range1": ssim1,
        "hog": hog,
    }


def ssim_to_map(m: npt.ArrayLike, target: npt.ArrayLike, *, data_range: float = 2.0) -> F64:
    """SSIM of each attribution with an ideal map, ``(N,)`` float64.

    ``m`` ``(N, C, H, W)`` is normalised by :func:`abs_norm` to an ``(N, H, W)`` map in 0..1;
    ``target`` ``(N, H, W)`` is a map in 0..1 (e.g. ``1 - object mask`` for the spurious
    background test). The figure is :func:`ssim` of the pair as single-channel images with the
    given ``data_range`` (2.0 as the reference; 1.0 for maps in 0..1). A degenerate attribution
    (an all-NaN ``abs_norm``) gives NaN.
    """
    a = abs_norm(m)
    t = _batch(target, ndim=3, name="target maps")
    if t.shape != a.shape:
        raise ConfigError(f"target maps must have shape {a.shape} (N, H, W), got {t.shape}")
    return ssim(a[:, None], t[:, None], data_range=data_range)
