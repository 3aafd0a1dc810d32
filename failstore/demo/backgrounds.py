"""Backgrounds and extra objects for the demo world.

grass, gravel and brick are scikit-image's bundled textures (PNG files shipped inside the
``skimage/data`` package folder, read directly: never a download), tinted; water, sand, snow and
sky are procedural. Each background is one large deterministic texture; an image gets a random
crop of it, a random horizontal flip and a brightness jitter, so backgrounds vary.
"""

from __future__ import annotations

import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

TEXTURE_SIDE = 256
_SKIMAGE_FILES = {"grass": "grass.png", "gravel": "gravel.png", "brick": "brick.png"}
# (dark, light) colours a grey texture is mapped between
_TINTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "grass": ((22, 60, 12), (150, 205, 90)),
    "gravel": ((60, 56, 52), (200, 190, 175)),
    "brick": ((85, 32, 22), (205, 120, 90)),
    "water": ((15, 55, 115), (110, 175, 225)),
    "sand": ((185, 150, 95), (245, 222, 170)),
    "snow": ((190, 200, 218), (252, 252, 255)),
}
BALL_COLOURS = np.array([[210, 40, 40], [40, 90, 220], [235, 200, 40]], dtype=np.float32)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"failstore-background-{name}".encode()))


def _smooth_noise(rng: np.random.Generator, side: int, sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal((side, side)).astype(np.float32), sigma,
                            mode="wrap")
    return (n - n.min()) / max(float(n.max() - n.min()), 1e-6)


def _tint(gray: np.ndarray, name: str) -> np.ndarray:
    dark, light = (np.array(c, dtype=np.float32) for c in _TINTS[name])
    g = np.clip(gray, 0, 1)[..., None]
    return dark + (light - dark) * g


def _skimage_texture(name: str) -> np.ndarray:
    import skimage.data

    path = Path(skimage.data.__file__).parent / _SKIMAGE_FILES[name]
    with Image.open(path) as src:
        im = src.convert("L")
        half = (im.width // 2, im.height // 2)
        g = np.asarray(im.resize(half, Image.Resampling.BILINEAR), np.float32)
    lo, hi = np.percentile(g, [1, 99])
    return (g - lo) / max(hi - lo, 1e-6)


@cache
def texture(name: str) -> np.ndarray:
    """The full texture of background ``name``: float32 (T, T, 3) in 0..255."""
    if name in _SKIMAGE_FILES:
        return _tint(_skimage_texture(name), name)
    rng, s = _rng(name), TEXTURE_SIDE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    if name == "water":
        low = _smooth_noise(rng, s, 24)
        warp = 6 * _smooth_noise(rng, s, 16)
        ripples = sum(np.sin((xx * np.cos(a) + yy * np.sin(a)) * f + warp)
                      for a, f in ((0.3, 0.45), (1.2, 0.3), (2.4, 0.6)))
        return _tint(0.35 + 0.35 * low + 0.09 * ripples, name)
    if name == "sand":
        dunes = np.sin(yy * 0.22 + 8 * _smooth_noise(rng, s, 20))
        grain = rng.random((s, s)).astype(np.float32)
        return _tint(0.45 + 0.3 * _smooth_noise(rng, s, 16) + 0.1 * dunes + 0.15 * grain, name)
    if name == "snow":
        sparkle = (rng.random((s, s)) > 0.985).astype(np.float32)
        return _tint(0.55 + 0.35 * _smooth_noise(rng, s, 12) + 0.2 * sparkle, name)
    if name == "sky":
        top, bottom = np.array([55, 120, 205], np.float32), np.array([175, 210, 245], np.float32)
        grad = (yy / (s - 1))[..., None]
        blue = top + (bottom - top) * grad
        clouds = np.clip((_smooth_noise(rng, s, 10) - 0.55) * 3.0, 0, 1)[..., None]
        return blue + (np.array([250, 250, 252], np.float32) - blue) * clouds
    raise KeyError(f"no background {name!r}")


def render_backgrounds(name: str, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` varied crops of background ``name``: float32 (n, size, size, 3) in 0..255."""
    tex = texture(name)
    side = tex.shape[0]
    y0 = rng.integers(0, side - size + 1, n)
    x0 = rng.integers(0, side - size + 1, n)
    flip = rng.random(n) < 0.5
    gain = rng.uniform(0.85, 1.15, n).astype(np.float32)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        crop = tex[y0[i]:y0[i] + size, x0[i]:x0[i] + size]
        out[i] = crop[:, ::-1] if flip[i] else crop
    out *= gain[:, None, None, None]
    return out


def draw_object(img: np.ndarray, kind: str, cx: float, cy: float, size: int,
                params: np.ndarray) -> None:
    """Paint a small ``kind`` object (ball, tree, rock) centred on (cx, cy) into ``img``.

    ``img`` is float32 (H, W, 3); ``params`` are 4 uniforms in [0, 1) choosing its variant.
    """
    if kind == "none":
        return
    h, w = img.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    s = size / 64.0
    if kind == "ball":
        r = (3.5 + 2.0 * params[0]) * s
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = d2 <= r * r
        colour = BALL_COLOURS[int(params[1] * len(BALL_COLOURS))]
        light = 1.25 - 0.5 * np.sqrt((xx - cx + r / 3) ** 2 + (yy - cy + r / 3) ** 2) / r
        img[inside] = np.clip(colour[None, :] * light[inside][:, None], 0, 255)
    elif kind == "tree":
        height = (16 + 6 * params[0]) * s
        trunk = (np.abs(xx - cx) <= 1.2 * s) & (yy >= cy) & (yy <= cy + height / 2)
        img[trunk] = (95, 60, 30)
        rc = (5 + 2 * params[1]) * s
        canopy = (xx - cx) ** 2 + (yy - (cy - rc / 2)) ** 2 <= rc * rc
        shade = 0.8 + 0.4 * (params[2] - 0.5)
        img[canopy] = np.array([40, 120, 35], np.float32) * shade
    elif kind == "rock":
        rx, ry = (5 + 2 * params[0]) * s, (3 + 1.5 * params[1]) * s
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        grey = 110 + 50 * params[2]
        shade = np.broadcast_to(1.15 - 0.35 * (yy - (cy - ry)) / (2 * ry), inside.shape)
        img[inside] = np.clip(grey * shade[inside], 0, 255)[:, None]
    else:
        raise KeyError(f"no object {kind!r}")


def place_patch(position: str, margin: int, r: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the animal's square patch; ``margin`` = image side - patch side."""
    mid = margin / 2
    edge = margin * 0.12 * r[3]
    jitter_x, jitter_y = margin * 0.15 * (r[4] - 0.5), margin * 0.15 * (r[5] - 0.5)
    x, y = mid + jitter_x, mid + jitter_y
    if position == "left":
        x = edge
    elif position == "right":
        x = margin - edge
    elif position == "top":
        y = edge
    elif position == "bottom":
        y = margin - edge
    return round(float(np.clip(x, 0, margin))), round(float(np.clip(y, 0, margin)))


def object_spot(ax: float, ay: float, size: int, r: np.ndarray) -> tuple[float, float]:
    """The corner farthest from the animal's centre, jittered."""
    lo, hi = 0.17 * size, 0.83 * size
    corners = [(lo, lo), (hi, lo), (lo, hi), (hi, hi)]
    cx, cy = max(corners, key=lambda c: (c[0] - ax) ** 2 + (c[1] - ay) ** 2)
    return cx + 0.08 * size * (r[6] - 0.5), cy + 0.08 * size * (r[7] - 0.5)


def apply_quality(chunk: np.ndarray, quality: np.ndarray, names: tuple[str, ...], size: int,
                  rng: np.random.Generator) -> None:
    """Apply the quality attribute (codes into ``names``) to a float chunk, in place."""
    blurry = np.flatnonzero(quality == names.index("blurry"))
    if blurry.size:
        sigma = 1.1 * size / 64
        chunk[blurry] = ndi.gaussian_filter(chunk[blurry], sigma=(0, sigma, sigma, 0))
    grey = np.flatnonzero(quality == names.index("grayscale"))
    if grey.size:
        lum = chunk[grey] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        chunk[grey] = lum[..., None]
    noisy = np.flatnonzero(quality == names.index("noisy"))
    if noisy.size:
        noise = rng.normal(0.0, 18.0, (noisy.size, size, size, 3)).astype(np.float32)
        chunk[noisy] = chunk[noisy] + noise
    np.clip(chunk, 0, 255, out=chunk)
