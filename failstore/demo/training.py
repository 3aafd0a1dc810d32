"""The one mini-batch training loop of the demo's target and robust CNNs.

Both trainers draw every random number from one seeded ``torch.Generator``, in this order:
one permutation of the training set at the start (and a new one whenever the next batch would
run past the end), then per step the batch's random translation (``random_shift``), then
whatever the per-batch loss draws (the robust model's FGSM random start). Changing this order
changes the trained weights; tests pin it against a plain reference loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from failstore.demo.nets import Log, Normalizer, channels_last, cosine_lr, no_log, random_shift

# (model, x01 batch in [0, 1] (channels-last), labels, step, generator) -> scalar loss
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    shift: int  # max random translation in pixels
    seed: int


def train_loop(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    norm: Normalizer,
    settings: LoopSettings,
    batch_loss: BatchLoss,
    log: Log = no_log,
    name: str = "model",
    label: str = "loss",
) -> None:
    """AdamW with a warm-up + cosine schedule over shuffled mini-batches of a uint8 NCHW tensor.

    Each step hands ``batch_loss`` the shifted batch scaled to [0, 1] (not yet normalised, in
    channels-last layout) and backpropagates the loss it returns. The model trains in
    channels-last layout and ends in eval mode. ``norm`` only converts uint8 to [0, 1] here.
    """
    s = settings
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    model.to(memory_format=torch.channels_last).train()
    n = len(x_train)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    running = 0.0
    for step in range(s.steps):
        if pos + s.batch_size > n and pos > 0:
            perm, pos = torch.randperm(n, generator=gen), 0
        bi = perm[pos : pos + s.batch_size]
        pos += s.batch_size
        x01 = channels_last(norm.unit(random_shift(x_train[bi], s.shift, gen)))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, s.steps, s.lr, s.warmup_steps)
        loss = batch_loss(model, x01, y_train[bi], step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0 or step + 1 == s.steps:
            log(f"{name}: step {step + 1}/{s.steps} {label} {running:.3f}")
    model.eval()


def cross_entropy_loss(norm: Normalizer) -> BatchLoss:
    """Plain cross-entropy on the normalised batch (the target model)."""

    def loss(
        model: nn.Module, x01: torch.Tensor, y: torch.Tensor, _step: int, _gen: torch.Generator
    ) -> torch.Tensor:
        return nn.functional.cross_entropy(model(channels_last(norm(x01))), y)

    return loss
