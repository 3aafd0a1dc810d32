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

import numpy as np
import numpy.typing as npt

from failstore.errors import ConfigError

__all__ = [
    "METRICS",
    "abs_norm",
    "compare",
    "div_norm",
    "hog_rank",
    "minmax_norm",
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
    from scipy.stats import rankdata

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim < 1:
        raise ConfigError(f"spearman_rows needs two batches of one shape, got {x.shape}, {y.shape}")
    n = x.shape[0]
    x, y = x.reshape(n, -1), y.reshape(n, -1)
    bad = _has_nan(x, y) | (x.shape[1] < 2)
    x, y = np.where(bad[:, None], 0.0, x), np.where(bad[:, None], 0.0, y)
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    sxy = (rx * ry).sum(axis=1)
    den = (rx * rx).sum(axis=1) * (ry * ry).sum(axis=1)
    bad |= den == 0
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
    from scipy.ndimage import gaussian_filter

    x, y = _batch(a), _batch(b)
    if x.shape != y.shape:
        raise ConfigError(f"SSIM needs two batches of one shape, got {x.shape} and {y.shape}")
    h, w = x.shape[2:]
    if h < _WIN or w < _WIN:
        raise ConfigError(
            f"SSIM needs maps of at least {_WIN} x {_WIN} pixels, got {h} x {w}",
            hint="use a larger --resolution",
        )
    bad = _has_nan(x, y)
    x, y = np.where(bad[:, None, None, None], 0.0, x), np.where(bad[:, None, None, None], 0.0, y)

    def blur(v: F64) -> F64:
        out: F64 = gaussian_filter(
            v, sigma=(0.0, 0.0, _SIGMA, _SIGMA), mode="reflect", truncate=_TRUNCATE
        )
        return out

    cov_norm = _WIN**2 / (_WIN**2 - 1.0)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    ux, uy = blur(x), blur(y)
    vx = cov_norm * (blur(x * x) - ux * ux)
    vy = cov_norm * (blur(y * y) - uy * uy)
    vxy = cov_norm * (blur(x * y) - ux * uy)
    with np.errstate(all="ignore"):
        s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    r = _RADIUS
    per_channel = s_map[:, :, r : h - r, r : w - r].mean(axis=(2, 3), dtype=np.float64)
    return _nan_where(per_channel.mean(axis=1), bad)


def hog_rank(a: npt.ArrayLike, b: npt.ArrayLike, *, pixels_per_cell: int = 16) -> F64:
    """Spearman rank correlation of the HOG features of two ``(N, H, W)`` batches, ``(N,)``.

    ``a`` and ``b`` are maps already in 0..1 (the output of :func:`abs_norm`). Features are
    ``skimage.feature.hog(map, pixels_per_cell=(ppc, ppc))`` with hog's other defaults (9
    orientations, blocks of 3 x 3 cells, L2-Hys); the figure is :func:`spearman_rows` of the two
    feature vectors. NaN if either map of a pair holds a NaN (or the features are constant, e.g.
    two flat maps). hog needs one whole block, so maps smaller than 3 * ppc pixels on a side
    (48 x 48 at the default 16) raise ``ConfigError``.
    """
    from skimage.feature import hog

    x = _batch(a, ndim=3, name="HOG maps")
    y = _batch(b, ndim=3, name="HOG maps")
    if x.shape != y.shape:
        raise ConfigError(f"HOG needs two batches of one shape, got {x.shape} and {y.shape}")
    if pixels_per_cell < 1:
        raise ConfigError(f"HOG pixels_per_cell must be >= 1, got {pixels_per_cell}")
    n, h, w = x.shape
    side = _HOG_CELLS_PER_BLOCK * pixels_per_cell
    if h < side or w < side:
        raise ConfigError(
            f"HOG needs maps of at least {side} x {side} pixels ({_HOG_CELLS_PER_BLOCK} x "
            f"{_HOG_CELLS_PER_BLOCK} cells of {pixels_per_cell} pixels), got {h} x {w}",
            hint="use a larger --resolution",
        )
    bad = _has_nan(x, y)
    ppc = (pixels_per_cell, pixels_per_cell)
    size = (
        (h // pixels_per_cell - _HOG_CELLS_PER_BLOCK + 1)
        * (w // pixels_per_cell - _HOG_CELLS_PER_BLOCK + 1)
        * _HOG_CELLS_PER_BLOCK**2
        * _HOG_ORIENTATIONS
    )
    fx = np.zeros((n, size))
    fy = np.zeros((n, size))
    for i in np.flatnonzero(~bad):
        fx[i] = hog(x[i], pixels_per_cell=ppc)
        fy[i] = hog(y[i], pixels_per_cell=ppc)
    return _nan_where(spearman_rows(fx, fy), bad)


def compare(original: npt.ArrayLike, other: npt.ArrayLike) -> dict[str, F64]:
    """The per-image figures ``(N,)`` of two batches ``(N, C, H, W)`` of maps of the same images,
    keys in the order of :data:`METRICS`:

    - ``rank_abs``: ``spearman_rows(abs_norm(o), abs_norm(x))``;
    - ``rank_signed``: ``spearman_rows(div_norm(o), div_norm(x))``;
    - ``ssim``: ``ssim(minmax_norm(o), minmax_norm(x), data_range=2.0)`` (the reference's);
    - ``ssim_range1``: the same with ``data_range=1.0`` (right for maps in 0..1);
    - ``hog``: ``hog_rank(abs_norm(o), abs_norm(x))``.

    Both batches must be 4-D, of one shape and floating point (``ConfigError`` otherwise);
    ``hog`` is NaN for maps smaller than :data:`HOG_MIN` pixels a side (one HOG block) and the
    SSIMs need 11 x 11.
    """
    o, x = np.asarray(original), np.asarray(other)
    for arr in (o, x):
        if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
            raise ConfigError(
                f"attribution maps must be a floating 4-D array (N, C, H, W), "
                f"got {arr.dtype} of shape {arr.shape}"
            )
    if o.shape != x.shape:
        raise ConfigError(f"attribution batches differ in shape: {o.shape} and {x.shape}")
    ao, ax = abs_norm(o), abs_norm(x)
    mo, mx = minmax_norm(o), minmax_norm(x)
    return {
        "rank_abs": spearman_rows(ao, ax),
        "rank_signed": spearman_rows(div_norm(o), div_norm(x)),
        "ssim": ssim(mo, mx, data_range=2.0),
        "ssim_range1": ssim(mo, mx, data_range=1.0),
        "hog": hog_rank(ao, ax) if min(o.shape[2:]) >= HOG_MIN else np.full(len(o), np.nan),
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
