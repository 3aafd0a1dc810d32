"""The `failure_modes` stored query: slices, Barlow leaves and CES concepts side by side, checked
against a recount in Python from each analysis's own stored query, and on the planted store
(small dogs on snow fail) where all three name the planted causes."""

from __future__ import annotations

import re

import pytest
from planted_store import build

from failstore.errors import SqlError
from failstore.queries.barlow import Barlow
from failstore.queries.concepts import ConceptBank, Explain
from failstore.queries.slices.estimator import Slices
from failstore.queries.sql.session import run_sql
from failstore.store import Store

ATTRS = ["attr_background", "attr_size"]
TOP = 5


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = build(tmp_path_factory.mktemp("modes") / "s")
    Slices(min_size=20, split="val", eval_split="test").fit(s)
    return s


def _value(tag: str) -> str:
    return re.sub(r"^[^=]*=", "", tag)


def _recount(store: Store) -> dict[tuple[str, str, str], set[str]]:
    """(model, class, cause) -> the analyses naming it, from their own stored queries."""
    named: dict[tuple[str, str, str], set[str]] = {}

    def top(rows: list[dict]) -> list[dict]:
        out, seen = [], {}
        for r in sorted(rows, key=lambda r: -r["importance"]):
            key = (r["model"], r["class"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= TOP:
                out.append(r)
        return out

    slices = [
        r
        for r in run_sql(store, "SELECT * FROM slices").to_pylist()
        if r["grouping"] == "label" and r["holds"] is not False
    ]
    for r in top(slices):
        for t in r["tags"]:
            named.setdefault((r["model"], r["class"], _value(t)), set()).add("slices")
    if store.has_table("barlow_tree_leaves"):
        leaves = [
            r
            for r in run_sql(store, "SELECT * FROM barlow_leaves").to_pylist()
            if r["grouping"] == "label" and r["valid"]
        ]
        for r in top(leaves):
            for t in r["description_tags"]:
                named.setdefault((r["model"], r["class"], _value(t)), set()).add("barlow")
    if store.has_table("ces_sets"):
        for r in run_sql(store, "SELECT * FROM ces WHERE rank <= 3").to_pylist():
            cause = r["concept"] if r["score"] < 0 else f"not {r['concept']}"
            named.setdefault((r["model"], r["label"], cause), set()).add("ces")
    return named


def _modes(store: Store, **params: str) -> list[dict]:
    return run_sql(store, "SELECT * FROM failure_modes", params=params).to_pylist()


def test_with_slices_only_every_row_comes_from_slices(store):
    rows = _modes(store)
    want = _recount(store)
    assert {(r["model"], r["class"], r["cause"]) for r in rows} == set(want)
    assert all(r["methods"] == ["slices"] and r["agree"] == 1 for r in rows)
    dog = [r for r in rows if r["class"] == "dog"]
    assert {"snow", "small"} <= {r["cause"] for r in dog}


def test_the_analyses_agree_on_the_planted_causes(store):
    Barlow(max_depth=2, tags_from=ATTRS).fit(store)
    ConceptBank().fit(store)
    Explain().fit(store)
    rows = _modes(store)
    want = _recount(store)
    got = {(r["model"], r["class"], r["cause"]): r for r in rows}
    assert set(got) == set(want)
    order = ["slices", "barlow", "ces"]
    for key, r in got.items():
        assert r["methods"] == [m for m in order if m in want[key]], key
        assert r["agree"] == len(want[key])
        assert (r["slice"] is not None) == ("slices" in want[key])
        assert (r["slice_tags"] is not None) == ("slices" in want[key])
        if r["slice_tags"] is not None:
            assert key[2] in [_value(t) for t in r["slice_tags"]]
        if r["leaf"] is not None:
            assert r["leaf"].startswith(f"leaf {r['leaf_number']}: ")
        assert (r["leaf"] is not None) == ("barlow" in want[key])
        assert (r["concept"] is not None) == ("ces" in want[key])
        if r["concept"] is not None:  # its confusions in one order, whatever the rows' order
            confusions = r["concept"][r["concept"].index(" (") + 2 : -1].split(", ")
            assert confusions == sorted(confusions), r["concept"]
            ces = run_sql(store, "SELECT * FROM ces WHERE rank <= 3").to_pylist()
            assert set(confusions) == {
                f"{c['label']} -> {c['prediction']}" for c in ces
                if (c["model"], c["label"]) == key[:2]
                and (c["concept"] if c["score"] < 0 else f"not {c['concept']}") == key[2]}
    # the planted failure (small dogs on snow): named by slices and Barlow, first for dogs
    dog = [r for r in rows if r["class"] == "dog"]
    assert {dog[0]["cause"], dog[1]["cause"]} == {"snow", "small"}
    assert all({"slices", "barlow"} <= set(r["methods"]) for r in dog[:2])
    # rows where more analyses agree come first within a class
    for cls in {r["class"] for r in rows}:
        agree = [r["agree"] for r in rows if r["class"] == cls]
        assert agree == sorted(agree, reverse=True)
    assert {r["class"] for r in _modes(store, **{"class": "dog"})} == {"dog"}
    assert _modes(store, model="nope") == []


def test_before_any_analysis_it_says_what_to_run(tmp_path):
    bare = build(tmp_path / "s", n=60)
    with pytest.raises(SqlError) as e:
        _modes(bare)
    assert e.value.one_line() == (
        "no analysis has run yet: run one of `failstore barlow`, `failstore concepts`, "
        "`failstore coverage`, `failstore explain`, `failstore sanity`, `failstore slices`"
    )
