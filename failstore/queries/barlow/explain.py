"""Barlow (Singla et al., "Understanding Failures of Deep Networks via Robust Feature
Extraction") on one group: mutual-information feature selection, a shallow entropy tree, its
leaves' error rate / coverage / importance, and which leaves are valid failure modes.

``explain_group(features, failure, params)`` runs the whole pipeline on one group (the images of
one class under label or prediction grouping): features N x D (the robust model's penultimate
features, float32, in stored column order), failure N bools (prediction wrong).

Defaults (``BarlowParams``) follow the paper's main experiments:

* top_k = 20: Section 5, "we compute the mutual information between each feature and failure
  labels in the group, and select the top-20 features, sorted by mutual information values"
  (the reference ImageNet notebook passes 50; its function default is 20).
* max_depth = 1: Section 6, "For ease of exposition, all decision trees have depth one" (the
  figures, Appendix F and the reference notebook); Section 5 allows "a low depth (<= 3)", and
  Section 7 also reports depth 3, hence the limit 1..3.
* delta = 0.1, tau = 0.2, strict: Section 7 and Appendix D Algorithm 1, a leaf is valid when
  "ER(C_l) > BER + delta and EC(C_l) > tau". The comparison is exact: ER, BER and EC are
  ratios of counts and delta, tau are read as the decimals they print as (0.1 is 1/10).
* min_leaf = 1 (scikit-learn's default; the reference sets no minimum), random_state = 0 for
  both the mutual-information noise and the tree (the reference leaves the tree's unset).

Leaves are ordered by importance, highest first; exact ties by more images, then by node id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from failstore.errors import InputError
from failstore.queries.barlow.mutual_info import mutual_info, select_top_k
from failstore.queries.barlow.tree import (
    Condition,
    average_leaf_error_rate,
    fit_tree,
    leaf_metrics,
    rule_text,
)
from failstore.queries.framework.params import Param, check_params

EXPLAINED = "explained"
NO_FAILURES = "no failures"
ONLY_FAILURES = "only failures"
TOO_FEW = "too few images"

# The parameters, declared once: BarlowParams and the Barlow analysis (and so the CLI) check
# them with these limits and messages.
BARLOW_PARAMS: tuple[Param, ...] = (
    Param(
        "top_k",
        20,
        "k: keep the k features with the highest mutual information with failure.",
        kind=int,
        low=1,
    ),
    Param("max_depth", 1, "Depth of the tree (the paper: at most 3).", kind=int, low=1, high=3),
    Param("min_leaf", 1, "At least this many images in every leaf of the tree.", kind=int, low=1),
    Param(
        "delta",
        0.1,
        "A valid leaf's error rate exceeds the group's base error rate by more than this.",
        kind=float,
        low=0,
        high=1,
    ),
    Param(
        "tau",
        0.2,
        "A valid leaf holds more than this share of the group's failures.",
        kind=float,
        low=0,
        high=1,
    ),
)


@dataclass(frozen=True)
class BarlowParams:
    top_k: int = 20
    max_depth: int = 1
    min_leaf: int = 1
    delta: float = 0.1
    tau: float = 0.2
    random_state: int = 0

    def __post_init__(self) -> None:
        checked = check_params(
            BARLOW_PARAMS, {p.name: getattr(self, p.name) for p in BARLOW_PARAMS}
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, int):
            raise InputError(f"random_state must be an int, got {self.random_state!r}")


def barlow_params(params: dict[str, Any]) -> BarlowParams:
    """``BarlowParams`` from a parameter dict (e.g. an analysis run's): the declared names plus
    ``random_state``; missing ones take their defaults, other keys are ignored."""
    values = {p.name: params.get(p.name, p.default) for p in BARLOW_PARAMS}
    return BarlowParams(**values, random_state=params.get("random_state", 0))


@dataclass(frozen=True)
class Leaf:
    """A leaf of the tree: node id, rule (text and conditions on original columns), counts and
    metrics (unweighted), and whether it is a valid failure mode."""

    node: int
    rule: str
    conditions: tuple[Condition, ...]
    n: int
    failures: int
    error_rate: float
    error_coverage: float
    importance: float
    valid: bool


@dataclass(frozen=True)
class GroupResult:
    """Barlow on one group. Without a tree (``status`` other than ``explained``): no leaves,
    ``aler`` None, ``member_leaf`` all -1, empty selection; ``ber`` is 0 for an empty group.
    ``selected``: the top-k columns in ascending order of mutual information (the tree's column
    order), ``mutual_info`` their MI in nats."""

    status: str
    n: int
    failures: int
    ber: float
    aler: float | None
    selected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mutual_info: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    leaves: list[Leaf] = field(default_factory=list)
    member_leaf: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def aler_minus_ber(self) -> float | None:
        return None if self.aler is None else self.aler - self.ber

    @property
    def valid_leaves(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.valid]


def explain_group(
    features: np.ndarray,
    failure: np.ndarray,
    params: BarlowParams = BarlowParams(),
    *,
    feature_names: Sequence[str] | None = None,
    block_size: int = 128,
    n_jobs: int | None = None,
) -> GroupResult:
    """Barlow on one group: MI of every column with failure (``mutual_info``, scikit-learn's
    estimator), the top k columns, the tree on them, its leaves ranked by importance. A group
    with fewer than 2 images, no failure or only failures gets a status and no tree.

    ``feature_names`` (one per column) replace ``feature i`` in the rules. ``block_size`` and
    ``n_jobs`` (threads for the mutual information; None: one per available core, at most 8)
    change the speed and memory, never the result."""
    x = np.asarray(features)
    fail = np.asarray(failure, dtype=bool).reshape(-1)
    if x.ndim != 2 or fail.shape != (x.shape[0],):
        raise InputError(f"features {x.shape} and failure {fail.shape} do not match")
    if feature_names is not None and len(feature_names) != x.shape[1]:
        raise InputError(f"{len(feature_names)} feature names for {x.shape[1]} features")
    n, f = fail.size, int(np.count_nonzero(fail))
    status = TOO_FEW if n < 2 else NO_FAILURES if f == 0 else ONLY_FAILURES if f == n else None
    ber = f / n if n else 0.0
    if status is not None:
        return GroupResult(status, n, f, ber, None, member_leaf=np.full(n, -1, dtype=np.int64))
    jobs = n_jobs if n_jobs is not None else default_threads()
    mi = mutual_info(x, fail, random_state=params.random_state, block_size=block_size, n_jobs=jobs)
    selected = select_top_k(mi, params.top_k)
    tree = fit_tree(
        x,
        fail,
        selected,
        max_depth=params.max_depth,
        min_leaf=params.min_leaf,
        random_state=params.random_state,
    )
    table = leaf_metrics(tree.member_leaf, fail).to_pydict()
    leaves = []
    for i, node in enumerate(table["leaf"]):
        size, errors = table["n"][i], table["failures"][i]
        valid = leaf_is_valid(size, errors, n, f, delta=params.delta, tau=params.tau)
        path = tree.paths[node]
        leaves.append(
            Leaf(
                node=node,
                rule=rule_text(path, feature_names),
                conditions=path,
                n=size,
                failures=errors,
                error_rate=table["error_rate"][i],
                error_coverage=table["error_coverage"][i],
                importance=table["importance"][i],
                valid=valid,
            )
        )
    # importance = f^2 / (n F): rank by the exact f^2 / n, then more images, then node id
    leaves.sort(key=lambda leaf: (-Fraction(leaf.failures**2, leaf.n), -leaf.n, leaf.node))
    return GroupResult(
        status=EXPLAINED,
        n=n,
        failures=f,
        ber=ber,
        aler=average_leaf_error_rate(table["n"], table["failures"]),
        selected=selected,
        mutual_info=mi[selected],
        leaves=leaves,
        member_leaf=tree.member_leaf,
    )


def leaf_is_valid(
    n: int, failures: int, group_n: int, group_failures: int, *, delta: float, tau: float
) -> bool:
    """ER > BER + delta and EC > tau, strictly, in exact arithmetic: ER = failures / n,
    BER = group_failures / group_n, EC = failures / group_failures, and delta, tau read as the
    decimals they print as (0.1 is 1/10). False for an empty leaf or a group without failures."""
    if n <= 0 or group_n <= 0 or group_failures <= 0:
        return False
    lift = Fraction(failures, n) - Fraction(group_failures, group_n)
    coverage = Fraction(failures, group_failures)
    return lift > _decimal(delta) and coverage > _decimal(tau)


def default_threads() -> int:
    """Threads for the mutual information by default: the cores this process may use, at most
    8."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, min(8, len(os.sched_getaffinity(0))))
    return max(1, min(8, os.cpu_count() or 1))  # pragma: no cover


def _decimal(x: float) -> Fraction:
    """A threshold as the decimal it prints as (0.1 -> 1/10), so that comparisons at the
    boundary behave as written."""
    return Fraction(repr(float(x)))
