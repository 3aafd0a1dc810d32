"""`Slices` over a store: planted failures, tags_from, eval split, reuse, stored query, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from docs_tables import DOCS, doc_columns
from planted_store import build
from typer.testing import CliRunner

from failstore import schemas
from failstore.cli.app import app
from failstore.errors import ConfigError, StoreError
from failstore.queries.slices.estimator import Slices
from failstore.queries.slices.search import SliceParams, find_slices
from failstore.queries.sql.session import run_sql
from failstore.store import Store


def _build(path, n=1200, seed=0) -> Store:
    """Dogs that are small AND on snow fail 80 % of the time, else 5 % (tests/planted_store)."""
    return build(path, n=n, seed=seed)


@pytest.fixture
def store(tmp_path):
    return _build(tmp_path / "s")


def test_planted_pair_is_the_top_dog_slice_and_holds(store):
    est = Slices(classes=["dog"], split="val", eval_split="test", min_size=20).fit(store)
    top = est.results_.to_pylist()[0]
    assert (top["class"], top["tags"], top["grouping"], top["model"]) == (
        "dog",
        ["small", "snow"],
        "label",
        "m",
    )
    assert top["holds"] is True and top["eval_size"] > 0
    assert set(est.results_.column("class").to_pylist()) == {"dog"}


def test_tags_from_columns_gives_col_value_tags(store):
    est = Slices(
        classes=["dog"], split="val", tags_from=["attr_background", "attr_size"], min_size=20
    ).fit(store)
    assert est.results_.column("tags")[0].as_py() == ["attr_background=snow", "attr_size=small"]


def test_results_equal_find_slices_per_class(store):
    est = Slices(min_size=20).fit(store)
    data = run_sql(store, "SELECT label, correct, tags FROM samples ORDER BY image_id").to_pylist()
    names = sorted({t for r in data for t in r["tags"]})
    for cls in ("cat", "dog"):
        rows = [r for r in data if r["label"] == cls]
        m = np.array([[t in r["tags"] for t in names] for r in rows])
        c = np.array([r["correct"] for r in rows])
        want = find_slices(m, c, names, SliceParams(min_size=20), class_name=cls)
        got = est.results_.filter(pa.compute.equal(est.results_["class"], cls))
        assert got.select(want.column_names).to_pylist() == want.to_pylist()


def test_rerun_reuses_and_store_change_recomputes(store):
    a = Slices(min_size=20).fit(store)
    b = Slices(min_size=20).fit(store)
    assert not a.reused_ and b.reused_ and a.run_id_ == b.run_id_
    assert b.results_.to_pylist() == a.results_.to_pylist()
    c = Slices(min_size=25).fit(store)
    assert not c.reused_ and c.run_id_ != a.run_id_
    store.upsert("predictions", store.read("predictions").slice(0, 1))  # new version
    d = Slices(min_size=20).fit(store)
    assert not d.reused_ and d.run_id_ != a.run_id_
    runs = store.read("analysis_runs", ["run_id", "source_versions"]).to_pylist()
    assert {r["run_id"] for r in runs} == {a.run_id_, c.run_id_, d.run_id_}
    assert json.loads(runs[0]["source_versions"]).keys() == {"images", "predictions", "models"}


def test_stored_query_shows_latest_run(store):
    Slices(min_size=20).fit(store)
    Slices(min_size=25, split="val").fit(store)
    got = run_sql(store, "SELECT class, tags, size FROM slices WHERE class = 'dog'").to_pylist()
    want = Slices(min_size=25, split="val", classes=["dog"]).fit(store).results_
    assert got == want.select(["class", "tags", "size"]).to_pylist()


def test_bad_parameters_and_missing_columns(store):
    with pytest.raises(
        ConfigError, match=r"^by must be one of 'label', 'prediction', got 'lable'$"
    ):
        Slices(by="lable").fit(store)
    with pytest.raises(ConfigError, match=r"^max_tags must be between 1 and 5, got 6$"):
        Slices(max_tags=6).fit(store)
    with pytest.raises(ConfigError, match=r"^min_size must be a whole number, got 2\.5$"):
        Slices(min_size=2.5).fit(store)
    with pytest.raises(
        ConfigError, match="images has no column 'attr_sise'; did you mean 'attr_size'"
    ):
        Slices(tags_from=["attr_sise"]).fit(store)
    with pytest.raises(StoreError, match="no predictions of model 'nope'; target models: m"):
        Slices(model="nope").fit(store)


def test_cli_json_has_exactly_the_documented_fields(store):
    r = CliRunner().invoke(
        app,
        [
            "--store",
            str(store.path),
            "slices",
            "--class",
            "dog",
            "--split",
            "val",
            "--eval-split",
            "test",
            "--min-size",
            "20",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    # The fields of docs/slices.md's output tables, in their order (eval ones included here).
    assert list(rows[0]) == doc_columns(DOCS / "slices.md", "## Output")
    assert rows[0]["tags"] == ["small", "snow"]


def test_cli_names_the_flag_in_parameter_errors(store):
    r = CliRunner().invoke(app, ["--store", str(store.path), "slices", "--max-tags", "7"])
    assert r.exit_code != 0
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store.path), "slices",
         "--by", "lable"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == "error: --by must be one of 'label', 'prediction', got 'lable'\n"


def test_every_run_is_kept_whatever_its_columns(store):
    plain = Slices(split="val", min_size=20).fit(store)
    evald = Slices(split="val", eval_split="test", min_size=20).fit(store)
    assert plain.run_id_ != evald.run_id_
    rows = store.read("prime_slices", ["run_id", "eval_size"])
    per_run = {
        r: rows.filter(pa.compute.equal(rows["run_id"], r)) for r in (plain.run_id_, evald.run_id_)
    }
    assert per_run[plain.run_id_].num_rows == plain.results_.num_rows > 0
    assert per_run[evald.run_id_].num_rows == evald.results_.num_rows > 0
    assert per_run[plain.run_id_].column("eval_size").null_count == plain.results_.num_rows
    assert per_run[evald.run_id_].column("eval_size").null_count == 0
    # reusing the first run finds its rows untouched
    again = Slices(split="val", min_size=20).fit(store)
    assert again.reused_ and again.results_.equals(plain.results_)
    assert store.count("analysis_runs") == 2


def test_stored_query_shows_the_latest_run_per_tag_source(store):
    clip = Slices(split="val", min_size=20).fit(store)
    cols = Slices(split="val", min_size=20, tags_from=["attr_background", "attr_size"]).fit(store)
    newer = Slices(split="val", min_size=25).fit(store)  # replaces `clip` for readers
    got = run_sql(store, "SELECT run_id, tag_source, count(*) AS n FROM slices GROUP BY ALL")
    want = {
        (newer.run_id_, "tags", newer.results_.num_rows),
        (cols.run_id_, "attr_background,attr_size", cols.results_.num_rows),
    }
    assert {tuple(r.values()) for r in got.to_pylist()} == want
    assert clip.run_id_ not in {r["run_id"] for r in got.to_pylist()}
    only = run_sql(store, "SELECT DISTINCT tag_source FROM slices", params={"tag_source": "tags"})
    assert only.to_pylist() == [{"tag_source": "tags"}]


def test_querying_slices_before_any_run_says_what_to_run(tmp_path):
    from failstore.errors import SqlRefused

    empty = Store.init(tmp_path / "empty")
    empty.upsert("ingest_errors", pa.table({"uri": ["a"], "reason": ["x"], "time": [None]},
                 schema=schemas.INGEST_ERRORS_SCHEMA))  # fmt: skip
    with pytest.raises(SqlRefused, match=r"^no `slices` run yet: run `failstore slices`$"):
        run_sql(empty, "SELECT * FROM slices")
    with pytest.raises(SqlRefused, match=r"^no `slices` run yet: run `failstore slices`$"):
        run_sql(empty, "SELECT * FROM prime_slices")


def test_every_analysis_result_table_is_a_reserved_name():
    from failstore.errors import SqlRefused
    from failstore.queries.framework import registry
    from failstore.queries.sql.session import make_user_query

    tables = registry.result_tables()
    assert tables["prime_slices"] == "slices"
    for table in tables:
        with pytest.raises(SqlRefused, match=f"query name '{table}' is a table name"):
            make_user_query(table, "SELECT 1")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"split": "vall"},
         "split: no image has split 'vall'; did you mean 'val'? known: test, val"),
        ({"eval_split": "nosuch"}, "eval_split: no image has split 'nosuch'; known: test, val"),
        ({"classes": ["dgo"]},
         "classes: no image has label 'dgo'; did you mean 'dog'? known: cat, dog"),
        ({"tags_from": ["label"]}, "tags_from cannot use 'label'; analyses look within each "
         "class; give categorical metadata columns such as attr_background"),
        ({"min_drop": 2.0}, "min_drop must be between 0 and 1, got 2.0"),
        ({"min_gain": -1.0}, "min_gain must be between 0 and 1, got -1.0"),
    ],
)  # fmt: skip
def test_names_and_values_that_match_nothing_are_refused(store, params, message):
    runs = store.count("analysis_runs")
    with pytest.raises(ConfigError) as info:
        Slices(**params).fit(store)
    assert info.value.one_line() == message
    assert store.count("analysis_runs") == runs  # no run recorded


def test_a_float_column_is_not_a_tag_source(tmp_path):
    s = build(tmp_path / "f", n=200)
    s.append("images", pa.table({"image_id": ["x" * 64], "uri": ["/x"], "score": [0.5]}))
    with pytest.raises(ConfigError) as info:
        Slices(tags_from=["score"]).fit(s)
    assert info.value.one_line() == (
        "tags_from column 'score' is double, not categorical; use columns of strings, booleans "
        "or integers (bin a number into a text column first)"
    )


def test_an_empty_result_says_why(store):
    args = ["--store", str(store.path), "slices", "--split", "val"]
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", *args, "--min-size", "400"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0
    assert r.stderr == (
        "no failure slices: every group has fewer than --min-size 400 images (largest: "
        f"{_largest(store)}); lower --min-size\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", *args, "--min-drop", "0.9", "-f", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "[]\n")
    assert r.stderr == (
        f"no failure slices: 2 group(s) searched (largest: {_largest(store)} images); no tag "
        "set of at least --min-size 30 images loses --min-drop 0.9 accuracy with every tag "
        "adding --min-gain 0.1\n"
    )


def _largest(store) -> str:
    rows = run_sql(
        store, "SELECT label, count(*) AS n FROM images WHERE split = 'val' GROUP BY label "
        "ORDER BY n DESC, label DESC LIMIT 1",
    ).to_pylist()  # fmt: skip
    return f"{rows[0]['label']}, {rows[0]['n']}"
