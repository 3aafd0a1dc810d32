"""The demo report's CES section: do conceptual explanation scores name each planted cause?

For each planted mode, over the target model's misclassified images of the planted slice (on
the test split), the share whose top 3 concepts (by |score|) name the planted cause **with the
right sign**, for single images and for sets of 5 (the paper's Fig. 1b and 1c):

* a condition "attribute in values" (small dogs on snow) is named by a concept for one of the
  values with a negative score (the image would be right with less snow, or less small);
* a condition "attribute not in values" (birds away from water) is named by a concept for one
  of the excluded values with a positive score (more water).

The control ranks the same concepts in a random order (seeded): its share is what chance gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from failstore.demo.findings import tag_attribute
from failstore.demo.spec import PlantedSlice
from failstore.store import Store, equals

SET_SIZE = 5
TOP = 3


@dataclass
class CesFinding:
    planted: str
    images: int  # misclassified images of the planted slice
    singles: float | None  # share of single images whose top 3 name the cause
    sets: float | None  # the same for sets of SET_SIZE images
    n_sets: int
    control: float | None  # random concept order, single images

    def row(self) -> dict[str, Any]:
        return asdict(self)


def names_cause(planted: PlantedSlice, concepts: Sequence[str], scores: Sequence[float]) -> bool:
    """A concept of the top names a planted condition's value with the right sign."""
    for concept, score in zip(concepts, scores, strict=True):
        for attr, value in tag_attribute(concept):
            for a, op, values in planted.conditions:
                if a == attr and value in values and (score < 0 if op == "in" else score > 0):
                    return True
    return False


def ces_findings(
    store: Store, planted: Sequence[PlantedSlice], split: str = "test", seed: int = 0
) -> list[CesFinding]:
    from failstore.queries.concepts.explain import Explain

    est = Explain(split=split).fit(store)
    rows = est.read_table(store, "ces_images", ["image_id", "concept", "score"])
    concepts = rows["concept"].to_pylist()
    names = sorted(set(concepts))
    column = {n: k for k, n in enumerate(names)}
    per_image: dict[str, np.ndarray] = {}  # image -> its score per concept, in `names` order
    for image, concept, score in zip(
        rows["image_id"].to_pylist(), concepts, rows["score"].to_pylist(), strict=True
    ):
        per_image.setdefault(image, np.zeros(len(names)))[column[concept]] = score
    attrs = sorted({a for p in planted for a, _, _ in p.conditions})
    images = store.read("images", ["image_id", "label", *attrs], filter=equals("split", split))
    labels = np.asarray(images["label"].to_pylist(), dtype=object)
    values = {a: np.asarray(images[a].to_pylist(), dtype=object) for a in attrs}
    all_ids = images["image_id"].to_pylist()
    rng = np.random.default_rng(seed)
    out = []
    for p in planted:
        inside = [i for i, m in zip(all_ids, p.mask(labels, values), strict=True)
                  if m and i in per_image]  # fmt: skip
        singles = [_named(p, names, per_image[i]) for i in inside]
        order = rng.permutation(len(inside))
        chunks = [order[k : k + SET_SIZE] for k in range(0, len(order) - SET_SIZE + 1, SET_SIZE)]
        sets = [_named(p, names, np.sum([per_image[inside[j]] for j in c], axis=0)) for c in chunks]
        control = [_named(p, names, per_image[i][rng.permutation(len(names))]) for i in inside]
        out.append(CesFinding(p.name, len(inside), _mean(singles), _mean(sets), len(sets),
                              _mean(control)))  # fmt: skip
    return out


def _named(planted: PlantedSlice, names: list[str], scores: np.ndarray) -> bool:
    top = np.lexsort((np.arange(len(scores)), -np.abs(scores)))[:TOP]
    return names_cause(planted, [names[k] for k in top], [float(scores[k]) for k in top])


def _mean(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None
