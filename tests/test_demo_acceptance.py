"""Acceptance on the embedded quick demo world (built once per test session, then cached).

Checks the issues' "done when": the planted failures are found by `slices` among the top 3 of
their class, with CLIP tags and with attribute columns, and hold on test; SQL joins predictions,
tags and attr_* columns; the tagger audit and model metrics are in the store.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from failstore import config
from failstore.demo.findings import matches
from failstore.demo.spec import planted_slices
from failstore.demo.world import default_spec
from failstore.queries.slices.estimator import Slices
from failstore.queries.sql.session import run_sql
from failstore.store import Store

ATTRS = ["attr_background", "attr_color", "attr_size"]
PLANTED = {p.name: p for p in planted_slices(default_spec(quick=True))}
# One worker runs all of this module (`scripts/dev test` passes --dist loadgroup): the demo
# fixture takes minutes, and every xdist worker would otherwise build its own.
pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from failstore.demo.run import run_demo

    # Outside the checkout: $FAILSTORE_CACHE (or ~/.cache/failstore) / test-demo, reused across
    # local runs; CI machines start clean, so there it is built fresh.
    cache = config.cache_dir() / "test-demo"
    old = os.environ.get("FAILSTORE_CACHE")
    os.environ["FAILSTORE_CACHE"] = str(cache)
    try:
        store = tmp_path_factory.mktemp("demo") / "store"
        # no static report here (a minute); test_demo_custom_world checks the demo writes one
        result = run_demo(store, quick=True, log=lambda m: None, workers=1, report_dir=None)
    finally:
        if old is None:
            os.environ.pop("FAILSTORE_CACHE", None)
        else:
            os.environ["FAILSTORE_CACHE"] = old
    return result


def _top3(store: Store, tags_from: list[str] | None) -> dict[str, list[list[str]]]:
    est = Slices(split="val", eval_split="test", tags_from=tags_from).fit(store)
    out: dict[str, list[list[str]]] = {}
    for r in est.results_.to_pylist():
        out.setdefault(r["class"], []).append(r)
    return out


@pytest.mark.parametrize("mode", list(PLANTED))
@pytest.mark.parametrize("tags_from", [None, ATTRS], ids=["clip-tags", "attributes"])
def test_planted_failures_are_top3_slices_and_hold_on_test(demo, tags_from, mode):
    store = Store(demo.store)
    by_class = _top3(store, tags_from)
    planted = PLANTED[mode]
    (cls,) = planted.classes
    top = by_class.get(cls, [])[:3]
    hits = [r for r in top if matches(planted, cls, r["tags"])]
    assert hits, f"{planted.name}: top-3 {cls} slices are {[r['tags'] for r in top]}"
    assert hits[0]["holds"], f"{planted.name}: {hits[0]} does not hold on test"


@pytest.mark.parametrize("tags_from", [None, ATTRS], ids=["clip-tags", "attributes"])
def test_dog_pair_ranks_above_either_tag_alone(demo, tags_from):
    store = Store(demo.store)
    dogs = _top3(store, tags_from).get("dog", [])
    names = [sorted(r["tags"]) for r in dogs]
    small = "attr_size=small" if tags_from else "small"
    snow = "attr_background=snow" if tags_from else "snow"
    pair = sorted([small, snow])
    assert pair in names[:3], names[:5]
    for single in ([small], [snow]):
        if single in names:
            assert names.index(pair) < names.index(single)


def test_report_lists_the_planted_slices(demo):
    from failstore.demo.run import dumps

    assert [f.planted for f in demo.findings] == list(PLANTED)
    for f in demo.findings + demo.findings_attr:
        assert f.found and f.rank is not None and f.rank <= 3, f
    report = json.loads(dumps(demo))
    assert report["findings"][0]["sql"].startswith("SELECT uri, prediction FROM samples WHERE")


def test_sql_joins_predictions_tags_and_attributes(demo):
    store = Store(demo.store)
    rows = run_sql(
        store,
        "SELECT label, attr_background, count(*) AS n, avg(CASE WHEN correct THEN 0 ELSE 1 END) "
        "AS err FROM samples WHERE split = 'test' AND list_contains(tags, 'water') "
        "GROUP BY ALL ORDER BY n DESC",
    ).to_pylist()
    assert rows and list(rows[0]) == ["label", "attr_background", "n", "err"]
    test = store.read("images", ["tags"], filter="split = 'test'").column("tags").to_pylist()
    assert sum(r["n"] for r in rows) == sum("water" in (t or []) for t in test)
    for q in demo.findings:  # each finding's SQL selects its slice: on val, the slice's size
        n = run_sql(store, f"SELECT count(DISTINCT uri) AS n FROM ({q.sql} AND split = 'val')")
        assert n.to_pylist() == [{"n": q.size}], q


def test_tagger_audit_matches_a_recount_from_the_store(demo):
    store = Store(demo.store)
    audit = {r["tag"]: r for r in store.read("tagger_audit").to_pylist()}
    data = store.read("images", ["tags", "attr_background"], filter="split = 'test'").to_pylist()
    pred = np.array(["water" in (r["tags"] or []) for r in data])
    truth = np.array([r["attr_background"] == "water" for r in data])
    tp = int((pred & truth).sum())
    assert audit["water"]["precision"] == pytest.approx(tp / max(pred.sum(), 1))
    assert audit["water"]["recall"] == pytest.approx(tp / truth.sum())
    metrics = run_sql(store, "SELECT model, metric, value FROM model_metrics").to_pylist()
    assert {m["model"] for m in metrics} == {"target", "robust", "clip"}
    numeric = {
        (model, k): float(v)
        for model, m in demo.metrics.items()
        if isinstance(m, dict)
        for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    assert {(m["model"], m["metric"]): m["value"] for m in metrics} == numeric
    assert len(metrics) == len(numeric)
    (vocab,) = store.read("models", ["tags"], filter="role = 'clip'").column("tags").to_pylist()
    assert list(audit) == vocab and store.count("tagger_audit") == len(vocab)  # one row per tag


@pytest.mark.parametrize("mode", list(PLANTED))
def test_planted_slices_fail_on_test(demo, mode):
    """Each planted slice's test error rate is >= 0.3 and >= 2x its whole class's (issue 18:
    on the full and the quick world; measured on this quick world 2.3x, 2.6x, 2.4x, on the full
    one 2.7x, 2.9x, 2.5x; docs/demo-world.md)."""
    store = Store(demo.store)
    for p in [PLANTED[mode]]:
        where = p.where("label")
        (cls,) = p.classes
        sl = (
            run_sql(
                store,
                f"SELECT avg(CASE WHEN correct THEN 0.0 ELSE 1.0 END) AS e FROM samples "
                f"WHERE split = 'test' AND {where}",
            )
            .column("e")[0]
            .as_py()
        )
        whole = (
            run_sql(
                store,
                f"SELECT avg(CASE WHEN correct THEN 0.0 ELSE 1.0 END) AS e FROM "
                f"samples WHERE split = 'test' AND label = '{cls}'",
            )
            .column("e")[0]
            .as_py()
        )
        assert sl >= 0.3 and sl >= 2 * whole, f"{p.name}: slice {sl:.2f} vs class {whole:.2f}"


@pytest.mark.parametrize("mode", list(PLANTED))
def test_barlow_explains_each_planted_mode(demo, mode):
    """Issue 10: for each planted mode a valid leaf of its class whose failures lie >= 60 % in
    the planted slice and whose description (top 3 tags) names the planted cause. The demo
    report's Barlow rows are the same computation (depth 2, val)."""
    by_mode = {f.planted: f for f in demo.barlow}
    f = by_mode[mode]
    assert f.found, f"{mode}: no valid Barlow leaf in {f.cls}"
    assert f.purity is not None and f.purity >= 0.6, f"{mode}: {f.row()}"
    assert f.names_cause, f"{mode}: description {f.description!r} does not name the cause"
    # the report's figures recomputed from the stored membership through SQL
    planted = PLANTED[mode]
    got = run_sql(
        Store(demo.store),
        "SELECT count(*) FILTER (WHERE " + planted.where("i.label") + ") AS inside, "
        "count(*) AS n FROM barlow_members AS m JOIN images AS i USING (image_id) "
        "WHERE m.class = $c AND m.leaf = CAST($l AS INTEGER) AND m.failure",
        params={"c": f.cls, "l": str(f.leaf)},
    ).to_pylist()[0]
    assert got["inside"] / got["n"] == pytest.approx(f.purity, abs=1e-12)


def test_ces_names_the_planted_causes(demo):
    """Issue 11: over the planted slices' misclassified test images, the top 3 concepts name
    the cause with the right sign for >= 0.9 of single images on at least two modes and of
    sets of 5 on all three; random concepts stay well below."""
    by_mode = {f.planted: f for f in demo.ces}
    assert set(by_mode) == set(PLANTED)
    singles = [f.singles or 0.0 for f in by_mode.values()]
    assert sum(s >= 0.9 for s in singles) >= 2, [f.row() for f in demo.ces]
    for f in by_mode.values():
        assert f.n_sets >= 1 and (f.sets or 0.0) >= 0.9, f.row()
        assert (f.control or 0.0) < (f.singles or 0.0) - 0.3, f.row()


BIRDS_VS_HORSES = "birds' attributions lie less on the object than horses'"
SMALL_DOGS = "misclassified small dogs on snow less than correctly classified dogs"


@pytest.mark.parametrize(
    ("method", "claim"),
    [
        ("gradient", BIRDS_VS_HORSES),
        ("gradient", SMALL_DOGS),
        # undecided on demo-world-4 (-0.001, -0.016..+0.013), holds since (docs/coverage.md)
        ("grad_cam", BIRDS_VS_HORSES),
        ("grad_cam", SMALL_DOGS),
    ],
)
def test_coverage_expectations_hold_on_test(demo, method, claim):
    """Issue 12: where the shortcuts were planted, the attributions follow (bootstrap interval
    of the difference of mean soft SC entirely below 0). Reported as measured: a check that
    does not hold is an xfail with the figures, strict so that a change shows."""
    (check,) = [c for c in demo.coverage_checks if c.method == method and c.claim == claim]
    assert check.verdict == "holds", check.row()
    assert check.high is not None and check.high < 0 and check.low <= check.difference


@pytest.mark.parametrize("method", ["gradient", "grad_cam"])
def test_coverage_section_equals_a_recount_from_the_store(demo, method):
    """The report's per-class soft SC and case mix are the stored `coverage` query's rows."""
    got = {
        r["label"]: r
        for r in run_sql(
            Store(demo.store),
            "SELECT label, count(*) AS n, avg(soft_sc) FILTER (WHERE NOT isnan(soft_sc)) AS soft, "
            "count(*) FILTER (WHERE \"case\" = 'distractor') AS distractors "
            "FROM coverage WHERE method = $m GROUP BY label",
            params={"m": method},
        ).to_pylist()
    }
    rows = {f.group: f for f in demo.coverage if f.method == method and f.group in got}
    assert set(rows) == set(got) and len(got) >= 6
    for label, r in got.items():
        f = rows[label]
        assert f.images == r["n"], (label, f.row())
        assert f.soft_sc == pytest.approx(r["soft"], abs=1e-9), (label, f.row())
        assert f.low is not None and f.low <= f.soft_sc <= f.high
        distractors = dict(
            (c, int(n)) for n, c in (part.split(" ", 1) for part in f.cases.split(", "))
        ).get("distractor", 0)
        assert distractors == r["distractors"], (label, f.cases)


@pytest.mark.parametrize(
    ("test", "method"),
    [
        ("cascading", "gradient"),
        ("cascading", "integrated_gradients"),
        pytest.param(
            "cascading",
            "guided_backprop",
            marks=pytest.mark.xfail(
                strict=True,
                reason="measured: after all 7 blocks of the demo net are re-initialised its "
                "rank correlation is 0.32 (< 0.5), like the gradient's; its invariance shows on "
                "the higher layers only (the next test); docs/sanity.md",
            ),
        ),
        ("cascading", "guided_backprop - gradient"),
        pytest.param(
            "spurious",
            "gradient",
            marks=pytest.mark.xfail(
                strict=True,
                reason="measured: dense gradient maps of the failing birds resemble the "
                "background map slightly less than those of control birds (-0.010); docs/sanity.md",
            ),
        ),
        ("spurious", "grad_cam"),
    ],
)
def test_sanity_expectations(demo, test, method):
    """Issue 13: the demo's sanity section, each expectation as measured (strict xfails for
    the ones that do not hold, so that a change shows)."""
    (f,) = [f for f in demo.sanity if f.test == test and f.method == method]
    assert f.holds, f.row()


# ------------------------------------------------------------ pages over the analysed store


def _page_html(template: str, ctx: dict) -> str:
    from failstore.serve.pages import LINKS
    from failstore.serve.render import render

    return render(template, {**ctx, "links": LINKS})


def test_the_class_page_shows_every_analysis_as_its_stored_query_says(demo):
    """On the demo store every analysis ran: the class page of a planted class holds exactly
    the class's rows of `slices`, `barlow_leaves`, `ces` and `coverage_cases`, and the HTML
    shows them (no "run `failstore ...`" hint)."""
    from failstore.serve import views

    store = Store(demo.store)
    cls = PLANTED["small dogs on snow"].classes[0]
    template, ctx = views.class_page(store, "target", cls)
    p = {"model": "target"}
    oracle = {
        "slices": [r for r in run_sql(store, "SELECT * FROM slices", params=p).to_pylist()
                   if r["class"] == cls],
        "leaves": [r for r in run_sql(store, "SELECT * FROM barlow_leaves", params=p).to_pylist()
                   if r["class"] == cls],
        "ces": [r for r in run_sql(store, "SELECT * FROM ces", params=p).to_pylist()
                if r["label"] == cls],
        "coverage": [r for r in run_sql(store, "SELECT * FROM coverage_cases", params=p)
                     .to_pylist() if r["label"] == cls],
    }  # fmt: skip
    html = _page_html(template, ctx)
    for part, rows in oracle.items():
        assert ctx[part].ok and rows, part
        assert ctx[part].rows == rows, part
    assert "run `failstore" not in html
    for r in oracle["ces"][:5]:
        assert f"<td>{r['concept']}</td>" in html
    for case in {r["case"] for r in oracle["coverage"]}:
        assert f"<td>{case}</td>" in html
    modes = run_sql(
        store, "SELECT * FROM failure_modes", params={"model": "target", "class": cls}
    ).to_pylist()
    assert ctx["modes"].rows == modes and modes


def test_the_image_page_shows_coverage_cases_with_the_sanity_verdict_and_concepts(demo):
    from failstore.serve import views

    store = Store(demo.store)
    (row,) = run_sql(
        store,
        "SELECT c.image_id FROM coverage AS c JOIN ces_images AS e USING (image_id) "
        "WHERE c.sanity IS NOT NULL ORDER BY c.image_id LIMIT 1",
    ).to_pylist()
    image_id = row["image_id"]
    template, ctx = views.image_page(store, image_id)
    want = run_sql(
        store,
        'SELECT model, method, "explain", "case", sanity FROM coverage WHERE image_id = $i',
        params={"i": image_id},
    ).to_pylist()
    got = [{k: r[k] for k in ("model", "method", "explain", "case", "sanity")}
           for r in ctx["coverage"].rows]  # fmt: skip
    key = lambda r: (r["model"], r["method"], r["explain"])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key) and want
    assert ctx["ces"].rows and {r["image_id"] for r in ctx["ces"].rows} == {image_id}
    assert {(r["model"], r["method"]) for r in ctx["saliency"]} >= {
        (r["model"], r["method"]) for r in want
    }
    html = _page_html(template, ctx)
    judged = [r for r in want if r["sanity"] is not None]  # methods the sanity run tested
    assert judged
    for r in judged:
        assert f"<td>{r['sanity']}</td>" in html and f"<td>{r['case']}</td>" in html



def test_planted_modes_are_measured_stored_and_judged(demo):
    """Issue 18: each planted slice measured on val and test, stored in `planted_modes` (equal
    to a recount through SQL), judged on test. Measured on this quick world (generator 5): birds
    0.88 vs 0.38 (2.3x), small dogs on snow 0.90 vs 0.34 (2.6x), horses 0.83 vs 0.34 (2.4x):
    every rule takes, every mode is found, nothing is warned about (generator 4 missed birds and
    dogs at 1.9x; docs/demo-world.md)."""
    store = Store(demo.store)
    rows = store.read("planted_modes").to_pylist()
    assert [(r["planted"], r["split"]) for r in rows] == [
        (name, split) for name in PLANTED for split in ("val", "test")]
    for r in rows:
        (got,) = run_sql(
            store,
            "SELECT count(*) AS n, count(*) FILTER (WHERE NOT correct) AS k FROM samples "
            f"WHERE split = $s AND {PLANTED[r['planted']].where('label')}",
            params={"s": r["split"]},
        ).to_pylist()
        assert (r["size"], r["errors"]) == (got["n"], got["k"]), r
    took = {r["planted"]: r["learned"] for r in rows if r["split"] == "test"}
    assert took == dict.fromkeys(PLANTED, True)
    for o in demo.outcomes():
        assert o["learned"] and o["clip_tags"].startswith("found (rank "), o
        assert o["attributes"].startswith("found (rank "), o
    assert demo.broken_promises() == []
    for f in demo.findings + demo.findings_attr:  # every mode is found; say how much of it
        assert f.covered is not None and 0 < f.covered <= f.planted_size, f.row()
        assert f.covered_errors is not None and f.covered_errors <= f.planted_errors, f.row()
