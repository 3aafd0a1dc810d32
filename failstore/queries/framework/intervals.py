"""Bootstrap intervals shared by the analyses (pure numpy): the mean of a score with its
percentile interval, and the difference of two groups' means with its interval."""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt

from failstore.errors import InputError

_CHUNK = 1 << 22  # resampled indices drawn at a time (32 MiB of int64)
LEVEL = 0.95


def mean_ci(
    values: npt.ArrayLike, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values of ``values`` (any shape; NaN and
    infinite values are ignored) and the percentile bootstrap interval of that mean at
    ``level``: the (1 - level) / 2 and (1 + level) / 2 percentiles (linear interpolation) of the
    means of ``n_boot`` resamples with replacement drawn by ``np.random.default_rng(seed)``.
    With fewer than 2 finite values the interval is (nan, nan), and the mean nan if there are
    none. Resamples are drawn in chunks of at most ``_CHUNK`` indices.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise InputError(f"n_boot: must be a positive integer, got {n_boot!r}")
    if not (isinstance(level, numbers.Real) and 0.0 < level < 1.0):
        raise InputError(f"level: must be a number in (0, 1), got {level!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (float(x[0]) if x.size else float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    step = max(1, _CHUNK // x.size)
    for start in range(0, int(n_boot), step):
        stop = min(start + step, int(n_boot))
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = 100.0 * (1.0 - float(level)) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(x.mean()), float(low), float(high)


def diff_ci(
    a: npt.ArrayLike, b: npt.ArrayLike, *, n_boot: int = 2000, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): the difference of the means of the finite values of two
    groups and its percentile bootstrap interval (each group resampled on its own, ``n_boot``
    times, by ``np.random.default_rng(seed)``). (nan, nan, nan) when a group has fewer than 2
    finite values."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, (n_boot, y.size))].mean(axis=1)
    lo, hi = np.quantile(mx - my, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean() - y.mean()), float(lo), float(hi)


def verdict_of(low: float, high: float) -> str:
    """'above 0' when the whole interval is above 0, 'below 0' when below, else 'undecided';
    'no data' for a NaN interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no data"
    return "above 0" if low > 0 else "below 0" if high < 0 else "undecided"
