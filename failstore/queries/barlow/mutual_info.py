"""Mutual information between continuous features and a discrete label (failure), vectorised.

``mutual_info(X, y)`` returns what
``sklearn.feature_selection.mutual_info_classif(X, y, discrete_features=False, n_neighbors=3,
random_state=0)`` returns on the same input (tested equal to 1e-9; in practice the neighbour
counts are identical and the values differ only by the order of float summation), but treats
all D features at once instead of building two k-d trees per feature. The steps are
scikit-learn's (``feature_selection/_mutual_info.py``, ``_estimate_mi`` and ``_compute_mi_cd``;
the estimator of Ross 2014):

1. X is cast to float64; every column is divided by its population standard deviation (a
   deviation below 10 * float64 eps counts as 1, as in ``sklearn.preprocessing.scale``).
   scikit-learn reduces a Fortran-ordered column copy, so each column is summed over contiguous
   memory; features are processed here as C-ordered rows, summed the same way, bit for bit.
2. Noise ``1e-10 * max(1, mean|column|) * z`` is added, z drawn as ONE (N, D) matrix of
   ``RandomState(random_state).standard_normal``: a feature's value depends on its column
   position and on D, so pass the whole matrix in stored column order, never a subset.
3. Points whose label occurs once are dropped. For the others, with c the size of their label
   and k = min(n_neighbors, c - 1): the radius is ``nextafter(d_k, 0)`` where d_k is the
   distance to the k-th nearest neighbour of the same label (self excluded), and m is the number
   of kept points of any label within that radius (self included).
4. MI = psi(n) + mean psi(k) - mean psi(c) - mean psi(m), clipped at 0 (nats).

How steps 3-4 are matched exactly, features being 1-D:

* d_k: sorted within a label, a point's k nearest neighbours are among the k on either side;
  d_k is the k-th smallest of those 2k gaps. scikit-learn computes them in two ways, chosen by
  ``NearestNeighbors(algorithm="auto")``: a k-d tree when k < c // 2, whose distance is
  ``sqrt((a - b)**2)`` (equal to ``|a - b|`` in IEEE arithmetic; computed that way anyway); and
  brute force when k >= c // 2 (labels of at most 7 points for k = 3), whose distance is
  ``sqrt(max(0, (a*a + (-2*(a*b))) + b*b))``, the GEMM expansion, inexact for close points
  (it can be 0 for distinct points). Both are reproduced literally.
* m: scikit-learn's k-d tree counts a point when ``(a - b)**2 <= r**2`` in float64 (leaf test),
  and prunes or accepts whole nodes by ``|a - b|`` against r (node bounds, through
  ``pow(pow(d, 2), 0.5)``, which gave back d for every d we tried). These agree, so the result
  does not depend on the tree's shape: rounding is monotone and the squares of two consecutive
  doubles round to different doubles (away from underflow, i.e. for distances above ~1e-154,
  far below the noise), so the predicate is exactly ``|fl(a - b)| <= r``. On a sorted column it
  holds on a contiguous run around the point. Each end of the run is found by bisection between
  a position known inside (the farthest same-label neighbour within the radius, counted from
  the 2k gaps) and one known outside (the next same-label point: fewer than k neighbours lie
  strictly closer than d_k; or the column's end when the radius is 0), evaluating that
  predicate at every probe,
  so ties and duplicates need no special case. (A ``searchsorted`` of ``point -/+ radius``
  would be off by one where the rounded bound meets a value, and checking both ends of every
  run costs more than the bisection, which has few positions to search.)

Differences from scikit-learn, all outside its domain: an input where every label occurs once
(scikit-learn raises) gives zeros here; ``random_state`` must be an int (no RandomState, no None).
The noise matrix of the last (N, D, random_state) is cached (read-only), since consecutive groups
of the same size draw the same matrix; it costs 8 N D bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from failstore.errors import InputError

_TINY_STD = 10 * np.finfo(np.float64).eps
_noise_cache: dict[tuple[int, int, int], np.ndarray] = {}


def mutual_info(
    X: np.ndarray,
    failure: np.ndarray,
    *,
    n_neighbors: int = 3,
    random_state: int = 0,
    block_size: int = 128,
    n_jobs: int = 1,
) -> np.ndarray:
    """Mutual information (nats, >= 0) between each column of ``X`` (N x D, any float dtype)
    and the discrete label ``failure`` (N values: bool or integer codes), equal to scikit-learn's
    ``mutual_info_classif(X, failure, discrete_features=False, n_neighbors=n_neighbors,
    random_state=random_state)``.

    ``block_size`` columns are processed at a time, by ``n_jobs`` threads (numpy releases the
    GIL; the result does not depend on either). Memory: about 200 x N x block_size bytes per
    thread, plus the cached N x D float64 noise matrix."""
    x = np.asarray(X)
    y = np.asarray(failure)
    if x.ndim != 2:
        raise InputError(f"features must be a 2-D (images x features) matrix, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise InputError(f"failure has shape {y.shape}, expected ({x.shape[0]},)")
    if n_neighbors < 1 or block_size < 1 or n_jobs < 1:
        raise InputError("n_neighbors, block_size and n_jobs must be >= 1")
    n, d = x.shape
    mi = np.zeros(d, dtype=np.float64)
    if n == 0 or d == 0:
        return mi
    if not np.isfinite(x).all():
        raise InputError("features hold NaN or infinite values: mutual information needs finite")
    labels = _labels(y, n_neighbors)
    if labels is None:
        return mi  # scikit-learn raises here (no point left); no information either way
    noise = _noise(n, d, random_state)

    def block(start: int) -> None:
        cols = slice(start, min(d, start + block_size))
        values = _scaled_with_noise(x[:, cols].T, noise[:, cols].T)  # one row per feature
        mi[cols] = _mi_of_rows(values, labels, n_neighbors)

    starts = range(0, d, block_size)
    if n_jobs == 1 or len(starts) == 1:
        for start in starts:
            block(start)
    else:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(starts))) as pool:
            list(pool.map(block, starts))
    return mi


def select_top_k(mi: np.ndarray, k: int) -> np.ndarray:
    """The columns of the k largest values of ``mi``, in ASCENDING order of MI (the reference's
    ``np.argsort(mi)[-k:]``), k clipped to [0, D]. Ties are broken by a stable sort: equal values
    keep their column order, so at a tie the higher column indices are kept and come last
    (numpy's default quicksort, which the reference uses, orders ties arbitrarily)."""
    values = np.asarray(mi, dtype=np.float64).reshape(-1)
    k = max(0, min(int(k), values.size))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argsort(values, kind="stable")[-k:].astype(np.int64)


def clear_noise_cache() -> None:
    """Forget the cached noise matrix (frees 8 N D bytes)."""
    _noise_cache.clear()


# ----------------------------------------------------------------------------- steps 1-2


def _noise(n: int, d: int, random_state: int) -> np.ndarray:
    """``RandomState(random_state).standard_normal((n, d))``, cached for the last (n, d, seed)."""
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise InputError(f"random_state must be an int, got {random_state!r}")
    key = (n, d, int(random_state))
    cached = _noise_cache.get(key)
    if cached is None:
        cached = np.random.RandomState(int(random_state)).standard_normal(size=(n, d))
        cached.flags.writeable = False
        _noise_cache.clear()
        _noise_cache[key] = cached
    return cached


def _scaled_with_noise(block: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Steps 1-2 on a block of features given as rows (B x N). scikit-learn scales a column
    copy ``X[:, mask]`` that numpy lays out in Fortran order, so its per-column sums run over
    contiguous memory (numpy's pairwise summation); reducing our C-ordered rows along axis 1 is
    the same sequence of operations, hence the same bits."""
    values = np.array(block, dtype=np.float64, order="C")
    std = np.std(values, axis=1)  # == np.nanstd, which scale() uses, for finite input
    std[std < _TINY_STD] = 1.0
    values /= std[:, None]
    means = np.maximum(1, np.mean(np.abs(values), axis=1))
    values += (1e-10 * means)[:, None] * noise
    return values


# ----------------------------------------------------------------------------- steps 3-4


@dataclass(frozen=True)
class _Labels:
    """What step 3-4 needs of the labels, shared by every feature."""

    keep: np.ndarray  # points whose label occurs more than once
    codes: np.ndarray  # their label codes 0..L-1
    constant: float  # psi(n) + mean psi(k) - mean psi(c) over the kept points
    psi: np.ndarray  # psi(0..n)


def _labels(y: np.ndarray, n_neighbors: int) -> _Labels | None:
    from scipy.special import digamma  # lazily: failstore's light commands never need scipy

    _, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)
    sizes = np.bincount(codes)
    keep = sizes[codes] > 1
    n_keep = int(np.count_nonzero(keep))
    if n_keep == 0:
        return None
    kept_codes = codes[keep]
    kept_sizes = sizes[kept_codes]
    k_all = np.minimum(n_neighbors, kept_sizes - 1)
    constant = float(digamma(n_keep)) + np.mean(digamma(k_all)) - np.mean(digamma(kept_sizes))
    psi = digamma(np.arange(n_keep + 1, dtype=np.float64))
    return _Labels(keep, kept_codes, float(constant), psi)


def _mi_of_rows(values: np.ndarray, labels: _Labels, n_neighbors: int) -> np.ndarray:
    """Steps 3-4 for prepared features given as rows (B x N float64), clipped at 0."""
    kept = values if labels.keep.all() else values[:, labels.keep]
    psi_sums = _psi_sum_of_counts(kept, labels.codes, n_neighbors, labels.psi)
    return np.maximum(labels.constant - psi_sums / kept.shape[1], 0.0)


def _psi_sum_of_counts(
    values: np.ndarray, codes: np.ndarray, n_neighbors: int, psi: np.ndarray
) -> np.ndarray:
    """Sum over points of psi(m) for each row of ``values`` (features x kept points).

    Works on the rows sorted and flattened: ``ordered[p]`` for flat positions p, row i holding
    positions [i n, (i + 1) n). For each point, the run of positions within its radius is
    found on each side between a position known inside and one known outside."""
    b, n = values.shape
    row_start = np.arange(b, dtype=np.int64) * n
    order = np.argsort(values, axis=1)
    sorted_codes = np.take(codes, order).ravel()
    order += row_start[:, None]
    ordered = np.take(values.ravel(), order.ravel())
    total = np.zeros(b, dtype=np.float64)
    for code in np.unique(codes):
        where = np.flatnonzero(sorted_codes == code)  # flat positions, row by row, ascending
        c = where.size // b
        own = np.take(ordered, where).reshape(
            b, c
        )  # this label's sorted values, one row per feature
        first = np.repeat(row_start - 1, c)  # just before each point's row
        last = first + (n + 1)  # just after it
        k = min(n_neighbors, c - 1)
        if k >= c // 2:  # scikit-learn's NearestNeighbors goes brute force here
            radius = _radius_brute(own, k).ravel()
            in_left = in_right = where
            out_left, out_right = first, last
        else:
            radius2, n_left, n_right = _radius_sorted(own, k)
            radius = radius2.ravel()
            # This label's positions padded with the row bounds. The run starts at the
            # farthest same-label neighbour inside the radius (n_left / n_right away) and stops
            # before the next one, which is outside (fewer than k neighbours lie strictly closer
            # than d_k); with radius 0 (duplicates) that does not hold: only the row bounds do.
            pad = k + 1
            padded = np.empty((b, c + 2 * pad), dtype=np.int64)
            padded[:, :pad] = (row_start - 1)[:, None]
            padded[:, pad + c :] = (row_start + n)[:, None]
            padded[:, pad : pad + c] = where.reshape(b, c)
            flat = padded.ravel()
            at = np.arange(b, dtype=np.int64)[:, None] * (c + 2 * pad) + np.arange(pad, pad + c)
            at_left = at.ravel() - n_left.ravel()
            at_right = at.ravel() + n_right.ravel()
            in_left, out_left = np.take(flat, at_left), np.take(flat, at_left - 1)
            in_right, out_right = np.take(flat, at_right), np.take(flat, at_right + 1)
            zero = np.flatnonzero(radius == 0)
            out_left[zero] = first[zero]
            out_right[zero] = last[zero]
        point = own.ravel()
        lo = _farthest_inside(ordered, point, radius, in_left, out_left, -1)
        hi = _farthest_inside(ordered, point, radius, in_right, out_right, 1)
        m = hi - lo + 1
        total += np.take(psi, m).reshape(b, c).sum(axis=1)
    return total


def _radius_sorted(own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-d tree path on sorted rows: radius = nextafter(d_k, 0), and how many of the k - 1
    nearest same-label points on the left and on the right lie within it."""
    b, c = own.shape
    gaps = []  # gaps[t - 1][:, j] = own[j] - own[j - t], padded with inf on both sides
    for t in range(1, k + 1):
        g = np.empty((b, c + t), dtype=np.float64)
        g[:, :t] = np.inf
        g[:, c:] = np.inf
        np.subtract(own[:, t:], own[:, :-t], out=g[:, t:c])
        gaps.append(g)
    left = [g[:, :c] for g in gaps]  # point j against j - t: the tree's pt - x
    right = [g[:, t + 1 : t + 1 + c] for t, g in enumerate(gaps)]  # against j + t (sign exact)
    # k-th smallest of the union of two ascending lists: min over i of max(L_i, R_(k-i)).
    dk = np.minimum(right[k - 1], left[k - 1])
    tmp = np.empty_like(dk)
    for i in range(1, k):
        np.maximum(left[i - 1], right[k - i - 1], out=tmp)
        np.minimum(dk, tmp, out=dk)
    np.multiply(dk, dk, out=dk)
    np.sqrt(dk, out=dk)
    radius = np.nextafter(dk, 0, out=dk)
    n_left = np.zeros((b, c), dtype=np.int8)
    n_right = np.zeros((b, c), dtype=np.int8)
    for t in range(k - 1):
        n_left += left[t] <= radius
        n_right += right[t] <= radius
    return radius, n_left, n_right


def _radius_brute(own: np.ndarray, k: int) -> np.ndarray:
    """Brute-force path (labels of at most 7 points): scikit-learn's GEMM-expanded squared
    distance, clamped at 0, its (k+1)-th smallest over the label (self included, at 0)."""
    sq = own * own
    middle = -2.0 * (own[:, :, None] * own[:, None, :])
    dist2 = np.maximum((sq[:, :, None] + middle) + sq[:, None, :], 0.0)
    kth = np.sort(dist2, axis=2)[:, :, k]
    return np.nextafter(np.sqrt(kth), 0)


def _farthest_inside(
    ordered: np.ndarray,
    point: np.ndarray,
    radius: np.ndarray,
    inside: np.ndarray,
    outside: np.ndarray,
    step: int,
) -> np.ndarray:
    """For each query, the flat position between ``inside`` (within the radius) and
    ``outside`` (beyond it, or past the row's end), in direction ``step`` (-1 or 1), farthest
    from ``inside`` and still satisfying ``|point - ordered[q]| <= radius``: a bisection, the
    predicate being monotone along a sorted row.

    Queries are sorted by the number of halvings they need, ceil(log2(gap)), so that halving t
    runs on a prefix of the arrays, in place. The midpoint is rounded towards ``inside``: once
    the gap is 1, a further halving probes ``inside`` again and changes nothing."""
    found = inside.copy()
    gap = outside - inside
    if step < 0:
        np.negative(gap, out=gap)
    todo = np.flatnonzero(gap > 1)
    if todo.size == 0:
        return found
    span = np.take(gap, todo) - 1
    halvings = np.take(_HALVINGS, np.minimum(span, _HALVINGS.size - 1))
    wide = np.flatnonzero(span >= _HALVINGS.size)
    halvings[wide] = np.frexp(span[wide].astype(np.float64))[1]
    order = np.argsort(-halvings, kind="stable")
    todo = np.take(todo, order)
    counts = np.bincount(np.take(halvings, order), minlength=64)
    prefix = np.cumsum(counts[::-1])[::-1]  # prefix[t]: queries needing at least t halvings
    a, b = np.take(inside, todo), np.take(outside, todo)
    v, r = np.take(point, todo), np.take(radius, todo)
    mid = np.empty_like(a)
    probe = np.empty_like(v)
    ok = np.empty(a.shape, dtype=bool)
    for t in range(1, int(halvings.max()) + 1):
        m = int(prefix[t])
        am, bm, midm, pm, okm = a[:m], b[:m], mid[:m], probe[:m], ok[:m]
        np.add(am, bm, out=midm)
        if step < 0:
            midm += 1
        midm >>= 1
        np.take(ordered, midm, out=pm)
        np.subtract(v[:m], pm, out=pm)
        np.abs(pm, out=pm)
        np.less_equal(pm, r[:m], out=okm)
        np.copyto(am, midm, where=okm)
        np.logical_not(okm, out=okm)
        np.copyto(bm, midm, where=okm)
    found[todo] = a
    return found


# bit length of 0..1023: the halvings a gap of span + 1 positions needs
_HALVINGS = np.frexp(np.arange(1024, dtype=np.float64))[1].astype(np.int8)
