"""open_clip adapter: L2-normalised image embeddings and cosine scores against a tag vocabulary.

Spec forms (weights only from local files; nothing is downloaded):

- ``local-dir:/path`` or a plain directory path: ``open_clip_config.json`` (``model_cfg``,
  ``preprocess_cfg``) plus weights (``open_clip_model.safetensors``,
  ``open_clip_pytorch_model.bin``, or another ``*.safetensors``/``*.bin``/``*.pth``).
- ``hf-hub:org/repo``: the same layout, from a snapshot in the local Hugging Face cache.
- ``MODEL:/path/to/checkpoint``: an open_clip config name plus a local weights file.
- ``MODEL:TAG``: an open_clip pretrained tag whose file is already in the local cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failstore.errors import ModelSpecError, WeightsNotFoundError
from failstore.models.base import package_versions, triple
from failstore.models.protocol import ModelRecord, Preprocess, Role
from failstore.models.vocab import Vocabulary
from failstore.models.weights import (
    find_cached_weights,
    hf_cached_file,
    hf_expected_path,
    offline,
    sha256_file,
)

DEFAULT_TAG_THRESHOLD = 0.25
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_FILE = "open_clip_config.json"
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
WEIGHT_EXTS = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".npz")


def tags_from_scores(
    scores: np.ndarray, tags: Sequence[str], thresholds: np.ndarray | Sequence[float]
) -> list[list[str]]:
    """Per row, the tags whose score is >= their threshold, in vocabulary order."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(tags):
        raise ValueError(f"scores of shape {scores.shape} for {len(tags)} tags")
    mask = scores >= np.asarray(thresholds, dtype=scores.dtype)[None, :]
    _rows, cols = np.nonzero(mask)
    names = np.asarray(list(tags), dtype=object)
    splits = np.split(names[cols], np.cumsum(mask.sum(axis=1))[:-1])
    return [s.tolist() for s in splits]


def find_weights(directory: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(
        (p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")),
        key=lambda p: (p.suffix != ".safetensors", p.name),
    )
    return found[0] if found else None


def _size(value: Any, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ModelSpecError(f"{where}: non-square image_size {value} is not supported")
        value = value[0]
    return int(value)


def preprocess_from_cfg(model_cfg: dict, pre_cfg: dict, where: str) -> Preprocess:
    """Resize the shorter side to the vision tower's image size, centre-crop it."""
    size = _size(model_cfg.get("vision_cfg", {}).get("image_size", pre_cfg.get("size", 224)), where)
    interp = pre_cfg.get("interpolation") or "bicubic"
    try:
        mean, std = (
            triple(pre_cfg.get("mean") or OPENAI_MEAN),
            triple(pre_cfg.get("std") or OPENAI_STD),
        )
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"{where}: bad preprocess mean/std ({exc})") from None
    return Preprocess(
        resize=size,
        crop=size,
        mean=mean,
        std=std,
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
    )


def _read_config(directory: Path, spec: str) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelSpecError(f"{spec}: no {CONFIG_FILE} in {directory}; a CLIP dir needs one")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise ModelSpecError(f"{path}: missing the 'model_cfg' object")
    return cfg


class ClipAdapter:
    """Role ``clip``: ``clip_embedding`` (N, D) and ``tag_scores`` (N, T)."""

    role: Role = "clip"

    def __init__(
        self, spec: str, vocab: Vocabulary | None, tag_threshold: float | None = None
    ) -> None:
        self.spec = spec
        self.vocab = vocab
        self.default_threshold = (
            DEFAULT_TAG_THRESHOLD if tag_threshold is None else float(tag_threshold)
        )
        self.tags: list[str] = list(vocab.tags) if vocab else []
        self.prompts: list[list[str]] = vocab.prompts() if vocab else []
        resolved = vocab.resolved_thresholds(self.default_threshold) if vocab else []
        self.thresholds = np.asarray(resolved, dtype=np.float32)
        self.directory: Path | None = None
        self.checkpoint: Path | None = None
        self.model_name: str | None = None
        self.tag: str | None = None
        self._config: dict | None = None
        self._preprocess: Preprocess | None = None
        self._loaded = False
        self._parse(spec)

    def __repr__(self) -> str:
        return f"ClipAdapter(spec={self.spec!r}, tags={len(self.tags)})"

    def _parse(self, spec: str) -> None:
        forms = (
            "accepted: local-dir:/path/to/dir, a directory path, hf-hub:org/repo (local cache), "
            "MODEL:/path/to/weights or MODEL:PRETRAINED_TAG"
        )
        if spec.startswith("hf-hub:"):
            repo = spec[len("hf-hub:") :]
            cfg_file = hf_cached_file(repo, CONFIG_FILE)
            if cfg_file is None:
                raise WeightsNotFoundError(
                    f"{spec}: not in the local Hugging Face cache "
                    f"(expected {hf_expected_path(repo, CONFIG_FILE)})",
                    hint="copy the repo snapshot there or use local-dir:/path",
                )
            self._use_dir(cfg_file.parent, spec)
            self.name = repo.rsplit("/", 1)[-1]
            return
        if (
            spec.startswith("local-dir:")
            or (os.sep in spec and ":" not in spec)
            or Path(spec).is_dir()
        ):
            raw = spec[len("local-dir:") :] if spec.startswith("local-dir:") else spec
            path = Path(raw).expanduser()
            if not path.is_dir():
                raise ModelSpecError(
                    f"CLIP model spec {spec!r}: directory {path} not found; {forms}"
                )
            self._use_dir(path, spec)
            return
        model, sep, rest = spec.partition(":")
        if not sep or not model or not rest:
            raise ModelSpecError(f"CLIP model spec {spec!r} is not understood; {forms}")
        self.model_name = model
        if os.sep in rest or Path(rest).suffix in WEIGHT_EXTS or Path(rest).exists():
            ckpt = Path(rest).expanduser()
            if not ckpt.is_file():
                raise WeightsNotFoundError(
                    f"{spec}: CLIP weights file not found: {ckpt}",
                    hint="copy the checkpoint there or fix the path",
                )
            self.checkpoint = ckpt
            self.name = f"{model}:{ckpt.stem}"
        else:
            self.tag = rest
            self.name = spec

    def _use_dir(self, path: Path, spec: str) -> None:
        self.directory = path.resolve()
        self._config = _read_config(self.directory, spec)
        weights = find_weights(self.directory)
        if weights is None:
            raise WeightsNotFoundError(
                f"{spec}: no CLIP weights in {self.directory} "
                f"(expected {self.directory / WEIGHT_NAMES[0]} or {WEIGHT_NAMES[2]})",
                hint="copy the weights file into that directory",
            )
        self.checkpoint = weights
        self.name = self.directory.name
        self._preprocess = preprocess_from_cfg(
            self._config["model_cfg"], self._config.get("preprocess_cfg", {}), spec
        )

    # -- preprocessing / weights ---------------------------------------------------------------

    def _tag_cfg(self) -> dict:
        import open_clip

        assert self.model_name is not None and self.tag is not None
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.tag)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            raise ModelSpecError(
                f"CLIP model spec {self.spec!r}: {self.tag!r} is neither a pretrained tag of "
                f"{self.model_name} ({', '.join(tags) or 'none'}) nor an existing weights file"
            )
        return cfg

    def _model_cfg(self) -> dict:
        import open_clip

        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise ModelSpecError(
                f"CLIP model spec {self.spec!r}: {self.model_name!r} is not an open_clip model "
                "config; use a local dir with open_clip_config.json, or register the config with "
                "open_clip.add_model_config"
            )
        return cfg

    @property
    def preprocess(self) -> Preprocess:
        if self._preprocess is None:
            pre_cfg = self._tag_cfg() if self.tag else {}
            self._preprocess = preprocess_from_cfg(self._model_cfg(), pre_cfg, self.spec)
        return self._preprocess

    def _tag_file(self, cfg: dict) -> Path:
        repo = fname = None
        names: list[str] = []
        if cfg.get("hf_hub"):
            repo, fname = os.path.split(cfg["hf_hub"])  # "org/repo/" means the default file
            fname = fname or "open_clip_pytorch_model.bin"
            names = [fname[:-4] + ".safetensors"] if fname.endswith((".bin", ".pth")) else []
            if fname == "open_clip_pytorch_model.bin":
                names = ["open_clip_model.safetensors"]
            names.append(fname)
        url = cfg.get("url")
        return find_cached_weights(
            f"CLIP {self.spec}",
            hf_repo=repo,
            hf_names=names,
            hf_expected=fname,
            url_file=Path("~/.cache/clip").expanduser() / os.path.basename(url) if url else None,
            hint="copy the file there, or pass MODEL:/path/to/checkpoint",
        )

    def checkpoint_files(self) -> list[Path]:
        """The weights file ``load`` reads (for a pretrained tag: found in the local cache,
        ``WeightsNotFoundError`` when absent). Reads no weights."""
        if self.tag:
            return [self._tag_file(self._tag_cfg())]
        return [self.checkpoint] if self.checkpoint is not None else []

    # -- loading / running ---------------------------------------------------------------------

    def load(self, device: str = "cpu") -> None:
        if self._loaded:
            return
        import open_clip
        import torch

        with offline():
            if self.directory is not None:
                ident = f"local-dir:{self.directory}"
                finder = getattr(open_clip.factory, "_find_checkpoint_in_dir", None)
                if finder is not None:
                    self.checkpoint = Path(finder(self.directory))
                model = open_clip.create_model(ident, device=device)
                tokenizer = open_clip.get_tokenizer(ident)
            else:
                self._model_cfg()
                extra: dict[str, Any] = {}
                if self.tag:
                    cfg = self._tag_cfg()
                    self.checkpoint = self._tag_file(cfg)
                    extra["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
                model = open_clip.create_model(
                    self.model_name, pretrained=str(self.checkpoint), device=device, **extra
                )
                tokenizer = open_clip.get_tokenizer(self.model_name)
        model.eval()
        self._model = model
        self._device = device
        with torch.inference_mode():
            self.text_embeddings = self._encode_prompts(tokenizer)
            probe = torch.zeros(1, 3, self.preprocess.crop, self.preprocess.crop, device=device)
            self.embedding_dim = int(model.encode_image(probe).shape[1])
        self._loaded = True

    def _encode_prompts(self, tokenizer: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if not self.tags:
            return None
        flat = [p for ps in self.prompts for p in ps]
        parts = []
        for i in range(0, len(flat), 256):
            tokens = tokenizer(flat[i : i + 256]).to(self._device)
            parts.append(F.normalize(self._model.encode_text(tokens).float(), dim=-1))
        per_prompt = torch.cat(parts)
        out, start = [], 0
        for ps in self.prompts:
            out.append(per_prompt[start : start + len(ps)].mean(dim=0))
            start += len(ps)
        return F.normalize(torch.stack(out), dim=-1)

    def encode(self, batch: Any) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        if not self._loaded:
            self.load()
        with torch.inference_mode():
            emb = F.normalize(self._model.encode_image(batch).float(), dim=-1)
            if self.text_embeddings is None:
                scores = emb.new_zeros((emb.shape[0], 0))
            else:
                # One row at a time: a GEMM's result for a row can depend on its position in
                # the batch (edge kernels); row by row, an image's scores are the same bits in
                # whatever batch an engine puts it (failstore.ingest.encode).
                text = self.text_embeddings.T
                scores = torch.cat([emb[i : i + 1] @ text for i in range(emb.shape[0])])
        return {
            "clip_embedding": emb.cpu().numpy().astype(np.float32),
            "tag_scores": scores.cpu().numpy().astype(np.float32),
        }

    def tags_for(self, scores: np.ndarray) -> list[list[str]]:
        return tags_from_scores(scores, self.tags, self.thresholds)

    def record(self) -> ModelRecord:
        if not self._loaded:
            raise RuntimeError("record() is valid after load()")
        extra: dict[str, Any] = {
            "source": "open_clip",
            "default_threshold": self.default_threshold,
            "versions": package_versions("open_clip_torch", "torch"),
        }
        if self.vocab is not None:
            extra["vocab"] = self.vocab.source
            extra["templates"] = self.vocab.templates
        if self._config is not None:
            extra["open_clip_config"] = self._config
        if self.checkpoint is not None:
            extra["checkpoint_files"] = [str(Path(self.checkpoint).resolve())]
        return ModelRecord(
            name=self.name,
            role="clip",
            spec=self.spec,
            checkpoint_sha256=sha256_file(self.checkpoint) if self.checkpoint else None,
            preprocess=self.preprocess,
            embedding_dim=self.embedding_dim,
            tags=list(self.tags),
            prompts=[json.dumps(ps) for ps in self.prompts],
            thresholds=[float(t) for t in self.thresholds],
            extra=extra,
        )
