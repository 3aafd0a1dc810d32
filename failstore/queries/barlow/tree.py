"""Barlow's shallow decision tree on the selected features, its leaves' rules and metrics.

``fit_tree`` fits scikit-learn's ``DecisionTreeClassifier(criterion="entropy",
max_depth=max_depth, min_samples_leaf=min_leaf, class_weight={0: 1, 1: n_ok / n_fail},
random_state=random_state)`` on the selected columns, cast to float32 as scikit-learn does, in
the order given (ascending mutual information: column order decides ties between equally good
splits). It returns every leaf with its path as conditions on the ORIGINAL column indices:
scikit-learn sends ``value <= threshold`` to the left child and the rest to the right, and node
ids are depth first (depth 1: root 0, left leaf 1, right leaf 2).

``leaf_metrics`` recomputes the metrics of Singla et al. from membership alone, with unweighted
counts (class weights only shape the fit): for a leaf with n images and f failures in a group of
F failures, error rate ER = f / n, error coverage EC = f / F, importance IV = ER * EC.
``average_leaf_error_rate`` is ALER = sum ER * EC = (1/F) sum f^2 / n, computed in exact
rational arithmetic and rounded once, so that ALER >= BER = F / N also holds in floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from failstore.errors import InputError

LEFT, RIGHT = "<=", ">"
THRESHOLD_DIGITS = 4  # significant digits of thresholds in rule text (conditions keep the float)

LEAF_METRICS_SCHEMA = pa.schema(
    [
        pa.field("leaf", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("failures", pa.int64()),
        pa.field("error_rate", pa.float64()),
        pa.field("error_coverage", pa.float64()),
        pa.field("importance", pa.float64()),
    ]
)


class Condition(NamedTuple):
    """One test on a path: ``value(feature) <op> threshold``, op ``<=`` (scikit-learn's left
    branch) or ``>``. ``feature`` is the original column index; ``threshold`` is scikit-learn's
    float64 threshold, compared with the float32 feature value. A plain tuple
    ``(feature, op, threshold)`` as well."""

    feature: int
    op: str
    threshold: float

    def holds(self, features: np.ndarray) -> np.ndarray:
        """Which rows of ``features`` (N x D, original columns) satisfy the condition."""
        column = np.asarray(features[:, self.feature], dtype=np.float32).astype(np.float64)
        return column <= self.threshold if self.op == LEFT else column > self.threshold

    def text(self, feature_names: Sequence[str] | None = None) -> str:
        name = f"feature {self.feature}" if feature_names is None else feature_names[self.feature]
        return f"{name} {self.op} {self.threshold:.{THRESHOLD_DIGITS}g}"


def rule_text(conditions: Sequence[Condition], feature_names: Sequence[str] | None = None) -> str:
    """``feature 1234 > 0.53 and feature 88 <= 0.1`` (root to leaf); ``all images`` for a tree
    that did not split. Thresholds are shown with 4 significant digits."""
    if not conditions:
        return "all images"
    return " and ".join(c.text(feature_names) for c in conditions)


@dataclass(frozen=True)
class FittedTree:
    """A fitted tree: ``leaves`` (node ids, ascending), the path of each leaf, and the leaf of
    every row (``member_leaf``, scikit-learn's ``apply``). ``model`` is the scikit-learn
    estimator (its columns are the selected ones, in the order given)."""

    leaves: tuple[int, ...]
    paths: dict[int, tuple[Condition, ...]]
    member_leaf: np.ndarray
    model: object


def fit_tree(
    features: np.ndarray,
    failure: np.ndarray,
    columns: Sequence[int] | np.ndarray,
    *,
    max_depth: int = 1,
    min_leaf: int = 1,
    random_state: int = 0,
) -> FittedTree:
    """Fit Barlow's tree on ``features[:, columns]`` (N x D, any float dtype; cast to float32)
    against ``failure`` (N bools). Needs at least one failure and one success."""
    from sklearn.tree import DecisionTreeClassifier  # lazily: ~0.3 s of imports

    x = np.asarray(features)
    fail = np.asarray(failure, dtype=bool).reshape(-1)
    cols = np.asarray(columns, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or fail.shape != (x.shape[0],):
        raise InputError(f"features {x.shape} and failure {fail.shape} do not match")
    if cols.size == 0 or cols.min() < 0 or cols.max() >= x.shape[1]:
        raise InputError(f"columns must be 1 to {x.shape[1]} indices into the features")
    n_fail = int(np.count_nonzero(fail))
    n_ok = fail.size - n_fail
    if n_fail == 0 or n_ok == 0:
        raise InputError("a Barlow tree needs at least one failure and one success")
    model = DecisionTreeClassifier(
        criterion="entropy",
        max_depth=max_depth,
        min_samples_leaf=min_leaf,
        class_weight={0: 1, 1: n_ok / n_fail},
        random_state=random_state,
    )
    selected = np.asarray(x[:, cols], dtype=np.float32)
    model.fit(selected, fail.astype(np.int64))
    tree = model.tree_
    paths: dict[int, tuple[Condition, ...]] = {}
    stack: list[tuple[int, tuple[Condition, ...]]] = [(0, ())]
    while stack:
        node, path = stack.pop()
        left, right = int(tree.children_left[node]), int(tree.children_right[node])
        if left == -1:
            paths[node] = path
            continue
        feature, threshold = int(cols[tree.feature[node]]), float(tree.threshold[node])
        stack.append((right, (*path, Condition(feature, RIGHT, threshold))))
        stack.append((left, (*path, Condition(feature, LEFT, threshold))))
    member = model.apply(selected).astype(np.int64)
    return FittedTree(tuple(sorted(paths)), dict(sorted(paths.items())), member, model)


# ----------------------------------------------------------------------------- metrics


def leaf_metrics(member_leaf: np.ndarray, failure: np.ndarray) -> pa.Table:
    """One row per distinct value of ``member_leaf`` (ascending): leaf, n, failures, and
    error_rate = failures / n, error_coverage = failures / F (F = failures over all rows; 0 when
    F = 0), importance = error_rate * error_coverage. Unweighted counts."""
    member = np.asarray(member_leaf, dtype=np.int64).reshape(-1)
    fail = np.asarray(failure, dtype=bool).reshape(-1)
    if member.shape != fail.shape:
        raise InputError(f"member_leaf {member.shape} and failure {fail.shape} do not match")
    leaves, index = np.unique(member, return_inverse=True)
    n = np.bincount(index, minlength=leaves.size).astype(np.int64)
    failures = np.bincount(index, weights=fail, minlength=leaves.size).astype(np.int64)
    total = int(failures.sum())
    rate = failures / n if leaves.size else np.zeros(0)
    coverage = failures / total if total else np.zeros(leaves.size)
    return pa.table(
        [leaves, n, failures, rate, coverage, rate * coverage], schema=LEAF_METRICS_SCHEMA
    )


def average_leaf_error_rate(
    n: Sequence[int] | np.ndarray, failures: Sequence[int] | np.ndarray
) -> float:
    """ALER = sum over leaves of ER * EC = (1/F) sum f^2 / n, exact then rounded once (0 when
    there is no failure). Leaves with n = 0 contribute nothing."""
    pairs = [(int(a), int(f)) for a, f in zip(n, failures, strict=True) if int(a) > 0]
    total = sum(f for _, f in pairs)
    if total == 0:
        return 0.0
    return float(sum((Fraction(f * f, a) for a, f in pairs), Fraction(0)) / total)
