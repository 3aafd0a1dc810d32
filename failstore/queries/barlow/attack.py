"""Feature attack for Barlow's pictures: gradient ascent on one robust feature from an image
(Singla et al. App. C), in [0, 1] pixel space before the model's mean/std normalisation.

Each step is ``x <- clamp(x + step_size * g / ||g||_2, 0, 1)`` with ``g`` the gradient of the
feature with respect to the image, the L2 norm taken per image. Defaults are the paper's (step
1, 500 iterations); the reference code runs 1000 iterations, and neither projects onto the
paper's eps = 500 ball. A zero gradient leaves the image where it is (the reference divides by
``||g|| + 1e-10``, which differs from ``||g||`` by a relative 1e-10 otherwise). torch is
imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from failstore.models.pixels import normalise, standardise, unit_tensor

if TYPE_CHECKING:
    from failstore.models.base import FeatureAdapter


def encoded_features(adapter: FeatureAdapter, batch: Any) -> np.ndarray:
    """The bottleneck ``encode`` returns (robust features; the embedding of a target)."""
    out = adapter.encode(batch)
    key = "robust_features" if "robust_features" in out else "embedding"
    return np.asarray(out[key], dtype=np.float32)


def grad_step(x: Any, grad: Any, step_size: float) -> Any:
    """``x + step_size * grad / ||grad||_2``, the norm taken per image over (C, H, W); an image
    whose gradient is zero does not move. Not clamped."""
    import torch

    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.ndim - 1)))
    unit = torch.where(norm > 0, grad / norm.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)
    return x + step_size * unit


@dataclass
class AttackResult:
    images: np.ndarray  # (N, H, W, 3) uint8: the attacked images, rounded to 8 bits
    activation: np.ndarray  # (N,) float64: the feature on ``images`` (the PNG's pixels)
    history: np.ndarray  # (steps, N) float64: the feature before each step (row 0 = start)


def ascend(
    adapter: FeatureAdapter,
    x01: Any,
    channels: Sequence[int],
    *,
    steps: int = 500,
    step_size: float = 1.0,
) -> tuple[Any, np.ndarray]:
    """``steps`` times ``x <- clamp(grad_step(x, d f_c / d x, step_size), 0, 1)`` for a float
    NCHW tensor ``x01`` in [0, 1] pixel space (the model's normalisation is applied inside),
    ``f_c`` being robust feature ``channels[i]`` of image i. Returns the final tensor
    (detached) and the (steps, N) feature values before each step (row 0 = start)."""
    import torch

    if steps < 0 or step_size < 0:
        raise ValueError(f"steps and step_size must be >= 0, got {steps} and {step_size}")
    n = x01.shape[0]
    if len(channels) != n:
        raise ValueError(f"{len(channels)} channels for {n} images")
    pre = adapter.preprocess
    rows = torch.arange(n, device=x01.device)
    cols = torch.as_tensor(list(channels), dtype=torch.long, device=x01.device)
    x = x01.detach()
    history = np.zeros((steps, n))
    for step in range(steps):
        x.requires_grad_(True)
        _, feats = adapter.features(standardise(x, pre))
        chosen = feats[rows, cols]
        (grad,) = torch.autograd.grad(chosen.sum(), x)
        history[step] = chosen.detach().double().cpu().numpy()
        x = grad_step(x.detach(), grad, step_size).clamp_(0.0, 1.0)
    return x.detach(), history


def run_feature_attack(
    adapter: FeatureAdapter,
    images: np.ndarray,
    channel: int | Sequence[int],
    *,
    steps: int = 500,
    step_size: float = 1.0,
    device: str = "cpu",
) -> AttackResult:
    """:func:`ascend` on robust feature ``channel`` (one for all images, or one per image)
    from uint8 (N, H, W, 3) ``images`` on ``device``, rounded back to uint8. The whole batch
    runs at once; each image's step depends only on its own gradient (the model is in eval
    mode), so batching does not change the result."""
    import torch

    check_device(adapter, device)
    n = len(images)
    channels = [int(channel)] * n if isinstance(channel, (int, np.integer)) else list(channel)
    if n == 0:
        return AttackResult(np.asarray(images, np.uint8), np.zeros(0), np.zeros((steps, 0)))
    x, history = ascend(
        adapter, unit_tensor(images, device), channels, steps=steps, step_size=step_size
    )
    out = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    final = encoded_features(adapter, normalise(out, adapter.preprocess, device))
    return AttackResult(
        images=out.cpu().numpy(),
        activation=final[np.arange(n), channels].astype(np.float64),
        history=history,
    )


def feature_attack(
    adapter: FeatureAdapter,
    images: np.ndarray,
    channel: int | Sequence[int],
    *,
    steps: int = 500,
    step_size: float = 1.0,
    device: str = "cpu",
) -> np.ndarray:
    """The attacked images (uint8, same shape as ``images``) of :func:`run_feature_attack`."""
    return run_feature_attack(
        adapter, images, channel, steps=steps, step_size=step_size, device=device
    ).images


def check_device(adapter: FeatureAdapter, device: str) -> None:
    """Load the adapter on ``device`` if it is not loaded; refuse one loaded elsewhere."""
    import torch

    adapter.load(device)
    param = next(iter(adapter.module.parameters()), None)
    if param is None:
        return
    want, have = torch.device(device), param.device
    if have.type != want.type or (want.index is not None and have.index != want.index):
        raise ValueError(f"{adapter.spec} is loaded on {have}, not {device}; load it there")
