"""Leaves described in words: the tags most over-represented among a leaf's failures.

Beyond the paper (Barlow's authors describe leaves by looking at pictures). For a leaf with
failures L inside a group of N images, and a tag t carried by G_t images of the group and by a_t
of the leaf's failures:

* lift = P(t | leaf failures) / P(t | group) = (a_t / |L|) / (G_t / N);
* p-value: one-sided Fisher exact test that the tag is more frequent among the leaf's failures
  than among the rest of the group, i.e. of the table
  ``[[a_t, |L| - a_t], [G_t - a_t, (N - |L|) - (G_t - a_t)]]`` with alternative 'greater'
  (the same hypergeometric tail as ``scipy.stats.fisher_exact``, vectorised over tags; 1 when a
  row or column of the table is empty);
* a tag qualifies when a_t >= min_count (default 2) and lift > 1 (compared exactly, in integers);
* qualifying tags are ranked by p-value ascending, then lift descending, then tag name; the
  first ``top`` (default 3) are kept and the description is their names joined by ", "
  (empty when no tag qualifies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from failstore.errors import InputError


class TagEvidence(NamedTuple):
    """A tag over-represented among a leaf's failures; a plain ``(tag, lift, p_value)`` too."""

    tag: str
    lift: float
    p_value: float


def description(evidence: Sequence[TagEvidence]) -> str:
    """The leaf's description: its tags' names joined by ", " ("" when none qualified)."""
    return ", ".join(e.tag for e in evidence)


def describe_leaves(
    tags: np.ndarray,
    tag_names: Sequence[str],
    failure: np.ndarray,
    member_leaf: np.ndarray,
    leaves: Sequence[Any],
    top: int = 3,
    *,
    min_count: int = 2,
) -> dict[int, list[TagEvidence]]:
    """For each entry of ``leaves`` (node ids, or objects with a ``node`` attribute such as
    ``explain.Leaf``): node id -> its best tags (at most ``top``, best first; possibly none).
    ``tags``: N x T booleans of the group; ``member_leaf``: the leaf of each image. The leaf's
    description is ``description(result[node])``."""
    x = np.asarray(tags, dtype=bool)
    fail = np.asarray(failure, dtype=bool).reshape(-1)
    member = np.asarray(member_leaf, dtype=np.int64).reshape(-1)
    names = [str(name) for name in tag_names]
    if x.ndim != 2 or x.shape[1] != len(names):
        raise InputError(f"tags must be N x {len(names)} (one column per tag name), got {x.shape}")
    if fail.shape != (x.shape[0],) or member.shape != fail.shape:
        raise InputError(
            f"tags ({x.shape[0]} rows), failure {fail.shape} and member_leaf {member.shape} "
            "do not match"
        )
    if top < 0 or min_count < 1:
        raise InputError("top must be >= 0 and min_count >= 1")
    n = x.shape[0]
    in_group = np.count_nonzero(x, axis=0).astype(np.int64)
    out: dict[int, list[TagEvidence]] = {}
    for item in leaves:
        node = int(getattr(item, "node", item))
        rows = (member == node) & fail
        size = int(np.count_nonzero(rows))
        count = np.count_nonzero(x[rows], axis=0).astype(np.int64)
        p = _fisher_greater(count, size, in_group, n)
        qualify = np.flatnonzero((count >= min_count) & (count * n > size * in_group))
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = (count * n) / (size * in_group)
        ranked = sorted(qualify.tolist(), key=lambda t: (p[t], -lift[t], names[t]))[:top]
        out[node] = [TagEvidence(names[t], float(lift[t]), float(p[t])) for t in ranked]
    return out


def _fisher_greater(count: np.ndarray, size: int, in_group: np.ndarray, n: int) -> np.ndarray:
    """Vectorised ``fisher_exact([[a, size - a], [G - a, n - size - G + a]], 'greater')``
    p-values over tags: the hypergeometric CDF scipy uses, 1 for an empty row or column."""
    from scipy.stats import hypergeom  # lazily: scipy.stats costs ~0.6 s of imports

    with np.errstate(all="ignore"):
        p = np.asarray(hypergeom.cdf(size - count, n, size, n - in_group), dtype=np.float64)
    degenerate = (size == 0) | (size == n) | (in_group == 0) | (in_group == n)
    return np.where(degenerate, 1.0, np.minimum(p, 1.0))
