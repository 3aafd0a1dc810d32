"""Animal silhouettes: Animal-MNIST (28x28, 10 classes x 1000) or a procedural fallback.

Animal-MNIST's data are gzipped pickles of numpy arrays. They are read with a restricted
unpickler that only rebuilds numpy arrays; the package's own loader is never imported (it imports
TensorFlow). Its integer labels 0..9 are the classes in alphabetical order (checked by eye on the
images; the package README lists them in that order).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
SIDE = 28
PROCEDURAL_SOURCE = "procedural-1"
PROCEDURAL_PER_CLASS = 200
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclass(frozen=True, eq=False)  # hashed by identity (cached per bank)
class SilhouetteBank:
    """Grey-level silhouettes per class: uint8 (k, 28, 28), 255 = animal."""

    source: str
    images: dict[str, np.ndarray]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} in Animal-MNIST data")


def _restricted_load(data: bytes) -> np.ndarray:
    obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array, got {type(obj).__name__}")
    return obj


def animal_mnist_dir() -> Path | None:
    """The package's data folder, found without importing the package."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    files = ("animal_data_version_3.gz", "animal_label_version_3.gz")
    return folder if all((folder / f).is_file() for f in files) else None


def _animal_mnist_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("animal-mnist")
    except PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def load_animal_mnist() -> SilhouetteBank | None:
    """Animal-MNIST as a bank, or None when the package (or its data) is absent."""
    folder = animal_mnist_dir()
    if folder is None:
        return None
    x = _restricted_load(gzip.decompress((folder / "animal_data_version_3.gz").read_bytes()))
    y = _restricted_load(gzip.decompress((folder / "animal_label_version_3.gz").read_bytes()))
    if x.shape[1:] != (SIDE, SIDE) or x.shape[0] != y.shape[0]:
        return None
    x = np.ascontiguousarray(x, dtype=np.uint8)
    images = {name: x[y == i] for i, name in enumerate(CLASSES)}
    return SilhouetteBank(f"animal-mnist-{_animal_mnist_version()}", images)


def silhouette_source(mode: str = "auto") -> str:
    """The name of the bank ``load_bank(mode)`` would return (cheap: no data read)."""
    if mode == "procedural" or (mode == "auto" and animal_mnist_dir() is None):
        return PROCEDURAL_SOURCE
    return f"animal-mnist-{_animal_mnist_version()}"


def load_bank(mode: str = "auto") -> SilhouetteBank:
    """``auto``: Animal-MNIST if installed, else procedural; or force either."""
    if mode != "procedural":
        bank = load_animal_mnist()
        if bank is not None:
            return bank
        if mode == "animal-mnist":
            from failstore.errors import InputError

            raise InputError("silhouettes: 'animal-mnist' is not installed; install it with "
                             "`pip install --no-deps animal-mnist` or use silhouettes: auto")
    return procedural_bank()


# ---------------------------------------------------------------- procedural fallback

_S = 4  # supersampling factor
_G = SIDE * _S
_YY, _XX = np.mgrid[0:_G, 0:_G].astype(np.float32) / _S


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1.0


def _capsule(x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((_XX - x0) * dx + (_YY - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return (_XX - x0 - t * dx) ** 2 + (_YY - y0 - t * dy) ** 2 <= r * r


def _triangle(p: tuple[float, ...]) -> np.ndarray:
    (ax, ay, bx, by, cx, cy) = p

    def side(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (_XX - x1) * (y0 - y1) - (x0 - x1) * (_YY - y1)

    d1, d2, d3 = side(ax, ay, bx, by), side(bx, by, cx, cy), side(cx, cy, ax, ay)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


def _legs(xs: list[float], top: float, bottom: float, r: float) -> np.ndarray:
    out = np.zeros_like(_XX, dtype=bool)
    for x in xs:
        out |= _capsule(x, top, x, bottom, r)
    return out


def _draw(cls: str, j: np.ndarray) -> np.ndarray:
    """One silhouette of ``cls`` at supersampled size; ``j`` = 8 jitters in [-1, 1]."""
    a, b, c, d = (float(v) for v in j[:4])
    if cls in ("horse", "zebra", "cow", "dog", "bear", "sheep", "elephant", "giraffe"):
        body_w = {"dog": 7, "bear": 8.5, "sheep": 8, "elephant": 9, "giraffe": 5}.get(cls, 8)
        body_h = {"bear": 5.5, "sheep": 5.5, "elephant": 6.5, "giraffe": 3.5}.get(cls, 4.2)
        leg = {"bear": 5, "sheep": 5, "elephant": 4, "giraffe": 8, "dog": 6}.get(cls, 7.5)
        cy = 13 + b - (1 if cls == "giraffe" else 0)
        cx = 14 + a
        bw, bh = body_w * (1 + 0.1 * c), body_h * (1 + 0.1 * d)
        m = _ellipse(cx, cy, bw, bh)
        lr = 1.8 if cls in ("bear", "elephant") else 1.0
        m |= _legs([cx - bw + 2, cx - bw + 4, cx + bw - 4, cx + bw - 2], cy, cy + bh + leg, lr)
        hx, hy = cx + bw + 1, cy - bh
        if cls in ("horse", "zebra", "giraffe"):
            neck = 9 if cls == "giraffe" else 5
            m |= _capsule(cx + bw - 2, cy - 1, hx + 1, hy - neck + 3, 1.6 + 0.3 * a)
            m |= _capsule(hx + 1, hy - neck + 3, hx + 4, hy - neck + 6, 1.3)
            m |= _capsule(cx - bw, cy - 1, cx - bw - 2, cy + 5 + d, 0.8)  # tail
        elif cls == "elephant":
            m |= _ellipse(hx, hy + 2, 3.5, 3.5)
            m |= _capsule(hx + 2, hy + 3, hx + 3 + a, cy + bh + 5, 1.2)  # trunk
            m |= _ellipse(hx - 2, hy + 2, 2.5, 3.5)  # ear
        elif cls == "cow":
            m |= _ellipse(hx, hy + 1, 2.5, 2.0) | _capsule(hx - 1, hy - 1, hx - 2, hy - 3, 0.6)
            m |= _capsule(cx - bw, cy - 1, cx - bw - 1, cy + 6, 0.6)
        elif cls == "dog":
            m |= _ellipse(hx, hy, 2.6, 2.4) | _ellipse(hx + 2.5, hy + 0.8, 1.6, 1.1)
            m |= _capsule(hx - 1, hy - 1, hx - 1.5, hy + 2.5, 0.9)  # ear
            m |= _capsule(cx - bw, cy - 1, cx - bw - 3, cy - 5 + d, 0.8)  # tail up
        elif cls == "bear":
            m |= _ellipse(hx - 1, hy + 1, 3.2, 3.0) | _ellipse(hx - 2, hy - 2, 1.2, 1.2)
        else:  # sheep: woolly bumps and a small head
            for k in range(5):
                m |= _ellipse(cx - bw + 2 + k * bw / 2.5, cy - bh + 1 + (k % 2), 2.4, 2.4)
            m |= _ellipse(hx, hy + 2, 2.0, 2.6)
        return m
    if cls == "bird":
        cx, cy = 13 + a, 14 + b
        m = _ellipse(cx, cy, 6 + c, 3.8) | _ellipse(cx + 5, cy - 3.5, 2.6, 2.6)
        m |= _triangle((cx + 7, cy - 4.5, cx + 7, cy - 2.5, cx + 10 + d, cy - 3.5))  # beak
        m |= _triangle((cx - 5, cy - 1, cx - 5, cy + 2, cx - 12, cy - 2 + 2 * d))  # tail
        m |= _legs([cx - 1, cx + 1.5], cy + 3, cy + 8, 0.5)
        return m
    # cat, sitting
    cx, cy = 14 + a, 16 + b
    m = _ellipse(cx, cy, 4.5 + 0.5 * c, 6.5) | _ellipse(cx + 1, cy - 8, 3.2, 3.0)
    m |= _triangle((cx - 1.5, cy - 10, cx + 0.5, cy - 10.5, cx - 1.2, cy - 13.5))
    m |= _triangle((cx + 1.5, cy - 10.5, cx + 3.5, cy - 10, cx + 3.2, cy - 13.5))
    m |= _capsule(cx - 3, cy + 5, cx - 8, cy + 2 + 2 * d, 0.9)  # tail
    return m


@lru_cache(maxsize=1)
def procedural_bank(n_per_class: int = PROCEDURAL_PER_CLASS) -> SilhouetteBank:
    """Deterministic drawn shapes: ``n_per_class`` jittered variants of each class."""
    rng = np.random.default_rng(20240611)
    images: dict[str, np.ndarray] = {}
    for cls in CLASSES:
        out = np.empty((n_per_class, SIDE, SIDE), dtype=np.uint8)
        for i in range(n_per_class):
            m = _draw(cls, rng.uniform(-1, 1, 8)).astype(np.float32)
            g = m.reshape(SIDE, _S, SIDE, _S).mean(axis=(1, 3))  # anti-aliased
            if cls == "zebra":  # stripes, like Animal-MNIST's zebras
                stripes = (np.sin(np.arange(SIDE) * 1.6 + i) > 0.3)[None, :]
                g = g * np.where(stripes, 0.25, 1.0)
            out[i] = np.round(g * 255).astype(np.uint8)
        images[cls] = out
    return SilhouetteBank(PROCEDURAL_SOURCE, images)
