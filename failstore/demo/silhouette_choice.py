"""Which silhouette each image gets, and how it is cut out and scaled.

Each split draws from its own pool of a class's silhouettes (``pool``: evaluation splits never
see a training silhouette, and their pools are dealt by typicality so that they are equally hard)
and, within it, from the best-suited ``SILHOUETTE_SHARE`` (``candidates``): the most typical
ones, or, for the animals of a ``looks_like`` rule, the ones that look most like the named
classes (``suitability``). See docs/demo-world.md.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from failstore.demo.silhouettes import SilhouetteBank
from failstore.demo.spec import WorldSpec

MASK_THRESHOLD = {"zebra": 48}  # zebras are striped: a low threshold keeps the dark stripes
TRAIN_POOL = 0.7  # share of each class's silhouettes used by non-evaluation splits
SILHOUETTE_SHARE = 0.35  # the most typical share of each pool's silhouettes is used


def pool(spec: WorldSpec, bank: SilhouetteBank, cls: str, split: str) -> np.ndarray:
    """The silhouette indices of ``cls`` a split draws from, ascending. The other splits share
    the first ``TRAIN_POOL`` of them; the evaluation splits share the rest, dealt in turn in
    order of typicality (``suitability``), so that val and test are equally hard: contiguous
    halves left the test split's dogs markedly less typical than the val split's (52 typical
    silhouettes each), and a slice searched on val was judged on a harder test split."""
    k = bank.images[cls].shape[0]
    if not spec.eval_splits:
        return np.arange(k)
    cut = int(k * TRAIN_POOL)
    if split not in spec.eval_splits:
        return np.arange(cut)
    return _eval_pools(bank, spec.classes, cls, len(spec.eval_splits))[
        spec.eval_splits.index(split)]


@lru_cache(maxsize=64)
def _eval_pools(bank: SilhouetteBank, classes: tuple[str, ...], cls: str,
                m: int) -> tuple[np.ndarray, ...]:
    k = bank.images[cls].shape[0]
    held = np.arange(int(k * TRAIN_POOL), k)
    order = held[np.argsort(-suitability(bank, classes, cls)[held], kind="stable")]
    return tuple(np.sort(order[j::m]) for j in range(m))


@lru_cache(maxsize=64)
def filled_masks(bank: SilhouetteBank, cls: str) -> np.ndarray:
    """Each silhouette's 28x28 mask (threshold, holes filled) as uint8 0/255."""
    gray = bank.images[cls]
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndi.generate_binary_structure(2, 1)  # fill holes within each image only
    filled = ndi.binary_fill_holes(gray >= MASK_THRESHOLD.get(cls, 128), structure=plane)
    return filled.astype(np.uint8) * 255


@lru_cache(maxsize=16)
def similarity(bank: SilhouetteBank, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per class, (silhouettes, classes): the cosine similarity of each silhouette's (cropped,
    16x16, mean-centred) mask with every class's mean mask (means are flip-symmetric)."""
    feats: dict[str, np.ndarray] = {}
    for cls in classes:
        gray, filled = bank.images[cls], filled_masks(bank, cls)
        rows = []
        for g, f in zip(gray, filled, strict=True):
            _, sq = square_crop(g, f)
            rows.append(np.asarray(Image.fromarray(sq).resize((16, 16), Image.Resampling.BILINEAR),
                                   dtype=np.float32).ravel() / 255.0)
        feats[cls] = np.stack(rows)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=-1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)

    flip = np.arange(256).reshape(16, 16)[:, ::-1].ravel()
    means = np.stack([unit(0.5 * (f.mean(0) + f[:, flip].mean(0))) for f in feats.values()])
    return {cls: unit(f) @ means.T for cls, f in feats.items()}


def suitability(bank: SilhouetteBank, classes: tuple[str, ...], cls: str,
           like: tuple[str, ...] = ()) -> np.ndarray:
    """How well each silhouette of ``cls`` suits its role. Typical (``like`` empty): similarity
    with its own class's mean minus the highest with another class's (a low margin marks odd
    poses or crops that look like another class). Look-alike: the highest similarity with a
    ``like`` class's mean minus that with its own (the most ``like``-looking ones first)."""
    sims = similarity(bank, classes)[cls]
    own = sims[:, classes.index(cls)]
    if like:
        return sims[:, [classes.index(c) for c in like]].max(axis=1) - own
    others = np.delete(sims, classes.index(cls), axis=1)
    return own - (others.max(axis=1) if others.shape[1] else 0.0)


DISTINCT = 0.15  # a class whose typical silhouettes stand apart by this margin needs look-alikes


@lru_cache(maxsize=64)
def shape_margin(bank: SilhouetteBank, classes: tuple[str, ...], cls: str) -> float:
    """How easily ``cls`` is told apart by shape: the mean ``suitability`` (own-class similarity
    minus the best other-class similarity) of the typical ``SILHOUETTE_SHARE`` of its training
    pool. Measured (issue 18): giraffe 0.32-0.42, elephant 0.16, horse 0.07, cow 0.04, bird
    0.01."""
    score = suitability(bank, classes, cls)
    cut = max(1, int(score.shape[0] * TRAIN_POOL))
    best = np.sort(score[:cut])[::-1][: max(1, round(SILHOUETTE_SHARE * cut))]
    return float(best.mean())


@lru_cache(maxsize=64)
def nearest_class(bank: SilhouetteBank, classes: tuple[str, ...], cls: str) -> str:
    """The other class whose mean mask ``cls``'s silhouettes resemble most (on average)."""
    sims = similarity(bank, classes)[cls].mean(axis=0)
    sims[classes.index(cls)] = -np.inf
    return classes[int(np.argmax(sims))]


def candidates(spec: WorldSpec, bank: SilhouetteBank, cls: str, pool_ids: np.ndarray,
               like: tuple[str, ...] = ()) -> np.ndarray:
    """The silhouette indices of ``pool_ids`` (a split's ``pool``) it draws from: the
    best-scoring ``SILHOUETTE_SHARE`` of them by ``suitability`` (at least one), ascending."""
    score = suitability(bank, spec.classes, cls, tuple(c for c in like if c != cls))[pool_ids]
    keep = max(1, round(SILHOUETTE_SHARE * len(pool_ids)))
    best = np.argsort(-score, kind="stable")[:keep]
    return np.sort(pool_ids[best])


def square_crop(gray: np.ndarray, filled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop a silhouette to its mask's bounding box, padded to a square (aspect kept, centred
    horizontally, standing on the bottom edge): every animal then fills its patch, whatever
    share of the 28x28 frame the source silhouette used."""
    rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
    if rows.size == 0:
        return gray, filled
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = y1 - y0, x1 - x0
    k = max(h, w)
    g = np.zeros((k, k), dtype=np.uint8)
    f = np.zeros((k, k), dtype=np.uint8)
    oy, ox = k - h, (k - w) // 2
    g[oy:oy + h, ox:ox + w] = gray[y0:y1, x0:x1]
    f[oy:oy + h, ox:ox + w] = filled[y0:y1, x0:x1]
    return g, f


def animal_patch(gray: np.ndarray, filled: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The silhouette (cropped to its box) resized to ``side``: its exact mask and a shading
    map."""
    gray, filled = square_crop(gray, filled)
    bilinear = Image.Resampling.BILINEAR
    g = np.asarray(Image.fromarray(gray).resize((side, side), bilinear), dtype=np.float32)
    m = np.asarray(Image.fromarray(filled).resize((side, side), bilinear)) >= 128
    return m, np.maximum(g * (1 / 255.0), 0.35)
