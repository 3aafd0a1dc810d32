"""Tests of Barlow's pure algorithm: mutual information equal to scikit-learn's, top-k, the tree
equal to scikit-learn's, leaf metrics against brute force, group statuses, leaf descriptions."""

from __future__ import annotations

import zlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import fisher_exact
from sklearn.feature_selection import mutual_info_classif
from sklearn.feature_selection._mutual_info import _compute_mi_cd
from sklearn.tree import DecisionTreeClassifier

from failstore.errors import ConfigError, InputError
from failstore.queries.barlow import mutual_info as mi_module
from failstore.queries.barlow.describe import TagEvidence, describe_leaves, description
from failstore.queries.barlow.explain import (
    BARLOW_PARAMS,
    EXPLAINED,
    NO_FAILURES,
    ONLY_FAILURES,
    TOO_FEW,
    BarlowParams,
    barlow_params,
    explain_group,
    leaf_is_valid,
)
from failstore.queries.barlow.mutual_info import mutual_info, select_top_k
from failstore.queries.barlow.tree import (
    Condition,
    average_leaf_error_rate,
    fit_tree,
    leaf_metrics,
    rule_text,
)


def sklearn_mi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return mutual_info_classif(x, y, discrete_features=False, n_neighbors=3, random_state=0)


# ----------------------------------------------------------------------------- mutual information


def _case(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    # zlib.crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), and some
    # draws of the "duplicates" case leave columns 5:9 with no information at all (MI 0 with
    # or without the other columns' noise), which failed the test once in a full run
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "normal":
        return rng.normal(size=(300, 23)).astype(np.float32), rng.random(300) < 0.2, 5
    if name == "duplicates":  # few distinct values: ties everywhere before the noise
        x = np.round(rng.normal(size=(200, 17)), 1).astype(np.float32)
        return x, rng.random(200) < 0.3, 4
    if name == "relu":  # half the values exactly 0, one constant column, one all-zero column
        x = np.maximum(rng.normal(size=(250, 19)), 0).astype(np.float32)
        x[:, 3], x[:, 11] = 2.5, 0.0
        return x, rng.random(250) < 0.25, 19
    if name == "single":  # one failure: its label occurs once and the point is dropped
        y = np.zeros(60, dtype=bool)
        y[7] = True
        return rng.normal(size=(60, 9)), y, 2
    if name == "tiny":  # N = 5: both labels go through scikit-learn's brute-force branch
        return rng.normal(size=(5, 6)).astype(np.float32), np.array([1, 0, 1, 0, 0], bool), 4
    if name == "small_labels":  # failures 2..7: brute force on one label, k-d tree on the other
        y = np.zeros(90, dtype=bool)
        y[rng.choice(90, size=int(rng.integers(2, 8)), replace=False)] = True
        return rng.normal(size=(90, 21)).astype(np.float32), y, 8
    if name == "scaled":  # large offsets and scales, float64 input
        x = rng.normal(size=(150, 12)) * rng.uniform(1e-3, 1e4, 12) + rng.uniform(-1e3, 1e3, 12)
        return x, rng.random(150) < 0.5, 5
    if name == "multiclass":  # integer labels, three classes
        return rng.normal(size=(120, 10)), rng.integers(0, 3, 120), 3
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    ["normal", "duplicates", "relu", "single", "tiny", "small_labels", "scaled", "multiclass"],
)
def test_mutual_info_equals_sklearn(name):
    x, y, block = _case(name)
    ours = mutual_info(x, y, block_size=block)  # blocks that split D unevenly
    assert ours.dtype == np.float64 and ours.shape == (x.shape[1],)
    np.testing.assert_allclose(ours, sklearn_mi(x, y), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours, mutual_info(x, y, block_size=x.shape[1]))
    np.testing.assert_array_equal(ours, mutual_info(x, y, block_size=3, n_jobs=2))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 80),
    d=st.integers(1, 9),
    rate=st.sampled_from([0.05, 0.2, 0.5]),
    decimals=st.sampled_from([None, 0, 1]),
    seed=st.integers(0, 2**32 - 1),
    block=st.integers(1, 4),
)
def test_mutual_info_equals_sklearn_random(n, d, rate, decimals, seed, block):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if decimals is not None:
        x = np.round(x, decimals)
    y = rng.random(n) < rate
    y[0], y[1] = True, False
    np.testing.assert_allclose(
        mutual_info(x, y, block_size=block), sklearn_mi(x, y), rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_mutual_info_other_neighbour_counts(k):
    rng = np.random.default_rng(k)
    x = np.round(rng.normal(size=(90, 7)), 1)
    y = rng.integers(0, 3, 90)
    y[:4] = 2  # a small third class: the brute-force branch for the larger k
    y[4:] = np.where(y[4:] == 2, 0, y[4:])
    expected = mutual_info_classif(x, y, discrete_features=False, n_neighbors=k, random_state=0)
    np.testing.assert_allclose(mutual_info(x, y, n_neighbors=k, block_size=3), expected, atol=1e-9)


def test_mutual_info_noise_uses_the_whole_matrix():
    # scikit-learn draws one N x D noise matrix, which breaks ties: with tied values a column's
    # MI depends on its position and on D (and on the seed), and we reproduce that
    x, y, _ = _case("duplicates")
    full, part = mutual_info(x, y), mutual_info(x[:, 5:9], y)
    np.testing.assert_allclose(part, sklearn_mi(x[:, 5:9], y), rtol=0, atol=1e-9)
    assert part.tolist() != full[5:9].tolist()
    other = mutual_info(x, y, random_state=1)
    np.testing.assert_allclose(
        other,
        mutual_info_classif(x, y, discrete_features=False, random_state=1),
        rtol=0,
        atol=1e-9,
    )
    assert other.tolist() != full.tolist()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 70),
    levels=st.integers(1, 8),
    classes=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_neighbour_counts_with_exact_duplicates_match_sklearn(n, levels, classes, seed):
    # Without the noise, points coincide exactly: radius 0 and runs of equal values. Compare the
    # counting steps (3-4) with scikit-learn's own per-feature estimator on the same values.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    labels = mi_module._labels(y, 3)
    if labels is None:
        return
    rows = rng.integers(0, levels, size=(5, n)).astype(np.float64) / 3
    ours = mi_module._mi_of_rows(rows, labels, 3)
    expected = [_compute_mi_cd(row.copy(), y, 3) for row in rows]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_mutual_info_edge_cases():
    x = np.random.default_rng(0).normal(size=(4, 3))
    assert mutual_info(x, np.array([0, 1, 2, 3])).tolist() == [0.0, 0.0, 0.0]  # sklearn raises
    assert mutual_info(np.zeros((0, 3)), np.zeros(0, bool)).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(
        mutual_info(x, np.zeros(4, bool)), sklearn_mi(x, np.zeros(4, bool)), atol=1e-9
    )
    with pytest.raises(InputError, match="finite"):
        mutual_info(np.array([[np.nan], [1.0]]), np.array([0, 1]))
    with pytest.raises(InputError, match="failure has shape"):
        mutual_info(x, np.zeros(3, bool))
    with pytest.raises(InputError, match="random_state"):
        mutual_info(x, np.zeros(4, bool), random_state=None)  # type: ignore[arg-type]


def test_noise_cache_returns_the_same_draw():
    mi_module.clear_noise_cache()
    a = mi_module._noise(7, 3, 0)
    assert a is mi_module._noise(7, 3, 0) and not a.flags.writeable
    np.testing.assert_array_equal(a, np.random.RandomState(0).standard_normal((7, 3)))
    assert mi_module._noise(7, 3, 1) is not a


# ----------------------------------------------------------------------------- top k


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5, 1.0]), min_size=0, max_size=30),
    k=st.integers(0, 40),
)
def test_select_top_k_is_a_stable_ascending_argsort(values, k):
    mi = np.array(values, dtype=np.float64)
    brute = sorted(range(len(values)), key=lambda i: (values[i], i))
    expected = brute[len(brute) - min(k, len(brute)) :]
    assert select_top_k(mi, k).tolist() == expected


def test_select_top_k_matches_the_reference_without_ties():
    mi = np.random.default_rng(1).random(50)
    assert select_top_k(mi, 20).tolist() == np.argsort(mi)[-20:].tolist()


# ----------------------------------------------------------------------------- tree


def _tree_data(seed: int, n: int = 300, d: int = 12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    logit = -1.5 + 2.0 * (x[:, 4] > 0.5) + 1.5 * (x[:, 9] < -0.3)
    fail = rng.random(n) < 1 / (1 + np.exp(-logit))
    return x, fail


@pytest.mark.parametrize("depth,min_leaf,seed", [(1, 1, 0), (2, 1, 1), (3, 5, 2), (3, 1, 3)])
def test_tree_equals_sklearn(depth, min_leaf, seed):
    x, fail = _tree_data(seed)
    columns = np.array([7, 4, 0, 9, 2])
    fitted = fit_tree(x, fail, columns, max_depth=depth, min_leaf=min_leaf, random_state=0)
    n_fail = int(fail.sum())
    ref = DecisionTreeClassifier(
        criterion="entropy",
        max_depth=depth,
        min_samples_leaf=min_leaf,
        class_weight={0: 1, 1: (fail.size - n_fail) / n_fail},
        random_state=0,
    ).fit(x[:, columns].astype(np.float32), fail.astype(int))
    np.testing.assert_array_equal(fitted.member_leaf, ref.apply(x[:, columns]))
    t = ref.tree_
    leaves = [i for i in range(t.node_count) if t.children_left[i] == -1]
    assert list(fitted.leaves) == leaves
    used = {(int(columns[t.feature[i]]), float(t.threshold[i])) for i in range(t.node_count)}
    for leaf in leaves:
        inside = np.ones(len(fail), dtype=bool)
        for cond in fitted.paths[leaf]:
            assert (cond.feature, cond.threshold) in used
            inside &= cond.holds(x)
        # the rule, evaluated on the original columns, selects exactly the leaf's rows
        np.testing.assert_array_equal(inside, fitted.member_leaf == leaf)
        assert len(fitted.paths[leaf]) <= depth


def test_rule_text():
    conds = (Condition(1234, ">", 0.53012), Condition(88, "<=", 0.1))
    assert rule_text(conds) == "feature 1234 > 0.5301 and feature 88 <= 0.1"
    names = [f"f{i}" for i in range(2000)]
    assert rule_text(conds, names) == "f1234 > 0.5301 and f88 <= 0.1"
    assert rule_text(()) == "all images"
    feature, op, threshold = conds[0]  # plain tuples too
    assert (feature, op, threshold) == (1234, ">", 0.53012)


def test_tree_refuses_groups_without_both_classes():
    x, _ = _tree_data(0, n=10)
    with pytest.raises(InputError, match="at least one failure and one success"):
        fit_tree(x, np.zeros(10, bool), [0])


# ----------------------------------------------------------------------------- leaf metrics


def brute_metrics(member, fail):
    total = sum(bool(f) for f in fail)
    rows = []
    for leaf in sorted(set(member.tolist())):
        n = sum(1 for m in member if m == leaf)
        f = sum(1 for m, e in zip(member, fail, strict=True) if m == leaf and e)
        er, ec = f / n, (f / total if total else 0.0)
        rows.append((leaf, n, f, er, ec, er * ec))
    return rows


@st.composite
def groups(draw):
    n = draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    member = rng.integers(0, draw(st.integers(1, 8)), n) * 2 + 1
    fail = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    return member, fail


@settings(max_examples=200, deadline=None)
@given(groups())
def test_leaf_metrics_against_brute_force(group):
    member, fail = group
    table = leaf_metrics(member, fail)
    got = list(zip(*[table[c].to_pylist() for c in table.column_names], strict=True))
    expected = brute_metrics(member, fail)
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([g[3:] for g in got], [e[3:] for e in expected], atol=1e-12)
    total = int(fail.sum())
    if total:
        assert abs(sum(table["error_coverage"].to_pylist()) - 1) <= 1e-12
        aler = average_leaf_error_rate(table["n"].to_pylist(), table["failures"].to_pylist())
        assert abs(aler - sum(e[5] for e in expected)) <= 1e-12
        assert aler >= total / len(fail)  # ALER >= BER, exactly, also in floats


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 3), n=st.integers(2, 150))
def test_explained_groups_satisfy_the_identities(seed, depth, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    fail = rng.random(n) < rng.uniform(0.05, 0.95)
    fail[0], fail[-1] = True, False
    result = explain_group(x, fail, BarlowParams(top_k=3, max_depth=depth))
    assert result.status == EXPLAINED
    assert result.aler is not None and result.aler >= result.ber
    assert sum(leaf.n for leaf in result.leaves) == n
    assert sum(leaf.failures for leaf in result.leaves) == result.failures
    assert abs(sum(leaf.error_coverage for leaf in result.leaves) - 1) <= 1e-12
    expected = brute_metrics(result.member_leaf, fail)
    for leaf in result.leaves:
        row = next(e for e in expected if e[0] == leaf.node)
        assert (leaf.n, leaf.failures) == row[1:3]
        assert abs(leaf.importance - row[5]) <= 1e-12
        valid = Fraction(leaf.failures, leaf.n) > Fraction(result.failures, n) + Fraction(1, 10)
        assert leaf.valid == (valid and Fraction(leaf.failures, result.failures) > Fraction(1, 5))
        assert leaf.valid == leaf_is_valid(
            leaf.n, leaf.failures, n, result.failures, delta=0.1, tau=0.2
        )
    keys = [(-Fraction(leaf.failures**2, leaf.n), -leaf.n, leaf.node) for leaf in result.leaves]
    assert keys == sorted(keys)


# ----------------------------------------------------------------------------- whole group


def test_explain_group_matches_the_reference_pipeline():
    x, fail = _tree_data(5, n=400, d=30)
    params = BarlowParams(top_k=6, max_depth=2)
    result = explain_group(x, fail, params, block_size=7)
    mi = sklearn_mi(x, fail)
    top = np.argsort(mi, kind="stable")[-6:]
    assert result.selected.tolist() == top.tolist()
    np.testing.assert_allclose(result.mutual_info, mi[top], atol=1e-9)
    n_fail = int(fail.sum())
    ref = DecisionTreeClassifier(
        criterion="entropy",
        max_depth=2,
        class_weight={0: 1, 1: (400 - n_fail) / n_fail},
        random_state=0,
    ).fit(x[:, top], fail.astype(int))
    np.testing.assert_array_equal(result.member_leaf, ref.apply(x[:, top]))
    assert result.ber == n_fail / 400
    assert result.aler_minus_ber == pytest.approx(result.aler - result.ber)


def test_a_feature_that_decides_failure_is_ranked_first_and_its_leaf_is_valid():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(500, 64)).astype(np.float32)
    fail = (x[:, 37] > 0.8) & (rng.random(500) < 0.9)  # feature 37 alone decides failure
    result = explain_group(x, fail, BarlowParams())
    assert result.status == EXPLAINED
    assert result.selected[-1] == 37  # ascending MI: the highest comes last
    assert result.mutual_info[-1] == result.mutual_info.max()
    best = result.leaves[0]
    assert best.valid and best.conditions[0].feature == 37 and best.conditions[0].op == ">"
    assert best.rule.startswith("feature 37 > 0.")
    assert result.valid_leaves == [best]


@pytest.mark.parametrize(
    "fail,status",
    [
        ([False] * 6, NO_FAILURES),
        ([True] * 6, ONLY_FAILURES),
        ([True], TOO_FEW),
        ([], TOO_FEW),
    ],
)
def test_groups_without_a_tree(fail, status):
    fail_arr = np.array(fail, dtype=bool)
    x = np.ones((len(fail), 4), dtype=np.float32)
    result = explain_group(x, fail_arr, BarlowParams())
    assert result.status == status
    assert result.leaves == [] and result.aler is None and result.aler_minus_ber is None
    assert result.member_leaf.tolist() == [-1] * len(fail)
    assert result.ber == (sum(fail) / len(fail) if fail else 0.0)


def test_params_are_declared_and_checked():
    assert [p.name for p in BARLOW_PARAMS] == ["top_k", "max_depth", "min_leaf", "delta", "tau"]
    defaults = BarlowParams()
    assert [getattr(defaults, p.name) for p in BARLOW_PARAMS] == [p.default for p in BARLOW_PARAMS]
    assert (defaults.top_k, defaults.max_depth, defaults.delta, defaults.tau) == (20, 1, 0.1, 0.2)
    with pytest.raises(ConfigError, match="max_depth must be between 1 and 3, got 4"):
        BarlowParams(max_depth=4)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        BarlowParams(top_k=0)
    with pytest.raises(ConfigError, match="tau must be between 0 and 1"):
        BarlowParams(tau=1.5)
    got = barlow_params({"top_k": 5, "delta": 0, "by": "label", "random_state": 3})
    assert got == BarlowParams(top_k=5, delta=0.0, random_state=3)


def test_validity_boundaries_are_exact():
    # strict: ER exactly BER + delta, or EC exactly tau, is not valid; 0.1 means 1/10
    assert not leaf_is_valid(5, 4, 20, 6, delta=0.5, tau=0.5)  # ER 0.8 == 0.3 + 0.5
    assert leaf_is_valid(5, 4, 20, 6, delta=0.49, tau=0.5)
    # ER 0.8 == BER 0.7 + 0.1, yet in floats 0.7 + 0.1 = 0.7999999999999999 < 0.8
    assert 4 / 5 > 7 / 10 + 0.1 and not leaf_is_valid(5, 4, 10, 7, delta=0.1, tau=0.2)
    assert not leaf_is_valid(10, 4, 100, 20, delta=0.1, tau=0.2)  # EC 4/20 == 0.2
    assert leaf_is_valid(10, 5, 100, 20, delta=0.1, tau=0.2)
    assert not leaf_is_valid(0, 0, 100, 20, delta=0.1, tau=0.2)
    assert not leaf_is_valid(3, 0, 10, 0, delta=0.0, tau=0.0)


# ----------------------------------------------------------------------------- descriptions


def brute_describe(tags, names, fail, member, leaf, top=3, min_count=2):
    n = len(fail)
    rows = [i for i in range(n) if member[i] == leaf and fail[i]]
    found = []
    for t, name in enumerate(names):
        a = sum(1 for i in rows if tags[i, t])
        g = int(tags[:, t].sum())
        if a < min_count or Fraction(a, len(rows)) <= Fraction(g, n):
            continue
        table = [[a, len(rows) - a], [g - a, n - len(rows) - g + a]]
        p = float(fisher_exact(table, alternative="greater").pvalue)
        found.append((p, -(a / len(rows)) / (g / n), name))
    found.sort()
    return [(name, -lift, p) for p, lift, name in found[:top]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), t=st.integers(0, 12), top=st.integers(0, 4))
def test_describe_leaves_against_fisher_exact(seed, t, top):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 150))
    member = rng.integers(1, 4, n)
    fail = rng.random(n) < 0.4
    tags = rng.random((n, t)) < rng.uniform(0.05, 0.9, t)
    tags[:, : t // 2] |= (fail & (member == 1))[:, None] & (rng.random((n, t // 2)) < 0.7)
    names = [f"tag{i:02d}" for i in range(t)]
    got = describe_leaves(tags, names, fail, member, [1, 2, 3], top=top)
    assert list(got) == [1, 2, 3]
    for leaf in (1, 2, 3):
        expected = brute_describe(tags, names, fail, member, leaf, top=top)
        assert [e.tag for e in got[leaf]] == [e[0] for e in expected]
        for ev, (_, lift, p) in zip(got[leaf], expected, strict=True):
            assert ev.lift == pytest.approx(lift, rel=1e-12)
            assert ev.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)


def test_describe_leaves_names_the_planted_tag():
    rng = np.random.default_rng(2)
    n = 400
    member = np.where(rng.random(n) < 0.5, 1, 2)
    snow = rng.random(n) < 0.15
    fail = np.where(member == 1, snow | (rng.random(n) < 0.05), rng.random(n) < 0.05)
    tags = np.column_stack([snow, rng.random(n) < 0.3, rng.random(n) < 0.5])
    got = describe_leaves(tags, ["snow", "grass", "indoor"], fail, member, [1])
    assert got[1][0] == TagEvidence("snow", got[1][0].lift, got[1][0].p_value)
    assert got[1][0].lift > 3 and got[1][0].p_value < 1e-10
    assert description(got[1]).startswith("snow")
    assert description([]) == ""
