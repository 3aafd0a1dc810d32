"""The demo's findings report: which planted failure modes failstore's analyses found.

A discovered slice (class c, tags T) *matches* a planted slice P when c is one of P's classes,
every tag of T names an attribute value that P's conditions allow (or an attribute P does not
constrain), and every attribute P constrains is covered by some tag. So for "birds away from
water" the slice {sand} of class bird matches (a part of the planted slice), {water} does not;
for "small dogs on snow" only a slice holding both {small, snow} matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.demo.spec import ATTRIBUTES, PlantedSlice
from failstore.store import Store, equals, literal


@dataclass
class Finding:
    planted: str
    cls: str
    found: bool
    rank: int | None  # 1-based rank of the slice within its class
    tags: list[str]
    size: int | None
    error_rate: float | None
    class_error_rate: float | None
    holds: bool | None
    eval_error_rate: float | None
    sql: str
    # how much of the planted slice (on the searched split) the found slice covers
    covered: int | None = None  # planted images in the found slice
    planted_size: int | None = None  # planted images
    covered_errors: int | None = None  # misclassified planted images in the found slice
    planted_errors: int | None = None  # misclassified planted images

    @property
    def share(self) -> float | None:
        """Share of the planted slice's images the found slice covers."""
        if self.covered is None or not self.planted_size:
            return None
        return self.covered / self.planted_size

    @property
    def error_share(self) -> float | None:
        """Share of the planted slice's errors the found slice covers."""
        if self.covered_errors is None or not self.planted_errors:
            return None
        return self.covered_errors / self.planted_errors

    def row(self) -> dict[str, Any]:
        return {
            "planted": self.planted,
            "class": self.cls,
            "found": self.found,
            "rank": self.rank,
            "tags": self.tags,
            "size": self.size,
            "error_rate": self.error_rate,
            "class_error_rate": self.class_error_rate,
            "holds": self.holds,
            "eval_error_rate": self.eval_error_rate,
            "sql": self.sql,
            "covered": self.covered,
            "planted_size": self.planted_size,
            "covered_errors": self.covered_errors,
            "planted_errors": self.planted_errors,
        }


def tag_attribute(tag: str) -> list[tuple[str, str]]:
    """(attribute, value) pairs a tag can stand for: ``attr_x=value`` or a bare value."""
    if "=" in tag:
        attr, _, value = tag.partition("=")
        return [(attr, value)]
    return [(a, tag) for a, values in ATTRIBUTES.items() if tag in values]


def matches(planted: PlantedSlice, cls: str, tags: Sequence[str]) -> bool:
    if cls not in planted.classes:
        return False
    constrained = {a: (op, vs) for a, op, vs in planted.conditions}
    covered: set[str] = set()
    for tag in tags:
        meanings = tag_attribute(tag)
        if not meanings:
            return False
        ok = False
        for attr, value in meanings:
            if attr not in constrained:
                ok = True
                continue
            op, values = constrained[attr]
            if (value in values) == (op == "in"):
                ok = True
                covered.add(attr)
        if not ok:
            return False
    return covered == set(constrained)


def find(
    planted: Sequence[PlantedSlice], slices: pa.Table, tags_column_sql: str = "tags"
) -> list[Finding]:
    """Match each planted slice to the best-ranked matching slice of its class."""
    rows = slices.to_pylist()
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:  # rows are in importance order
        by_class.setdefault(r["class"], []).append(r)
    out = []
    for p in planted:
        best = None
        for cls in p.classes:
            for rank, r in enumerate(by_class.get(cls, []), start=1):
                if matches(p, cls, r["tags"]):
                    if best is None or rank < best[0]:
                        best = (rank, r)
                    break
        where = p.where("label")
        if best is None:
            out.append(
                Finding(
                    p.name,
                    "|".join(p.classes),
                    False,
                    None,
                    [],
                    None,
                    None,
                    None,
                    None,
                    None,
                    f"SELECT uri, prediction FROM samples WHERE {where}",
                )
            )
            continue
        rank, r = best
        tag_list = ", ".join(literal(t) for t in r["tags"])
        label = equals("label", r["class"])
        if "=" in r["tags"][0]:
            conds = " AND ".join(equals(*t.split("=", 1)) for t in r["tags"])
            sql = f"SELECT uri, prediction FROM samples WHERE {label} AND {conds}"
        else:
            sql = (
                f"SELECT uri, prediction FROM samples WHERE {label} "
                f"AND list_has_all({tags_column_sql}, [{tag_list}])"
            )
        out.append(
            Finding(
                p.name,
                r["class"],
                True,
                rank,
                list(r["tags"]),
                r["size"],
                r["error_rate"],
                r["base_error_rate"],
                r.get("holds"),
                r.get("eval_error_rate"),
                sql,
            )
        )
    return out


def in_found_slice(
    labels: np.ndarray, tags: Sequence[Any], attributes: Mapping[str, np.ndarray], cls: str,
    slice_tags: Sequence[str],
) -> np.ndarray:
    """Boolean mask of the images a found slice (class ``cls``, tags ``slice_tags``) holds:
    ``attr=value`` tags test the attribute column, bare tags the image's ``tags`` list."""
    m = np.asarray(labels, dtype=object) == cls
    for tag in slice_tags:
        if "=" in tag:
            attr, _, value = tag.partition("=")
            m &= np.asarray(attributes[attr], dtype=object) == value
        else:
            m &= np.asarray([tag in (t or ()) for t in tags], dtype=bool)
    return m


def add_coverage(
    findings: Sequence[Finding], planted: Sequence[PlantedSlice], store: Store, split: str
) -> None:
    """Fill each finding's ``covered``/``planted_size`` (and the same for the target's
    misclassified images) on ``split``: how much of its planted slice the found slice holds."""
    from failstore.demo.planted_modes import target_correct

    cols = [a for a in ATTRIBUTES if a in store.schema("images").names]
    images = store.read("images", ["image_id", "label", "tags", *cols],
                        filter=equals("split", split))
    correct_of = target_correct(store)
    wrong = np.asarray([correct_of.get(i) is False for i in images["image_id"].to_pylist()])
    labels = np.asarray(images["label"].to_pylist(), dtype=object)
    attrs = {a: np.asarray(images[a].to_pylist(), dtype=object) for a in cols}
    tags = images["tags"].to_pylist()
    by_name = {p.name: p for p in planted}
    for f in findings:
        p = by_name[f.planted]
        in_planted = p.mask(labels, attrs)
        f.planted_size = int(in_planted.sum())
        f.planted_errors = int((in_planted & wrong).sum())
        if not f.found:
            continue
        got = in_found_slice(labels, tags, attrs, f.cls, f.tags) & in_planted
        f.covered, f.covered_errors = int(got.sum()), int((got & wrong).sum())


def findings_table(findings: Sequence[Finding]) -> pa.Table:
    return pa.Table.from_pylist([f.row() for f in findings])
