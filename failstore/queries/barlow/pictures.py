"""Barlow's pictures of a robust feature: its most-activating images, their heatmaps and a
feature-attack image (Singla et al. §4, App. B-C; docs/barlow.md, "Pictures").

For each feature in the rule of a valid leaf, over the leaf's whole group (as the paper does):

- **images**: the ``top`` images of the group with the largest stored value of the feature
  (rank 1 = largest; ties keep group order). The reference code shows 6, the issue asks for 5.
- **heatmaps**: the feature's channel of the robust model's last convolutional map (the 4-D
  activation ``(N, D, h, w)`` whose spatial mean is the D robust features, found with forward
  hooks by :func:`feature_maps`), divided by its per-image maximum as the reference code does
  (the paper says "normalised to [0, 1]"; the minimum is not subtracted, negative values are
  clipped to 0, and a channel whose maximum is <= 0 gives an all-zero map instead of 0/0),
  upsampled bilinearly (half-pixel centres, as ``cv2.resize``) to the image size, coloured with
  jet (:func:`jet`, high = red) and overlaid as the reference does: ``(jet + image) / max``.
- **attack**: gradient ascent on the feature from the image in [0, 1] pixel space (before the
  model's mean/std normalisation): ``x <- clamp(x + step_size * g / ||g||_2, 0, 1)`` per image,
  the paper's step 1 and 500 iterations by default (the reference code runs 1000; neither
  projects to the paper's eps = 500). A zero gradient leaves the image unchanged (the reference
  divides by ``||g|| + 1e-10``). The attack itself is in ``attack.py``.

The functions above the driver take arrays and a loaded adapter, never the store; torch is
imported inside them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from failstore.errors import ModelSpecError
from failstore.models.pixels import load_pixels, normalise
from failstore.queries.barlow.attack import (
    AttackResult,
    ascend,
    check_device,
    encoded_features,
    feature_attack,
    grad_step,
    run_feature_attack,
)

if TYPE_CHECKING:
    from failstore.models.base import FeatureAdapter

PICTURES_SCHEMA = pa.schema(
    [
        pa.field("class", pa.string()),
        pa.field("grouping", pa.string()),
        pa.field("leaf", pa.int32()),
        pa.field("feature", pa.int32()),
        pa.field("rank", pa.int32()),
        pa.field("image_id", pa.string()),
        pa.field("kind", pa.string()),  # 'image' | 'heatmap' | 'attack'
        pa.field("path", pa.string()),
        pa.field("activation", pa.float64()),
    ]
)
__all__ = [  # the attack lives in attack.py; its functions are part of this module's API
    "PICTURES_SCHEMA",
    "AttackResult",
    "PictureGroup",
    "ascend",
    "feature_attack",
    "feature_maps",
    "find_feature_map",
    "grad_step",
    "heatmaps",
    "jet",
    "overlay",
    "rule_features",
    "run_feature_attack",
    "safe_name",
    "top_images",
    "upsample",
    "valid_leaves",
    "write_pictures",
]
FILE_PREFIX = {"image": "top", "heatmap": "heatmap", "attack": "attack"}
T = TypeVar("T")


# --------------------------------------------------------------------------- feature maps


def find_feature_map(adapter: FeatureAdapter, batch: Any) -> tuple[str, np.ndarray, np.ndarray]:
    """``(where, features, maps)`` for a normalised float NCHW ``batch``: the robust features
    (N, D) and the last 4-D activation (N, D, h, w) whose spatial mean equals them (to 1e-4
    relative), found with forward hooks on every submodule. Module outputs are preferred to
    module inputs (an input catches a map made by functional code before an ``nn`` pooling
    layer) and maps larger than 1 x 1 to the pooled (N, D, 1, 1) ones. ``where`` names the
    capture (``layer4``, ``avgpool:input``). ``ModelSpecError`` when nothing matches."""
    import torch

    module = adapter.module
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelSpecError(
            f"{adapter.spec}: heatmaps need an eager torch module (forward hooks do not work on "
            "TorchScript); save the robust model as a state-dict directory (docs/models.md)"
        )
    features = encoded_features(adapter, batch)
    width = features.shape[1]
    target = torch.as_tensor(features)
    scale = max(1.0, float(target.abs().max())) if target.numel() else 1.0
    found: dict[tuple[bool, bool], tuple[str, Any]] = {}  # (is_output, spatial > 1) -> last

    def check(name: str, value: Any, is_output: bool) -> None:
        if not (isinstance(value, torch.Tensor) and value.ndim == 4):
            return
        if value.shape[0] != target.shape[0] or value.shape[1] != width:
            return
        mean = value.detach().float().mean(dim=(2, 3)).cpu()
        if torch.allclose(mean, target, rtol=1e-4, atol=1e-4 * scale):
            spatial = value.shape[2] * value.shape[3] > 1
            found[(is_output, spatial)] = (name, value.detach())

    def hook(name: str) -> Any:
        def run(_m: Any, inputs: Any, output: Any) -> None:
            check(f"{name}:input", inputs[0] if inputs else None, False)
            check(name, output, True)

        return run

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    try:
        encoded_features(adapter, batch)
    finally:
        for h in handles:
            h.remove()
    for key in ((True, True), (False, True), (True, False), (False, False)):
        if key in found:
            name, value = found[key]
            return name, features, value.float().cpu().numpy()
    raise ModelSpecError(
        f"{adapter.spec}: found no activation of shape (N, {width}, h, w) whose spatial mean "
        f"equals the {width} robust features; heatmaps need features that are the global "
        "average pool of a convolutional map (e.g. a ResNet's layer4, the input of fc)"
    )


def feature_maps(adapter: FeatureAdapter, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), maps (N, D, h, w))`` float32 of a normalised float NCHW batch:
    see :func:`find_feature_map`."""
    _, features, maps = find_feature_map(adapter, batch)
    return features, maps


# --------------------------------------------------------------------------- heatmaps


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling with half-pixel centres."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W), half-pixel centres (``cv2.resize``
    INTER_LINEAR and torch's ``interpolate(align_corners=False)`` when enlarging)."""
    lo, hi, wy = _axis(maps.shape[1], size[0])
    rows = maps[:, lo, :] * (1.0 - wy)[None, :, None] + maps[:, hi, :] * wy[None, :, None]
    lo, hi, wx = _axis(maps.shape[2], size[1])
    return rows[:, :, lo] * (1.0 - wx) + rows[:, :, hi] * wx


def heatmaps(maps: np.ndarray, channel: int, size: int | tuple[int, int]) -> np.ndarray:
    """Channel ``channel`` of (N, D, h, w) ``maps`` divided by its per-image maximum (negative
    values clipped to 0; a maximum <= 0 gives zeros, not NaN), upsampled bilinearly to
    ``size`` (an int for a square): float32 (N, H, W) in [0, 1]."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    m = np.asarray(maps, dtype=np.float64)[:, channel]
    peak = m.reshape(len(m), -1).max(axis=1) if m.size else np.zeros(len(m))
    ok = peak > 0
    scaled = m / np.where(ok, peak, 1.0)[:, None, None]
    scaled = np.where(ok[:, None, None], np.clip(scaled, 0.0, 1.0), 0.0)
    return np.clip(upsample(scaled, hw), 0.0, 1.0).astype(np.float32)


def jet(x: ArrayLike) -> np.ndarray:
    """The jet colour map, uint8 RGB with a trailing axis of 3: 0 -> dark blue (0, 0, 128),
    0.5 -> (128, 255, 128), 1 -> dark red (128, 0, 0); the classic piecewise-linear form
    ``channel = clip(1.5 - |4x - c|, 0, 1)`` with c = 3, 2, 1 for red, green, blue. Values are
    clipped to [0, 1] (NaN counts as 0). The reference code applies OpenCV's (BGR) jet to
    ``1 - map`` and shows the result as RGB, which gives the same ends: high = red."""
    v = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The reference's overlay of a heatmap on its image: ``jet(heat) / 255 + image / 255``,
    divided by its maximum (per image), as uint8. ``image`` (H, W, 3) or (N, H, W, 3) uint8,
    ``heat`` (H, W) or (N, H, W) in [0, 1]."""
    img = np.asarray(image)
    if img.shape[:-1] != np.shape(heat) or img.shape[-1] != 3:
        raise ValueError(f"image {img.shape} and heatmap {np.shape(heat)} do not match")
    cam = jet(heat).astype(np.float64) / 255.0 + img.astype(np.float64) / 255.0
    peak = cam.max(axis=(-3, -2, -1), keepdims=True)  # > 0: jet always has a channel >= 0.5
    return np.rint(cam / peak * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class PictureGroup:
    """One class group as the estimator holds it, and the leaves to draw."""

    cls: str
    grouping: str  # 'label' | 'prediction'
    features: np.ndarray  # (N, D) float32 robust features, stored column order
    image_ids: Sequence[str]  # N, the store's sha256 of each file (checked when read back)
    uris: Sequence[str]  # N image files
    leaves: Sequence[tuple[int, Sequence[int]]]  # (leaf id, features of its rule)


def rule_features(conditions: Iterable[Any]) -> list[int]:
    """The distinct features of a leaf's rule in rule order; each condition is a mapping with
    key ``feature`` (a ``conditions`` row of ``barlow_tree_leaves``) or a tuple
    ``(feature, op, threshold)``."""
    out: dict[int, None] = {}
    for c in conditions:
        out[int(c["feature"] if isinstance(c, Mapping) else c[0])] = None
    return list(out)


def valid_leaves(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int, list[int]]]:
    """``(leaf, features)`` of the valid rows among leaf rows (dicts with ``leaf``, ``valid``
    and ``conditions``, e.g. ``barlow_tree_leaves`` rows of one group)."""
    return [(int(r["leaf"]), rule_features(r["conditions"] or ())) for r in rows if r["valid"]]


def top_images(values: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` largest values, largest first, ties in index order."""
    return np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:top]


def safe_name(name: str) -> str:
    """``name`` as one path component: kept when it is plain (letters, digits, ``._ ,+-``);
    otherwise unsafe characters become ``_`` and a short hash of the name keeps it unique."""
    safe = re.sub(r"[^A-Za-z0-9._ ,+-]", "_", name).strip()[:100]
    if safe != name or safe in ("", ".", ".."):
        safe = f"{safe or '_'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def write_pictures(
    adapter: FeatureAdapter,
    groups: Iterable[PictureGroup],
    out_dir: str | Path,
    *,
    top: int = 5,
    steps: int = 500,
    step_size: float = 1.0,
    device: str = "cpu",
    batch_size: int = 32,
) -> pa.Table:
    """Write the pictures of every leaf of ``groups`` under
    ``out_dir/<class>/leaf<id>/feature<f>/`` (``top_<rank>.png``, ``heatmap_<rank>.png``,
    ``attack_<rank>.png``) and return one row per file (``PICTURES_SCHEMA``, absolute paths).
    ``activation`` is the stored feature value for images and heatmaps, the feature on the
    written attack image for attacks. ``adapter`` is the robust model (``load_model(store,
    robust_model, device)``); images are read back from their uris and checked against their
    image ids. Work is batched by ``batch_size`` images; a feature shared by several leaves of
    a group is computed once."""
    if top < 1 or batch_size < 1:
        raise ValueError(f"top and batch_size must be >= 1, got {top} and {batch_size}")
    root = Path(out_dir).resolve()
    rows: list[dict[str, Any]] = []
    for group in groups:
        rows.extend(_group(adapter, group, root, top, steps, step_size, device, batch_size))
    return pa.Table.from_pylist(rows, schema=PICTURES_SCHEMA)


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _group(
    adapter: FeatureAdapter,
    g: PictureGroup,
    root: Path,
    top: int,
    steps: int,
    step_size: float,
    device: str,
    batch_size: int,
) -> list[dict[str, Any]]:
    from PIL import Image

    feats = np.asarray(g.features)
    if feats.ndim != 2 or not len(feats) == len(g.image_ids) == len(g.uris):
        raise ValueError(
            f"class {g.cls!r}: features {feats.shape}, {len(g.image_ids)} image ids and "
            f"{len(g.uris)} uris do not match"
        )
    wanted = list(dict.fromkeys(f for _, fs in g.leaves for f in fs))
    if not wanted or len(feats) == 0:
        return []
    if min(wanted) < 0 or max(wanted) >= feats.shape[1]:
        raise ValueError(f"class {g.cls!r}: feature out of range 0..{feats.shape[1] - 1}")
    check_device(adapter, device)
    pre = adapter.preprocess
    tops = {f: top_images(feats[:, f], top) for f in wanted}
    order = list(dict.fromkeys(int(i) for f in wanted for i in tops[f]))
    pixels = {i: load_pixels(g.uris[i], pre, image_id=g.image_ids[i]) for i in order}
    size = pixels[order[0]].shape[:2]

    maps: dict[int, np.ndarray] = {}  # image -> (len(wanted), h, w)
    for chunk in _batches(order, batch_size):
        batch = normalise(np.stack([pixels[i] for i in chunk]), pre, device)
        _, m = feature_maps(adapter, batch)
        for i, mi in zip(chunk, m, strict=True):
            maps[i] = mi[wanted]
    heat: dict[tuple[int, int], np.ndarray] = {}
    for col, f in enumerate(wanted):
        idx = [int(i) for i in tops[f]]
        h = heatmaps(np.stack([maps[i] for i in idx]), col, size)
        for i, hi in zip(idx, h, strict=True):
            heat[(f, i)] = overlay(pixels[i], hi)

    attack: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    jobs = [(f, int(i)) for f in wanted for i in tops[f]]
    for part in _batches(jobs, batch_size):
        res = run_feature_attack(
            adapter,
            np.stack([pixels[i] for _, i in part]),
            [f for f, _ in part],
            steps=steps,
            step_size=step_size,
            device=device,
        )
        for job, img, act in zip(part, res.images, res.activation, strict=True):
            attack[job] = (img, float(act))

    rows: list[dict[str, Any]] = []
    base = root / safe_name(g.cls)
    for leaf, fs in g.leaves:
        for f in dict.fromkeys(fs):
            folder = base / f"leaf{leaf}" / f"feature{f}"
            folder.mkdir(parents=True, exist_ok=True)
            for rank, i in enumerate((int(i) for i in tops[f]), start=1):
                stored = float(feats[i, f])
                for kind, arr, act in (
                    ("image", pixels[i], stored),
                    ("heatmap", heat[(f, i)], stored),
                    ("attack", *attack[(f, i)]),
                ):
                    path = folder / f"{FILE_PREFIX[kind]}_{rank}.png"
                    Image.fromarray(arr, "RGB").save(path)
                    rows.append(
                        {"class": g.cls, "grouping": g.grouping, "leaf": leaf, "feature": f,
                         "rank": rank, "image_id": g.image_ids[i], "kind": kind,
                         "path": str(path), "activation": act}
                    )  # fmt: skip
    return rows
