"""Shared machinery of target and robust adapters: weight sources and bottleneck capture.

A ``Source`` knows how to build one torch module from local files (torch imported lazily). A
``FeatureAdapter`` wraps a source for a role: it finds the final ``nn.Linear`` (the module whose
output *is* the logits, checked on a probe batch at load time), captures the bottleneck with a
forward hook (input of that Linear by default, or the output of ``--layer``), and for TorchScript
files uses the exported ``embed`` method and ``head`` submodule instead of hooks.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from failstore.errors import ModelSpecError
from failstore.models.protocol import ModelRecord, Preprocess, Role
from failstore.models.weights import sha256_files

INPUT_SUFFIX = ":input"


@dataclass
class Built:
    """What a source produced: a module (eval mode, CPU) and its provenance."""

    module: Any
    class_names: list[str] | None
    files: list[Path]
    preprocess: Preprocess
    extra: dict[str, Any] = field(default_factory=dict)
    scripted: bool = False  # TorchScript: use module.embed / module.head, no hooks


class Source(ABC):
    """Builds a module from local files; constructing one never imports torch."""

    kind: str = "source"

    def __init__(self, name: str) -> None:
        self.name = name
        self._built: Built | None = None

    @abstractmethod
    def _build(self) -> Built: ...

    def build(self) -> Built:
        if self._built is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
                self._built = self._build()
        return self._built

    def preprocess(self) -> Preprocess:
        """Default: build (reads weights). Sources that know it cheaply override this."""
        return self.build().preprocess

    def files(self) -> list[Path]:
        """Where the weights file(s) ``build`` reads are, found without reading them where the
        source can (a cache search that finds nothing raises ``WeightsNotFoundError``); the
        files may not exist. Default: build."""
        return self.build().files


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def triple(values: Any, what: str = "mean/std") -> tuple[float, float, float]:
    """Three floats (a per-channel mean or std); ValueError otherwise."""
    vals = [float(v) for v in values]
    if len(vals) != 3:
        raise ValueError(f"{what} needs 3 values, got {len(vals)}")
    return (vals[0], vals[1], vals[2])


def _first_tensor(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = value.get("logits", next(iter(value.values())))
        return _first_tensor(value)
    if hasattr(value, "logits"):
        return _first_tensor(value.logits)
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    raise ModelSpecError(f"model output of type {type(value).__name__} holds no tensor")


def _close(a: Any, b: Any) -> bool:
    import torch

    if a.shape != b.shape:
        return False
    scale = max(1.0, float(b.abs().max()))
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-4 * scale))


class FeatureAdapter:
    """A target (``logits`` + ``embedding``) or robust (``robust_features``) adapter."""

    def __init__(
        self,
        role: Role,
        spec: str,
        source: Source,
        *,
        layer: str | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.role: Role = role
        self.spec = spec
        self.name = source.name
        self.source = source
        self.layer = layer
        self._class_names_override = class_names
        self.class_names: list[str] | None = None
        self._preprocess: Preprocess | None = None
        self._loaded = False
        self._device = "cpu"
        self._recording = True
        self._head_name: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(role={self.role!r}, spec={self.spec!r})"

    @property
    def preprocess(self) -> Preprocess:
        if self._preprocess is None:
            self._preprocess = self.source.preprocess()
        return self._preprocess

    # -- loading -------------------------------------------------------------------------------

    def load(self, device: str = "cpu") -> None:
        if self._loaded:
            return
        import torch

        built = self.source.build()
        self._built = built
        self._preprocess = built.preprocess
        self._module = built.module.eval().to(device)
        self._device = device
        crop = built.preprocess.crop
        probe = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device)
        with torch.inference_mode():
            if built.scripted:
                self._setup_scripted(probe)
            else:
                self._setup_hooks(probe)
        self._loaded = True

    def _setup_scripted(self, probe: Any) -> None:
        m = self._module
        path = self.source.name
        if self.layer not in (None, "embed"):
            raise ModelSpecError(
                f"{self.spec}: --layer {self.layer!r} is not supported for TorchScript files "
                "(hooks do not work on ScriptModules); the file's embed(x) method is the bottleneck"
            )
        has_embed = hasattr(m, "embed")
        head = getattr(m, "head", None)
        if not has_embed or head is None or getattr(head, "original_name", "") != "Linear":
            raise ModelSpecError(
                f"TorchScript file {self.spec} ({path}) must export a method embed(x) -> (N, D) "
                "and a submodule head that is an nn.Linear with logits = head(embed(x)); "
                "see docs/models.md"
            )
        emb = m.embed(probe)
        logits = _first_tensor(m(probe))
        if emb.ndim != 2 or not _close(head(emb), logits):
            raise ModelSpecError(
                f"TorchScript file {self.spec}: forward(x) differs from head(embed(x)) "
                f"(embed gives shape {tuple(emb.shape)}); the convention is logits = head(embed(x))"
            )
        self._head = head
        self._head_name = "head"
        self._head_ok = True
        self._layer_label = "embed"
        self._finish(emb, logits)

    def _setup_hooks(self, probe: Any) -> None:
        import torch.nn as nn

        m = self._module
        self._recording = True
        linears = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
        seen: dict[str, tuple[Any, Any]] = {}
        handles = [
            mod.register_forward_hook(
                lambda _m, inp, out, n=n: seen.__setitem__(n, (inp[0], _first_tensor(out)))
            )
            for n, mod in linears
        ]
        target, want_input = self._parse_layer()
        captured: list[Any] = []
        if target is not None:
            handles.append(self._hook(target, want_input, captured))
        try:
            output = _first_tensor(m(probe))
        finally:
            for h in handles:
                h.remove()
        head_name = None
        for n, _mod in reversed(linears):
            if n in seen and _close(seen[n][1], output):
                head_name = n
                break
        head = m.get_submodule(head_name) if head_name is not None else None
        if target is None:
            if head_name is None:
                if self.role == "target":
                    raise ModelSpecError(
                        f"{self.spec}: found no nn.Linear whose output is the logits; "
                        "pass --layer NAME (a dotted module name) to choose the bottleneck"
                    )
                target, want_input, label = "", False, "<output>"
                emb = output.flatten(1)
            else:
                target, want_input = head_name, True
                label = head_name + INPUT_SUFFIX
                emb = seen[head_name][0].flatten(1)
        else:
            label = self.layer or ""
            emb = captured[0]
        self._head = head
        self._head_ok = head is not None and (
            emb.shape[1] == head.in_features and _close(head(emb), output)
        )
        self._layer_label = label
        self._head_name = head_name
        self._captured = captured
        captured.clear()
        if target:
            self._hook(target, want_input, captured)
        self._recording = False
        self._finish(emb, output)

    def _parse_layer(self) -> tuple[str | None, bool]:
        if self.layer is None:
            return None, False
        name, want_input = self.layer, False
        if name.endswith(INPUT_SUFFIX):
            name, want_input = name[: -len(INPUT_SUFFIX)], True
        names = [n for n, _ in self._module.named_modules() if n]
        if name not in names:
            tail = ", ".join(names[-8:])
            raise ModelSpecError(
                f"{self.spec}: no module named {name!r} for --layer; give a dotted module name, "
                f"optionally with ':input' (last modules: {tail})"
            )
        return name, want_input

    def _hook(self, name: str, want_input: bool, store: list[Any]) -> Any:
        def grab(_m: Any, inp: Any, out: Any) -> None:
            if self._recording:  # only while encode()/features() run, not on user forwards
                value = inp[0] if want_input else _first_tensor(out)
                store.append(value.flatten(1))

        return self._module.get_submodule(name).register_forward_hook(grab)

    def _finish(self, emb: Any, logits: Any) -> None:
        self.embedding_dim = int(emb.shape[1])
        if self.role == "target":
            if logits.ndim != 2:
                raise ModelSpecError(
                    f"{self.spec}: the model returns shape {tuple(logits.shape)}, not (N, classes)"
                )
            n_classes = int(logits.shape[1])
            names = self._class_names_override or self._built.class_names
            if names is not None and len(names) != n_classes:
                raise ModelSpecError(
                    f"{self.spec}: {len(names)} class names for {n_classes} logits; "
                    "pass --class-names FILE with one name per logit"
                )
            self.class_names = list(names) if names else [str(i) for i in range(n_classes)]
        else:
            self.class_names = None

    # -- running -------------------------------------------------------------------------------

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        import torch

        if not self._loaded:
            self.load(self._device)
        with torch.inference_mode():
            logits, emb = self._run(batch)
        emb_np = emb.detach().float().cpu().numpy()
        if self.role == "robust":
            return {"robust_features": emb_np}
        return {"logits": logits.detach().float().cpu().numpy(), "embedding": emb_np}

    def _run(self, batch: Any) -> tuple[Any, Any]:
        """(logits, bottleneck) of one batch, under whatever grad mode the caller set."""
        if self._built.scripted:
            emb = self._module.embed(batch)
            return self._head(emb), emb
        self._captured.clear()
        self._recording = True
        try:
            logits = _first_tensor(self._module(batch))
        finally:
            self._recording = False
        emb = self._captured[-1] if self._captured else logits.flatten(1)
        self._captured.clear()
        return logits, emb

    # -- the torch module, for analyses that need gradients -----------------------------------

    @property
    def module(self) -> Any:
        """The loaded ``torch.nn.Module`` in eval mode, with its named layers
        (``dict(module.named_modules())``); loads the model if needed. A ScriptModule for
        TorchScript files. Calling it directly does not disturb ``encode``."""
        if not self._loaded:
            self.load(self._device)
        return self._module

    @property
    def head_name(self) -> str | None:
        """Dotted name of the final ``nn.Linear`` (the module producing the logits) in
        ``module``, or None (a robust model without one)."""
        self.module  # noqa: B018  (loads the model if needed)
        return self._head_name

    def logits(self, batch: Any) -> Any:
        """Logits of a normalised float NCHW batch with autograd ENABLED (not under
        ``inference_mode``), so ``torch.autograd.grad(logits[i, c], batch)`` works when
        ``batch.requires_grad``. The model stays in eval mode (BatchNorm uses running stats)."""
        return self.features(batch)[0]

    def features(self, batch: Any) -> tuple[Any, Any]:
        """``(logits, embedding)`` tensors with autograd enabled; ``embedding`` is the same
        bottleneck ``encode`` returns (the robust features for role ``robust``)."""
        import torch

        self.module.eval()
        with torch.enable_grad():
            return self._run(batch)

    def record(self) -> ModelRecord:
        if not self._loaded:
            raise RuntimeError("record() is valid after load()")
        head_w = head_b = None
        if self.role == "target" and self._head_ok and self._head is not None:
            head_w = self._head.weight.detach().float().cpu().numpy().astype(np.float32)
            bias = self._head.bias
            head_b = (
                bias.detach().float().cpu().numpy().astype(np.float32)
                if bias is not None
                else np.zeros(head_w.shape[0], np.float32)
            )
        extra = {"source": self.source.kind, **self._built.extra}
        if self._built.files:
            extra["checkpoint_files"] = [str(Path(p).resolve()) for p in self._built.files]
        if self._class_names_override:
            extra["class_names_from"] = "class_names file"
        return ModelRecord(
            name=self.name,
            role=self.role,
            spec=self.spec,
            checkpoint_sha256=sha256_files(self._built.files),
            preprocess=self.preprocess,
            layer=self._layer_label,
            embedding_dim=self.embedding_dim,
            class_names=self.class_names,
            head_weight=head_w,
            head_bias=head_b,
            extra=extra,
        )
