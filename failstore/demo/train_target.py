"""Train the demo's target classifier: a small CNN that is meant to learn the planted shortcuts.

Plain training (AdamW, cosine schedule, label smoothing 0) with only small random translations
as augmentation: no flips, colour jitter or grayscale, so background, colour and size cues stay
available to the model. The training length is a budget of *samples seen* (not epochs), so the
run time does not grow with the world's size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from failstore.demo.nets import (
    BottleneckCNN,
    Log,
    Normalizer,
    accuracy,
    channel_stats,
    channels_last,
    cosine_lr,
    export_torchscript,
    no_log,
    random_shift,
    seed_everything,
    split_indices,
    to_tensor,
)


@dataclass(frozen=True)
class TargetConfig:
    widths: tuple[int, ...] = (24, 48, 96, 128)
    bottleneck: int = 96
    stem_stride: int = 2
    samples: int = 120_000  # training samples seen (steps = samples // batch_size)
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 4  # max random translation in pixels
    warmup_steps: int = 30

    @classmethod
    def quick(cls) -> TargetConfig:
        return cls(samples=48_000, lr=6e-3)


def train_target(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: np.ndarray,
    out_path: Path,
    config: TargetConfig | None = None,
    seed: int = 0,
    log: Log = no_log,
) -> dict[str, Any]:
    """Train on the ``train`` split, evaluate on all splits, save TorchScript to ``out_path``.

    Returns the metrics dict (also stored in the file's ``failstore.json``): accuracies,
    steps, seconds, config.
    """
    cfg = config or TargetConfig()
    seed_everything(seed)
    t0 = time.perf_counter()
    idx = split_indices(split)
    if len(idx["train"]) == 0:
        raise ValueError("no images in the 'train' split")
    mean, std = channel_stats(images[idx["train"]])
    norm = Normalizer(mean, std)
    x_all = to_tensor(images)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x_train, y_train = x_all[idx["train"]], y_all[idx["train"]]

    model = BottleneckCNN(len(class_names), cfg.widths, cfg.bottleneck, cfg.stem_stride)
    steps = max(1, cfg.samples // cfg.batch_size)
    fit_classifier(model, x_train, y_train, norm, cfg, steps, seed, log, name="target")

    metrics: dict[str, Any] = {"steps": steps, "train_seconds": round(time.perf_counter() - t0, 2)}
    for name, ix in idx.items():
        metrics[f"{name}_accuracy"] = round(accuracy(model, x_all[ix], y_all[ix], norm), 4)
    metrics["config"] = asdict(cfg)
    metrics["seed"] = seed
    export_torchscript(
        model, out_path, class_names, mean, std, metrics, extra={"role": "target", "arch": "cnn"}
    )
    log(
        "target: "
        + ", ".join(
            f"{k}={metrics[k]}" for k in ("train_accuracy", "val_accuracy", "test_accuracy")
        )
        + f" ({metrics['train_seconds']} s)"
    )
    return metrics


def fit_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    norm: Normalizer,
    cfg: TargetConfig,
    steps: int,
    seed: int,
    log: Log = no_log,
    name: str = "target",
) -> None:
    """Plain cross-entropy training over shuffled mini-batches of a uint8 NCHW tensor."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.to(memory_format=torch.channels_last).train()
    n = len(x_train)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    running = 0.0
    for step in range(steps):
        if pos + cfg.batch_size > n and pos > 0:
            perm, pos = torch.randperm(n, generator=gen), 0
        bi = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        xb = channels_last(norm(norm.unit(random_shift(x_train[bi], cfg.shift, gen))))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, cfg.lr, cfg.warmup_steps)
        loss = nn.functional.cross_entropy(model(xb), y_train[bi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"{name}: step {step + 1}/{steps} loss {running:.3f}")
    model.eval()
