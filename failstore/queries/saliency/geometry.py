"""Where a saliency map lies in its image, and ground-truth regions rasterised in the map's frame.

Coordinates are the original image's pixel coordinates (after EXIF orientation, as
``images.width`` / ``height`` and ``images.boxes`` are): pixel (column k, row l) spans
[k, k+1) x [l, l+1), so its centre is (k + 0.5, l + 0.5).

The model saw the image through the ingest's geometry (``failstore.models.pixels``): resize the
shorter side to ``resize`` (torchvision's rounding: the longer side becomes
``int(resize * long / short)``), then centre-crop ``crop`` x ``crop`` (zero-padding first when
the resized image is smaller). A map of ``resolution`` x ``resolution`` pixels covers that crop
window; map pixel (i, j) covers input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s) with
s = crop / resolution, and its centre in image coordinates is
``x0 + (j + 0.5) * (x1 - x0) / resolution`` (likewise y).

**Which map pixels a region holds**: a map pixel belongs to a box (x0, y0, x1, y1) when its
centre lies inside the half-open box, ``x0 <= cx < x1`` and ``y0 <= cy < y1`` (boxes are
stored as pixel edges, so a box (2, 3, 5, 7) on a 1:1 frame holds columns 2, 3, 4 and rows
3..6); to a mask when the mask pixel under its centre, ``mask[floor(cy), floor(cx)]``, is
non-zero (nearest neighbour). Centres outside the image (zero padding) belong to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from failstore.errors import InputError


@dataclass(frozen=True)
class Frame:
    """A map's window in its image (original pixel coordinates) and the map's size."""

    x0: float
    y0: float
    x1: float
    y1: float
    height: int
    width: int

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """The x centres of the map's columns (width,) and y centres of its rows (height,)."""
        j = np.arange(self.width, dtype=np.float64) + 0.5
        i = np.arange(self.height, dtype=np.float64) + 0.5
        return (
            self.x0 + j * (self.x1 - self.x0) / self.width,
            self.y0 + i * (self.y1 - self.y0) / self.height,
        )


def crop_window(width: int, height: int, resize: int, crop: int) -> tuple[float, ...]:
    """(x0, y0, x1, y1): the part of a width x height image the model's crop x crop input shows,
    in the image's pixel coordinates (beyond the image where the crop was zero-padded)."""
    if width < 1 or height < 1:
        raise InputError(f"image size must be positive, got {width} x {height}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    sx, sy = new_w / width, new_h / height
    left = _offset(new_w, crop)
    top = _offset(new_h, crop)
    return (left / sx, top / sy, (left + crop) / sx, (top + crop) / sy)


def _offset(size: int, crop: int) -> int:
    """Where the crop starts in the resized image (negative: padded), as ``center_crop``."""
    if crop > size:
        return -((crop - size) // 2)
    return round((size - crop) / 2.0)


def frame_of(width: int, height: int, resize: int, crop: int, resolution: int) -> Frame:
    """The frame of a resolution x resolution map of a width x height image."""
    x0, y0, x1, y1 = crop_window(width, height, resize, crop)
    return Frame(x0, y0, x1, y1, resolution, resolution)


def boxes_region(boxes: Sequence[Sequence[float]], frame: Frame) -> np.ndarray:
    """Boolean (height, width): the map pixels whose centre lies in any box (x0, y0, x1, y1)."""
    cx, cy = frame.centres()
    out = np.zeros((frame.height, frame.width), dtype=bool)
    for b in boxes:
        bx0, by0, bx1, by1 = (float(v) for v in b)
        cols = (cx >= bx0) & (cx < bx1)
        rows = (cy >= by0) & (cy < by1)
        out |= rows[:, None] & cols[None, :]
    return out


def mask_region(mask: np.ndarray, frame: Frame) -> np.ndarray:
    """Boolean (height, width): the map pixels whose centre falls on a non-zero mask pixel."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be 2-D (height x width), got shape {m.shape}")
    cx, cy = frame.centres()
    col, row = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    col_ok = (col >= 0) & (col < m.shape[1])
    row_ok = (row >= 0) & (row < m.shape[0])
    picked = m[np.clip(row, 0, m.shape[0] - 1)][:, np.clip(col, 0, m.shape[1] - 1)] != 0
    return picked & row_ok[:, None] & col_ok[None, :]


def downsample(maps: np.ndarray, resolution: int) -> np.ndarray:
    """(N, S, S) maps -> (N, resolution, resolution) by the mean over each map pixel's area
    (exact block means when S is a multiple of resolution; area-weighted otherwise)."""
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise InputError(f"maps must be (N, S, S), got shape {m.shape}")
    size = m.shape[1]
    if not 1 <= resolution <= size:
        raise InputError(
            f"resolution must be between 1 and the input size {size}, got {resolution}"
        )
    if resolution == size:
        return m
    if size % resolution == 0:
        k = size // resolution
        blocks = m.reshape(len(m), resolution, k, resolution, k)
        return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    w = _area_weights(size, resolution)  # (resolution, size), rows sum to 1
    return np.einsum("is,nst,jt->nij", w, m.astype(np.float64), w).astype(np.float32)


def _area_weights(size: int, resolution: int) -> np.ndarray:
    """w[i, s]: the share of output pixel i's span [i*size/r, (i+1)*size/r) that input pixel s
    [s, s+1) covers, divided by the span's length."""
    edges = np.arange(resolution + 1) * size / resolution
    lo, hi = edges[:-1, None], edges[1:, None]
    s = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(hi, s + 1) - np.maximum(lo, s), 0, None)
    return overlap / (size / resolution)


def truth_region(
    mask_png: bytes | None, boxes: Sequence[Any] | None, frame: Frame
) -> tuple[np.ndarray, str | None]:
    """The ground truth G in ``frame`` and where it came from: the image's mask (PNG bytes, as
    ``images.mask``) when it has one, else the union of its boxes (``images.boxes`` structs),
    else an empty region and None."""
    if mask_png:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(mask_png)) as im:
            return mask_region(np.asarray(im.convert("L")), frame), "mask"
    if boxes:
        return boxes_region([(b["x0"], b["y0"], b["x1"], b["y1"]) for b in boxes], frame), "boxes"
    return np.zeros((frame.height, frame.width), dtype=bool), None
