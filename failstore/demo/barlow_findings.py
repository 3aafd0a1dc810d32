"""The demo report's Barlow section: does a valid Barlow leaf explain each planted failure mode?

For each planted mode, the best valid leaf of its class (highest importance) is compared with
the planted slice on the images Barlow analysed:

* ``purity``: the share of the leaf's failures that lie in the planted slice;
* ``recall``: the share of the planted slice's failures (in the class group) the leaf holds;
* ``names_cause``: the leaf's description (its top 3 over-represented tags) names every
  attribute the planted mode constrains with an allowed value (tags map to attributes as in
  :mod:`failstore.demo.findings`).

The issue's bar: a valid leaf whose failures lie >= 60 % in the planted slice and whose
description names the planted cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from failstore.demo.findings import tag_attribute
from failstore.demo.spec import PlantedSlice
from failstore.store import Store, equals, literal

PURITY_BAR = 0.6


@dataclass
class LeafFinding:
    planted: str
    cls: str
    found: bool  # a valid leaf in the class
    leaf: int | None
    rule: str | None
    description: str | None
    error_rate: float | None
    error_coverage: float | None
    purity: float | None
    recall: float | None
    names_cause: bool
    sql: str | None

    @property
    def explains(self) -> bool:
        """The issue's bar: valid, failures >= 60 % in the planted slice, cause named."""
        return self.found and (self.purity or 0.0) >= PURITY_BAR and self.names_cause

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "class": self.cls, "explains": self.explains}


def names_cause(planted: PlantedSlice, tags: Sequence[str]) -> bool:
    """Every attribute the planted mode constrains is named, with an allowed value, by a tag."""
    named: set[str] = set()
    for tag in tags:
        for attr, value in tag_attribute(tag):
            for a, op, values in planted.conditions:
                if a == attr and (value in values) == (op == "in"):
                    named.add(a)
    return named == {a for a, _, _ in planted.conditions}


DEMO_DEPTH = 2  # the depth of the paper's user study; depth 1 misses the dog mode's bar


def barlow_findings(
    store: Store,
    planted: Sequence[PlantedSlice],
    split: str,
    *,
    max_depth: int = DEMO_DEPTH,
    tags_from: list[str] | None = None,
) -> list[LeafFinding]:
    """Fit Barlow (grouping by label, paper defaults but ``max_depth``) on ``split`` and match
    the planted modes."""
    from failstore.queries.barlow.estimator import Barlow

    est = Barlow(split=split, tags_from=tags_from, max_depth=max_depth).fit(store)
    leaves = est.results_.filter(pc.fill_null(est.results_["valid"], False)).to_pylist()
    members = est.read_table(store, "barlow_tree_members", ["class", "image_id", "failure", "leaf"])
    attrs = sorted({a for p in planted for a, _, _ in p.conditions})
    images = store.read("images", ["image_id", "label", *attrs], filter=equals("split", split))
    index = {i: k for k, i in enumerate(images["image_id"].to_pylist())}
    labels = np.asarray(images["label"].to_pylist(), dtype=object)
    values = {a: np.asarray(images[a].to_pylist(), dtype=object) for a in attrs}
    out = []
    for p in planted:
        in_slice = p.mask(labels, values)
        best = next((r for r in leaves if r["class"] in p.classes), None)
        if best is None:
            out.append(LeafFinding(p.name, "|".join(p.classes), False, None, None, None, None,
                                   None, None, None, False, None))  # fmt: skip
            continue
        group = members.filter(pc.equal(members["class"], best["class"]))
        rows = np.asarray([index[i] for i in group["image_id"].to_pylist()], dtype=np.int64)
        fail = np.asarray(group["failure"].to_pylist(), dtype=bool)
        leaf = np.asarray(pc.fill_null(group["leaf"], -1).to_pylist()) == best["leaf"]
        planted_here = in_slice[rows]
        leaf_fail = leaf & fail
        slice_fail = planted_here & fail
        purity = _share(leaf_fail & planted_here, leaf_fail)
        recall = _share(leaf_fail & planted_here, slice_fail)
        cls = literal(best["class"])
        sql = (
            "SELECT m.image_id, i.uri, m.prediction FROM barlow_members AS m JOIN images AS i "
            f"USING (image_id) WHERE m.class = {cls} AND m.leaf = {best['leaf']} AND m.failure"
        )
        out.append(
            LeafFinding(
                p.name, best["class"], True, best["leaf"], best["rule"], best["description"],
                best["error_rate"], best["error_coverage"], purity, recall,
                names_cause(p, best["description_tags"] or []), sql,
            )
        )  # fmt: skip
    return out


def _share(part: np.ndarray, whole: np.ndarray) -> float | None:
    total = int(np.count_nonzero(whole))
    return None if total == 0 else int(np.count_nonzero(part)) / total
