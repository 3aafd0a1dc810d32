"""Generate the demo world from a spec (sampling + rendering) and write it to disk.

Sampling (class and attributes per image, the planted rules) is in ``sampling.py``; here each
image is rendered: silhouette, colour, size, position, object, background and quality.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import ndimage as ndi

from failstore.demo.backgrounds import (
    apply_quality,
    draw_object,
    object_spot,
    place_patch,
    render_backgrounds,
)  # fmt: skip
from failstore.demo.sampling import sample_split
from failstore.demo.silhouette_choice import (
    DISTINCT,
    animal_patch,
    candidates,
    filled_masks,
    nearest_class,
    pool,
    shape_margin,
)  # fmt: skip
from failstore.demo.silhouettes import SilhouetteBank, load_bank
from failstore.demo.spec import (
    ATTRIBUTES,
    GENERATOR_VERSION,
    WorldSpec,
    load_spec,
    min_expected,
    nameable_part,
    planted_slices,
    slice_probability,
    spec_hash,
)  # fmt: skip

SIZE_FRACTION = {"small": 0.40, "medium": 0.56, "large": 0.74}
COLOURS = {"brown": (120, 76, 38), "black": (38, 34, 32), "white": (236, 233, 226),
           "gray": (128, 128, 132), "orange": (226, 122, 34)}
CHUNK = 1024
SPECS_DIR = Path(__file__).parent / "specs"
QUALITY_PREFIX = {"clean": "a photo of", "blurry": "a blurry photo of",
                  "grayscale": "a black and white photo of", "noisy": "a grainy photo of"}
POSITION_PHRASE = {"center": "in the center", "left": "on the left", "right": "on the right",
                   "top": "at the top", "bottom": "at the bottom"}
BACKGROUND_PHRASE = {"sky": "against the sky", "brick": "in front of a brick wall"}


@dataclass
class World:
    """A generated world, in memory. Index i is the same image in every array."""

    spec: WorldSpec
    spec_hash: str
    silhouette_source: str
    images: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray  # bool (N, H, W)
    boxes: np.ndarray  # int32 (N, 4): x0, y0, x1, y1 in pixels; x1, y1 exclusive
    labels: np.ndarray  # int64 (N,), index into class_names
    class_names: list[str]
    attributes: dict[str, np.ndarray]  # attr_* -> str (N,)
    split: np.ndarray  # str (N,)
    captions: list[str]
    instance: np.ndarray  # int64 (N,), silhouette index in the bank's class ``drawn_as``
    drawn_as: np.ndarray  # str (N,): the class whose silhouette was drawn (see sample_split)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def label_names(self) -> np.ndarray:
        return np.asarray(self.class_names)[self.labels]

    def slice_counts(self) -> dict[str, dict[str, int]]:
        """Planted slice name -> split -> number of images in it."""
        names = self.label_names
        out: dict[str, dict[str, int]] = {}
        for sl in planted_slices(self.spec):
            m = sl.mask(names, self.attributes)
            out[sl.name] = {s: int((m & (self.split == s)).sum()) for s in self.spec.sizes}
        return out


# ---------------------------------------------------------------- presets


def default_spec(quick: bool = False) -> WorldSpec:
    """The bundled ``specs/default.yaml`` (its ``quick_spec`` if ``quick``)."""
    spec = load_spec(SPECS_DIR / "default.yaml")
    return quick_spec(spec) if quick else spec


def quick_spec(spec: WorldSpec, train_size: int = 3000, min_slice_count: int = 30) -> WorldSpec:
    """A smaller world: other splits capped at ``train_size``, evaluation splits cut to the
    smallest multiple of 100 that still gives every planted slice's largest nameable part
    (``nameable_part``: what a slice search can name with single values) ``min_slice_count``
    images (with the same 3-sd margin)."""
    d = spec.to_dict()
    need = min_expected(min_slice_count)
    slices = planted_slices(spec)
    for split, n in spec.sizes.items():
        if split in spec.eval_splits:
            ps = [min(slice_probability(spec, sl, split), nameable_part(spec, sl, split)[1])
                  for sl in slices]
            lo = max([math.ceil(need / p / 100) * 100 for p in ps if p > 0], default=100)
            d["sizes"][split] = min(n, lo)
        else:
            d["sizes"][split] = min(n, train_size)
    d["min_slice_count"] = min(spec.min_slice_count, min_slice_count)
    d["name"] = f"{spec.name}-quick"
    return dataclasses.replace(load_spec(d), source=spec.source)



# ---------------------------------------------------------------- rendering


def _fur(size: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    n = ndi.gaussian_filter(rng.standard_normal((size * 2, size * 2)).astype(np.float32), 0.8,
                            mode="wrap")
    return n / max(float(np.abs(n).max()), 1e-6)


def _split_seed(spec: WorldSpec, split: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(split.encode()), stream])


def _render_split(spec: WorldSpec, split: str, codes: dict[str, np.ndarray],
                  bank: SilhouetteBank, images: np.ndarray, masks: np.ndarray,
                  instance: np.ndarray, drawn: np.ndarray) -> None:
    n, size = codes["class"].shape[0], spec.image_size
    rng = _split_seed(spec, split, 1)
    u = rng.random((n, 16))  # per-image uniforms, columns used below
    fur = _fur(size)
    bg_values, obj_values = ATTRIBUTES["attr_background"], ATTRIBUTES["attr_object"]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        chunk = np.empty((stop - start, size, size, 3), dtype=np.float32)
        bg = codes["attr_background"][start:stop]
        for b in np.unique(bg):
            at = np.flatnonzero(bg == b)
            chunk[at] = render_backgrounds(bg_values[b], at.size, size, rng)
        for i in range(start, stop):
            r, img = u[i], chunk[i - start]
            cls = spec.classes[codes["class"][i]]
            if codes["shape"][i] >= 0:  # relabelled by a class rule: drawn as the animal it was
                cls = spec.classes[codes["shape"][i]]
            drawn[i] = cls
            silhouettes = bank.images[cls]
            look = int(codes["look"][i])
            like = spec.rules[look].looks_like or () if look >= 0 else ()
            if codes["alike"][i] >= 0 and shape_margin(bank, spec.classes, cls) >= DISTINCT:
                like = (nearest_class(bank, spec.classes, cls),)  # shape alone is ambiguous
            cands = candidates(spec, bank, cls, pool(spec, bank, cls, split), like)
            instance[i] = cands[int(r[0] * len(cands))]
            gray, filled = silhouettes[instance[i]], filled_masks(bank, cls)[instance[i]]
            if r[1] < 0.5:
                gray, filled = gray[:, ::-1], filled[:, ::-1]
            size_name = ATTRIBUTES["attr_size"][codes["attr_size"][i]]
            side = round(size * SIZE_FRACTION[size_name] * (0.94 + 0.12 * r[2]))
            margin = size - side
            x0, y0 = place_patch(ATTRIBUTES["attr_position"][codes["attr_position"][i]], margin, r)
            kind = obj_values[codes["attr_object"][i]]
            if kind != "none":
                ox, oy = object_spot(x0 + side / 2, y0 + side / 2, size, r)
                draw_object(img, kind, ox, oy, size, r[9:13])
            gray, filled = np.ascontiguousarray(gray), np.ascontiguousarray(filled)
            mask, shade = animal_patch(gray, filled, side)
            rows = np.arange(side, dtype=np.float32)[:, None] / side
            light = 1.15 - 0.35 * rows
            fy, fx = int(r[13] * size), int(r[14] * size)
            texture = 1.0 + 0.12 * fur[fy:fy + side, fx:fx + side]
            colour = np.array(COLOURS[ATTRIBUTES["attr_color"][codes["attr_color"][i]]],
                              dtype=np.float32) * (0.92 + 0.16 * r[15])
            rgb = colour * (shade * light * texture)[..., None] + 25.0 * (light[..., None] - 0.9)
            patch = img[y0:y0 + side, x0:x0 + side]
            patch[mask] = rgb[mask]  # the chunk is clipped to 0..255 below
            masks[i, y0:y0 + side, x0:x0 + side] = mask
        apply_quality(chunk, codes["attr_quality"][start:stop], ATTRIBUTES["attr_quality"], size,
                      rng)
        images[start:stop] = np.round(chunk).astype(np.uint8)


def _boxes(masks: np.ndarray) -> np.ndarray:
    rows: np.ndarray = np.asarray(masks.any(axis=2))
    cols: np.ndarray = np.asarray(masks.any(axis=1))
    h, w = masks.shape[1:]
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1, x1 = h - rows[:, ::-1].argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def caption(cls: str, attrs: dict[str, str]) -> str:
    """E.g. 'a blurry photo of a small brown horse on sand, on the left, next to a ball'."""
    bg = attrs["attr_background"]
    text = (f"{QUALITY_PREFIX[attrs['attr_quality']]} a {attrs['attr_size']} "
            f"{attrs['attr_color']} {cls} {BACKGROUND_PHRASE.get(bg, 'on ' + bg)}, "
            f"{POSITION_PHRASE[attrs['attr_position']]}")
    obj = attrs["attr_object"]
    return text if obj == "none" else f"{text}, next to a {obj}"


def generate(spec: WorldSpec) -> World:
    """Sample and render every split of ``spec``; deterministic in the spec (seed included)."""
    bank = load_bank(spec.silhouettes)
    total, size = sum(spec.sizes.values()), spec.image_size
    images = np.empty((total, size, size, 3), dtype=np.uint8)
    masks = np.zeros((total, size, size), dtype=bool)
    instance = np.zeros(total, dtype=np.int64)
    drawn = np.empty(total, dtype=object)
    keys = ("class", *ATTRIBUTES)
    all_codes: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    split_names: list[np.ndarray] = []
    start = 0
    for split, n in spec.sizes.items():
        codes = sample_split(spec, split, n, _split_seed(spec, split, 0))
        sl = slice(start, start + n)
        _render_split(spec, split, codes, bank, images[sl], masks[sl], instance[sl], drawn[sl])
        for k in keys:
            all_codes[k].append(codes[k])
        split_names.append(np.full(n, split))
        start += n
    labels = np.concatenate(all_codes["class"])
    attributes = {a: np.asarray(ATTRIBUTES[a])[np.concatenate(all_codes[a])] for a in ATTRIBUTES}
    names = np.asarray(spec.classes)[labels]
    captions = [caption(str(names[i]), {a: str(attributes[a][i]) for a in ATTRIBUTES})
                for i in range(total)]
    return World(spec=spec, spec_hash=spec_hash(spec), silhouette_source=bank.source,
                 images=images, masks=masks, boxes=_boxes(masks), labels=labels,
                 class_names=list(spec.classes), attributes=attributes,
                 split=np.concatenate(split_names) if split_names else np.array([], str),
                 captions=captions, instance=instance, drawn_as=drawn.astype(str))


# ---------------------------------------------------------------- writing


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> RGB PNG, (H, W) -> mode L PNG. Deterministic bytes; zlib releases the
    GIL, so threads encode in parallel (Pillow's encoder is ~3x slower on these tiny images)."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = np.ascontiguousarray(array, dtype=np.uint8).reshape(h, w * channels)
    filtered = np.empty((h, w * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # PNG filter "Up": each row minus the row above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 3)) + _png_chunk(b"IEND", b""))


def write_world(world: World, out_dir: Path) -> Path:
    """Write PNGs, masks, ``manifest.parquet`` and ``world.json``; returns the manifest path.

    Existing files of the same names are overwritten; the manifest is written last (atomically).
    """
    out_dir = Path(out_dir)
    names = world.label_names
    width = max(6, len(str(len(world))))
    rel = [f"{world.split[i]}/{names[i]}/{i:0{width}d}.png" for i in range(len(world))]
    for d in {str(Path(p).parent) for p in rel}:
        (out_dir / "images" / d).mkdir(parents=True, exist_ok=True)
        (out_dir / "masks" / d).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        (out_dir / "images" / rel[i]).write_bytes(encode_png(world.images[i]))
        mask = world.masks[i].astype(np.uint8) * 255
        (out_dir / "masks" / rel[i]).write_bytes(encode_png(mask))

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as executor:
        list(executor.map(write, range(len(world)), chunksize=256))

    boxes = [json.dumps([{"x0": int(b[0]), "y0": int(b[1]), "x1": int(b[2]), "y1": int(b[3]),
                          "label": str(names[i])}]) for i, b in enumerate(world.boxes)]
    columns = {
        "path": [f"images/{p}" for p in rel], "label": names.tolist(),
        "split": world.split.tolist(), "boxes": boxes,
        "mask_path": [f"masks/{p}" for p in rel],
        **{a: v.tolist() for a, v in world.attributes.items()}, "caption": world.captions,
    }
    table = pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()})
    table = table.replace_schema_metadata({"failstore.spec_hash": world.spec_hash,
                                           "failstore.generator": GENERATOR_VERSION})
    manifest = out_dir / "manifest.parquet"
    tmp = out_dir / ".manifest.parquet.tmp"
    pq.write_table(table, tmp)
    info = {
        "spec_hash": world.spec_hash, "generator": GENERATOR_VERSION,
        "silhouettes": world.silhouette_source, "class_names": world.class_names,
        "spec": world.spec.to_dict(),
        "planted_slices": [{"name": s.name, "rule": s.rule, "classes": list(s.classes),
                            "conditions": [[c[0], c[1], list(c[2])] for c in s.conditions],
                            "where": s.where()} for s in planted_slices(world.spec)],
        "slice_counts": world.slice_counts(),
    }
    (out_dir / "world.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest)
    return manifest
