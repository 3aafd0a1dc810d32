"""The small protocol every model adapter speaks, and the picklable preprocessing recipe.

An adapter is built from a spec string without touching torch; ``load()`` imports torch and
reads weights; ``encode(batch)`` takes a float32 NCHW tensor that the pipeline has already
resized, cropped and normalised with ``adapter.preprocess`` and returns named numpy columns.

Roles and the columns ``encode`` returns (N = batch size):

- ``target``: ``logits`` (N, C) float32 and ``embedding`` (N, D) float32 (the bottleneck).
- ``robust``: ``robust_features`` (N, D) float32.
- ``clip``: ``clip_embedding`` (N, D) float32, L2-normalised, and ``tag_scores`` (N, T) float32
  (cosine similarity of the image embedding with each tag's mean prompt embedding).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Role = Literal["target", "robust", "clip"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop``, scale to [0, 1],
    normalise with ``mean``/``std``. ``interpolation`` is a PIL filter name
    ("bilinear", "bicubic", "nearest"). Picklable; decode workers apply the geometric part and
    return uint8 arrays, the main process does the float conversion and normalisation in torch.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def key(self) -> tuple[int, int, str]:
        """Adapters whose geometry matches share one decoded array."""
        return (self.resize, self.crop, self.interpolation)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class ModelRecord:
    """Provenance of one model, one row of the ``models`` table."""

    name: str
    role: Role
    spec: str
    checkpoint_sha256: str | None
    preprocess: Preprocess
    layer: str | None = None
    embedding_dim: int | None = None
    class_names: list[str] | None = None
    tags: list[str] | None = None
    prompts: list[str] | None = None  # one JSON-encoded list of prompt strings per tag
    thresholds: list[float] | None = None
    head_weight: np.ndarray | None = None  # (C, D) float32, target models only
    head_bias: np.ndarray | None = None  # (C,) float32
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelAdapter(Protocol):
    """What the ingest pipeline needs from a model."""

    name: str
    role: Role
    spec: str

    @property
    def preprocess(self) -> Preprocess: ...

    def load(self, device: str = "cpu") -> None:
        """Import torch, read weights, move to ``device``; idempotent."""
        ...

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        """Run one batch (a float32 NCHW torch tensor on the adapter's device) under
        ``torch.inference_mode()`` and return the role's columns as numpy arrays."""
        ...

    def record(self) -> ModelRecord:
        """Provenance; valid after ``load()``."""
        ...
