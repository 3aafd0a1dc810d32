"""Decode images (and masks) into the uint8 arrays the models need, in worker processes.

``decode_one`` reads the file once, hashes the bytes (sha256 -> ``image_id``), fully loads the
pixels (truncated files are errors, never silently padded), applies the EXIF orientation,
converts any mode to RGB and, for every distinct ``Preprocess.key()``, resizes the shorter side
and centre-crops exactly like torchvision's ``Resize(int)`` + ``CenterCrop``. Anything wrong
with one image becomes a one-line ``Decoded.error``; it never raises for bad input.

``DecodePool`` runs ``decode_one`` in ``spawn`` worker processes (never ``fork``: Lance
segfaults in forked children) and yields results in input order. numpy/PIL only, no torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from failstore import config
from failstore.errors import ConfigError
from failstore.ingest.sources import SourceItem
from failstore.models import pixels
from failstore.models.pixels import RESAMPLING, center_crop, declared_bits, resize_shorter
from failstore.models.protocol import Preprocess

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default Image.MAX_IMAGE_PIXELS
_SWAP_ORIENTATIONS = frozenset({5, 6, 7, 8})
RACY_SECONDS = 2  # a file modified this recently is not recorded as unchanged (see _settled)
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Decoded:
    item: SourceItem
    image_id: str | None  # sha256 hex of the file bytes
    width: int | None = None  # size after EXIF orientation
    height: int | None = None
    arrays: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)
    mask_png: bytes | None = None  # PNG, mode L, same size as the image
    error: str | None = None  # one-line reason the image is unusable
    stat_size: int | None = None  # the file as fstat saw it when read (None: mtime too recent)
    stat_mtime_ns: int | None = None
    skipped: bool = False  # not read: unchanged since the store recorded it (pipeline)
    outputs: dict[str, dict[str, np.ndarray]] | None = None  # role -> output -> this image's row,
    # when the engine ran the models already (Ray); else the pipeline runs them


class BadImage(Exception):
    """Raised inside this module for a bad file; its message is the one-line reason."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_preprocesses(preprocesses: Sequence[Preprocess]) -> None:
    for p in preprocesses:
        if p.interpolation not in RESAMPLING:
            names = ", ".join(RESAMPLING)
            raise ConfigError(f"unknown interpolation {p.interpolation!r}; use one of {names}")
        if p.resize < 1 or p.crop < 1:
            raise ConfigError(
                f"preprocess sizes must be positive, got resize={p.resize} crop={p.crop}"
            )


def _effective_limit(max_pixels: int) -> int:
    pil = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil is None else min(max_pixels, int(pil))


def _read(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default ``config.max_file_bytes()``).
    FIFOs, devices and sockets are refused without blocking (a FIFO is opened non-blocking and
    checked with fstat, so a named pipe called x.jpg cannot hang the ingest, and a link to
    /dev/zero cannot fill the memory)."""
    return _read_stat(path, max_bytes)[0]


def _read_stat(path: str, max_bytes: int | None = None) -> tuple[bytes, os.stat_result]:
    """``_read``, and the file's fstat taken before the first byte was read."""
    limit = config.max_file_bytes() if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except IsADirectoryError:
        raise BadImage("not a file (it is a directory)") from None
    except OSError as e:
        raise BadImage(f"cannot read file: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadImage("not a file (it is a directory)")
        raise BadImage(f"not a regular file (a {_kind(st.st_mode)}); only image files are read")
    if st.st_size > limit:
        os.close(fd)
        raise BadImage(
            f"file is {st.st_size} bytes, more than the limit {limit} "
            f"(raise it with {config.MAX_FILE_ENV}=MEGABYTES)"
        )
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise BadImage(f"cannot read file: {e.strerror or e}") from None
    if len(data) > limit:
        raise BadImage(f"file grew past the limit {limit} bytes while being read")
    if not data:
        raise BadImage("file is empty (0 bytes)")
    return data, st


def _settled(st: os.stat_result) -> tuple[int | None, int | None]:
    """(size, mtime_ns) to record for a rerun's skip check, or (None, None) when the mtime is
    less than ``RACY_SECONDS`` old: a file rewritten within the same timestamp tick would look
    unchanged, so such a file is read again next time (as git does for its "racy" entries)."""
    if time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1_000_000_000:
        return None, None
    return int(st.st_size), int(st.st_mtime_ns)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):  # fmt: skip
        if test(mode):
            return name
    return "special file"


def _bomb(pixels: int, limit: int) -> BadImage:
    return BadImage(f"image has {pixels} pixels, more than the limit {limit} (decompression bomb?)")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with PIL's bomb warning turned into an error."""
    limit = _effective_limit(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _bomb(int(m.group(1)) if m else -1, limit) from None
        except UnidentifiedImageError:
            raise BadImage("cannot identify the image format (corrupt or not an image)") from None
        except Exception as e:
            raise BadImage(f"cannot open image: {one_line(e)}") from None
    pixels = im.size[0] * im.size[1]
    if pixels > limit:
        raise _bomb(pixels, limit)
    return im


def _load(data: bytes, max_pixels: int) -> tuple[Image.Image, int | None]:
    """Open, fully decode (no silent truncation) and apply the EXIF orientation; also return
    the declared bit depth of 16/32-bit grayscale images (None if the file does not say)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    im = _open(data, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im.load()
        except Exception as e:
            raise BadImage(f"truncated or corrupt image data: {one_line(e)}") from None
    bits = declared_bits(im)
    try:
        return ImageOps.exif_transpose(im), bits
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return im, bits


def to_rgb(im: Image.Image, bits: int | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (``failstore.models.pixels.to_rgb``; the rules are in
    docs/ingest-sources.md); a mode it cannot convert is a ``BadImage``."""
    try:
        return pixels.to_rgb(im, bits)
    except pixels.PixelError as e:
        raise BadImage(str(e)) from None


def _arrays(rgb: Image.Image, preprocesses: Sequence[Preprocess]) -> dict[tuple, np.ndarray]:
    resized: dict[tuple[int, str], np.ndarray] = {}
    out: dict[tuple, np.ndarray] = {}
    for p in preprocesses:
        key = p.key()
        if key in out:
            continue
        rk = (p.resize, p.interpolation)
        if rk not in resized:
            resized[rk] = np.asarray(resize_shorter(rgb, p.resize, RESAMPLING[p.interpolation]))
        out[key] = center_crop(resized[rk], p.crop)
    return out


def _mask_png(mask_path: str, size: tuple[int, int], max_pixels: int) -> bytes:
    try:
        im, _ = _load(_read(mask_path), max_pixels)
        arr = _mask_array(im)
    except BadImage as e:
        raise BadImage(f"mask {mask_path}: {e}") from None
    if im.size != size:
        raise BadImage(
            f"mask {mask_path}: size {im.size[0]}x{im.size[1]} does not match the image size "
            f"{size[0]}x{size[1]}"
        )
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


def _mask_array(im: Image.Image) -> np.ndarray:
    """Masks keep their values: P keeps palette indices (class ids), 1 becomes 0/255."""
    mode = im.mode
    if mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("LA", "PA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.rint(arr))):
            raise BadImage(f"mode {mode} values do not fit in 0..255 integers; save as mode L or P")
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(im)[..., :3]
        if not (
            np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
        ):
            raise BadImage(f"mode {mode} with differing channels; save masks as mode L or P")
        return np.ascontiguousarray(arr[..., 0])
    raise BadImage(f"unsupported mask mode {mode}; save masks as mode L or P")


def decode_one(
    item: SourceItem, preprocesses: Sequence[Preprocess], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Hash, fully decode and geometrically preprocess one image; errors go to ``error``."""
    check_preprocesses(preprocesses)
    out = Decoded(item=item, image_id=None)
    try:
        if item.error:
            raise BadImage(item.error)
        data, st = _read_stat(item.uri)
        out.image_id = hashlib.sha256(data).hexdigest()
        out.stat_size, out.stat_mtime_ns = _settled(st)
        im, bits = _load(data, max_pixels)
        out.width, out.height = im.size
        rgb = to_rgb(im, bits)
        if item.mask_path:
            out.mask_png = _mask_png(item.mask_path, im.size, max_pixels)
        out.arrays = _arrays(rgb, preprocesses)
    except BadImage as e:
        out.arrays, out.mask_png, out.error = {}, None, one_line(e)
    except Exception as e:
        out.arrays, out.mask_png = {}, None
        out.error = one_line(f"unexpected error while decoding: {type(e).__name__}: {e}")
    return out


def hash_only(item: SourceItem, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Read the bytes, sha256 them and read the size from the header (EXIF orientation
    applied); no pixel decoding, so truncated pixel data is not detected here."""
    out = Decoded(item=item, image_id=None)
    try:
        if item.error:
            raise BadImage(item.error)
        data = _read(item.uri)
        out.image_id = hashlib.sha256(data).hexdigest()
        im = _open(data, max_pixels)
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112)
        except Exception:
            orientation = None
        out.width, out.height = (h, w) if orientation in _SWAP_ORIENTATIONS else (w, h)
    except BadImage as e:
        out.error = one_line(e)
    except Exception as e:
        out.error = one_line(f"unexpected error while reading: {type(e).__name__}: {e}")
    return out


# --------------------------------------------------------------------------- worker pool
