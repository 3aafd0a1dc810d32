"""The test oracle of ``Preprocess``: torchvision's resize + centre-crop rules written plainly
with PIL and numpy. The ingest pipeline (failstore/ingest/decode.py) has its own parallel,
batched implementation; tests/test_decode.py checks they agree exactly for every interpolation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from failstore.models.protocol import Preprocess

_FILTERS = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values


def geometry(image: Any, pre: Preprocess) -> np.ndarray:
    """torchvision's ``Resize(pre.resize)`` + ``CenterCrop(pre.crop)``, written plainly with PIL
    and numpy: the shorter side becomes ``resize`` and the longer ``int(resize * long / short)``
    (truncated); a crop larger than the image zero-pads it (the smaller half before), and the
    crop starts at ``round((n - crop) / 2)`` (half to even). Returns uint8 HWC RGB."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    w, h = image.size
    long_ = int(pre.resize * max(w, h) / min(w, h))
    nw, nh = (pre.resize, long_) if w <= h else (long_, pre.resize)
    arr = np.asarray(image.resize((nw, nh), Image.Resampling(_FILTERS[pre.interpolation])))
    pad_h, pad_w = max(pre.crop - nh, 0), max(pre.crop - nw, 0)
    arr = np.pad(arr, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    top = round((arr.shape[0] - pre.crop) / 2.0)
    left = round((arr.shape[1] - pre.crop) / 2.0)
    return np.ascontiguousarray(arr[top : top + pre.crop, left : left + pre.crop], dtype=np.uint8)


def to_batch(images: Iterable[Any], pre: Preprocess) -> Any:
    """A float32 NCHW torch tensor, scaled to [0, 1] and normalised."""
    import torch

    raw = np.stack([geometry(im, pre) for im in images]).astype(np.float32) / np.float32(255.0)
    arr = (raw - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())
