"""Barlow's pictures: the feature map behind the robust features, heatmaps, jet, overlay, the
feature attack, pixels read back as ingest decoded them, and the files write_pictures writes."""

from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from failstore.demo.nets import BottleneckCNN, PooledCNN
from failstore.errors import InputError, ModelSpecError
from failstore.ingest.decode import RESAMPLING, center_crop, decode_one, resize_shorter, to_rgb
from failstore.ingest.sources import SourceItem
from failstore.models.base import Built, FeatureAdapter, Source
from failstore.models.pixels import load_pixels, normalise, standardise, unit_tensor
from failstore.models.protocol import Preprocess
from failstore.queries.barlow import pictures as P

PRE = Preprocess(32, 32, mean=(0.5, 0.45, 0.4), std=(0.25, 0.24, 0.26))
PRE64 = Preprocess(64, 64, mean=(0.5, 0.45, 0.4), std=(0.25, 0.24, 0.26))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: one torch thread is much faster than two fighting other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ModuleSource(Source):
    kind = "test"

    def __init__(self, module: nn.Module, pre: Preprocess) -> None:
        super().__init__("test-model")
        self._module, self._pre = module, pre

    def _build(self) -> Built:
        return Built(module=self._module, class_names=None, files=[], preprocess=self._pre)


def adapter(module: nn.Module, pre: Preprocess = PRE, seed: int = 0) -> FeatureAdapter:
    a = FeatureAdapter("robust", "test-model", ModuleSource(module, pre))
    a.load("cpu")
    return a


def pooled(seed: int = 0, pre: Preprocess = PRE) -> FeatureAdapter:
    torch.manual_seed(seed)
    return adapter(PooledCNN(num_classes=4), pre)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (n, size // 8, size // 8, 3)).repeat(8, 1).repeat(8, 2)
    noise = rng.integers(-20, 21, (n, size, size, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- feature maps


def _check_map(a: FeatureAdapter, images: np.ndarray, where: str, shape: tuple) -> None:
    batch = normalise(images, a.preprocess)
    name, feats, maps = P.find_feature_map(a, batch)
    assert name == where
    assert maps.shape == shape
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), feats, rtol=1e-5, atol=1e-6)
    f2, m2 = P.feature_maps(a, batch)
    np.testing.assert_array_equal(f2, feats)
    np.testing.assert_array_equal(m2, maps)


def test_feature_map_of_pooled_cnn_is_its_trunk_output():
    a = pooled(pre=PRE64)
    images = random_images(3, 64)
    _check_map(a, images, "features", (3, 192, 4, 4))
    with torch.no_grad():
        trunk = a.module.features(normalise(images, PRE64)).numpy()
    np.testing.assert_allclose(P.feature_maps(a, normalise(images, PRE64))[1], trunk, atol=1e-6)


def test_feature_map_of_resnet18_is_layer4():
    import torchvision.models as tvm

    torch.manual_seed(0)
    a = adapter(tvm.resnet18(weights=None, num_classes=10), PRE64)
    _check_map(a, random_images(2, 64), "layer4", (2, 512, 2, 2))


class FunctionalRelu(nn.Module):
    """The map exists only as the input of the pooling layer (ReLU applied functionally)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_feature_map_found_as_a_module_input():
    torch.manual_seed(0)
    _check_map(adapter(FunctionalRelu()), random_images(2, 32), "pool:input", (2, 8, 32, 32))


def test_no_pooled_map_is_one_clear_error():
    torch.manual_seed(0)
    a = adapter(BottleneckCNN(num_classes=3))  # features: a Linear+ReLU bottleneck, not a pool
    with pytest.raises(ModelSpecError, match=r"no activation of shape \(N, 96, h, w\)"):
        P.feature_maps(a, normalise(random_images(2, 32), PRE))


# --------------------------------------------------------------------------- heatmaps, colours


def test_heatmaps_divide_by_the_per_image_max():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 3, (3, 4, 5, 6))
    maps[1, 2] = 0.0  # an all-zero channel
    maps[2, 2] = -rng.uniform(0.1, 1, (5, 6))  # no positive value
    h = P.heatmaps(maps, 2, (5, 6))
    assert h.dtype == np.float32 and h.shape == (3, 5, 6)
    np.testing.assert_allclose(h[0], maps[0, 2] / maps[0, 2].max(), rtol=1e-6)
    assert h[0].max() == 1.0
    assert np.all(h[1:] == 0) and not np.isnan(h).any()
    up = P.heatmaps(maps, 2, 40)
    assert up.shape == (3, 40, 40) and up.min() >= 0.0 and up.max() <= 1.0
    assert up[0].max() > 0.9


def test_upsample_matches_torch_bilinear():
    maps = np.random.default_rng(1).uniform(size=(2, 7, 5))
    ours = P.upsample(maps, (224, 160))
    ref = nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=(224, 160), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_jet_endpoints_and_monotone_hue():
    assert tuple(P.jet(0.0)) == (0, 0, 128)  # dark blue
    assert tuple(P.jet(1.0)) == (128, 0, 0)  # dark red
    assert tuple(P.jet(0.5)) == (128, 255, 128)
    x = np.linspace(0, 1, 1001)
    rgb = P.jet(x).astype(float) / 255
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] * 360 for c in rgb])
    assert hue[0] == 240 and hue[-1] == 0
    assert np.all(np.diff(hue) <= 1e-9)  # blue -> cyan -> green -> yellow -> red
    assert P.jet(np.zeros((2, 3))).shape == (2, 3, 3)
    assert tuple(P.jet(np.nan)) == (0, 0, 128) and tuple(P.jet(7.0)) == (128, 0, 0)


def test_overlay_is_heat_plus_image_over_its_max():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    heat = rng.uniform(size=(2, 8, 9))
    out = P.overlay(image, heat)
    for k in range(2):
        cam = P.jet(heat[k]) / 255 + image[k] / 255
        np.testing.assert_array_equal(out[k], np.rint(cam / cam.max() * 255).astype(np.uint8))
        assert out[k].max() == 255
    np.testing.assert_array_equal(P.overlay(image[0], heat[0]), out[0])
    with pytest.raises(ValueError, match="do not match"):
        P.overlay(image[0], heat[0, :4])


# --------------------------------------------------------------------------- feature attack


def test_grad_step_has_the_stated_l2_size():
    x = torch.full((3, 3, 2, 2), 0.5)
    grad = torch.zeros(3, 3, 2, 2)
    grad[0] = 1.0  # ||g|| = sqrt(12)
    grad[1, 0, 0, 0], grad[1, 2, 1, 1] = 3.0, -4.0  # ||g|| = 5; grad[2] = 0
    out = P.grad_step(x, grad, 0.5)
    np.testing.assert_allclose(out[0].numpy(), 0.5 + 0.5 / np.sqrt(12), rtol=1e-6)
    assert out[1, 0, 0, 0] == pytest.approx(0.5 + 0.5 * 3 / 5)
    assert out[1, 2, 1, 1] == pytest.approx(0.5 - 0.5 * 4 / 5)
    torch.testing.assert_close(out[2], x[2])  # zero gradient: no move, no NaN
    norms = (out - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([0.5, 0.5, 0.0]))


def _channel(a: FeatureAdapter, images: np.ndarray) -> int:
    """A channel active on every image (an untrained net has dead channels)."""
    feats = a.encode(normalise(images, a.preprocess))["robust_features"]
    return int(np.argmax(feats.min(axis=0)))


def test_one_attack_step_against_a_hand_computation():
    a = pooled()
    images = random_images(3, 32, seed=3)
    c = _channel(a, images)
    x0 = unit_tensor(images) * 0.4 + 0.3  # interior: a 0.2 step cannot reach 0 or 1
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(a.module.embed(standardise(x, PRE))[:, c].sum(), x)
    want = x0 + 0.2 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    got, history = P.ascend(a, x0, [c] * 3, steps=1, step_size=0.2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((got - x0).flatten(1).norm(dim=1), torch.full((3,), 0.2))
    assert history.shape == (1, 3)


def test_feature_attack_raises_the_feature_and_stays_in_range():
    a = pooled()
    images = random_images(4, 32, seed=4)
    c = _channel(a, images)
    x, history = P.ascend(a, unit_tensor(images), [c] * 4, steps=40, step_size=1.0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    rises = np.diff(history, axis=0) >= -1e-6
    assert rises.mean() > 0.9  # monotone-ish
    final = a.encode(standardise(x, PRE))["robust_features"][:, c]
    assert np.all(final > 2 * history[0] + 0.05), (history[0], final)
    res = P.run_feature_attack(a, images, c, steps=40)
    assert res.images.dtype == np.uint8 and res.images.shape == images.shape
    np.testing.assert_array_equal(res.history, history)
    # the reported activation is the feature on the 8-bit pixels that get written
    on_png = a.encode(normalise(res.images, PRE))["robust_features"][:, c]
    np.testing.assert_allclose(res.activation, on_png, rtol=1e-6)
    np.testing.assert_allclose(res.activation, final, rtol=0.05)


def test_attack_is_the_same_batched_or_alone_and_per_image_channels():
    a = pooled()
    images = random_images(3, 32, seed=5)
    together = P.run_feature_attack(a, images, [1, 2, 3], steps=3)
    for k, c in enumerate([1, 2, 3]):
        alone = P.feature_attack(a, images[k : k + 1], c, steps=3)
        assert np.abs(alone[0].astype(int) - together.images[k]).max() <= 1
    assert P.feature_attack(a, images, 0, steps=0).tolist() == images.tolist()
    with pytest.raises(ValueError, match="2 channels for 3 images"):
        P.run_feature_attack(a, images, [1, 2], steps=1)


# --------------------------------------------------------------------------- pixels


def _files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(6)
    out = []
    rgb = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for name, im, kw in [
        ("wide.png", rgb, {}),
        ("tall.jpg", rgb.transpose(Image.Transpose.ROTATE_90), {"quality": 90}),
        ("alpha.png", Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)), {}),
        ("gray16.png", Image.fromarray(rng.integers(0, 65535, (33, 47), dtype=np.uint16)), {}),
        ("palette.png", rgb.convert("P"), {}),
        ("tiny.png", Image.fromarray(rng.integers(0, 256, (5, 9, 3), dtype=np.uint8)), {}),
    ]:
        im.save(tmp_path / name, **kw)
        out.append(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    return [*out, tmp_path / "rotated.jpg"]


@pytest.mark.parametrize(
    "pre",
    [
        PRE64,
        Preprocess(72, 64, interpolation="bicubic"),
        Preprocess(24, 40, interpolation="nearest"),
    ],
)
def test_load_pixels_equals_the_ingest_decode(tmp_path: Path, pre: Preprocess):
    for path in _files(tmp_path):
        decoded = decode_one(SourceItem(str(path), None, None, None, None), [pre])
        assert decoded.error is None, decoded.error
        got = load_pixels(str(path), pre, image_id=decoded.image_id)
        assert got.dtype == np.uint8 and got.shape == (pre.crop, pre.crop, 3)
        np.testing.assert_array_equal(got, decoded.arrays[pre.key()], err_msg=path.name)
    rgb = Image.open(tmp_path / "wide.png")  # and the decode.py functions, one by one
    resized = resize_shorter(to_rgb(rgb), pre.resize, RESAMPLING[pre.interpolation])
    want = center_crop(np.asarray(resized), pre.crop)
    np.testing.assert_array_equal(load_pixels(str(tmp_path / "wide.png"), pre), want)


def test_load_pixels_refuses_missing_and_changed_files(tmp_path: Path):
    path = _files(tmp_path)[0]
    with pytest.raises(InputError, match="not found"):
        load_pixels(str(tmp_path / "gone.png"), PRE)
    with pytest.raises(InputError, match="changed since it was ingested"):
        load_pixels(str(path), PRE, image_id="0" * 64)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot decode"):
        load_pixels(str(tmp_path / "bad.png"), PRE)


def test_normalise_is_the_ingest_arithmetic():
    from preprocess_oracle import to_batch

    images = random_images(2, 32)
    ours = normalise(images, PRE)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, to_batch(list(images), PRE), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the driver


def test_rule_features_and_valid_leaves():
    rows: list[dict[str, Any]] = [
        {"leaf": 1, "valid": True, "conditions": [{"feature": 5, "op": ">", "threshold": 1.0},
                                                  {"feature": 2, "op": "<=", "threshold": 0.0},
                                                  {"feature": 5, "op": "<=", "threshold": 3.0}]},
        {"leaf": 2, "valid": False, "conditions": [{"feature": 7, "op": ">", "threshold": 1.0}]},
    ]  # fmt: skip
    assert P.valid_leaves(rows) == [(1, [5, 2])]
    assert P.rule_features([(4, ">", 0.5), (1, "<=", 0.2)]) == [4, 1]
    assert P.top_images(np.array([0.5, 0.9, 0.5, 0.1]), 3).tolist() == [1, 0, 2]
    assert P.safe_name("tench") == "tench"
    assert P.safe_name("a/b").startswith("a_b-") and P.safe_name("..").startswith("..-")


def test_write_pictures_writes_the_files_it_lists(tmp_path: Path):
    a = pooled(pre=PRE)
    n, d = 8, 192
    images = random_images(n, 48, seed=7)  # files larger than the 32 x 32 crop
    uris, ids = [], []
    for k in range(n):
        path = tmp_path / "img" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(images[k]).save(path)
        uris.append(str(path))
        ids.append(hashlib.sha256(path.read_bytes()).hexdigest())
    feats = np.random.default_rng(8).uniform(0, 0.1, (n, d)).astype(np.float32)
    feats[:, 3] = [0.1, 0.9, 0.5, 0.7, 0.2, 0.8, 0.3, 0.6]
    feats[:, 10] = [0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.3, 0.0]
    group = P.PictureGroup(
        cls="cat/dog", grouping="label", features=feats, image_ids=ids, uris=uris,
        leaves=[(1, [3]), (4, [3, 10])],
    )  # fmt: skip
    out = tmp_path / "pics"
    table = P.write_pictures(a, [group], out, top=5, steps=3, batch_size=4)
    assert table.schema == P.PICTURES_SCHEMA
    rows = table.to_pylist()
    assert len(rows) == (5 + 5 + 5) * 3
    assert {r["class"] for r in rows} == {"cat/dog"} and {r["grouping"] for r in rows} == {"label"}
    assert [(r["leaf"], r["feature"]) for r in rows[::15]] == [(1, 3), (4, 3), (4, 10)]
    top3 = [1, 5, 3, 7, 2]
    top10 = [3, 6, 0, 1, 2]  # ties (0.0) in group order
    for leaf, f, order in [(1, 3, top3), (4, 3, top3), (4, 10, top10)]:
        mine = [r for r in rows if r["leaf"] == leaf and r["feature"] == f]
        assert [r["kind"] for r in mine[:3]] == ["image", "heatmap", "attack"]
        for rank, i in enumerate(order, start=1):
            got = {r["kind"]: r for r in mine if r["rank"] == rank}
            assert set(got) == {"image", "heatmap", "attack"}
            for kind, prefix in [("image", "top"), ("heatmap", "heatmap"), ("attack", "attack")]:
                r = got[kind]
                assert r["image_id"] == ids[i]
                path = Path(r["path"])
                assert path.is_absolute() and path.name == f"{prefix}_{rank}.png"
                assert path.parent == out.resolve() / P.safe_name("cat/dog") / f"leaf{leaf}" / (
                    f"feature{f}"
                )
                with Image.open(path) as im:
                    assert im.mode == "RGB" and im.size == (32, 32)
            assert got["image"]["activation"] == pytest.approx(float(feats[i, f]))
            assert got["heatmap"]["activation"] == got["image"]["activation"]
            with Image.open(got["image"]["path"]) as im:
                np.testing.assert_array_equal(np.asarray(im), load_pixels(uris[i], PRE))
            with Image.open(got["attack"]["path"]) as im:
                attacked = np.asarray(im)[None]
            on_png = a.encode(normalise(attacked, PRE))["robust_features"][0, f]
            assert got["attack"]["activation"] == pytest.approx(float(on_png), rel=1e-6)
    listed = {Path(r["path"]) for r in rows}
    assert len(listed) == len(rows)
    assert listed == {p for p in out.rglob("*.png")}


def test_write_pictures_edge_cases(tmp_path: Path):
    a = pooled()
    feats = np.zeros((2, 192), np.float32)
    empty = P.PictureGroup("c", "label", feats, ["x", "y"], ["/nope/x", "/nope/y"], leaves=[])
    assert P.write_pictures(a, [empty], tmp_path).num_rows == 0  # no leaf: nothing read
    bad = P.PictureGroup("c", "label", feats, ["x", "y"], ["/nope/x", "/nope/y"], [(1, [200])])
    with pytest.raises(ValueError, match="feature out of range"):
        P.write_pictures(a, [bad], tmp_path)
    gone = P.PictureGroup("c", "label", feats, ["x", "y"], ["/nope/x", "/nope/y"], [(1, [2])])
    with pytest.raises(InputError, match="/nope/x: image file not found"):
        P.write_pictures(a, [gone], tmp_path, top=1)
