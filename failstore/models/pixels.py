"""The pixels a model saw: one image file -> the uint8 crop of its ``Preprocess``, and the
float normalisation, for analyses that go back to the images (Barlow's pictures).

``load_pixels`` decodes a file the way ingest does (full decode, EXIF orientation, any PIL mode
to 8-bit RGB, torchvision's ``Resize(int)`` + ``CenterCrop``) and returns the crop as a uint8
H x W x 3 array; ``normalise`` turns a batch of such crops into the float NCHW tensor the
models take (``x / 255``, then ``(x - mean) / std``, as the ingest pipeline does).

``to_rgb``, ``resize_shorter``, ``center_crop``, ``declared_bits`` and ``RESAMPLING`` are the
ones ingest decodes with (``failstore.ingest.decode`` imports them from here, and the ingest
pipeline normalises with ``normalise``), so an analysis sees exactly the pixels the model saw
at ingest. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from failstore.errors import ConfigError, InputError
from failstore.models.protocol import Preprocess

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})


class PixelError(ValueError):
    """An image mode ``to_rgb`` cannot convert; the message is the one-line reason."""


# --------------------------------------------------------------------------- geometry


def declared_bits(im: Image.Image) -> int | None:
    """The declared bit depth of a 16/32-bit grayscale image (TIFF BitsPerSample, or 16 for
    mode I;16*), None if the file does not say."""
    tag = getattr(im, "tag_v2", None)
    if tag is not None and 258 in tag:
        v = tag[258]
        bits = v[0] if isinstance(v, tuple) else v
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits
    if im.mode.startswith("I;16"):
        return 16
    return None


def _gray_to_u8(arr: np.ndarray, bits: int) -> np.ndarray:
    scale = 255.0 / (2**bits - 1)
    return np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, bits: int | None = None) -> Image.Image:
    """Any PIL mode to 8-bit RGB, as ingest converts it (docs/ingest-sources.md): alpha is
    composited on white, 16/32-bit grayscale is scaled by its declared depth (``bits``), float
    images by their range. Raises ``PixelError`` for a mode PIL cannot convert."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _ALPHA_MODES or ("transparency" in im.info and mode in ("P", "L", "RGB", "1")):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if bits is None:  # mode I with no declared depth: the smallest of 16/31 bits that fits
            bits = 16 if arr.size == 0 or int(arr.max()) <= 65535 else 31
        bits = min(int(bits), 31)  # mode I is signed 32-bit: 2**31 - 1 is white
        return Image.fromarray(_gray_to_u8(arr, bits), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif lo < 0.0 or hi > 255.0:
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        u8 = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(u8, "L").convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, RGBX, ...
    except (ValueError, OSError):
        raise PixelError(f"unsupported image mode {mode}") from None


def resize_shorter(im: Image.Image, size: int, resample: int) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image (same output size rounding)."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return im
    return im.resize((new_w, new_h), resample)


def center_crop(arr: np.ndarray, crop: int) -> np.ndarray:
    """torchvision ``CenterCrop(crop)``: zero-pad if too small, then round-half-even offsets."""
    h, w = arr.shape[:2]
    if crop > w or crop > h:
        pl, pt = max(crop - w, 0) // 2, max(crop - h, 0) // 2
        pr, pb = (max(crop - w, 0) + 1) // 2, (max(crop - h, 0) + 1) // 2
        arr = np.pad(arr, ((pt, pb), (pl, pr), (0, 0)))
        h, w = arr.shape[:2]
    top = round((h - crop) / 2.0)
    left = round((w - crop) / 2.0)
    return np.ascontiguousarray(arr[top : top + crop, left : left + crop])


def geometry(rgb: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """The geometric part of ``preprocess`` on an RGB image: uint8 crop x crop x 3."""
    resample = RESAMPLING.get(preprocess.interpolation)
    if resample is None:
        names = ", ".join(RESAMPLING)
        raise ConfigError(f"unknown interpolation {preprocess.interpolation!r}; use one of {names}")
    resized = np.asarray(resize_shorter(rgb, preprocess.resize, resample))
    return center_crop(resized, preprocess.crop)


# --------------------------------------------------------------------------- files


def _read(uri: str) -> bytes:
    """The bytes of a regular file (a FIFO or device is refused without blocking)."""
    try:
        fd = os.open(uri, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(
            f"{uri}: image file not found", hint="was it moved since ingest?"
        ) from None
    except OSError as e:
        raise InputError(f"{uri}: cannot read image file ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{uri}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        return f.read()


def load_pixels(uri: str, preprocess: Preprocess, *, image_id: str | None = None) -> np.ndarray:
    """The uint8 H x W x 3 crop ``preprocess`` makes of the image file ``uri`` (resize the
    shorter side, centre crop), decoded as ingest decodes it. With ``image_id`` (the store's
    sha256 of the file bytes) a file changed since ingest is refused. Raises ``InputError``
    (one line naming the file) for a missing, changed or undecodable file."""
    data = _read(uri)
    if image_id is not None and hashlib.sha256(data).hexdigest() != image_id:
        raise InputError(
            f"{uri}: the file changed since it was ingested (sha256 differs from image_id "
            f"{image_id[:12]}...)",
            hint="ingest it again",
        )
    try:
        im: Image.Image = Image.open(io.BytesIO(data))
        im.load()
        bits = declared_bits(im)
        with contextlib.suppress(Exception):  # a broken EXIF block leaves the pixels usable
            im = ImageOps.exif_transpose(im)
        return geometry(to_rgb(im, bits), preprocess)
    except (ConfigError, InputError):
        raise
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{uri}: cannot decode image ({reason})") from None


# --------------------------------------------------------------------------- tensors


def unit_tensor(images: Any, device: str = "cpu") -> Any:
    """uint8 N x H x W x 3 (numpy or torch) -> float32 N x 3 x H x W in [0, 1] on ``device``."""
    import torch

    if isinstance(images, np.ndarray):  # writable and contiguous: torch shares the memory
        images = np.require(images, requirements=["C", "W"])
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {x.dtype} {tuple(x.shape)}")
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def standardise(x01: Any, preprocess: Preprocess) -> Any:
    """``(x - mean) / std`` of a float N x 3 x H x W tensor in [0, 1] (differentiable)."""
    import torch

    mean = torch.tensor(preprocess.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def normalise(batch_uint8: Any, preprocess: Preprocess, device: str = "cpu") -> Any:
    """uint8 N x H x W x 3 crops -> the normalised float32 NCHW tensor the model takes (the
    same maths as the ingest pipeline: ``x / 255``, then ``(x - mean) / std``)."""
    return standardise(unit_tensor(batch_uint8, device), preprocess)
