"""The similarity measures of the explanation debugging tests (failstore.queries.sanity.similarity)
against independent oracles: per-image loops over np.percentile, scipy.stats.spearmanr,
skimage.metrics.structural_similarity and skimage.feature.hog."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from failstore.errors import ConfigError
from failstore.queries.sanity.similarity import (
    METRICS,
    abs_norm,
    compare,
    div_norm,
    hog_rank,
    minmax_norm,
    prepare,
    spearman_rows,
    ssim,
    ssim_to_map,
)

pytestmark = pytest.mark.filterwarnings("error")  # no numpy warning may escape

RNG = np.random.default_rng(20240601)


# ---- oracles: one image at a time, written from the definitions --------------------------------


def abs_oracle(img: np.ndarray) -> np.ndarray:
    if img.shape[0] == 1:
        peak = np.max(np.abs(img[0]))
        return np.full(img.shape[1:], np.nan) if peak == 0 else np.abs(img[0]) / peak
    s = np.sum(np.abs(img), axis=0)
    vmax, vmin = np.percentile(s, 99), np.min(s)
    if vmax == vmin:
        return np.full(s.shape, np.nan)
    return np.clip((s - vmin) / (vmax - vmin), 0, 1)


def div_oracle(img: np.ndarray) -> np.ndarray:
    if img.shape[0] == 1:
        peak = np.max(np.abs(img[0]))
        return np.full(img.shape[1:], np.nan) if peak == 0 else img[0] / peak
    s = np.sum(img, axis=0)
    span = abs(np.percentile(s, 99))
    if span == 0:
        return np.full(s.shape, np.nan)
    return np.clip((s - (-span)) / (span - (-span)), -1, 1)


def minmax_oracle(img: np.ndarray) -> np.ndarray:
    lo, hi = img.min(), img.max()
    return np.full(img.shape, np.nan) if hi == lo else (img - lo) / (hi - lo)


def spearman_oracle(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.ravel(), y.ravel()
    if np.isnan(x).any() or np.isnan(y).any() or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def ssim_oracle(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """x, y: (C, H, W)."""
    return float(
        structural_similarity(
            np.moveaxis(x, 0, -1),
            np.moveaxis(y, 0, -1),
            data_range=data_range,
            gaussian_weights=True,
            use_sample_covariance=True,
            channel_axis=-1,
        )
    )


def hog_oracle(x: np.ndarray, y: np.ndarray, ppc: int = 16) -> float:
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    return spearman_oracle(hog(x, pixels_per_cell=(ppc, ppc)), hog(y, pixels_per_cell=(ppc, ppc)))


def loop(fn, *batches, **kw) -> np.ndarray:
    return np.array([fn(*imgs, **kw) for imgs in zip(*batches, strict=True)])


def same(got: np.ndarray, want: np.ndarray, rtol: float = 1e-12, atol: float = 1e-12) -> None:
    assert got.shape == want.shape
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def maps(n: int, c: int, h: int, w: int) -> np.ndarray:
    """Random signed attributions with a little structure (a smooth blob plus noise)."""
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (0.1 * h * w))
    return RNG.normal(size=(n, c, h, w)) + 3 * blob * RNG.normal(size=(n, c, 1, 1))


# ---- normalisations ----------------------------------------------------------------------------


def test_abs_norm_by_hand():
    m = np.zeros((1, 3, 2, 2))
    m[0, 0] = [[0, 1], [2, 0]]
    m[0, 1] = [[0, 0], [0, -3]]  # |.| summed over channels: [[0, 1], [2, 3]]
    p99 = 0.99 * 3  # linear interpolation between 2 and 3 at 2.97
    np.testing.assert_allclose(abs_norm(m)[0], [[0, 1 / p99], [2 / p99, 1]], rtol=1e-15)
    single = np.array([[[[1.0, -4.0], [2.0, 0.0]]]])  # C == 1: |m| / max |m|
    np.testing.assert_array_equal(abs_norm(single)[0], [[0.25, 1.0], [0.5, 0.0]])


def test_div_norm_by_hand():
    m = np.zeros((1, 3, 2, 2))
    m[0, 0] = [[-1, 1], [2, 3]]  # s = [[-1, 1], [2, 3]], P99 = 2.97
    span = 2 + 0.97 * 1  # 2.97
    want = np.clip((np.array([[-1, 1], [2, 3]]) + span) / (2 * span), -1, 1)
    np.testing.assert_allclose(div_norm(m)[0], want, rtol=1e-15)
    single = np.array([[[[1.0, -4.0], [2.0, 0.0]]]])  # C == 1: m / max |m|
    np.testing.assert_array_equal(div_norm(single)[0], [[0.25, -1.0], [0.5, 0.0]])


@pytest.mark.parametrize("c", [3, 1])
def test_normalisations_match_a_loop_on_random_maps(c):
    m = maps(5, c, 20, 31)
    m[1] = np.round(m[1])  # many ties
    same(abs_norm(m), loop(abs_oracle, m))
    same(div_norm(m), loop(div_oracle, m))
    same(minmax_norm(m), loop(minmax_oracle, m))
    assert np.nanmin(abs_norm(m)) == 0 and np.nanmax(abs_norm(m)) == 1


def test_degenerate_maps_give_nan_images():
    m = RNG.normal(size=(6, 3, 20, 50))  # 1,000 pixels: P99 sits at sorted index 989.01
    m[0] = 2.5  # constant
    m[1] = 0.0
    m[1, 0].flat[RNG.choice(1000, 9, replace=False)] = 5.0  # 99.1 % equal: P99 == min
    m[2] = 0.0
    m[2, 0].flat[RNG.choice(1000, 10, replace=False)] = 5.0  # 99.0 % equal: P99 > min
    m[3] = -1.0
    m[3, 0].flat[:9] = 1.0  # signed sum: P99 is -3 -> span 3, not degenerate
    m[4] = 0.0
    m[4, 0].flat[:5] = -7.0  # signed P99 == 0 -> span 0
    m[5, 1, 3, 4] = np.nan
    a, d, mm = abs_norm(m), div_norm(m), minmax_norm(m)
    same(a, loop(abs_oracle, m))
    same(d, loop(div_oracle, m))
    same(mm, loop(minmax_oracle, m))
    nan_a = [bool(np.isnan(a[i]).all()) for i in range(6)]
    nan_d = [bool(np.isnan(d[i]).all()) for i in range(6)]
    nan_mm = [bool(np.isnan(mm[i]).all()) for i in range(6)]
    assert nan_a == [True, True, False, True, True, True]  # m[3]: |m| constant 3
    assert nan_d == [False, True, False, False, True, True]  # m[0]: s = 7.5, span 7.5
    assert nan_mm == [True, False, False, False, False, True]
    assert not np.isinf(a).any() and not np.isinf(d).any() and not np.isinf(mm).any()


def test_single_channel_zero_map_is_nan():
    m = np.zeros((2, 1, 4, 5))
    m[1, 0, 2, 2] = -2.0
    assert np.isnan(abs_norm(m)[0]).all() and np.isnan(div_norm(m)[0]).all()
    assert abs_norm(m)[1, 2, 2] == 1.0 and div_norm(m)[1, 2, 2] == -1.0
    assert np.isnan(minmax_norm(m)[0]).all()


def test_normalisations_need_4d():
    with pytest.raises(ConfigError, match="4-D"):
        abs_norm(np.zeros((3, 8, 8)))


# ---- Spearman ----------------------------------------------------------------------------------


def test_spearman_rows_matches_scipy_with_ties():
    a = RNG.integers(0, 5, size=(8, 3, 6, 7)).astype(float)
    b = a + RNG.integers(-2, 3, size=a.shape)
    b[3] = -a[3]
    b[4] = a[4]
    got = spearman_rows(a, b)
    same(got, loop(spearman_oracle, a, b), rtol=1e-12)
    assert got[4] == 1.0 and got[3] == -1.0


def test_spearman_rows_nan_cases():
    a = RNG.normal(size=(4, 30))
    b = RNG.normal(size=(4, 30))
    a[0] = 1.0  # constant
    b[1] = 0.0  # constant
    a[2, 7] = np.nan
    got = spearman_rows(a, b)
    assert np.isnan(got[:3]).all()
    assert got[3] == pytest.approx(spearmanr(a[3], b[3]).statistic, rel=1e-12)


# ---- SSIM --------------------------------------------------------------------------------------


def structured(n: int, c: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, c, h, w))
    for i in range(n):
        for k in range(c):
            r = 3 + 2 * i + k
            out[i, k] = ((yy - h / 2) ** 2 + (xx - w / 3 - k) ** 2 < r * r).astype(float)
            out[i, k] += 0.5 * np.sin(xx / (2 + i)) * (yy > h // 2)
    return out


@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_matches_skimage(c, data_range):
    for make in (lambda: RNG.random((4, c, 24, 37)), lambda: structured(4, c, 24, 37)):
        a = make()
        b = np.clip(a + 0.3 * RNG.normal(size=a.shape), 0, 1)
        same(
            ssim(a, b, data_range=data_range),
            loop(ssim_oracle, a, b, data_range=data_range),
            rtol=1e-10,
            atol=1e-10,
        )


def test_ssim_smallest_map_and_default_range():
    a, b = RNG.random((2, 3, 11, 11)), RNG.random((2, 3, 11, 11))
    same(ssim(a, b), loop(ssim_oracle, a, b, data_range=2.0), rtol=1e-10, atol=1e-10)
    assert ssim(a, a).tolist() == [1.0, 1.0]


def test_ssim_too_small_maps():
    with pytest.raises(ConfigError) as err:
        ssim(np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8)))
    assert str(err.value) == (
        "SSIM needs maps of at least 11 x 11 pixels, got 8 x 8; use a larger --resolution"
    )
    with pytest.raises(ConfigError, match="got 10 x 40"):
        ssim(np.zeros((1, 1, 10, 40)), np.zeros((1, 1, 10, 40)))


def test_ssim_nan_pair_is_nan_and_alone():
    a, b = RNG.random((3, 3, 16, 16)), RNG.random((3, 3, 16, 16))
    a[1, 2, 0, 0] = np.nan
    b[2, 0, 15, 15] = np.nan
    got = ssim(a, b)
    assert np.isnan(got[1:]).all()
    assert got[0] == pytest.approx(ssim_oracle(a[0], b[0], 2.0), abs=1e-10)


# ---- HOG ---------------------------------------------------------------------------------------


def test_hog_rank_matches_a_loop():
    m = maps(4, 3, 48, 64)
    x = maps(4, 3, 48, 64)
    a, b = abs_norm(m), abs_norm(x)
    b[0] = a[0]
    same(hog_rank(a, b), loop(hog_oracle, a, b), rtol=1e-12)
    same(hog_rank(a, b, pixels_per_cell=8), loop(hog_oracle, a, b, ppc=8), rtol=1e-12)
    assert hog_rank(a, b)[0] == 1.0


def test_hog_rank_nan_and_small_maps():
    a, b = RNG.random((2, 48, 48)), RNG.random((2, 48, 48))
    b[1, 5, 5] = np.nan
    got = hog_rank(a, b)
    assert np.isnan(got[1]) and got[0] == pytest.approx(hog_oracle(a[0], b[0]), rel=1e-12)
    with pytest.raises(ConfigError) as err:
        hog_rank(np.zeros((1, 47, 64)), np.zeros((1, 47, 64)))
    assert str(err.value) == (
        "HOG needs maps of at least 48 x 48 pixels (3 x 3 cells of 16 pixels), got 47 x 64; "
        "use a larger --resolution"
    )


# ---- compare -----------------------------------------------------------------------------------


def compare_oracle(o: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    ao, ax = loop(abs_oracle, o), loop(abs_oracle, x)
    mo, mx = loop(minmax_oracle, o), loop(minmax_oracle, x)
    return {
        "rank_abs": loop(spearman_oracle, ao, ax),
        "rank_signed": loop(spearman_oracle, loop(div_oracle, o), loop(div_oracle, x)),
        "ssim": loop(ssim_oracle, mo, mx, data_range=2.0),
        "ssim_range1": loop(ssim_oracle, mo, mx, data_range=1.0),
        "hog": loop(hog_oracle, ao, ax),
    }


@pytest.mark.parametrize("c", [3, 1])
def test_compare_matches_the_oracles(c):
    o, x = maps(3, c, 48, 50), maps(3, c, 48, 50)
    x[0] = o[0] + 0.5 * x[0]  # a related pair
    got, want = compare(o, x), compare_oracle(o, x)
    assert list(got) == list(METRICS) == ["rank_abs", "rank_signed", "ssim", "ssim_range1", "hog"]
    for key in METRICS:
        same(got[key], want[key], rtol=1e-10, atol=1e-10)


def test_compare_with_itself_and_its_negation():
    m = maps(3, 3, 48, 48)
    for key, value in compare(m, m).items():
        assert value.tolist() == [1.0, 1.0, 1.0], key
    neg = compare(m, -m)
    assert neg["rank_abs"].tolist() == [1.0, 1.0, 1.0]
    assert neg["hog"].tolist() == [1.0, 1.0, 1.0]
    want = loop(spearman_oracle, loop(div_oracle, m), loop(div_oracle, -m))
    same(neg["rank_signed"], want, rtol=1e-12)
    assert (neg["rank_signed"] > -1).all()  # clipping at -1 ties the negation's lowest values


def test_compare_rejects_bad_batches():
    m = maps(2, 3, 48, 48)
    with pytest.raises(ConfigError, match="differ in shape"):
        compare(m, m[:1])
    with pytest.raises(ConfigError, match="4-D"):
        compare(m[:, 0], m[:, 0])
    with pytest.raises(ConfigError, match="floating"):
        compare(m.astype(int), m.astype(int))


@pytest.mark.parametrize(("c", "side"), [(3, 48), (1, 50), (3, 16)])
def test_a_prepared_original_gives_the_same_figures_exactly(c, side):
    """One original prepared once against several others (the randomisation steps): every
    figure equal to the plain compare's, degenerate and NaN images included."""
    o = maps(5, c, side, side).astype(np.float32)
    o[1] = 0.0  # constant: NaN figures
    o[2, :, :3] = np.nan
    others = [maps(5, c, side, side).astype(np.float32) for _ in range(3)]
    others[0][3] = 1.0
    others[1][4, 0, 0, 0] = np.nan
    others[2][0] = o[0] + 0.3 * others[2][0]
    ref = prepare(o)
    for x in others:
        got, want = compare(ref, x), compare(o, x)
        assert list(got) == list(METRICS)
        for key in METRICS:
            np.testing.assert_array_equal(got[key], want[key])
        assert np.isnan(got["rank_abs"][[1, 2]]).all()
    assert np.isnan(compare(ref, others[1])["ssim"][4])
    with pytest.raises(ConfigError, match="differ in shape"):
        compare(ref, others[0][:2])


# ---- ssim_to_map -------------------------------------------------------------------------------


@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_to_map_against_skimage(data_range):
    h, w = 32, 40
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - 16) ** 2 + (xx - 18) ** 2 < 100).astype(float)  # the object
    target = np.stack([1 - mask, 1 - mask])
    m = np.empty((2, 3, h, w))
    m[0] = (1 - mask) * 2 + 0.1 * RNG.normal(size=(3, h, w))  # attributes the background
    m[1] = mask * 2 + 0.1 * RNG.normal(size=(3, h, w))  # attributes the object
    got = ssim_to_map(m, target, data_range=data_range)
    want = [
        structural_similarity(
            abs_oracle(m[i]),
            target[i],
            data_range=data_range,
            gaussian_weights=True,
            use_sample_covariance=True,
        )
        for i in range(2)
    ]
    same(got, np.array(want), rtol=1e-10, atol=1e-10)
    assert got[0] > got[1]
    with pytest.raises(ConfigError, match="target maps"):
        ssim_to_map(m, target[:, :-1])
