"""Running a model on decoded crops, the same way in every engine.

A model's output for one image depends on the batch size it was computed in (CPU kernels pick
their blocking by shape: measured on the demo's target, ~5e-7 apart between batches of 7 and
32), but not on the other images of the batch nor on the thread count. So every call has exactly
``batch_size`` rows, the last ones zero images when fewer are given: the local engine and the
Ray engine, which group images differently, then compute the same bits for every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def encode_crops(
    adapter: Any, crops: Sequence[np.ndarray], batch_size: int, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """``adapter.encode`` of uint8 H x W x 3 ``crops`` (its preprocess's size), in calls of
    exactly ``batch_size`` rows; one output row per crop."""
    from failstore.models.pixels import normalise

    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(crops), batch_size):
        chunk = list(crops[start : start + batch_size])
        n = len(chunk)
        if n < batch_size:
            chunk += [np.zeros_like(chunk[0])] * (batch_size - n)
        out = adapter.encode(normalise(np.stack(chunk), adapter.preprocess, device))
        parts.append({k: v[:n] for k, v in out.items()})
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
