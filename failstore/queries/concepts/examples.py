"""A concept's examples: which images are its positives and negatives, as row indices into an
embedding matrix (``ConceptExamples``, what ``cav.train_cavs`` takes), and the tag source.

The tag source (``tag_examples``): the images carrying a tag are its positives (at most
``max_examples``, sampled with the seed); as many images without it are its negatives, sampled
by ``sample_negatives`` with the seed and balanced over classes as far as possible, so that the
SVM does not learn a class instead of the concept. A concept whose positives all belong to one
class is refused for the same reason: its balanced negatives would teach the SVM that class.

The folder source (``folder_examples``): a concept library's folders, each one concept; the
negatives come from a negatives folder or, balanced, from the other concepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from failstore.errors import InputError


@dataclass(frozen=True)
class ConceptExamples:
    """A concept's examples as row indices into an embedding matrix. ``refused``: a reason not to
    train it at all (e.g. the tag source's "positives all from class 3"); ``main_class`` and
    ``main_class_share``: the class most of the positives belong to and its share (None when
    classes are unknown or there are no positives)."""

    positives: np.ndarray
    negatives: np.ndarray
    refused: str | None = None
    main_class: int | str | None = None
    main_class_share: float | None = None


def sample_negatives(
    candidates_idx: np.ndarray,
    classes_of_all: np.ndarray,
    positives_idx: np.ndarray,
    n: int,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """``n`` images among ``candidates_idx`` that are not in ``positives_idx``, balanced over
    classes as far as possible; ascending indices.

    ``classes_of_all`` gives the class of every image (indexed by image index). Classes share
    ``n`` equally; a class with fewer images than its share gives all of them and the rest is
    shared again among the others, so the counts per class differ by at most 1 except for the
    classes that ran out. Which classes get one more (when ``n`` does not divide) and which
    images are taken is drawn with ``numpy.random.default_rng(seed)``. When fewer than ``n``
    candidates remain, all of them are returned."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    cand, code = _candidates(candidates_idx, classes_of_all)
    excluded = np.isin(cand, np.asarray(positives_idx, dtype=np.int64).reshape(-1))
    return _balanced(cand, code, excluded, n, np.random.default_rng(seed))


def tag_examples(
    tags: np.ndarray,
    classes: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
    max_examples: int = 500,
    seed: int = 0,
) -> list[ConceptExamples]:
    """The tag source's examples, one ``ConceptExamples`` per column of ``tags`` (N x T bool):
    positives are the candidate images carrying the tag (at most ``max_examples``, drawn by
    ``default_rng((seed, t))`` for column t), negatives as many candidates without it from
    ``sample_negatives`` (seed ``(seed, t)``); never an image carrying the tag, sampled or not.
    ``candidates``: the images to draw from (indices or a mask; default all N).

    A concept whose positives all belong to one class is refused ("positives all from class
    k"): balanced negatives would then teach the SVM that class, and the CES of its class's
    mistakes would name the class instead of a concept. A concept dominated by one class is
    kept; ``main_class_share`` says how much."""
    t = np.asarray(tags)
    cls = np.asarray(classes).reshape(-1)
    if t.ndim != 2 or t.shape[0] != cls.size:
        raise InputError(f"tags {t.shape} and classes {cls.shape} do not match")
    if max_examples < 2:
        raise InputError(f"max_examples must be >= 2, got {max_examples}")
    everyone = candidates is None
    cand = np.arange(cls.size) if everyone else indices(candidates, cls.size, "candidates")
    cand, code = _candidates(cand, cls)
    columns = np.ascontiguousarray(np.asarray(t if everyone else t[cand], dtype=bool).T)
    out = []
    for j in range(t.shape[1]):
        rng = np.random.default_rng((seed, j))
        carries = columns[j]
        all_pos = cand[carries]
        pos = cap(all_pos, max_examples, rng)
        neg = _balanced(cand, code, carries, pos.size, np.random.default_rng((seed, j)))
        main, share, refused = None, None, None
        if all_pos.size:
            values, counts = np.unique(cls[all_pos], return_counts=True)
            top = int(np.argmax(counts))
            main, share = values[top].item(), float(counts[top] / all_pos.size)
            if values.size == 1:
                refused = f"positives all from class {main}"
        out.append(ConceptExamples(pos, neg, refused, main, share))
    return out


def cap(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``idx`` (None: all), drawn without replacement, in index order."""
    if limit is None or idx.size <= limit:
        return idx
    return np.sort(rng.choice(idx, size=limit, replace=False))


def indices(value: Any, n: int, what: str) -> np.ndarray:
    """Row indices from an index list or a boolean mask of n; unique and ascending."""
    a = np.asarray(value)
    if a.dtype == bool:
        if a.shape != (n,):
            raise InputError(f"{what}: a mask must have {n} values, got shape {a.shape}")
        return np.flatnonzero(a)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{what} must be row indices or a boolean mask, got {a.dtype}")
    idx = np.unique(a.reshape(-1).astype(np.int64))
    if idx[0] < 0 or idx[-1] >= n:
        raise InputError(f"{what} must index the {n} embeddings, got {idx[0]}..{idx[-1]}")
    return idx


def _candidates(candidates_idx: Any, classes_of_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates, unique and ascending, and their class codes 0..L-1."""
    classes = np.asarray(classes_of_all).reshape(-1)
    cand = np.unique(np.asarray(candidates_idx, dtype=np.int64).reshape(-1))
    if cand.size and (cand[0] < 0 or cand[-1] >= classes.size):
        raise InputError(f"candidates_idx must index the {classes.size} images")
    _, code = np.unique(classes[cand], return_inverse=True)
    return cand, code.reshape(-1).astype(np.int64)


def _balanced(
    cand: np.ndarray, code: np.ndarray, excluded: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``sample_negatives`` on prepared candidates; ``excluded`` marks the positives."""
    pool = ~excluded
    if int(np.count_nonzero(pool)) <= n:
        return cand[pool]
    groups = int(code.max()) + 1
    available = np.bincount(code[pool], minlength=groups)
    take = _water_fill(available, n, rng)
    # candidates sorted by class, then by a random key, the excluded ones last in their class:
    # the first take[k] of class k are chosen (take[k] <= what class k has left)
    key = rng.random(cand.size)
    key[excluded] = 2.0
    order = np.argsort(code * 4.0 + key)
    grouped = code[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=groups))[:-1]])
    position = np.arange(cand.size) - starts[grouped]
    return np.sort(cand[order[position < take[grouped]]])


def _water_fill(available: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many to take from each group: equal shares of n, capped by what each group has, the
    remainder (fewer than the groups left) given one each to groups drawn at random."""
    take = np.zeros(available.size, dtype=np.int64)
    left = np.arange(available.size)
    remaining = n
    while remaining > 0 and left.size:
        share = remaining // left.size
        short = left[available[left] <= share]
        if short.size:  # these give all they have; share the rest again
            take[short] = available[short]
            remaining -= int(available[short].sum())
            left = left[available[left] > share]
            continue
        take[left] += share
        extra = remaining - share * left.size
        if extra:
            take[rng.choice(left, size=extra, replace=False)] += 1
        remaining = 0
    return take


def folder_examples(
    groups: Sequence[str | None],
    names: Sequence[str],
    *,
    max_examples: int = 500,
    seed: int = 0,
) -> list[ConceptExamples]:
    """A concept library's examples, one ``ConceptExamples`` per name in ``names``.

    ``groups[i]`` is the concept folder image i came from, or None for an image of the
    negatives folder. Positives of concept j are its folder's images (at most ``max_examples``,
    drawn by ``default_rng((seed, j))``). Negatives are as many images of the negatives folder
    when there is one (drawn at random), otherwise of the other concepts, balanced over them as
    ``sample_negatives`` balances over classes (so no single other concept becomes "not c").
    A concept with no possible negatives is refused."""
    if max_examples < 2:
        raise InputError(f"max_examples must be >= 2, got {max_examples}")
    g = np.array(["" if x is None else str(x) for x in groups], dtype=object)
    from_negatives = np.flatnonzero(g == "")
    in_concepts = np.flatnonzero(g != "")
    code = np.unique(g[in_concepts].astype(str), return_inverse=True)[1].reshape(-1)
    out = []
    for j, name in enumerate(names):
        rng = np.random.default_rng((seed, j))
        pos = cap(np.flatnonzero(g == name), max_examples, rng)
        if from_negatives.size:
            neg = cap(from_negatives, pos.size, np.random.default_rng((seed, j)))
        else:
            own = g[in_concepts] == name
            neg = _balanced(in_concepts, code, own, pos.size, np.random.default_rng((seed, j)))
        refused = None
        if pos.size and not neg.size:
            refused = "no negatives: add a --negatives folder or another concept folder"
        out.append(ConceptExamples(pos, neg, refused))
    return out
