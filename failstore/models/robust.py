"""Checkpoints of Madry lab's ``robustness`` library (e.g. the ImageNet L2 eps=3 ResNet-50).

Format (``torch.save`` of a dict)::

    {"model": {                      # or "state_dict"; sometimes the bare dict
        "module.normalizer.new_mean": (3, 1, 1), "module.normalizer.new_std": (3, 1, 1),
        "module.model.conv1.weight": ..., ..., "module.model.fc.bias": ...,   # the classifier
        "module.attacker.normalize.new_mean": ..., "module.attacker.model.conv1.weight": ...,
     }, "optimizer": ..., "schedule": ..., "epoch": ...}

The ``module.model.`` weights are a torchvision ResNet; the architecture (resnet18/34/50/101/152,
wide_resnet50_2/101_2) is read off the weight shapes. Preprocessing uses the normaliser's
mean/std (ImageNet's when absent), resize 256, crop 224. The robust features are the input of
``fc`` (2048-d for ResNet-50: the penultimate layer after average pooling).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from failstore.errors import ModelSpecError
from failstore.models.base import Built, Source, package_versions, triple
from failstore.models.protocol import IMAGENET_MEAN, IMAGENET_STD, Preprocess

MODEL_PREFIX = "module.model."
NORMALIZER_PREFIX = "module.normalizer."
ALLOW_PICKLE_ENV = "FAILSTORE_ALLOW_PICKLE"

# (blocks per stage) -> name, for basic (conv2 last) and bottleneck (conv3) blocks
_BASIC = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_BOTTLENECK = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}


def load_checkpoint(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; arbitrary pickles only if
    ``FAILSTORE_ALLOW_PICKLE=1`` (they can run code)."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if os.environ.get(ALLOW_PICKLE_ENV) == "1":
            return torch.load(str(path), map_location="cpu", weights_only=False)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling error"
        raise ModelSpecError(
            f"{path}: checkpoint holds objects other than tensors ({first})",
            hint=f"set {ALLOW_PICKLE_ENV}=1 if you trust the file",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelSpecError(f"{path}: not a readable torch checkpoint ({exc})") from None


def robustness_state_dict(ckpt: Any, path: Path) -> dict[str, Any]:
    sd = ckpt
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                sd = ckpt[key]
                break
    if not isinstance(sd, dict) or not any(str(k).startswith(MODEL_PREFIX) for k in sd):
        raise ModelSpecError(
            f"{path}: not a robustness-library checkpoint (expected a dict with 'model' or "
            f"'state_dict' holding keys '{MODEL_PREFIX}*'); TorchScript files must be made with "
            "torch.jit.save"
        )
    return sd


def infer_resnet(model_sd: dict[str, Any], path: Path) -> str:
    stages: list[int] = []
    for s in range(1, 5):
        idx = {int(k.split(".")[1]) for k in model_sd if k.startswith(f"layer{s}.")}
        stages.append(len(idx))
    bottleneck = "layer1.0.conv3.weight" in model_sd
    name = (_BOTTLENECK if bottleneck else _BASIC).get((stages[0], stages[1], stages[2], stages[3]))
    if name and bottleneck and model_sd["layer1.0.conv1.weight"].shape[0] == 128:
        name = {"resnet50": "wide_resnet50_2", "resnet101": "wide_resnet101_2"}.get(name)
    if name is None:
        raise ModelSpecError(
            f"{path}: classifier weights are not a torchvision ResNet (blocks per stage {stages}); "
            "save the model as TorchScript instead (see docs/models.md)"
        )
    return name


class RobustnessSource(Source):
    kind = "robustness"

    def __init__(self, path: Path) -> None:
        super().__init__(path.stem)
        self.path = path

    def files(self) -> list[Path]:
        return [self.path]

    def _build(self) -> Built:
        import torchvision.models as tvm

        full = robustness_state_dict(load_checkpoint(self.path), self.path)
        model_sd = {
            k[len(MODEL_PREFIX) :]: v for k, v in full.items() if k.startswith(MODEL_PREFIX)
        }
        arch = infer_resnet(model_sd, self.path)
        n_classes = int(model_sd["fc.weight"].shape[0])
        model = tvm.get_model(arch, weights=None, num_classes=n_classes)
        result = model.load_state_dict(model_sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelSpecError(
                f"{self.path}: {arch} weights do not match (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if f"{NORMALIZER_PREFIX}new_mean" in full and f"{NORMALIZER_PREFIX}new_std" in full:
            # stored as float32: round so ImageNet's 0.485 reads back as 0.485
            try:
                mean = triple(
                    round(float(v), 6) for v in full[f"{NORMALIZER_PREFIX}new_mean"].flatten()
                )
                std = triple(
                    round(float(v), 6) for v in full[f"{NORMALIZER_PREFIX}new_std"].flatten()
                )
            except ValueError as exc:
                raise ModelSpecError(f"{self.path}: normalizer {exc}") from None
        pre = Preprocess(resize=256, crop=224, mean=mean, std=std)
        names = None
        if n_classes == 1000:
            from failstore.models.target import imagenet_class_names

            names = imagenet_class_names()
        extra = {"arch": arch, "versions": package_versions("torchvision", "torch")}
        return Built(model, names, [self.path], pre, extra)
