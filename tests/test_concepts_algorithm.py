"""Tests of the concepts' pure algorithm: CAVs against a direct scikit-learn fit, the keep/drop
rule, the tag source's negatives, CES against brute-force loops and finite differences, the
saturation of a large delta on a toy head, normalisation and ranking."""

from __future__ import annotations

import inspect
from fractions import Fraction

import numpy as np
import pytest
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from failstore.errors import ConfigError, InputError
from failstore.queries.concepts.cav import (
    BANK_PARAMS,
    FEWER_THAN_TWO,
    ZERO_NORMAL,
    BankParams,
    kept_directions,
    train_cav,
    train_cavs,
)
from failstore.queries.concepts.ces import (
    CES_PARAMS,
    CESParams,
    ces_scores,
    default_delta,
    normalise,
    rank,
    set_scores,
    true_class_probability,
)
from failstore.queries.concepts.examples import (
    ConceptExamples,
    sample_negatives,
    tag_examples,
)

# ----------------------------------------------------------------------------- oracles


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return np.exp(z) / np.exp(z).sum()


def brute_ces(E, y, W, b, V, delta):
    """Per image, per concept: the explicit softmax of the head before and after the step."""
    out = np.zeros((len(E), len(V)))
    for i in range(len(E)):
        e = np.asarray(E[i], dtype=np.float64)
        before = softmax(W @ e + b)[y[i]]
        for c in range(len(V)):
            after = softmax(W @ (e + delta * V[c]) + b)[y[i]]
            out[i, c] = after - before
    return out


def head(rng, n=40, m=12, k=7, c=9, scale=1.0):
    E = rng.normal(size=(n, m)).astype(np.float32)
    W = rng.normal(size=(k, m)) * scale
    b = rng.normal(size=k)
    V = rng.normal(size=(c, m))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    return E, y, W, b, V


def two_clouds(rng, p=60, q=80, m=20, shift=0.6):
    pos = rng.normal(size=(p, m)) + shift * np.eye(m)[0] * 3
    neg = rng.normal(size=(q, m))
    pos[:, 1] += shift
    return pos, neg


# ----------------------------------------------------------------------------- CAVs


@pytest.mark.parametrize("C", [0.001, 1.0])
def test_cav_equals_a_direct_linear_svc(C):
    rng = np.random.default_rng(1)
    pos, neg = two_clouds(rng)
    cav = train_cav(pos, neg, C=C, holdout=0.3, seed=4)
    x = np.concatenate([pos, neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
    train, val = train_test_split(np.arange(len(x)), test_size=0.3, stratify=labels, random_state=4)
    svm = SVC(kernel="linear", C=C).fit(x[train], labels[train])
    coef, intercept = svm.coef_.ravel(), float(svm.intercept_[0])
    norm = np.linalg.norm(coef)
    assert cav.direction.dtype == np.float32
    np.testing.assert_allclose(cav.direction, coef / norm, atol=1e-6)
    assert cav.norm == pytest.approx(norm, rel=1e-9)
    assert cav.bias == pytest.approx(intercept / norm, rel=1e-8, abs=1e-12)
    assert (cav.n_pos, cav.n_neg, cav.n_train, cav.n_val) == (60, 80, len(train), len(val))
    # accuracies recomputed by hand, from the stored hyperplane and from scikit-learn
    d = cav.direction.astype(np.float64)
    by_hand = np.mean((x[val] @ d + cav.bias > 0) == (labels[val] == 1))
    assert cav.val_accuracy == by_hand == np.mean(svm.predict(x[val]) == labels[val])
    assert cav.train_accuracy == np.mean((x[train] @ d + cav.bias > 0) == (labels[train] == 1))
    assert cav.kept == (cav.val_accuracy >= 0.7) and cav.C == C


def test_cav_points_to_the_positives():
    rng = np.random.default_rng(2)
    pos, neg = two_clouds(rng, p=60, q=60, shift=1.5)
    cav = train_cav(pos, neg)
    assert cav.kept and cav.val_accuracy > 0.9
    d = cav.direction.astype(np.float64)
    assert (pos @ d + cav.bias).mean() > 0 > (neg @ d + cav.bias).mean()
    assert d[0] > 0.5  # the positives were shifted along +x0
    flipped = train_cav(neg, pos)  # the other side's CAV points the other way
    assert float(flipped.direction @ cav.direction) < -0.99


def _controlled(wrong: int, p: int = 50, q: int = 50, seed: int = 0):
    """Separable training rows (+-1 on axis 0) and a hold-out where exactly ``wrong`` rows sit
    deep on the other side: held-out accuracy (n_val - wrong) / n_val."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(p), np.zeros(q)].astype(int)
    _, val = train_test_split(np.arange(p + q), test_size=0.3, stratify=labels, random_state=seed)
    x = np.zeros((p + q, 3))
    x[:, 1:] = rng.normal(scale=0.1, size=(p + q, 2))
    x[:, 0] = np.where(labels == 1, 1.0, -1.0)
    flip = val[:wrong]
    x[flip, 0] = np.where(labels[flip] == 1, -3.0, 3.0)
    return x[:p], x[p:], len(val)


def test_keep_drop_rule_at_exactly_0_7():
    pos, neg, n_val = _controlled(wrong=9)
    assert n_val == 30
    kept = train_cav(pos, neg)
    assert kept.train_accuracy == 1.0
    assert Fraction(kept.val_accuracy).limit_denominator(100) == Fraction(21, 30)
    assert kept.kept and kept.reason is None
    pos, neg, _ = _controlled(wrong=10)
    dropped = train_cav(pos, neg)
    assert dropped.val_accuracy == pytest.approx(20 / 30)
    assert not dropped.kept
    assert dropped.reason == "held-out accuracy 0.6667 < 0.7"
    assert dropped.direction.any()  # trained, only not kept
    # the threshold is a parameter, compared the same way
    pos, neg, _ = _controlled(wrong=6)
    assert train_cav(pos, neg, min_accuracy=0.8).kept  # 24/30
    pos, neg, _ = _controlled(wrong=7)
    assert not train_cav(pos, neg, min_accuracy=0.8).kept  # 23/30


def test_dropped_cavs_say_why():
    rng = np.random.default_rng(3)
    one = train_cav(rng.normal(size=(1, 4)), rng.normal(size=(9, 4)))
    assert not one.kept and one.reason == FEWER_THAN_TWO and one.val_accuracy is None
    assert one.direction.shape == (4,) and not one.direction.any()
    same = np.tile(rng.normal(size=(1, 4)), (12, 1))
    flat = train_cav(same[:6], same[6:])
    assert not flat.kept and flat.reason == ZERO_NORMAL
    tiny = train_cav(rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), holdout=0.1)
    assert not tiny.kept and tiny.reason == "too few examples for a 0.1 hold-out"
    lopsided = train_cav(rng.normal(size=(2, 4)), rng.normal(size=(50, 4)), holdout=0.9)
    assert lopsided.reason == "too few examples for a 0.9 hold-out"  # no positive left to train
    with pytest.raises(InputError, match="columns"):
        train_cav(rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))
    with pytest.raises(InputError, match="NaN"):
        train_cav(np.full((5, 4), np.nan), rng.normal(size=(5, 4)))


def test_train_cavs_equals_train_cav_and_caps_examples():
    rng = np.random.default_rng(5)
    pos, neg = two_clouds(rng, p=40, q=45, m=8, shift=2.0)
    extra = rng.normal(size=(30, 8))
    emb = np.concatenate([pos, neg, extra]).astype(np.float32)
    p_idx, n_idx = np.arange(40), np.arange(40, 85)
    mask = np.zeros(len(emb), dtype=bool)
    mask[p_idx] = True
    many = train_cavs(
        emb,
        [(p_idx, n_idx), (mask, n_idx), ConceptExamples(p_idx, n_idx, refused="no")],
        max_examples=None,
    )
    alone = train_cav(emb[p_idx], emb[n_idx])
    for cav in many[:2]:
        np.testing.assert_array_equal(cav.direction, alone.direction)
        assert (cav.bias, cav.val_accuracy) == (alone.bias, alone.val_accuracy)
    assert not many[2].kept and many[2].reason == "no"
    capped = train_cavs(emb, [(p_idx, n_idx)] * 3, max_examples=20)
    assert all((c.n_pos, c.n_neg) == (20, 20) for c in capped)
    threaded = train_cavs(emb, [(p_idx, n_idx)] * 3, max_examples=20, n_jobs=2)
    for a, b in zip(capped, threaded, strict=True):
        np.testing.assert_array_equal(a.direction, b.direction)
    with pytest.raises(InputError, match="both positive and negative"):
        train_cavs(emb, [(p_idx, np.arange(30, 60))])
    with pytest.raises(InputError, match="index"):
        train_cavs(emb, [(p_idx, [500])])
    directions, where = kept_directions([*many, alone])
    assert list(where) == [0, 1, 3] and directions.shape == (3, 8)


# ----------------------------------------------------------------------------- the tag source


def test_sample_negatives_balanced_over_classes_without_positives():
    rng = np.random.default_rng(6)
    classes = np.repeat([0, 1, 2, 3, 4], [50, 50, 50, 3, 50])
    rng.shuffle(classes)
    positives = rng.choice(len(classes), size=40, replace=False)
    negatives = sample_negatives(np.arange(len(classes)), classes, positives, 39, seed=7)
    assert negatives.size == 39 and np.all(np.diff(negatives) > 0)
    assert not np.isin(negatives, positives).any()
    counts = np.bincount(classes[negatives], minlength=5)
    left3 = int(np.count_nonzero((classes == 3) & ~np.isin(np.arange(len(classes)), positives)))
    assert counts[3] == min(left3, 8)  # a small class gives what it has
    others = np.delete(counts, 3)
    assert others.max() - others.min() <= 1
    again = sample_negatives(np.arange(len(classes)), classes, positives, 39, seed=7)
    np.testing.assert_array_equal(negatives, again)
    # only the candidates are drawn from; fewer than n left: all of them
    cand = np.arange(0, 100)
    few = sample_negatives(cand, classes, positives, 500, seed=0)
    np.testing.assert_array_equal(few, np.setdiff1d(cand, positives))
    even = sample_negatives(np.arange(250), np.arange(250) % 5, [], 50, seed=1)
    assert list(np.bincount(np.arange(250)[even] % 5)) == [10] * 5


def test_tag_examples_refuses_a_single_class_concept():
    rng = np.random.default_rng(8)
    classes = np.repeat(np.arange(4), 60)
    tags = np.zeros((240, 3), dtype=bool)
    tags[np.flatnonzero(classes == 2)[:25], 0] = True  # only class 2 carries tag 0
    tags[rng.choice(240, size=30, replace=False), 1] = True
    tags[rng.choice(240, size=80, replace=False), 2] = True
    ex = tag_examples(tags, classes, max_examples=50, seed=3)
    assert ex[0].refused == "positives all from class 2" and ex[0].main_class_share == 1.0
    assert ex[1].refused is None and ex[1].main_class_share < 1
    for j, e in enumerate(ex):
        assert e.negatives.size == e.positives.size
        assert not tags[e.negatives, j].any()  # never a positive, sampled or not
        counts = np.bincount(classes[e.negatives], minlength=4)
        assert counts.max() - counts.min() <= 1
    assert ex[2].positives.size == 50 and tags[ex[2].positives, 2].all()
    for j in range(3):  # the same draw as sample_negatives with the concept's seed
        all_pos = np.flatnonzero(tags[:, j])
        alone = sample_negatives(np.arange(240), classes, all_pos, ex[j].positives.size, (3, j))
        np.testing.assert_array_equal(ex[j].negatives, alone)
    emb = rng.normal(size=(240, 6))
    cavs = train_cavs(emb, ex)
    assert not cavs[0].kept and cavs[0].reason == "positives all from class 2"
    assert cavs[0].val_accuracy is None
    # candidates restrict both sides
    sub = tag_examples(tags, classes, candidates=np.arange(120), seed=3)
    assert sub[1].positives.max() < 120 and sub[1].negatives.max() < 120


# ----------------------------------------------------------------------------- CES


@pytest.mark.parametrize("delta", [1e-3, 0.7, 5.0, 1e4])
def test_ces_equals_brute_force(delta):
    rng = np.random.default_rng(9)
    E, y, W, b, V = head(rng)
    got = ces_scores(E, y, W, b, V, delta=delta)
    assert got.shape == (40, 9) and got.dtype == np.float64
    np.testing.assert_allclose(got, brute_ces(E, y, W, b, V, delta), atol=1e-12)
    base = true_class_probability(E, y, W, b)
    want = [softmax(W @ e.astype(np.float64) + b)[c] for e, c in zip(E, y, strict=True)]
    np.testing.assert_allclose(base, want, rtol=1e-13)


def test_ces_with_logits_spread_beyond_the_fast_path():
    """Logits spread by > 600 on an image and delta u spread by > 600 on a concept: the pair is
    recomputed exactly (the product of shifted exponentials would underflow to 0 / 0)."""
    rng = np.random.default_rng(10)
    E, y, W, b, V = head(rng, n=12, m=6, k=5, c=4, scale=200.0)
    got = ces_scores(E, y, W, b, V, delta=3.0)
    np.testing.assert_allclose(got, brute_ces(E, y, W, b, V, 3.0), atol=1e-12)
    # a true class 900 below the top whose concept lifts it by far more: the score is ~1
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    e = np.array([[0.0, 900.0]])
    got = ces_scores(e, np.array([0]), W, np.zeros(2), np.array([[1.0, 0.0]]), delta=5000.0)
    assert got[0, 0] == pytest.approx(1.0)


def test_derivative_mode_equals_central_differences():
    rng = np.random.default_rng(11)
    E, y, W, b, V = head(rng)
    got = ces_scores(E, y, W, b, V, mode="derivative")
    h = 1e-4
    plus = brute_ces(E, y, W, b, V, h)
    minus = brute_ces(E, y, W, b, V, -h)
    np.testing.assert_allclose(got, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-9)
    small = ces_scores(E, y, W, b, V, delta=1e-7) / 1e-7  # the step's limit
    np.testing.assert_allclose(got, small, rtol=1e-4, atol=1e-8)


def test_chunking_changes_nothing():
    rng = np.random.default_rng(12)
    E, y, W, b, V = head(rng, n=700, m=30, k=11, c=13)
    for mode in ("step", "derivative"):
        ref = ces_scores(E, y, W, b, V, delta=0.5, mode=mode, chunk=4096)
        for chunk in (1, 7, 256, 300, 512):
            got = ces_scores(E, y, W, b, V, delta=0.5, mode=mode, chunk=chunk)
            np.testing.assert_array_equal(got, ref)
        # an image alone gets the same bits as in a batch
        alone = ces_scores(E[[5]], y[[5]], W, b, V, delta=0.5, mode=mode)
        np.testing.assert_array_equal(alone, ref[[5]])


def _toy():
    """Three classes at 90, 210, 330 degrees in a 2-d bottleneck, 12 concepts at 15 + 30 j
    degrees, and mistakes of class 0 (at 90 degrees) lying between class 0 and class 1 or 2."""
    rng = np.random.default_rng(13)
    angles = np.deg2rad([90.0, 210.0, 330.0])
    W = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    b = np.zeros(3)
    concept = np.deg2rad(15.0 + 30.0 * np.arange(12))
    V = np.stack([np.cos(concept), np.sin(concept)], axis=1)
    labels = rng.integers(0, 3, size=600)
    cloud = W[labels] + rng.normal(scale=0.6, size=(600, 2))  # the dataset
    theta = np.deg2rad(rng.choice([150.0, 30.0], size=40) + rng.normal(scale=8, size=40))
    E = np.stack([np.cos(theta), np.sin(theta)], axis=1) * rng.uniform(0.8, 1.6, size=(40, 1))
    y = np.zeros(40, dtype=np.int64)
    wrong = (E @ W.T + b).argmax(axis=1) != 0
    return E[wrong], y[wrong], W, b, V, cloud


def test_large_delta_saturates_and_the_default_does_not():
    E, y, W, b, V, cloud = _toy()
    assert len(E) > 20
    favour = np.flatnonzero((V @ W.T).argmax(axis=1) == 0)  # concepts at 45, 75, 105, 135
    assert list(favour) == [1, 2, 3, 4]
    p_y = true_class_probability(E, y, W, b)
    big = ces_scores(E, y, W, b, V, delta=1e4)
    # every concept favouring y ties exactly at 1 - p_y, every other one at -p_y
    np.testing.assert_array_equal(big[:, favour], np.repeat((1.0 - p_y)[:, None], 4, axis=1))
    others = np.setdiff1d(np.arange(12), favour)
    np.testing.assert_array_equal(big[:, others], np.repeat(-p_y[:, None], 8, axis=1))
    ranks = [rank(row) for row in big]
    assert {tuple(r.order) for r in ranks} == {(1, 2, 3)}  # the same for every image
    assert all(list(r.tied) == [1, 2, 3, 4] and r.ambiguous for r in ranks)
    delta = default_delta(cloud)
    assert 1.0 < delta < 3.0
    small = ces_scores(E, y, W, b, V, delta=delta)
    assert all(np.unique(row[favour]).size == 4 for row in small)  # no ties
    ranks = [rank(row) for row in small]
    assert not any(r.ambiguous for r in ranks)
    assert len({int(r.order[0]) for r in ranks}) > 1  # the top concept depends on the image
    # mistakes towards class 1 (at 210 degrees) want the concept at 75 or 45, towards class 2
    # the one at 105 or 135: the push away from the wrong class
    pred = (E @ W.T + b).argmax(axis=1)
    for r, p in zip(ranks, pred, strict=True):
        assert int(r.order[0]) in ({1, 2} if p == 1 else {3, 4})


def test_ces_input_checks():
    rng = np.random.default_rng(14)
    E, y, W, b, V = head(rng, n=5)
    with pytest.raises(InputError, match="delta"):
        ces_scores(E, y, W, b, V)
    with pytest.raises(InputError, match="delta"):
        ces_scores(E, y, W, b, V, delta=0.0)
    with pytest.raises(InputError, match="mode"):
        ces_scores(E, y, W, b, V, delta=1.0, mode="bogus")
    with pytest.raises(InputError, match="do not match"):
        ces_scores(E, y, W, b[:3], V, delta=1.0)
    with pytest.raises(InputError, match="indices into the head"):
        ces_scores(E, y + 100, W, b, V, delta=1.0)
    assert ces_scores(E, y, W, b, V[:0], delta=1.0).shape == (5, 0)


# ----------------------------------------------------------------------------- sets, ranks


def test_set_scores_and_normalisation():
    raw = np.array([[0.2, -0.5, 0.0], [0.1, -0.3, 0.0]])
    summed = set_scores(raw)
    np.testing.assert_allclose(summed, [0.3, -0.8, 0.0])
    np.testing.assert_allclose(normalise(summed), [0.375, -1.0, 0.0])
    np.testing.assert_allclose(normalise(summed, "mean", n_images=2), [0.15, -0.4, 0.0])
    none = normalise(summed, "none")
    np.testing.assert_array_equal(none, summed)
    assert none is not summed
    np.testing.assert_array_equal(normalise(np.zeros(4)), np.zeros(4))  # 0 / 0 -> zeros
    assert normalise(np.zeros(0)).size == 0
    with pytest.raises(InputError, match="n_images"):
        normalise(summed, "mean")
    with pytest.raises(InputError, match="how"):
        normalise(summed, "l2")


def test_rank_by_absolute_score_then_index_with_a_tie_report():
    r = rank(np.array([0.1, -0.9, 0.5, 0.9, -0.5, 0.2]))
    assert list(r.order) == [1, 3, 2] and list(r.scores) == [-0.9, 0.9, 0.5]
    assert list(r.tied) == [2, 4] and r.ambiguous  # concept 4 ties with the third
    clear = rank(np.array([0.1, -0.9, 0.5, 0.8]), top=2)
    assert list(clear.order) == [1, 3] and list(clear.tied) == [3] and not clear.ambiguous
    near = rank(np.array([1.0, 1.0 + 1e-12, 0.5]), top=1)
    assert list(near.order) == [1] and list(near.tied) == [0, 1]
    assert list(rank(np.array([0.3, 0.0]), top=5).order) == [0, 1]
    assert rank(np.zeros(0)).order.size == 0


# ----------------------------------------------------------------------------- delta, params


def test_default_delta_is_the_rms_coordinate_spread():
    rng = np.random.default_rng(15)
    e = rng.normal(size=(4200, 1100)) * rng.uniform(0.1, 3, size=1100) + 50  # 2 column blocks
    want = np.sqrt(np.mean(np.var(e, axis=0)))
    assert default_delta(e.astype(np.float32)) == pytest.approx(want, rel=1e-6)
    assert default_delta(e - 50) == pytest.approx(want, rel=1e-9)  # translation invariant
    with pytest.raises(InputError):
        default_delta(e[:1])
    with pytest.raises(InputError, match="equal"):
        default_delta(np.ones((5, 3)))


def test_params_declared_once_with_the_functions_defaults():
    assert BankParams() == BankParams(**{p.name: p.default for p in BANK_PARAMS})
    cav_defaults = inspect.signature(train_cav).parameters
    for name in ("C", "holdout", "min_accuracy", "seed"):
        assert cav_defaults[name].default == getattr(BankParams(), name)
    assert inspect.signature(train_cavs).parameters["max_examples"].default == 500
    assert CESParams() == CESParams(**{p.name: p.default for p in CES_PARAMS})
    assert inspect.signature(rank).parameters["top"].default == CESParams().top
    with pytest.raises(ConfigError, match="mode must be one of"):
        CESParams(mode="bogus")
    with pytest.raises(ConfigError, match="delta must be >= 1e-08"):
        CESParams(delta=0.0)
    with pytest.raises(ConfigError, match="holdout must be between"):
        BankParams(holdout=1.0)
    assert CESParams(top=2.0).top == 2 and isinstance(CESParams(top=2.0).top, int)


def test_folder_examples_negatives_from_the_other_concepts_or_the_negatives_folder():
    from failstore.queries.concepts.examples import folder_examples

    groups = ["a"] * 10 + ["b"] * 3 + ["c"] * 30 + [None] * 4
    names = ["a", "b", "c", "lonely"]
    a, b, c, lonely = folder_examples(groups[:43], names, max_examples=8, seed=1)
    assert len(a.positives) == 8 and set(np.array(groups)[a.positives]) == {"a"}
    # 8 negatives from b (3, all it has) and c (the other 5): balanced as far as possible
    assert sorted(np.array(groups)[a.negatives].tolist()) == ["b"] * 3 + ["c"] * 5
    assert len(b.positives) == 3
    assert sorted(np.array(groups)[b.negatives]) in (["a", "a", "c"], ["a", "c", "c"])
    assert len(c.negatives) == 8 and "c" not in np.array(groups)[c.negatives]
    assert lonely.positives.size == 0 and lonely.refused is None  # train_cavs drops it: no examples
    # a negatives folder: only its images are negatives
    a2, *_ = folder_examples(groups, names, max_examples=8, seed=1)
    assert sorted(a2.negatives.tolist()) == [43, 44, 45, 46]
    # one concept and no negatives folder: refused with the fix
    (only,) = folder_examples(["x"] * 5, ["x"], seed=0)
    assert only.refused == "no negatives: add a --negatives folder or another concept folder"
