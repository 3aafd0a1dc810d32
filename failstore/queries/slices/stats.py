"""Statistics of failure slices: Fisher p-values, Benjamini-Hochberg q-values, descriptions.

Pure, vectorised functions over integer count arrays; no I/O. ``slice_search`` calls them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Threshold comparisons: a quantity x meets a threshold t when x >= t - TOLERANCE, so that a drop
# (or gain) of exactly t counts even when float subtraction lands one ulp below t
# (0.7 - 0.5 == 0.19999999999999996).
TOLERANCE = 1e-12


def at_least(x: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """``x >= threshold`` with the documented tolerance (works on arrays and scalars)."""
    return x >= threshold - TOLERANCE


def fisher_greater(
    size: np.ndarray, errors: np.ndarray, group_size: int, group_errors: int
) -> np.ndarray:
    """One-sided Fisher exact p-values that each slice holds MORE errors than the rest of G.

    The table of a slice is ``[[errors_S, correct_S], [errors_rest, correct_rest]]`` and the
    alternative is 'greater'. This is the same computation as
    ``scipy.stats.fisher_exact(table, alternative='greater')`` (hypergeometric CDF of the
    slice's correct count; p = 1 when a row or column of the table sums to zero), vectorised.
    """
    size = np.asarray(size, dtype=np.int64)
    errors = np.asarray(errors, dtype=np.int64)
    if size.size == 0:
        return np.zeros(0, dtype=np.float64)
    correct_s = size - errors
    group_correct = group_size - group_errors
    rest = group_size - size
    degenerate = (size == 0) | (rest == 0) | (group_errors == 0) | (group_correct == 0)
    with np.errstate(all="ignore"):
        from scipy.stats import hypergeom  # ~0.6 s to import: only when a search runs

        p = hypergeom.cdf(correct_s, group_size, size, group_correct)
    p = np.asarray(p, dtype=np.float64)
    p = np.where(degenerate, 1.0, np.minimum(p, 1.0))
    return p


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up q-values (monotone, capped at 1) in the input order."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1, dtype=np.float64)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m, dtype=np.float64)
    q[order] = np.minimum(ranked, 1.0)
    return q


def describe(
    tag_names: Sequence[str],
    size: int,
    error_rate: float,
    base_error_rate: float,
    class_name: str = "",
) -> str:
    """One deterministic line, e.g.
    ``bird images tagged 'sand' + 'small': error rate 0.62 vs 0.08 for all bird images (n=45)``.
    """
    subject = f"{class_name} images" if class_name else "images"
    whole = f"all {class_name} images" if class_name else "the whole group"
    tags = " + ".join(f"'{name}'" for name in tag_names)
    return (
        f"{subject} tagged {tags}: error rate {error_rate:.2f} vs {base_error_rate:.2f} "
        f"for {whole} (n={size})"
    )


def slice_records(
    tag_lists: list[list[str]],
    sizes: np.ndarray,
    errors: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    n_all: int,
    e_all: int,
    class_name: str = "",
) -> list[dict]:
    """Output rows (without eval columns) of slices of a group of n_all images, e_all errors."""
    base = e_all / n_all
    out = []
    for tags, n, e, pv, qv in zip(tag_lists, sizes.tolist(), errors.tolist(), p, q, strict=True):
        rate = e / n
        coverage = e / e_all if e_all else 0.0
        out.append(
            {
                "tags": tags, "size": n, "errors": e, "error_rate": rate,
                "base_error_rate": base, "accuracy_drop": (n_all - e_all) / n_all - (n - e) / n,
                "error_coverage": coverage, "importance": rate * coverage,
                "p_value": float(pv), "q_value": float(qv),
                "description": describe(tags, n, rate, base, class_name),
            }
        )  # fmt: skip
    return out
