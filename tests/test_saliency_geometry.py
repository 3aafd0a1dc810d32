"""The frame of a saliency map in its image, and boxes and masks rasterised in it, checked against
the ingest's own geometry: an image whose pixels hold their own coordinates, resized with
NEAREST and cropped by ``failstore.models.pixels.geometry``, tells which image pixel each input
pixel shows; the frame must say the same."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from failstore.errors import InputError
from failstore.models.pixels import geometry
from failstore.models.protocol import Preprocess
from failstore.queries.saliency.geometry import (
    Frame,
    boxes_region,
    crop_window,
    downsample,
    frame_of,
    mask_region,
)

SIZES = [(40, 30, 36, 32), (30, 40, 36, 32), (64, 64, 32, 28), (50, 21, 24, 24), (17, 13, 16, 20),
         (100, 37, 40, 40), (33, 90, 32, 30)]  # fmt: skip


def coordinate_image(w: int, h: int) -> Image.Image:
    """R = column, G = row (+1, so 0 marks zero padding)."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    arr = np.stack([x + 1, y + 1, np.zeros_like(x)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize(("w", "h", "resize", "crop"), SIZES)
def test_frame_centres_land_on_the_pixels_the_model_saw(w, h, resize, crop):
    seen = geometry(coordinate_image(w, h), Preprocess(resize, crop, interpolation="nearest"))
    frame = frame_of(w, h, resize, crop, crop)
    cx, cy = frame.centres()
    col, row = np.floor(cx).astype(int), np.floor(cy).astype(int)
    mid = crop // 2  # a row and a column inside the image (padding is only at the borders)
    inside_x, inside_y = seen[mid, :, 0] > 0, seen[:, mid, 1] > 0  # not zero padding
    assert np.array_equal(inside_x, (col >= 0) & (col < w))
    assert np.array_equal(inside_y, (row >= 0) & (row < h))
    # PIL's NEAREST samples the source pixel under the output pixel's centre: the same pixel
    assert np.array_equal(seen[mid, inside_x, 0].astype(int) - 1, col[inside_x])
    assert np.array_equal(seen[inside_y, mid, 1].astype(int) - 1, row[inside_y])


@pytest.mark.parametrize(("w", "h", "resize", "crop"), SIZES)
def test_a_mask_in_the_frame_equals_the_mask_cropped_like_the_image(w, h, resize, crop):
    rng = np.random.default_rng(w * h)
    mask = (rng.random((h, w)) < 0.4).astype(np.uint8) * 255
    seen = geometry(Image.fromarray(mask).convert("RGB"),
                    Preprocess(resize, crop, interpolation="nearest"))[:, :, 0] > 0  # fmt: skip
    assert np.array_equal(mask_region(mask, frame_of(w, h, resize, crop, crop)), seen)


def test_boxes_hold_the_pixels_whose_centre_is_inside_half_open_edges():
    frame = Frame(0, 0, 10, 8, 8, 10)  # one map pixel per image pixel
    region = boxes_region([(2, 3, 5, 7)], frame)
    want = np.zeros((8, 10), bool)
    want[3:7, 2:5] = True  # columns 2, 3, 4 and rows 3..6: x is the column, y the row
    assert np.array_equal(region, want)
    # fractional edges: a pixel is in when its centre is (2.5 in [2.4, 2.6) but 3.5 not in)
    assert np.array_equal(np.flatnonzero(boxes_region([(2.4, 0, 2.6, 1)], frame)[0]), [2])
    assert not boxes_region([(2.6, 0, 3.4, 1)], frame).any()  # no centre inside
    assert not boxes_region([], frame).any()
    # the union of two boxes, and a coarser map (each map pixel 2 x 2 image pixels)
    coarse = Frame(0, 0, 10, 8, 4, 5)
    got = boxes_region([(0, 0, 2, 2), (6, 4, 10, 8)], coarse)
    brute = np.zeros((4, 5), bool)
    for i in range(4):
        for j in range(5):
            cx, cy = (j + 0.5) * 2, (i + 0.5) * 2
            brute[i, j] = (0 <= cx < 2 and 0 <= cy < 2) or (6 <= cx < 10 and 4 <= cy < 8)
    assert np.array_equal(got, brute)


def test_a_padded_crop_puts_nothing_outside_the_image():
    x0, y0, x1, y1 = crop_window(8, 8, 8, 12)  # 8 x 8 shown in a 12 x 12 crop: 2 px of padding
    assert (x0, y0, x1, y1) == (-2.0, -2.0, 10.0, 10.0)
    region = mask_region(np.ones((8, 8)), frame_of(8, 8, 8, 12, 12))
    assert region.sum() == 64 and not region[:2].any() and not region[:, -2:].any()


def test_downsample_is_the_mean_over_each_map_pixels_area():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 12, 12)).astype(np.float32)
    blocks = downsample(maps, 4)
    np.testing.assert_allclose(blocks[1, 2, 3], maps[1, 6:9, 9:12].mean(), rtol=1e-6)
    odd = downsample(maps, 5)  # 12 / 5: area-weighted
    np.testing.assert_allclose(odd.mean(axis=(1, 2)), maps.mean(axis=(1, 2)), atol=1e-5)
    # output pixel (0, 0) spans [0, 2.4) x [0, 2.4): two whole pixels and 0.4 of the third
    wt = np.array([1, 1, 0.4]) / 2.4
    np.testing.assert_allclose(odd[2, 0, 0], wt @ maps[2, :3, :3] @ wt, rtol=1e-5)
    assert np.array_equal(downsample(maps, 12), maps)
    with pytest.raises(InputError) as exc:
        downsample(maps, 13)
    assert str(exc.value) == "resolution must be between 1 and the input size 12, got 13"
