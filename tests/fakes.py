"""Tiny deterministic model adapters for pipeline tests (no weights, no torch model code).

Each counts the images it encoded, so tests can check what the pipeline (re)computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from failstore.models.protocol import ModelRecord, Preprocess

PRE = Preprocess(resize=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class _Fake:
    role: Any = "target"

    def __init__(self, name: str, dim: int = 4) -> None:
        self.name = name
        self.spec = f"fake:{name}"
        self.dim = dim
        self.encoded = 0
        self.loaded = False

    @property
    def preprocess(self) -> Preprocess:
        return PRE

    def load(self, device: str = "cpu") -> None:
        self.loaded = True

    def _means(self, batch: Any) -> np.ndarray:
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        # encode_crops pads every call to the batch size with black images (-1 here once
        # normalised): those are not images the pipeline asked for
        self.encoded += int((~np.all(x == -1.0, axis=(1, 2, 3))).sum())
        return x.mean(axis=(2, 3))  # (N, 3) mean colour in normalised units


class FakeTarget(_Fake):
    """Predicts the class whose name is the dominant colour channel: red, green or blue."""

    role = "target"
    classes = ("red", "green", "blue")

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        m = self._means(batch).astype(np.float32)
        emb = np.concatenate([m, m.sum(1, keepdims=True)], axis=1)[:, : self.dim]
        logits = 10.0 * m
        return {"logits": logits, "embedding": emb.astype(np.float32)}

    def record(self) -> ModelRecord:
        w = np.zeros((3, self.dim), np.float32)
        w[:3, :3] = 10 * np.eye(3)
        return ModelRecord(
            name=self.name,
            role="target",
            spec=self.spec,
            checkpoint_sha256="0" * 64,
            preprocess=PRE,
            layer="fake",
            embedding_dim=self.dim,
            class_names=list(self.classes),
            head_weight=w,
            head_bias=np.zeros(3, np.float32),
        )


class FakeRobust(_Fake):
    role = "robust"

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        m = self._means(batch)
        return {"robust_features": np.tile(m, 2)[:, : self.dim].astype(np.float32)}

    def record(self) -> ModelRecord:
        return ModelRecord(
            name=self.name,
            role="robust",
            spec=self.spec,
            checkpoint_sha256="1" * 64,
            preprocess=PRE,
            embedding_dim=self.dim,
        )


class FakeClip(_Fake):
    role = "clip"
    tags = ("reddish", "greenish", "blueish")

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        m = (self._means(batch) * 0.5 + 0.5).astype(np.float32)  # back to [0, 1] colours
        emb = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-6)
        return {"clip_embedding": emb, "tag_scores": emb}

    def record(self) -> ModelRecord:
        return ModelRecord(
            name=self.name,
            role="clip",
            spec=self.spec,
            checkpoint_sha256="2" * 64,
            preprocess=PRE,
            embedding_dim=3,
            tags=list(self.tags),
            prompts=['["a red thing"]', '["a green thing"]', '["a blue thing"]'],
            thresholds=[0.5, 0.5, 0.5],
        )
