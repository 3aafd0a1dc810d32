"""Image bytes and thumbnails, only of files the store references.

An image is found by its 64-hex id in the ``images`` table (its ``uri`` column is the file);
nothing from a request ever becomes a path. Thumbnails (with the image's boxes drawn) and
saliency overlays are PNG files cached under ``<store>/.serve-cache`` (or ``cache_dir``),
keyed by the image id, the size and the file's size and modification time.
"""

from __future__ import annotations

import functools
import io
import mimetypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failstore.errors import FailstoreError, StoreError
from failstore.serve.cache import cache_for
from failstore.serve.data import ID_RE, check_id
from failstore.store import Store, equals, literal

THUMB_SIZES = (64, 128, 256, 512)
DEFAULT_THUMB = 128
BOX_COLOURS = ("#ff3b30", "#34c759", "#007aff", "#ffcc00")
LOOKUP_BATCH = 500  # ids per query of lookup_many (a filter of 500 literals)


@dataclass(frozen=True)
class ImageRef:
    image_id: str
    path: Path
    boxes: list[dict[str, Any]]


def _read_refs(store: Store, ids: list[str]) -> dict[str, ImageRef]:
    cols = ["image_id", "uri", "boxes"] if "boxes" in store.schema("images").names else [
        "image_id", "uri"]  # fmt: skip
    where = equals("image_id", ids[0]) if len(ids) == 1 else (
        "image_id IN (" + ", ".join(literal(i) for i in ids) + ")")  # fmt: skip
    return {
        r["image_id"]: ImageRef(r["image_id"], Path(r["uri"]), list(r.get("boxes") or []))
        for r in store.read("images", cols, filter=where).to_pylist()
    }


def prefetch(store: Store, ids: list[str]) -> None:
    """Read the refs of ``ids`` (a gallery page's) in one query into the result cache, so
    their thumbnail requests find them there."""
    ids = [i for i in ids if ID_RE.match(i)]
    if not ids or not store.has_table("images"):
        return
    version, cache = store.version("images"), cache_for(store)
    found = _read_refs(store, ids)
    for i in ids:
        cache.get(("image_ref", version, i), functools.partial(found.get, i))


def lookup(store: Store, image_id: str) -> ImageRef:
    """The file of a stored image; InputError for a malformed id, StoreError when the store
    does not hold it or the file is gone. Refs are kept in the result cache per version of
    ``images`` (a re-ingest makes a new version), so a gallery's thumbnails cost no query each."""
    check_id(image_id)
    ref = cache_for(store).get(
        ("image_ref", store.version("images"), image_id),
        lambda: _read_refs(store, [image_id]).get(image_id),
    )
    return _checked(image_id, ref)


def lookup_many(store: Store, ids: list[str]) -> dict[str, ImageRef | FailstoreError]:
    """``lookup`` of many ids in one query (the static report's galleries): by id, the ref or
    the error ``lookup`` would raise."""
    out: dict[str, ImageRef | FailstoreError] = {}
    valid = []
    for i in dict.fromkeys(ids):
        try:
            valid.append(check_id(i))
        except FailstoreError as e:
            out[i] = e
    found: dict[str, ImageRef] = {}
    if store.has_table("images"):
        for start in range(0, len(valid), LOOKUP_BATCH):
            found.update(_read_refs(store, valid[start : start + LOOKUP_BATCH]))
    for i in valid:
        try:
            out[i] = _checked(i, found.get(i))
        except FailstoreError as e:
            out[i] = e
    return out


def _checked(image_id: str, ref: ImageRef | None) -> ImageRef:
    if ref is None:
        raise StoreError(f"no image {image_id} in the store")
    if not ref.path.is_file():
        raise StoreError(f"the file of image {image_id} is gone", hint=str(ref.path.name))
    return ref


def media_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def cache_root(store: Store) -> Path:
    """Where thumbnails are cached: beside the store's tables, else the user cache."""
    root = store.path / ".serve-cache"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        from failstore.config import cache_dir

        alt = cache_dir() / "serve-thumbs"
        alt.mkdir(parents=True, exist_ok=True)
        return alt


def thumb_size(text: str | None) -> int:
    """The allowed thumbnail size nearest to the one asked for."""
    try:
        want = int(text) if text else DEFAULT_THUMB
    except ValueError:
        want = DEFAULT_THUMB
    return min(THUMB_SIZES, key=lambda s: abs(s - want))


def _cached(store: Store, ref: ImageRef, kind: str, size: int, draw) -> Path:
    st = ref.path.stat()
    out = cache_root(store) / kind / f"{ref.image_id}-{size}-{st.st_size}-{st.st_mtime_ns}.png"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        data = draw()
        tmp = out.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(out)  # atomic: a concurrent request sees a whole file or none
    return out


def thumbnail(store: Store, ref: ImageRef, size: int) -> Path:
    """A PNG thumbnail (longest side ``size``, scaled up or down) with the boxes drawn,
    cached on disk."""
    return _cached(store, ref, "thumbs", size, lambda: _draw_thumb(ref, size))


def _draw_thumb(ref: ImageRef, size: int) -> bytes:
    from PIL import Image, ImageDraw

    with Image.open(ref.path) as opened:
        im = opened.convert("RGB")
        # Longest side ``size``: small pictures are scaled up (pixels kept sharp) so their
        # boxes are visible.
        k = size / max(im.width, im.height, 1)
        how = Image.Resampling.LANCZOS if k < 1 else Image.Resampling.NEAREST
        im = im.resize((max(round(im.width * k), 1), max(round(im.height * k), 1)), how)
        fx = fy = k
        draw = ImageDraw.Draw(im)
        for i, b in enumerate(ref.boxes):
            xy = (b["x0"] * fx, b["y0"] * fy, b["x1"] * fx, b["y1"] * fy)
            draw.rectangle(xy, outline=BOX_COLOURS[i % len(BOX_COLOURS)], width=2)
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=1)  # 2-3x faster to write than the default 6
    return buf.getvalue()


def overlay(store: Store, ref: ImageRef, saliency: dict[str, Any], size: int) -> bytes:
    """The image with a saliency map (``map`` of ``height`` x ``width`` over the region x0..y1)
    drawn on top in red; not cached (one per method on an image page)."""
    import numpy as np
    from PIL import Image

    with Image.open(ref.path) as opened:
        im = opened.convert("RGB")
        w0, h0 = im.width, im.height
        m = np.asarray(saliency["map"], np.float32).reshape(saliency["height"], saliency["width"])
        m = np.abs(m)
        m = m / m.max() if m.max() > 0 else m
        heat = Image.fromarray((m * 255).astype(np.uint8), "L")
        x0, y0 = int(saliency.get("x0") or 0), int(saliency.get("y0") or 0)
        x1 = int(saliency.get("x1") or w0)
        y1 = int(saliency.get("y1") or h0)
        heat = heat.resize((max(x1 - x0, 1), max(y1 - y0, 1)), Image.Resampling.BILINEAR)
        alpha = Image.new("L", (w0, h0), 0)
        alpha.paste(heat.point(lambda v: int(v * 0.7)), (x0, y0))
        red = Image.new("RGB", (w0, h0), (255, 0, 0))
        im = Image.composite(red, im, alpha)
        k = size / max(w0, h0)
        im = im.resize((max(round(w0 * k), 1), max(round(h0 * k), 1)), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=1)  # 2-3x faster to write than the default 6
    return buf.getvalue()
