"""Tests of Shared Interest coverage's pure algorithm: saliency regions against hand-computed
maps and a plain-Python version, scores against a brute force over pixels and the published
reference fixture, the eight cases from a table, the bootstrap interval, and exact errors."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from failstore.errors import InputError
from failstore.queries.coverage import scores as scores_module
from failstore.queries.coverage.scores import (
    CASES_CORRECT,
    CASES_WRONG,
    UNDEFINED,
    CaseThresholds,
    CoverageScores,
    assign_cases,
    coverage_scores,
    mean_ci,
    saliency_region,
)

# Any RuntimeWarning (division by zero, mean of an empty slice...) fails a test.
pytestmark = pytest.mark.filterwarnings("error")

NAN = float("nan")
T, F = True, False


def raises_exactly(message: str) -> Any:
    """pytest.raises(InputError) whose one-line message must be ``message`` exactly."""
    return pytest.raises(InputError, match=f"^{re.escape(message)}$")


# ---------------------------------------------------------------- brute forces (plain Python)


def brute_region(m: np.ndarray, rule: str, top_percent: float) -> np.ndarray:
    """The saliency region of one map, with plain Python over its pixels."""
    values = [float(v) for v in m.ravel()]
    lo, hi = min(values), max(values)
    if hi == lo:
        return np.zeros(m.shape, dtype=bool)
    norm = [(v - lo) / (hi - lo) for v in values]
    if rule == "std":
        mean = sum(norm) / len(norm)
        threshold = mean + math.sqrt(sum((v - mean) ** 2 for v in norm) / len(norm))
    else:
        ordered = sorted(norm)
        pos = (100 - top_percent) / 100 * (len(ordered) - 1)
        i = math.floor(pos)
        above = ordered[min(i + 1, len(ordered) - 1)]
        threshold = ordered[i] + (above - ordered[i]) * (pos - i)
    return np.array([v >= threshold for v in norm]).reshape(m.shape)


def brute_scores(g: np.ndarray, s: np.ndarray, sal: np.ndarray) -> list[dict]:
    """IoU, GTC, SC, soft SC and reason of each image, counting pixel by pixel."""
    rows = []
    n, h, w = g.shape
    for k in range(n):
        inter = union = n_g = n_s = 0
        inside = total = 0.0
        for i in range(h):
            for j in range(w):
                gi, si, a = bool(g[k, i, j]), bool(s[k, i, j]), abs(float(sal[k, i, j]))
                inter += gi and si
                union += gi or si
                n_g += gi
                n_s += si
                total += a
                inside += a if gi else 0.0
        parts = []
        if n_g == 0 and n_s == 0:
            parts.append("empty ground truth and saliency region")
        elif n_g == 0:
            parts.append("empty ground truth")
        elif n_s == 0:
            parts.append("empty saliency region")
        if total == 0:
            parts.append("all-zero saliency")
        rows.append(
            {
                "iou": inter / union if union else NAN,
                "gtc": inter / n_g if n_g else NAN,
                "sc": inter / n_s if n_s else NAN,
                "soft_sc": inside / total if total else NAN,
                "reason": "; ".join(parts) or None,
            }
        )
    return rows


def assert_matches_brute(result: CoverageScores, g, s, sal) -> None:
    expected = brute_scores(g, s, sal)
    for name in ("iou", "gtc", "sc"):  # ratios of the same integers: equal to the last bit
        np.testing.assert_array_equal(getattr(result, name), [row[name] for row in expected])
    np.testing.assert_allclose(result.soft_sc, [row["soft_sc"] for row in expected], rtol=1e-12)
    assert list(result.reason) == [row["reason"] for row in expected]
    for name in ("iou", "gtc", "sc", "soft_sc"):
        assert getattr(result, name).dtype == np.float64
        assert getattr(result, name).shape == (g.shape[0],)
    assert result.reason.dtype == object


def box(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# ---------------------------------------------------------------- saliency_region


def test_std_rule_on_hand_computed_maps():
    # [0, 1/3, 2/3, 1]: mean 0.5, std sqrt(5)/6 = 0.373, threshold 0.873 -> only the 3.
    assert saliency_region(np.array([[[0.0, 1], [2, 3]]])).tolist() == [[[F, F], [F, T]]]
    # Signed values are normalised the same way: -3..3 is 0..1.
    assert saliency_region(np.array([[[-3.0, -1], [1, 3]]])).tolist() == [[[F, F], [F, T]]]
    # 0..8 shuffled: k / 8, mean 0.5, std sqrt(60 / 9) / 8 = 0.323, threshold 0.823 -> 7 and 8.
    m = np.array([[[3.0, 8, 1], [0, 7, 5], [6, 2, 4]]])
    assert saliency_region(m).tolist() == [[[F, T, F], [F, T, F], [F, F, F]]]
    # Integer maps are accepted and give the same region.
    assert np.array_equal(saliency_region(m.astype(np.int32)), saliency_region(m))


def test_top_percent_rule_on_hand_computed_maps():
    m = np.array([[[0.0, 1], [2, 3]]])  # normalised 0, 1/3, 2/3, 1
    expected = {
        10.0: [[F, F], [F, T]],  # percentile 90 = 0.9
        25.0: [[F, F], [F, T]],  # percentile 75 = 2/3 + 0.25 / 3 = 0.75
        50.0: [[F, F], [T, T]],  # percentile 50 = 0.5
        75.0: [[F, T], [T, T]],  # percentile 25 = 0.25
        100.0: [[T, T], [T, T]],  # percentile 0 = 0
    }
    for top, region in expected.items():
        assert saliency_region(m, rule="top_percent", top_percent=top).tolist() == [region]
    m3 = np.array([[[3.0, 8, 1], [0, 7, 5], [6, 2, 4]]])
    top10 = saliency_region(m3, rule="top_percent", top_percent=10)  # percentile 90 = 7.2 / 8
    assert top10.tolist() == [[[F, T, F], [F, F, F], [F, F, F]]]
    top30 = saliency_region(m3, rule="top_percent", top_percent=30)  # percentile 70 = 5.6 / 8
    assert top30.tolist() == [[[F, T, F], [F, T, F], [T, F, F]]]


def test_constant_maps_give_empty_regions():
    maps = np.stack([np.zeros((3, 4)), np.full((3, 4), -2.5), np.arange(12.0).reshape(3, 4)])
    for rule in ("std", "top_percent"):
        region = saliency_region(maps, rule=rule, top_percent=100)
        assert not region[0].any() and not region[1].any()
        assert region[2].any()


def test_mean_plus_std_above_the_max_gives_an_empty_region():
    # [1, 1, 1, 0]: mean 0.75 + std 0.433 = 1.183 > 1, so no pixel reaches the threshold,
    # although three pixels share the maximum.
    m = np.array([[[1.0, 1], [1, 0]]])
    assert not saliency_region(m).any()
    # The top_percent rule keeps the tied maxima (percentile 90 of [0, 1, 1, 1] is 1).
    assert saliency_region(m, rule="top_percent").tolist() == [[[T, T], [T, F]]]


def test_ties_at_the_threshold_are_inside():
    # [0, 1, 1, 0]: mean 0.5 + std 0.5 is exactly 1.0, the value of the two 1s.
    m = np.array([[[0.0, 1], [1, 0]]])
    assert np.mean(m) + np.std(m) == 1.0
    assert saliency_region(m).tolist() == [[[F, T], [T, F]]]
    # top_percent=25: percentile 75 of [0, 0, 1, 1] is 1, tied by both 1s; top 100: the min.
    assert saliency_region(m, rule="top_percent", top_percent=25).tolist() == [[[F, T], [T, F]]]
    assert saliency_region(m, rule="top_percent", top_percent=100).all()


def test_regions_match_plain_python_and_do_not_depend_on_chunking():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(300, 5, 7))  # more maps than one chunk (256)
    maps[:40] = np.round(maps[:40])  # some ties
    maps[3] = 0.0
    for rule, top in (("std", 10.0), ("top_percent", 10.0), ("top_percent", 37.5)):
        region = saliency_region(maps, rule=rule, top_percent=top)
        assert region.shape == maps.shape and region.dtype == bool
        for k in (*range(45), 255, 256, 299):
            assert np.array_equal(region[k], brute_region(maps[k], rule, top)), (rule, k)
        singles = [
            saliency_region(maps[k : k + 1], rule=rule, top_percent=top)[0] for k in (0, 299)
        ]
        assert np.array_equal(np.stack(singles), region[[0, 299]])
    # Scaling by a power of two changes nothing; the sign matters (the maps are signed).
    assert np.array_equal(saliency_region(4 * maps), saliency_region(maps))
    assert not np.array_equal(saliency_region(-maps), saliency_region(maps))


def test_huge_range_and_empty_batch():
    m = np.array([[[-1e308, 0.0], [0.0, 1e308]]])  # max - min overflows float64
    assert saliency_region(m).tolist() == [[[F, F], [F, T]]]
    empty = saliency_region(np.zeros((0, 4, 5)))
    assert empty.shape == (0, 4, 5) and empty.dtype == bool


def test_saliency_region_errors():
    maps = np.zeros((300, 4, 4))
    maps[290, 1, 2] = np.nan
    maps[295, 0, 0] = np.inf
    with raises_exactly("maps: map 290 has NaN or infinite values"):
        saliency_region(maps)
    with raises_exactly("maps: map 0 has NaN or infinite values"):
        saliency_region(np.full((2, 3, 3), -np.inf), rule="top_percent")
    with raises_exactly("rule: unknown rule 'otsu'; allowed rules are 'std', 'top_percent'"):
        saliency_region(np.zeros((1, 2, 2)), rule="otsu")
    for bad in (0, -5.0, 100.5, NAN):
        with raises_exactly(f"top_percent: must be a number in (0, 100], got {bad!r}"):
            saliency_region(np.zeros((1, 2, 2)), rule="top_percent", top_percent=bad)
    with raises_exactly(
        "maps: expected a float array of shape (N, H, W) with H, W >= 1, "
        "got float64 of shape (2, 2)"
    ):
        saliency_region(np.zeros((2, 2)))
    with raises_exactly(
        "maps: expected a float array of shape (N, H, W) with H, W >= 1, "
        "got float64 of shape (3, 0, 4)"
    ):
        saliency_region(np.zeros((3, 0, 4)))


# ---------------------------------------------------------------- coverage_scores


def hand_made_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ten 6x8 images: identical, disjoint, S in G, G in S, partial overlap, G empty, S empty,
    both empty, all-zero saliency, all-zero saliency with both masks empty."""
    h, w = 6, 8
    empty = np.zeros((h, w), dtype=bool)
    a = box(h, w, (1, 4), (2, 6))  # 12 pixels
    pairs = [
        (a, a),
        (box(h, w, (0, 2), (0, 3)), box(h, w, (3, 6), (4, 8))),
        (a, box(h, w, (2, 3), (3, 5))),  # S (2 pixels) in G
        (box(h, w, (2, 3), (3, 5)), a),  # G in S
        (a, box(h, w, (2, 6), (4, 8))),  # overlap rows 2-3, cols 4-5: 4 pixels
        (empty, a),
        (a, empty),
        (empty, empty),
        (a, box(h, w, (0, 2), (0, 8))),  # overlap row 1, cols 2-5: 4 pixels
        (empty, empty),
    ]
    g = np.stack([p[0] for p in pairs])
    s = np.stack([p[1] for p in pairs])
    sal = np.random.default_rng(0).normal(size=g.shape)
    sal[8] = 0.0
    sal[9] = 0.0
    return g, s, sal


def test_scores_match_brute_force_on_hand_made_masks():
    g, s, sal = hand_made_masks()
    result = coverage_scores(g, s, sal)
    assert_matches_brute(result, g, s, sal)
    # The same numbers written out (so that the brute force is checked too).
    np.testing.assert_array_equal(
        result.iou, [1, 0, 2 / 12, 2 / 12, 4 / 24, 0, 0, NAN, 4 / 24, NAN]
    )
    np.testing.assert_array_equal(result.gtc, [1, 0, 2 / 12, 1, 4 / 12, NAN, 0, NAN, 4 / 12, NAN])
    np.testing.assert_array_equal(result.sc, [1, 0, 1, 2 / 12, 4 / 16, 0, NAN, NAN, 4 / 16, NAN])
    assert list(result.reason) == [
        None,
        None,
        None,
        None,
        None,
        "empty ground truth",
        "empty saliency region",
        "empty ground truth and saliency region",
        "all-zero saliency",
        "empty ground truth and saliency region; all-zero saliency",
    ]
    assert np.isnan(result.soft_sc[[8, 9]]).all() and np.isfinite(result.soft_sc[:8]).all()
    assert result.soft_sc[5] == 0.0  # empty G: nothing of the saliency inside it


def test_soft_sc_uses_absolute_saliency():
    g = box(2, 3, (0, 1), (0, 3))[None]  # top row
    sal = np.array([[[-2.0, 0.0, 1.0], [-1.0, 4.0, 0.0]]])  # |.| inside 3, total 8
    result = coverage_scores(g, np.ones_like(g), sal)
    assert result.soft_sc.tolist() == [3 / 8]
    full = coverage_scores(np.ones_like(g), g, sal * 1e300)  # no overflow, capped at 1
    assert full.soft_sc.tolist() == [1.0]
    assert full.sc.tolist() == [1.0] and full.gtc.tolist() == [0.5] and full.iou.tolist() == [0.5]


def test_reference_fixture():
    # 250x250 images, G the 100x100 square [50:150, 50:150] (10,000 pixels) in all five.
    size = 250
    g1 = box(size, size, (50, 150), (50, 150))
    regions = [
        box(size, size, (100, 200), (100, 200)),  # same size, 50x50 overlap: 2,500 / 17,500
        box(size, size, (25, 225), (25, 225)),  # 200x200 around G: 10,000 / 40,000
        box(size, size, (60, 80), (60, 80)),  # 20x20 inside G: 400 / 10,000
        box(size, size, (200, 250), (0, 50)),  # disjoint
        g1,  # identical
    ]
    g = np.stack([g1] * 5)
    s = np.stack(regions)
    sal = np.where(s, 1.0, 0.0) + 0.5 * g
    result = coverage_scores(g, s, sal)
    np.testing.assert_array_equal(result.iou, [1 / 7, 0.25, 0.04, 0, 1])
    np.testing.assert_array_equal(result.sc, [0.25, 0.25, 1, 0, 1])
    np.testing.assert_array_equal(result.gtc, [0.25, 1, 0.04, 0, 1])
    assert_matches_brute(result, g, s, sal)


def test_random_masks_match_brute_force():
    rng = np.random.default_rng(7)
    g = rng.random((40, 5, 6)) < rng.random((40, 1, 1))
    s = rng.random((40, 5, 6)) < rng.random((40, 1, 1)) ** 2
    g[:3] = False
    s[2:5] = False
    sal = rng.normal(size=g.shape) * (rng.random((40, 1, 1)) < 0.9)
    assert_matches_brute(coverage_scores(g, s, sal), g, s, sal)


def test_coverage_scores_errors():
    g = np.zeros((2, 6, 8), dtype=bool)
    with raises_exactly(
        "ground_truth, region, saliency: expected three arrays of the same shape (N, H, W), "
        "got (2, 6, 8), (2, 6, 7) and (2, 6, 8)"
    ):
        coverage_scores(g, np.zeros((2, 6, 7), dtype=bool), np.zeros((2, 6, 8)))
    with raises_exactly(
        "ground_truth, region, saliency: expected three arrays of the same shape (N, H, W), "
        "got (6, 8), (6, 8) and (6, 8)"
    ):
        coverage_scores(g[0], g[0], np.zeros((6, 8)))
    with raises_exactly("ground_truth: expected a bool array, got dtype int64"):
        coverage_scores(g.astype(np.int64), g, np.zeros((2, 6, 8)))
    with raises_exactly("region: expected a bool array, got dtype float64"):
        coverage_scores(g, g.astype(float), np.zeros((2, 6, 8)))
    sal = np.zeros((2, 6, 8))
    sal[1, 5, 7] = np.nan
    with raises_exactly("saliency: map 1 has NaN or infinite values"):
        coverage_scores(g, g, sal)


# ---------------------------------------------------------------- assign_cases


def scores_of(iou, sc, gtc) -> CoverageScores:
    n = len(iou)
    return CoverageScores(
        iou=np.asarray(iou, dtype=float),
        gtc=np.asarray(gtc, dtype=float),
        sc=np.asarray(sc, dtype=float),
        soft_sc=np.zeros(n),
        reason=np.full(n, None, dtype=object),
    )


# (correct, iou, sc, gtc, expected) with the default thresholds (0.5 each).
CASE_TABLE = [
    (T, 0.8, 0.9, 0.88, "human aligned"),
    (F, 0.8, 0.9, 0.88, "confuser"),
    (T, 0.15, 0.9, 0.16, "sufficient subset"),
    (F, 0.15, 0.9, 0.16, "insufficient subset"),
    (T, 0.15, 0.16, 0.9, "sufficient context"),
    (F, 0.15, 0.16, 0.9, "context confusion"),
    (T, 0.1, 0.2, 0.2, "context dependent"),
    (F, 0.1, 0.2, 0.2, "distractor"),
    # SC = GTC = 0.5 gives IoU = 1/3: both coverages high, IoU low -> aligned.
    (T, 1 / 3, 0.5, 0.5, "human aligned"),
    (F, 1 / 3, 0.5, 0.5, "confuser"),
    # Exactly at a threshold is high (>=); just below is low.
    (T, 0.2, 0.5, 0.25, "sufficient subset"),
    (F, 0.2, 0.25, 0.5, "context confusion"),
    (T, 0.2, float(np.nextafter(0.5, 0)), 0.25, "context dependent"),
    (F, 0.2, 0.5, float(np.nextafter(0.5, 0)), "insufficient subset"),
    (T, 0.5, 1.0, 0.5, "human aligned"),
    (T, 0.0, 0.0, 0.0, "context dependent"),
    (F, 1.0, 1.0, 1.0, "confuser"),
    # Any NaN among IoU, SC, GTC -> undefined.
    (T, NAN, NAN, 0.5, UNDEFINED),
    (F, 0.0, NAN, 0.0, UNDEFINED),
    (T, 0.9, 0.9, NAN, UNDEFINED),
    (F, NAN, 1.0, 1.0, UNDEFINED),
]


def test_assign_cases_table():
    correct, iou, sc, gtc, expected = zip(*CASE_TABLE, strict=True)
    cases = assign_cases(np.array(correct), scores_of(iou, sc, gtc))
    assert cases.dtype == object and cases.shape == (len(CASE_TABLE),)
    assert list(cases) == list(expected)
    assert set(expected) == {*CASES_CORRECT, *CASES_WRONG, UNDEFINED}


def test_assign_cases_custom_thresholds():
    # The IoU clause alone: IoU exactly at its threshold, both coverages below theirs.
    t = CaseThresholds(iou=0.4, sc=0.9, gtc=0.9)
    cases = assign_cases(
        np.array([T, F, T]), scores_of([0.4, 0.4, 0.39], [0.6, 0.6, 0.6], [0.6, 0.6, 0.6]), t
    )
    assert list(cases) == ["human aligned", "confuser", "context dependent"]
    # Thresholds 0: every defined image is aligned; thresholds 1: only perfect scores.
    s = scores_of([0.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 1.0, 0.5])
    ok = np.array([T, T, T])
    assert list(assign_cases(ok, s, CaseThresholds(0, 0, 0))) == ["human aligned"] * 3
    assert list(assign_cases(ok, s, CaseThresholds(1, 1, 1))) == [
        "context dependent",
        "human aligned",
        "sufficient subset",
    ]


def brute_case(correct: bool, iou: float, sc: float, gtc: float, t: CaseThresholds) -> str:
    if math.isnan(iou) or math.isnan(sc) or math.isnan(gtc):
        return UNDEFINED
    names = CASES_CORRECT if correct else CASES_WRONG
    if iou >= t.iou or (sc >= t.sc and gtc >= t.gtc):
        return names[0]
    if sc >= t.sc:
        return names[1]
    if gtc >= t.gtc:
        return names[2]
    return names[3]


def test_assign_cases_random_one_case_each():
    rng = np.random.default_rng(3)
    n = 2000
    g = rng.random((n, 4, 5)) < rng.random((n, 1, 1))
    s = rng.random((n, 4, 5)) < rng.random((n, 1, 1))
    scores = coverage_scores(g, s, rng.normal(size=g.shape))
    correct = rng.random(n) < 0.5
    for t in (CaseThresholds(), CaseThresholds(iou=0.2, sc=0.7, gtc=0.4)):
        cases = assign_cases(correct, scores, t)
        assert cases.shape == (n,)
        assert set(cases) <= {*CASES_CORRECT, *CASES_WRONG, UNDEFINED}
        assert all(c in (*CASES_CORRECT, UNDEFINED) for c in cases[correct])
        assert all(c in (*CASES_WRONG, UNDEFINED) for c in cases[~correct])
        expected = [
            brute_case(bool(c), *map(float, v), t)
            for c, v in zip(
                correct, zip(scores.iou, scores.sc, scores.gtc, strict=True), strict=True
            )
        ]
        assert list(cases) == expected
        assert len(set(cases)) >= 8


def test_assign_cases_errors():
    for name, kwargs, value in (
        ("iou", {"iou": 1.5}, "1.5"),
        ("sc", {"sc": -0.1}, "-0.1"),
        ("gtc", {"gtc": NAN}, "nan"),
    ):
        with raises_exactly(f"{name}: threshold must be a number in [0, 1], got {value}"):
            CaseThresholds(**kwargs)
    s = scores_of([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with raises_exactly("correct: expected a bool array of shape (3,), got bool of shape (2,)"):
        assign_cases(np.array([T, F]), s)
    with raises_exactly("correct: expected a bool array of shape (3,), got int64 of shape (3,)"):
        assign_cases(np.array([1, 0, 1]), s)


# ---------------------------------------------------------------- mean_ci


def test_mean_ci_contains_the_mean_and_matches_the_normal_interval():
    x = np.random.default_rng(5).uniform(size=3000)
    mean, low, high = mean_ci(x)
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert low < mean < high
    # Each side of the bootstrap interval is about the normal one's, 1.96 standard errors.
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert mean - low == pytest.approx(half, rel=0.1)
    assert high - mean == pytest.approx(half, rel=0.1)


def test_mean_ci_narrows_with_more_data():
    rng = np.random.default_rng(6)
    small, large = rng.normal(size=50), rng.normal(size=5000)  # 5000: several chunks
    width_small = mean_ci(small)[2] - mean_ci(small)[1]
    width_large = mean_ci(large)[2] - mean_ci(large)[1]
    assert width_large < width_small / 5  # expected ratio sqrt(100) = 10
    narrow = mean_ci(small, level=0.5)
    assert narrow[2] - narrow[1] < width_small


def test_mean_ci_ignores_nan_and_is_deterministic():
    x = np.random.default_rng(8).normal(size=100)
    with_nan = np.insert(x, [0, 10, 50, 100], NAN)
    assert mean_ci(with_nan) == mean_ci(x) == mean_ci(x, seed=0)
    assert mean_ci(x, seed=1) != mean_ci(x)
    assert mean_ci(x, seed=1)[0] == mean_ci(x)[0]


def test_mean_ci_degenerate_inputs():
    mean, low, high = mean_ci([NAN, 0.3, np.inf])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_ci([]))
    assert all(math.isnan(v) for v in mean_ci([NAN, NAN]))
    assert mean_ci([0.25] * 10) == (0.25, 0.25, 0.25)


def test_mean_ci_errors():
    with raises_exactly("n_boot: must be a positive integer, got 0"):
        mean_ci([1.0, 2.0], n_boot=0)
    with raises_exactly("level: must be a number in (0, 1), got 1"):
        mean_ci([1.0, 2.0], level=1)


def test_chunks_cover_the_range():
    assert [(p.start, p.stop) for p in scores_module._chunks(600, 16)] == [
        (0, 256),
        (256, 512),
        (512, 600),
    ]
    big = list(scores_module._chunks(5, 1 << 23))  # one map per chunk past the element cap
    assert [(p.start, p.stop) for p in big] == [(k, k + 1) for k in range(5)]
