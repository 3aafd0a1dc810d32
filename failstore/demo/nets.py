"""Small CNNs for the demo world, their export, and shared training helpers.

Both CNNs return logits for a normalised float NCHW batch from ``forward(x)``, have a method
``embed(x) -> (N, D)`` (the bottleneck) and a final ``nn.Linear`` called ``head`` with
``forward(x) == head(embed(x))``. They are saved as state-dict directories (``export_model``):
the class path + constructor kwargs and a safetensors file, so the loaded model is an eager
module whose named layers, hooks and gradients work (the ingest default captures the input of
``head``, recorded as layer ``head:input``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU (-> 2x2 max-pool)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def make_trunk(widths: Sequence[int], stem_stride: int = 2) -> nn.Sequential:
    """A strided stem conv followed by one conv block per width, pooling between blocks.

    With the default stride-2 stem a 64x64 image reaches the last block at 4x4 for 4 widths.
    """
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, stride=stem_stride, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    blocks: list[nn.Module] = [stem]
    c_in = widths[0]
    for i, w in enumerate(widths):
        blocks.append(conv_block(c_in, w, pool=i < len(widths) - 1))
        c_in = w
    return nn.Sequential(*blocks)


class BottleneckCNN(nn.Module):
    """Target model: trunk -> global average pool -> Linear+ReLU bottleneck -> ``head``.

    ``embed`` returns the bottleneck activations (the input of ``head``).
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128, 128),
        bottleneck: int = 96,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        self.features = make_trunk(widths, stem_stride)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.Sequential(nn.Linear(widths[-1], bottleneck), nn.ReLU())
        self.head = nn.Linear(bottleneck, num_classes)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class PooledCNN(nn.Module):
    """Robust model: trunk -> global average pool (``embed``) -> ``head``."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 192)) -> None:
        super().__init__()
        self.features = make_trunk(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ---------------------------------------------------------------- training helpers


def seed_everything(seed: int, threads: int = 2) -> None:
    """Seed python, numpy and torch and cap threads (2-core machine).

    The trainers draw all randomness from explicitly seeded generators and use only CPU ops that
    are deterministic, so a run is bit-reproducible (a test checks it); the process-wide
    ``torch.use_deterministic_algorithms`` flag is left alone.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def channel_stats(images: np.ndarray, max_images: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units of a uint8 NHWC array (a strided subsample)."""
    step = max(1, len(images) // max_images)
    sub = images[::step].astype(np.float32) / 255.0
    mean = sub.reshape(-1, 3).mean(0)
    std = sub.reshape(-1, 3).std(0) + 1e-3
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> uint8 NCHW torch (no copy of the float data; convert per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Normalizer:
    """uint8 NCHW batch -> normalised float32 batch (the same maths the ingest pipeline does)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def unit(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1]."""
        return batch.float().div_(255.0)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        """float in [0, 1] -> normalised."""
        return (x01 - self.mean) / self.std


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: CPU convolutions run ~1.6x faster than in NCHW (measured on the
    target CNN, 1 thread), with the same maths. Models are moved with ``model.to(
    memory_format=torch.channels_last)`` and back to ``torch.contiguous_format`` for export."""
    return x.contiguous(memory_format=torch.channels_last)


def random_shift(batch: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random translation by up to ``pad`` pixels (edge-replicated padding).

    A plain augmentation that keeps colours, backgrounds, sizes and left/right position intact
    (no flips, no colour jitter), so the demo's planted shortcuts stay learnable.
    """
    if pad <= 0:
        return batch
    n, _, h, w = batch.shape
    padded = nn.functional.pad(batch.float(), (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    idx_c = torch.arange(batch.shape[1]).view(1, -1, 1, 1)
    return padded[idx_n, idx_c, rows, cols].to(batch.dtype)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, norm: Normalizer, batch_size: int = 512
) -> torch.Tensor:
    """Logits of ``model`` (eval mode) over a uint8 NCHW tensor."""
    model.eval()
    with torch.no_grad():
        out = [
            model(channels_last(norm(norm.unit(images[i : i + batch_size]))))
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: Normalizer
) -> float:
    if len(labels) == 0:
        return float("nan")
    pred = predict_logits(model, images, norm).argmax(1)
    return float((pred == labels).float().mean())


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, t))))


def split_indices(split: np.ndarray) -> dict[str, np.ndarray]:
    split = np.asarray(split).astype(str)
    return {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}


# ---------------------------------------------------------------- export


Log = Callable[[str], None]


def no_log(_: str) -> None:
    """The default ``log`` of the trainers: say nothing."""
    return None


def export_model(
    model: nn.Module,
    out_dir: Path,
    factory: str,
    kwargs: dict[str, Any],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    size: int = 64,
) -> Path:
    """Save ``model`` (eval mode) as a state-dict directory: ``failstore_model.json``
    (``factory(**kwargs)`` rebuilds the architecture; class names, preprocessing, metrics,
    ``extra``) + ``model.safetensors``. The ingest loaders read it as an ordinary eager module,
    so named layers and hooks work (see docs/models.md)."""
    from failstore.models.statedict import save_state_dict_dir

    pre = {"resize": size, "crop": size, "mean": list(mean), "std": list(std),
           "interpolation": "bilinear"}  # fmt: skip
    return save_state_dict_dir(
        model,
        out_dir,
        factory,
        kwargs,
        class_names=class_names,
        preprocess=pre,
        extra={"metrics": metrics, **(extra or {})},
    )


def load_exported(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The module (eval mode, CPU) and metadata of a directory saved by :func:`export_model`."""
    from failstore.models.statedict import StateDictSource

    source = StateDictSource(Path(path))
    return source.build().module, dict(source.meta)
