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
    export_model,
    no_log,
    seed_everything,
    split_indices,
    to_tensor,
)
from failstore.demo.training import LoopSettings, cross_entropy_loss, train_loop

FACTORY = "failstore.demo.nets:BottleneckCNN"


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
    """Train on the ``train`` split, evaluate on all splits, save the model to the directory
    ``out_path`` (``nets.export_model``: ``failstore_model.json`` + ``model.safetensors``).

    Returns the metrics dict (also stored in ``failstore_model.json``): accuracies, steps,
    seconds, config.
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

    kwargs: dict[str, Any] = {"num_classes": len(class_names), "widths": list(cfg.widths),
              "bottleneck": cfg.bottleneck, "stem_stride": cfg.stem_stride}  # fmt: skip
    model = BottleneckCNN(**kwargs)
    steps = max(1, cfg.samples // cfg.batch_size)
    fit_classifier(model, x_train, y_train, norm, cfg, steps, seed, log, name="target")

    metrics: dict[str, Any] = {"steps": steps, "train_seconds": round(time.perf_counter() - t0, 2)}
    for name, ix in idx.items():
        metrics[f"{name}_accuracy"] = round(accuracy(model, x_all[ix], y_all[ix], norm), 4)
    metrics["config"] = asdict(cfg)
    metrics["seed"] = seed
    export_model(model, out_path, FACTORY, kwargs, class_names, mean, std, metrics,
                 extra={"role": "target", "arch": "cnn"})  # fmt: skip
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
    settings = LoopSettings(
        steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.shift, seed
    )
    train_loop(model, x_train, y_train, norm, settings, cross_entropy_loss(norm), log, name)
