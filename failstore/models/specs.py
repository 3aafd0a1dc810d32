"""The spec resolver: a spec string -> a ``ModelAdapter``, without importing torch.

``resolve(role, spec, ...)`` checks what is cheap to check (spec form, files exist, TorchScript
and state-dict metadata, vocabulary and class-name files), so a broken spec fails before
anything is written. See docs/models.md for the accepted forms.
"""

from __future__ import annotations

import re
from pathlib import Path

from failstore.errors import ModelSpecError
from failstore.models.base import FeatureAdapter, Source
from failstore.models.clip import ClipAdapter
from failstore.models.protocol import ModelAdapter, Role
from failstore.models.robust import RobustnessSource
from failstore.models.statedict import PREFIX as STATE_DICT_PREFIX
from failstore.models.statedict import StateDictSource, is_state_dict_dir
from failstore.models.target import (
    EFFICIENTNET_NAME,
    EfficientNetLite0Source,
    FactorySource,
    TimmSource,
    TorchScriptSource,
    TorchvisionSource,
)
from failstore.models.vocab import read_class_names, read_vocab
from failstore.models.weights import is_torchscript

ROLES = ("target", "robust", "clip")
FILE_EXTS = (".pt", ".pth", ".ts", ".torchscript", ".ckpt", ".tar")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
CLASSIFIER_FORMS = (
    "accepted: efficientnet_lite0, torchvision:NAME[:WEIGHTS], timm:NAME, a TorchScript file "
    "(.pt/.pth/.ts/.torchscript or torchscript:PATH), robustness:PATH (a robustness-library "
    "checkpoint), a state-dict directory (DIR or state-dict:DIR), python.module:factory"
)


def _file_source(spec: str, raw: str, force: str | None) -> Source:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"model spec {spec!r}: file not found: {path}; {CLASSIFIER_FORMS}")
    scripted = is_torchscript(path)
    if force == "torchscript" and not scripted:
        raise ModelSpecError(
            f"model spec {spec!r}: {path} is not a TorchScript archive (save it with "
            "torch.jit.save(torch.jit.script(model), path))"
        )
    if force == "robustness" and scripted:
        raise ModelSpecError(
            f"model spec {spec!r}: {path} is TorchScript; drop the robustness: prefix"
        )
    return TorchScriptSource(path) if scripted else RobustnessSource(path)


def _classifier_source(spec: str) -> Source:
    if spec in (EFFICIENTNET_NAME, "efficientnet-lite0"):
        return EfficientNetLite0Source()
    if spec.startswith(STATE_DICT_PREFIX):
        path = Path(spec[len(STATE_DICT_PREFIX) :]).expanduser()
        if not path.is_dir():
            raise ModelSpecError(f"model spec {spec!r}: directory not found: {path}")
        return StateDictSource(path)
    if Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
        if not is_state_dict_dir(path):
            raise ModelSpecError(
                f"model spec {spec!r}: directory {path} holds no failstore_model.json, so it is "
                "not a state-dict directory; " + CLASSIFIER_FORMS
            )
        return StateDictSource(path)
    for prefix in ("torchscript:", "robustness:"):
        if spec.startswith(prefix):
            return _file_source(spec, spec[len(prefix) :], prefix[:-1])
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(_NAME.match(p) for p in parts[1:]):
            raise ModelSpecError(
                f"model spec {spec!r}: write torchvision:NAME or torchvision:NAME:WEIGHTS"
            )
        return TorchvisionSource(parts[1], parts[2] if len(parts) == 3 else None)
    if spec.startswith("timm:"):
        name = spec[len("timm:") :]
        if not name or not _NAME.match(name):
            raise ModelSpecError(
                f"model spec {spec!r}: write timm:NAME (e.g. timm:resnet18.a1_in1k)"
            )
        return TimmSource(name)
    if spec.lower().endswith(FILE_EXTS) or "/" in spec or Path(spec).is_file():
        return _file_source(spec, spec, None)
    if _FACTORY.match(spec):
        return FactorySource(spec)
    raise ModelSpecError(f"model spec {spec!r} is not understood; {CLASSIFIER_FORMS}")


def resolve(
    role: Role,
    spec: str,
    *,
    layer: str | None = None,
    vocab: str | Path | None = None,
    class_names: str | Path | None = None,
    tag_threshold: float | None = None,
) -> ModelAdapter:
    """Build the adapter for ``spec`` in ``role`` without importing torch.

    Raises ``ModelSpecError`` (bad spec or option), ``WeightsNotFoundError`` (a weights file
    that is checkable without torch is missing) or ``InputError`` (vocabulary/class-name file).
    """
    if role not in ROLES:
        raise ModelSpecError(f"unknown model role {role!r}; use one of {', '.join(ROLES)}")
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError(f"empty {role} model spec")
    if role == "clip":
        if layer is not None or class_names is not None:
            raise ModelSpecError(
                f"clip model {spec!r}: --layer and --class-names apply only to target/robust"
            )
        if tag_threshold is not None and not -1.0 <= float(tag_threshold) <= 1.0:
            raise ModelSpecError(f"tag threshold {tag_threshold} is outside [-1, 1]")
        return ClipAdapter(spec, read_vocab(vocab) if vocab is not None else None, tag_threshold)
    if vocab is not None or tag_threshold is not None:
        raise ModelSpecError(
            f"{role} model {spec!r}: vocabulary and tag threshold apply only to clip"
        )
    if layer is not None and not re.match(r"^[\w.]+(:input)?$", layer):
        raise ModelSpecError(
            f"{role} model {spec!r}: layer {layer!r} must be a dotted module name, "
            "optionally followed by ':input'"
        )
    names = read_class_names(class_names) if class_names is not None else None
    return FeatureAdapter(role, spec, _classifier_source(spec), layer=layer, class_names=names)

