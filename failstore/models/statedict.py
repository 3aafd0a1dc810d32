"""State-dict directories: an ``nn.Module`` rebuilt by a ``python.module:factory`` call and
filled with weights from a safetensors file. Unlike TorchScript, the loaded model is a plain
eager module, so named layers, forward hooks and autograd all work.

Layout of a directory ``DIR`` (spec ``DIR`` or ``state-dict:DIR``)::

    DIR/failstore_model.json   {"format": "failstore-state-dict", "version": 1,
                                "factory": "pkg.module:callable", "kwargs": {...},
                                "weights": "model.safetensors",          # optional, the default
                                "class_names": [...], "preprocess": {...}, # optional
                                ...}                                      # anything else: extra
    DIR/model.safetensors      the module's state dict

``factory(**kwargs)`` must return the ``nn.Module`` whose ``state_dict()`` the weights file
holds (loaded with ``strict=True``). Detecting and checking a directory never imports torch or
the factory's module; the model record's ``checkpoint_sha256`` is the weights file's sha256.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from failstore.errors import ModelSpecError, WeightsNotFoundError
from failstore.models.base import Built, Source, package_versions
from failstore.models.protocol import Preprocess
from failstore.models.target import DEFAULT_PREPROCESS, preprocess_from_dict

META_FILE = "failstore_model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "failstore-state-dict"
FORMAT_VERSION = 1
PREFIX = "state-dict:"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_OWN_KEYS = ("format", "version", "factory", "kwargs", "weights", "class_names", "preprocess")


def is_state_dict_dir(path: Path) -> bool:
    """A directory holding ``failstore_model.json`` (checked without reading it)."""
    return path.is_dir() and (path / META_FILE).is_file()


def read_meta(directory: Path) -> dict[str, Any]:
    """The directory's ``failstore_model.json``, checked for form; ModelSpecError otherwise."""
    path = directory / META_FILE
    if not path.is_file():
        raise ModelSpecError(
            f"{directory}: no {META_FILE}; a state-dict directory needs it (see docs/models.md)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelSpecError(f"{path}: must hold a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelSpecError(f"{path}: 'format' must be {FORMAT!r}, got {meta.get('format')!r}")
    factory = meta.get("factory")
    if not isinstance(factory, str) or not _FACTORY.match(factory):
        raise ModelSpecError(
            f"{path}: 'factory' must be 'python.module:callable', got {factory!r}"
        )
    if not isinstance(meta.get("kwargs", {}), dict):
        raise ModelSpecError(f"{path}: 'kwargs' must be an object of keyword arguments")
    weights = meta.get("weights", WEIGHTS_FILE)
    if not isinstance(weights, str) or not weights or "/" in weights or weights in (".", ".."):
        raise ModelSpecError(f"{path}: 'weights' must be a file name inside {directory}")
    names = meta.get("class_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    ):
        raise ModelSpecError(f"{path}: class_names must be a list of non-empty strings")
    return meta


class StateDictSource(Source):
    """A state-dict directory (see the module docstring)."""

    kind = "state_dict"

    def __init__(self, directory: Path) -> None:
        directory = directory.expanduser()
        super().__init__(directory.resolve().name)
        self.directory = directory
        self.meta = read_meta(directory)
        self.factory = str(self.meta["factory"])
        self.kwargs: dict[str, Any] = dict(self.meta.get("kwargs") or {})
        self.weights = directory / str(self.meta.get("weights", WEIGHTS_FILE))
        if not self.weights.is_file():
            raise WeightsNotFoundError(
                f"{directory}: weights file {self.weights} not found",
                hint=f"copy the {self.weights.name} saved with {META_FILE} into that directory",
            )
        pre = self.meta.get("preprocess")
        where = f"{directory / META_FILE}"
        self._pre = preprocess_from_dict(pre, where) if pre else DEFAULT_PREPROCESS
        self.module_name, _, self.attr = self.factory.partition(":")
        try:
            found = importlib.util.find_spec(self.module_name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ModelSpecError(
                f"{where}: cannot import the factory's module {self.module_name!r}; "
                "install it or add its folder to PYTHONPATH"
            )

    def preprocess(self) -> Preprocess:
        return self._pre

    def files(self) -> list[Path]:
        return [self.weights]

    def _build(self) -> Built:
        import torch.nn as nn

        factory = getattr(importlib.import_module(self.module_name), self.attr, None)
        if not callable(factory):
            raise ModelSpecError(
                f"{self.directory / META_FILE}: {self.module_name} has no callable {self.attr!r}"
            )
        try:
            model = factory(**self.kwargs)
        except TypeError as exc:
            raise ModelSpecError(
                f"{self.directory / META_FILE}: {self.factory}(**kwargs) failed ({exc})"
            ) from None
        if not isinstance(model, nn.Module):
            raise ModelSpecError(
                f"{self.directory / META_FILE}: {self.factory} returned "
                f"{type(model).__name__}, not an nn.Module"
            )
        result = model.load_state_dict(read_weights(self.weights), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelSpecError(
                f"{self.weights}: weights do not fit {self.factory}(**kwargs) (missing "
                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
        extra = {k: v for k, v in self.meta.items() if k not in _OWN_KEYS}
        extra["factory"] = self.factory
        extra["versions"] = package_versions("torch", "safetensors")
        names = self.meta.get("class_names")
        return Built(model.eval(), list(names) if names else None, [self.weights], self._pre, extra)


def read_weights(path: Path) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file, or a tensors-only ``torch.save`` file."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ModelSpecError(f"{path}: not a readable safetensors file ({exc})") from None
    from failstore.models.robust import load_checkpoint

    sd = load_checkpoint(path)
    if not isinstance(sd, dict):
        raise ModelSpecError(f"{path}: holds {type(sd).__name__}, not a state dict")
    return sd


def save_state_dict_dir(
    model: Any,
    directory: str | Path,
    factory: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a state-dict directory that ``resolve`` (and ``load_model``) reads.

    ``factory(**kwargs)`` must rebuild ``model``'s architecture; this is checked (keys and
    shapes) on the ``meta`` device, which allocates nothing and draws no random numbers. The
    model is switched to eval mode and the default (contiguous) memory format. The directory
    is replaced atomically-ish: written next to it, then swapped in.
    """
    import torch
    from safetensors.torch import save_file

    if not _FACTORY.match(factory):
        raise ValueError(f"factory must be 'python.module:callable', got {factory!r}")
    kw = json.loads(json.dumps(dict(kwargs or {})))  # what the JSON will give back
    module_name, _, attr = factory.partition(":")
    made = getattr(importlib.import_module(module_name), attr)
    with torch.device("meta"):
        probe = made(**kw)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ValueError(f"{factory}(**{kw}) does not rebuild this model (differs in {diff})")
    meta: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "factory": factory}
    meta["kwargs"] = kw
    meta["weights"] = WEIGHTS_FILE
    if class_names is not None:
        meta["class_names"] = list(class_names)
    if preprocess is not None:
        pre = json.loads(preprocess.to_json()) if isinstance(preprocess, Preprocess) else preprocess
        meta["preprocess"] = dict(pre)
    for k, v in (extra or {}).items():
        if k in _OWN_KEYS:
            raise ValueError(f"extra key {k!r} is reserved")
        meta[k] = v
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(sd, str(tmp / WEIGHTS_FILE))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
