"""What an ingest is asked to do: the options of ``failstore ingest`` as one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from failstore import config


@dataclass
class IngestOptions:
    source: str | Path
    target: str | None = None
    robust: str | None = None
    clip: str | None = None
    layer: str | None = None
    robust_layer: str | None = None
    tags: str | Path | None = None
    tag_threshold: float | None = None
    class_names: str | Path | None = None
    label_map: str | Path | None = None
    split: str | None = None
    batch_size: int = config.DEFAULT_BATCH_SIZE
    workers: int = field(default_factory=config.default_workers)
    device: str = "cpu"
    strict: bool = False
    limit: int | None = None
    commit_every: int = config.DEFAULT_COMMIT_EVERY
