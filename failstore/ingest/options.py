"""What an ingest is asked to do: the options of ``failstore ingest`` as one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from failstore import config
from failstore.errors import ConfigError
from failstore.ingest.ray_engine import RayOptions

ENGINES = ("local", "ray")


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
    path_column: str = "path"  # manifests: the column with the image paths
    label_column: str = "label"  # manifests: the column with the labels
    batch_size: int = config.DEFAULT_BATCH_SIZE
    workers: int = field(default_factory=config.default_workers)
    device: str = "cpu"
    strict: bool = False
    limit: int | None = None
    commit_every: int = config.DEFAULT_COMMIT_EVERY
    reread: bool = False  # read every file, even those unchanged since their ingest
    engine: str = "local"  # "ray": decode and run the models on Ray (ray_engine)
    ray: RayOptions = field(default_factory=RayOptions)


# option -> the model option it only applies to
_NEEDS = {
    "tags": ("--tags", "clip"),
    "tag_threshold": ("--tag-threshold", "clip"),
    "layer": ("--layer", "target"),
    "class_names": ("--class-names", "target"),
    "robust_layer": ("--robust-layer", "robust"),
}


def check_options(opts: IngestOptions) -> None:
    """Refuse option values that cannot do what they say, before anything is read or written."""
    if opts.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.engine == "ray":
        opts.ray.check()
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError(
            f"--limit must be >= 1, got {opts.limit}", hint="leave it out to ingest every image"
        )
    for role in ("target", "robust", "clip"):
        spec = getattr(opts, role)
        if spec is not None and not str(spec).strip():
            raise ConfigError(
                f"--{role} is empty", hint=f"give a model spec, or leave --{role} out"
            )
    for field_name, (flag, role) in _NEEDS.items():
        if getattr(opts, field_name) is not None and not getattr(opts, role):
            raise ConfigError(
                f"{flag} applies to --{role}, which is not given",
                hint=f"add --{role} MODEL or drop {flag}",
            )
