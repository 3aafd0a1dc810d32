"""Train the demo's "robust" model: a small CNN trained adversarially with FGSM + random init.

"Fast is better than free" (Wong, Rice & Kolter, 2020): per batch, draw delta ~ U(-eps, eps)^d,
take one signed-gradient step of size ``alpha`` (1.25 eps), project to the L-inf ball and the
[0, 1] image box, and train on the perturbed batch. Perturbations live in [0, 1] pixel space
(before normalisation). The model's pooled penultimate features (``embed``) are the demo's
"robust features". Robustness is reported as accuracy under an L-inf PGD attack (random start,
``pgd_steps`` steps of eps/4) on a fixed subset of the test split.
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
    Log,
    Normalizer,
    PooledCNN,
    accuracy,
    channel_stats,
    channels_last,
    export_model,
    no_log,
    seed_everything,
    split_indices,
    to_tensor,
)
from failstore.demo.training import BatchLoss, LoopSettings, train_loop

FACTORY = "failstore.demo.nets:PooledCNN"


@dataclass(frozen=True)
class RobustConfig:
    widths: tuple[int, ...] = (32, 64, 128, 192)
    eps: float = 4 / 255  # L-inf radius in [0, 1] pixel units
    alpha: float = 5 / 255  # FGSM step (1.25 eps)
    samples: int = 20_000  # training samples seen
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 4
    warmup_steps: int = 30
    pgd_steps: int = 10
    eval_adv_images: int = 512  # test images attacked for the reported adversarial accuracy

    @classmethod
    def quick(cls) -> RobustConfig:
        return cls(samples=6_000, eval_adv_images=256)


def fgsm_rs(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    norm: Normalizer,
    eps: float,
    alpha: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """One FGSM step from a uniform random start; returns the perturbed batch in [0, 1]."""
    delta = (torch.rand(x01.shape, generator=gen) * 2 - 1) * eps
    delta.requires_grad_(True)
    loss = nn.functional.cross_entropy(model(norm((x01 + delta).clamp(0, 1))), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x01 + delta).clamp(0, 1)


def fgsm_loss(norm: Normalizer, cfg: RobustConfig, steps: int) -> BatchLoss:
    """The per-batch loss of adversarial training: cross-entropy on an FGSM-RS perturbed batch.
    eps ramps up linearly over the first 20% of steps (stabilises early adversarial training)."""

    def loss(
        model: nn.Module, x01: torch.Tensor, y: torch.Tensor, step: int, gen: torch.Generator
    ) -> torch.Tensor:
        eps = cfg.eps * min(1.0, (step + 1) / max(1, steps // 5))
        adv = fgsm_rs(model, x01, y, norm, eps, cfg.alpha * eps / cfg.eps, gen)
        return nn.functional.cross_entropy(model(norm(adv)), y)

    return loss


def pgd_attack(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    norm: Normalizer,
    eps: float,
    steps: int,
    gen: torch.Generator,
    step_size: float | None = None,
) -> torch.Tensor:
    """L-inf PGD with a random start (model in eval mode); returns adversarial images in [0, 1]."""
    step = eps / 4 if step_size is None else step_size
    delta = (torch.rand(x01.shape, generator=gen) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(norm((x01 + delta).clamp(0, 1))), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x01 + delta).clamp(0, 1).detach()


def adversarial_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: Normalizer,
    eps: float,
    steps: int,
    seed: int,
    batch_size: int = 256,
) -> float:
    if len(labels) == 0:
        return float("nan")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x01 = channels_last(norm.unit(images[i : i + batch_size]))
        y = labels[i : i + batch_size]
        adv = pgd_attack(model, x01, y, norm, eps, steps, gen)
        with torch.no_grad():
            correct += int((model(norm(adv)).argmax(1) == y).sum())
    for p in model.parameters():
        p.requires_grad_(True)
    return correct / len(labels)


def train_robust(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: np.ndarray,
    out_path: Path,
    config: RobustConfig | None = None,
    seed: int = 0,
    log: Log = no_log,
) -> dict[str, Any]:
    """Adversarially train on ``train``, report clean accuracies per split and PGD accuracy on
    a test subset, save the model directory (``nets.export_model``; its ``head`` input =
    ``embed`` = the pooled penultimate features)."""
    cfg = config or RobustConfig()
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

    kwargs: dict[str, Any] = {"num_classes": len(class_names), "widths": list(cfg.widths)}
    model = PooledCNN(**kwargs)
    steps = max(1, cfg.samples // cfg.batch_size)
    settings = LoopSettings(
        steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.shift, seed
    )
    train_loop(model, x_train, y_train, norm, settings, fgsm_loss(norm, cfg, steps), log,
               "robust", "adv loss")  # fmt: skip

    metrics: dict[str, Any] = {"steps": steps}
    for name, ix in idx.items():
        metrics[f"{name}_accuracy"] = round(accuracy(model, x_all[ix], y_all[ix], norm), 4)
    metrics["clean_accuracy"] = metrics["test_accuracy"]
    sub = idx["test"][: cfg.eval_adv_images]
    metrics["adv_accuracy"] = round(
        adversarial_accuracy(model, x_all[sub], y_all[sub], norm, cfg.eps, cfg.pgd_steps, seed), 4
    )
    metrics["adv_eval_images"] = len(sub)
    metrics["attack"] = {
        "train": f"FGSM-RS Linf eps={cfg.eps:.5f} alpha={cfg.alpha:.5f} ([0,1] pixels)",
        "eval": f"PGD-{cfg.pgd_steps} Linf eps={cfg.eps:.5f} step={cfg.eps / 4:.5f} random start",
    }
    metrics["train_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["config"] = asdict(cfg)
    metrics["seed"] = seed
    export_model(model, out_path, FACTORY, kwargs, class_names, mean, std, metrics,
                 extra={"role": "robust", "arch": "cnn"})  # fmt: skip
    log(
        f"robust: clean test {metrics['clean_accuracy']}, PGD-{cfg.pgd_steps} "
        f"{metrics['adv_accuracy']} ({metrics['train_seconds']} s)"
    )
    return metrics
