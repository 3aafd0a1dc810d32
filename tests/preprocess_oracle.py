"""A plain reference implementation of ``Preprocess`` (PIL + numpy), used by tests and examples.

The ingest pipeline has its own (parallel, batched) implementation of the same recipe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from failstore.models.protocol import Preprocess

_FILTERS = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values


def geometry(image: Any, pre: Preprocess) -> np.ndarray:
    """Shorter side to ``pre.resize``, centre crop ``pre.crop``; returns uint8 HWC RGB."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    w, h = image.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.resize, round(w * scale)), max(pre.resize, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling(_FILTERS[pre.interpolation]))
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    return np.asarray(image.crop((left, top, left + pre.crop, top + pre.crop)), dtype=np.uint8)


def to_batch(images: Iterable[Any], pre: Preprocess) -> Any:
    """A float32 NCHW torch tensor, scaled to [0, 1] and normalised."""
    import torch

    raw = np.stack([geometry(im, pre) for im in images]).astype(np.float32) / np.float32(255.0)
    arr = (raw - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())
