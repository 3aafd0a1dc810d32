"""Tests of the exact failure-slice search: oracle equivalence, golden numbers, planted truth."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import fisher_exact

from failstore.errors import ConfigError, InputError
from failstore.queries.slices import search as slice_search
from failstore.queries.slices.search import (
    SliceParams,
    brute_force_slices,
    find_slices,
    slice_schema,
)
from failstore.queries.slices.stats import bh_qvalues, describe, fisher_greater

EVAL_COLUMNS = ("eval_size", "eval_error_rate", "eval_accuracy_drop", "holds")


def names(t: int) -> list[str]:
    return [f"tag{i}" for i in range(t)]


def assert_same(fast: pa.Table, oracle: pa.Table) -> None:
    assert fast.schema == oracle.schema
    a, b = fast.to_pylist(), oracle.to_pylist()
    assert [r["tags"] for r in a] == [r["tags"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float):
                tol = 1e-9 if key in ("p_value", "q_value") else 1e-12
                assert math.isclose(va, vb, rel_tol=tol, abs_tol=tol), (key, va, vb)
            else:
                assert va == vb, (key, va, vb)


@st.composite
def cases(draw):
    n = draw(st.integers(0, 200))
    t = draw(st.integers(0, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.random((n, t)) < rng.choice([0.05, 0.2, 0.5, 0.8, 1.0], size=t)
    mode = draw(st.sampled_from(["tags", "tags", "tags", "all_correct", "all_wrong"]))
    if mode == "all_correct":
        correct = np.ones(n, dtype=bool)
    elif mode == "all_wrong":
        correct = np.zeros(n, dtype=bool)
    else:
        logit = -1.5 + x.astype(float) @ rng.normal(0, 1.5, size=t)
        if t >= 2:
            logit += 3.0 * (x[:, 0] & x[:, 1])
        correct = rng.random(n) >= 1 / (1 + np.exp(-logit))
    params = SliceParams(
        max_tags=draw(st.integers(1, 3)),
        min_size=draw(st.integers(1, 25)),
        min_drop=draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 1.0])),
        min_gain=draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 1.0])),
    )
    kwargs = {}
    if draw(st.booleans()):
        n2 = draw(st.integers(0, 100))
        kwargs["eval_tags"] = rng.random((n2, t)) < 0.5
        kwargs["eval_correct"] = rng.random(n2) < 0.7
    return x, correct, params, kwargs


@settings(max_examples=300, deadline=None)
@given(cases())
def test_matches_brute_force(case):
    x, correct, params, kwargs = case
    fast = find_slices(x, correct, names(x.shape[1]), params, class_name="cat", **kwargs)
    oracle = brute_force_slices(x, correct, names(x.shape[1]), params, class_name="cat", **kwargs)
    assert_same(fast, oracle)


@settings(max_examples=60, deadline=None)
@given(cases(), st.integers(0, 2**32 - 1))
def test_invariant_under_row_and_column_permutations(case, seed):
    x, correct, params, _ = case
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(x.shape[0]), rng.permutation(x.shape[1])
    base = find_slices(x, correct, names(x.shape[1]), params)
    shuffled = find_slices(
        x[rows][:, cols], correct[rows], [names(x.shape[1])[c] for c in cols], params
    )
    assert_same(shuffled, base)


def test_wide_keys_path_matches_oracle():
    # f ** max_tags >= 2**62 switches the subset keys to Python ints.
    rng = np.random.default_rng(3)
    x = rng.random((300, 6)) < 0.8
    correct = rng.random(300) > 0.3 + 0.5 * x[:, 0] * x[:, 1] * x[:, 2]
    params = SliceParams(max_tags=5, min_size=5, min_drop=0.0, min_gain=0.0)
    # Past the declared limit (5) on purpose: with 6 tags only this reaches the wide-key path.
    object.__setattr__(params, "max_tags", 40)
    fast = find_slices(x, correct, names(6), params)
    assert fast.num_rows == 37  # the oracle below finds the same 37 slices
    assert_same(fast, brute_force_slices(x, correct, names(6), params))


def test_pruning_counts_only_apriori_candidates():
    rng = np.random.default_rng(0)
    x = np.zeros((100, 20), dtype=bool)
    x[:, :4] = rng.random((100, 4)) < 0.9  # four frequent tags
    x[:5, 4:] = True  # sixteen rare tags (support 5)
    correct = rng.random(100) > 0.3
    freq, levels = slice_search._search(
        slice_search._check(x, correct, 20), SliceParams(max_tags=3, min_size=10)
    )
    assert freq.tolist() == [0, 1, 2, 3]
    # 20 singletons + C(4, 2) pairs + C(4, 3) triples, not C(20, 2) + C(20, 3) = 1330.
    assert levels.candidates == 20 + 6 + 4
    assert [len(r) for r in levels.rows] == [4, 6, 4]


def test_triples_need_every_pair_supported():
    # Pairs (0,1) and (0,2) are supported, (1,2) is not: the triple is never counted.
    x = np.zeros((90, 3), dtype=bool)
    x[:60, 0] = True
    x[:30, 1] = True
    x[30:60, 2] = True
    x[60:, 1] = x[60:, 2] = True
    freq, levels = slice_search._search(
        slice_search._check(x, np.ones(90, dtype=bool), 3), SliceParams(min_size=30)
    )
    assert freq.tolist() == [0, 1, 2]
    assert levels.rows[1].tolist() == [[0, 1], [0, 2], [1, 2]]
    assert levels.sizes[1].tolist() == [30, 30, 30]
    x[60:, 2] = False
    x[75:, 2] = True  # now (1, 2) has support 15
    _, levels = slice_search._search(
        slice_search._check(x, np.ones(90, dtype=bool), 3), SliceParams(min_size=30)
    )
    assert levels.rows[1].tolist() == [[0, 1], [0, 2]]
    assert levels.candidates == 3 + 3  # the join of (0,1),(0,2) is pruned by (1,2)
    assert len(levels.rows) == 2


# ----------------------------------------------------------------------------- statistics


def test_fisher_matches_scipy_on_every_small_table():
    tables = [
        (n, e, big_n, big_e)
        for big_n in range(1, 13)
        for big_e in range(big_n + 1)
        for n in range(big_n + 1)
        for e in range(max(0, n - (big_n - big_e)), min(n, big_e) + 1)
    ]
    n, e, big_n, big_e = (np.array(c) for c in zip(*tables, strict=True))
    for nn in np.unique(big_n):
        for ee in np.unique(big_e[big_n == nn]):
            sel = (big_n == nn) & (big_e == ee)
            got = fisher_greater(n[sel], e[sel], int(nn), int(ee))
            for g, ni, ei in zip(got, n[sel], e[sel], strict=True):
                table = [[ei, ni - ei], [ee - ei, nn - ni - (ee - ei)]]
                want = fisher_exact(table, alternative="greater").pvalue
                assert abs(g - want) <= 1e-12, (table, g, want)


def test_fisher_golden_hypergeometric_tail():
    # Group of 20 images with 5 errors; a slice of 6 images holding 4 of them.
    want = sum(math.comb(5, k) * math.comb(15, 6 - k) for k in (4, 5)) / math.comb(20, 6)
    assert fisher_greater(np.array([6]), np.array([4]), 20, 5)[0] == pytest.approx(want, 1e-12)


def test_bh_golden_and_plain_sort():
    q = bh_qvalues(np.array([0.01, 0.04, 0.03, 0.2]))
    np.testing.assert_allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2], rtol=1e-15)
    assert bh_qvalues(np.array([0.9, 0.8])).tolist() == [0.9, 0.9]
    assert bh_qvalues(np.array([1.0, 1.0, 0.5])).tolist() == [1.0, 1.0, 1.0]
    assert bh_qvalues(np.zeros(0)).shape == (0,)


def test_describe_wording():
    text = describe(["sand", "small"], 45, 0.6222, 0.08, "bird")
    assert text == (
        "bird images tagged 'sand' + 'small': error rate 0.62 vs 0.08 for all bird images (n=45)"
    )
    assert describe(["x"], 3, 1.0, 0.5) == (
        "images tagged 'x': error rate 1.00 vs 0.50 for the whole group (n=3)"
    )


def test_golden_small_group():
    # 10 images, tags a (rows 0-4) and b (rows 3-7); errors on rows 0, 1, 3, 4.
    x = np.zeros((10, 2), dtype=bool)
    x[0:5, 0] = True
    x[3:8, 1] = True
    correct = np.ones(10, dtype=bool)
    correct[[0, 1, 3, 4]] = False
    params = SliceParams(max_tags=2, min_size=2, min_drop=0.2, min_gain=0.1)
    rows = find_slices(x, correct, ["a", "b"], params, class_name="dog").to_pylist()
    # supported: {a} n5 e4, {b} n5 e2, {a,b} n2 e2. acc(G) = 0.6.
    # {a}: drop 0.4 -> slice; {b}: drop 0.0 -> no; {a,b}: drop 0.6, gains 0.2 and 0.6 -> slice.
    assert [r["tags"] for r in rows] == [["a"], ["a", "b"]]  # importance 0.8 vs 0.5
    a, ab = rows
    assert (a["size"], a["errors"], ab["size"], ab["errors"]) == (5, 4, 2, 2)
    assert a["importance"] == pytest.approx(0.8 * 1.0)
    assert ab["importance"] == pytest.approx(1.0 * 0.5)
    assert a["accuracy_drop"] == pytest.approx(0.4)
    assert ab["error_coverage"] == 0.5
    p_a = sum(math.comb(4, k) * math.comb(6, 5 - k) for k in (4,)) / math.comb(10, 5)
    p_ab = math.comb(4, 2) / math.comb(10, 2)
    p_b = sum(math.comb(4, k) * math.comb(6, 5 - k) for k in range(2, 5)) / math.comb(10, 5)
    assert a["p_value"] == pytest.approx(p_a, rel=1e-12)
    assert ab["p_value"] == pytest.approx(p_ab, rel=1e-12)
    # BH over all three supported sets (including {b}, which is not a slice).
    ps = sorted([p_a, p_b, p_ab])
    q = [min(ps[j] * 3 / (j + 1) for j in range(i, 3)) for i in range(3)]
    assert a["q_value"] == pytest.approx(q[ps.index(p_a)], rel=1e-12)
    assert ab["q_value"] == pytest.approx(q[ps.index(p_ab)], rel=1e-12)
    assert ab["description"] == (
        "dog images tagged 'a' + 'b': error rate 1.00 vs 0.40 for all dog images (n=2)"
    )


# ----------------------------------------------------------------------------- planted truth


def planted(seed: int = 7, n: int = 2000):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 6)) < [0.3, 0.3, 0.5, 0.2, 0.1, 0.4]
    combo = x[:, 0] & x[:, 1]
    correct = rng.random(n) >= np.where(combo, 0.7, 0.05)
    return x, correct, ["sand", "small", "blurry", "dark", "indoor", "grass"]


def test_planted_pair_is_found_and_ranked_first():
    x, correct, tag_names = planted()
    table = find_slices(x, correct, tag_names, SliceParams(min_drop=0.1), class_name="bird")
    rows = table.to_pylist()
    assert rows[0]["tags"] == ["sand", "small"]
    assert rows[0]["p_value"] < 1e-30 and rows[0]["q_value"] < 1e-30
    singles = [r for r in rows if r["tags"] in (["sand"], ["small"])]
    assert all(r["importance"] < rows[0]["importance"] for r in singles)
    # Supported supersets with an unrelated third tag are not minimal (dropping it barely
    # changes accuracy); the ones that survive by sampling noise rank below the pair.
    found = [r["tags"] for r in rows]
    for third in (2, 5):  # blurry, grass: large supports (~90 and ~70 images)
        assert (x[:, 0] & x[:, 1] & x[:, third]).sum() >= 30
        assert sorted(["sand", "small", tag_names[third]]) not in found
    supersets = [r for r in rows if {"sand", "small"} < set(r["tags"])]
    assert all(r["importance"] < rows[0]["importance"] for r in supersets)
    assert_same(
        table,
        brute_force_slices(x, correct, tag_names, SliceParams(min_drop=0.1), class_name="bird"),
    )


def test_planted_pair_holds_on_eval_split():
    x, correct, tag_names = planted(7)
    ex, ecorrect, _ = planted(8, 1000)
    table = find_slices(x, correct, tag_names, eval_tags=ex, eval_correct=ecorrect)
    top = table.to_pylist()[0]
    assert top["tags"] == ["sand", "small"] and top["holds"] is True
    mask = ex[:, 0] & ex[:, 1]
    assert top["eval_size"] == mask.sum()
    assert top["eval_error_rate"] == pytest.approx((~ecorrect[mask]).mean())
    assert top["eval_accuracy_drop"] == pytest.approx(ecorrect.mean() - ecorrect[mask].mean())


# ----------------------------------------------------------------------------- edge cases


def test_exact_threshold_equality_counts():
    # acc(G) = 0.7 and acc(S) = 0.5: the float difference is 0.19999999999999996.
    x = np.zeros((100, 2), dtype=bool)
    x[:40, 0] = True
    x[:10, 1] = True
    correct = np.ones(100, dtype=bool)
    correct[20:40] = False  # 20 errors in the tag0 slice, none with tag1
    correct[40:50] = False  # 10 errors outside
    assert 0.7 - 0.5 < 0.2
    rows = find_slices(x, correct, names(2), SliceParams(min_size=30, min_drop=0.2)).to_pylist()
    assert [r["tags"] for r in rows] == [["tag0"]]
    assert (
        find_slices(x, correct, names(2), SliceParams(min_size=30, min_drop=0.2001)).num_rows == 0
    )


def test_exact_gain_equality_counts():
    # acc({t0}) = 0.3, acc({t0,t1}) = 0.1: gain 0.19999999999999998 must meet min_gain 0.2.
    x = np.zeros((200, 2), dtype=bool)
    x[:100, 0] = True
    x[:50, 1] = True
    x[100:150, 1] = True  # acc({t1}) = 0.55 + ... (see below)
    correct = np.zeros(200, dtype=bool)
    correct[[*range(45, 50), *range(50, 75)]] = True  # t0: 30/100 correct; t0&t1: 5/50
    correct[100:200] = True
    assert 0.3 - 0.1 < 0.2
    for gain, present in ((0.2, True), (0.2001, False)):
        params = SliceParams(max_tags=2, min_size=50, min_drop=0.0, min_gain=gain)
        rows = find_slices(x, correct, names(2), params).to_pylist()
        assert (["tag0", "tag1"] in [r["tags"] for r in rows]) is present
        assert_same(
            find_slices(x, correct, names(2), params),
            brute_force_slices(x, correct, names(2), params),
        )


def test_no_errors_in_group():
    x = np.ones((50, 3), dtype=bool)
    correct = np.ones(50, dtype=bool)
    assert find_slices(x, correct, names(3), SliceParams(min_size=5)).num_rows == 0
    rows = find_slices(x, correct, names(3), SliceParams(min_size=5, min_drop=0.0)).to_pylist()
    assert [r["tags"] for r in rows] == [["tag0"], ["tag1"], ["tag2"]]  # pairs: gain 0 < 0.1
    assert all(
        r["error_coverage"] == 0 and r["importance"] == 0 and r["p_value"] == 1 for r in rows
    )


def test_all_errors_in_group():
    x = np.zeros((60, 2), dtype=bool)
    x[:40, 0] = True
    correct = np.zeros(60, dtype=bool)
    assert find_slices(x, correct, names(2), SliceParams()).num_rows == 0
    rows = find_slices(x, correct, names(2), SliceParams(min_drop=0.0)).to_pylist()
    assert len(rows) == 1 and rows[0]["error_coverage"] == pytest.approx(40 / 60)
    assert rows[0]["p_value"] == 1.0 and rows[0]["error_rate"] == 1.0


@pytest.mark.parametrize("shape", [(0, 4), (10, 0), (0, 0)])
@pytest.mark.parametrize("with_eval", [False, True])
def test_empty_inputs(shape, with_eval):
    kwargs = {}
    if with_eval:
        kwargs = {"eval_tags": np.zeros((3, shape[1]), bool), "eval_correct": np.ones(3, bool)}
    for fn in (find_slices, brute_force_slices):
        table = fn(np.zeros(shape, bool), np.ones(shape[0], bool), names(shape[1]), **kwargs)
        assert table.num_rows == 0 and table.schema == slice_schema(with_eval)


def test_empty_eval_split():
    x, correct, tag_names = planted()
    table = find_slices(
        x, correct, tag_names, eval_tags=np.zeros((0, 6), bool), eval_correct=np.zeros(0, bool)
    )
    # The same slices as without an eval split, in the same order; only the eval columns differ.
    plain = find_slices(x, correct, tag_names)
    assert table.num_rows == plain.num_rows >= 1
    assert table.drop_columns(list(EVAL_COLUMNS)).to_pylist() == plain.to_pylist()
    assert table.column("eval_size").to_pylist() == [0] * table.num_rows
    assert table.column("eval_error_rate").null_count == table.num_rows
    assert table.column("eval_accuracy_drop").null_count == table.num_rows
    assert table.column("holds").to_pylist() == [False] * table.num_rows


def test_ties_sorted_by_size_then_tags():
    # tag0: 4 images / 2 errors, tag1: 16 / 4 errors -> importance both 1/E (e^2/n = 1);
    # tag2 and tag3 identical to tag0 -> exact ties broken by name.
    x = np.zeros((40, 4), dtype=bool)
    x[0:4, [0, 2, 3]] = True
    x[10:26, 1] = True
    correct = np.ones(40, dtype=bool)
    correct[[0, 1, 10, 11, 12, 13]] = False
    params = SliceParams(max_tags=1, min_size=4, min_drop=0.0)
    rows = find_slices(x, correct, ["z", "y", "b", "a"], params).to_pylist()
    assert [r["tags"] for r in rows] == [["y"], ["a"], ["b"], ["z"]]
    assert len({r["importance"] for r in rows}) == 1
    assert_same(
        find_slices(x, correct, ["z", "y", "b", "a"], params),
        brute_force_slices(x, correct, ["z", "y", "b", "a"], params),
    )


def test_combinations_of_many_tags_when_everything_is_frequent():
    rng = np.random.default_rng(11)
    x = rng.random((400, 9)) < 0.7
    correct = rng.random(400) >= 0.1 + 0.6 * (x[:, 0] & x[:, 5] & x[:, 8])
    params = SliceParams(max_tags=3, min_size=20, min_drop=0.1, min_gain=0.05)
    fast = find_slices(x, correct, names(9), params)
    assert ["tag0", "tag5", "tag8"] in fast.column("tags").to_pylist()
    assert_same(fast, brute_force_slices(x, correct, names(9), params))
    assert fast.column("q_value").to_pylist()[0] > fast.column("p_value").to_pylist()[0]
    # Brute force: every tag set of 1-3 tags shared by at least min_size images, per size.
    supported = [
        sum(int(x[:, list(c)].all(axis=1).sum() >= 20) for c in itertools.combinations(range(9), k))
        for k in (1, 2, 3)
    ]
    # Everything is frequent: all C(9,1) + C(9,2) + C(9,3) = 9 + 36 + 84 sets are supported ...
    assert supported == [9, 36, 84]
    # ... and the search counts exactly those (no candidate is pruned, none is missed).
    _, levels = slice_search._search(slice_search._check(x, correct, 9), params)
    assert [len(r) for r in levels.rows] == supported
    assert levels.candidates == sum(supported) == 129


def test_bad_inputs():
    with pytest.raises(ConfigError):
        SliceParams(min_size=0)
    with pytest.raises(ConfigError):
        SliceParams(max_tags=0)
    with pytest.raises(ConfigError):
        SliceParams(min_drop=float("nan"))
    x = np.zeros((3, 2), bool)
    with pytest.raises(InputError):
        find_slices(x, np.ones(3, bool), ["a"])
    with pytest.raises(InputError):
        find_slices(x, np.ones(3, bool), ["a", "a"])
    with pytest.raises(InputError):
        find_slices(x, np.ones(4, bool), ["a", "b"])
    with pytest.raises(InputError):
        find_slices(x, np.ones(3, bool), ["a", "b"], eval_tags=x)
    with pytest.raises(InputError):
        find_slices(
            x,
            np.ones(3, bool),
            ["a", "b"],
            eval_tags=np.zeros((3, 3), bool),
            eval_correct=np.ones(3, bool),
        )
