"""`Barlow` over the store, its stored queries and `failstore barlow`, on stores where the truth
is planted (tests/planted_store.py: dogs that are small AND on snow fail 80 % of the time; the
robust features carry snow in dimension 0 and small in dimension 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from planted_store import build

from failstore.errors import ConfigError, StoreError
from failstore.queries.barlow import Barlow
from failstore.queries.sql.session import run_sql
from failstore.store import Store

ATTRS = ["attr_background", "attr_size"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return build(tmp_path_factory.mktemp("barlow") / "s")


def _truth(store: Store) -> dict[str, dict]:
    images = store.read("images", ["image_id", "label", *ATTRS]).to_pylist()
    preds = store.read("predictions", ["image_id", "correct"]).to_pylist()
    ok = {p["image_id"]: p["correct"] for p in preds}
    return {r["image_id"]: {**r, "failure": not ok[r["image_id"]]} for r in images}


def test_the_planted_cause_is_a_valid_leaf_described_in_words(planted):
    est = Barlow(max_depth=2, tags_from=ATTRS).fit(planted)
    dog = [r for r in est.results_.to_pylist() if r["class"] == "dog"]
    best = dog[0]
    assert best["valid"] and best["rank"] == 1
    assert {c["feature"] for c in best["conditions"]} == {0, 1}  # snow and small
    assert set(best["description_tags"][:2]) == {"attr_background=snow", "attr_size=small"}
    truth = _truth(planted)
    members = est.read_table(planted, "barlow_tree_members").to_pylist()
    leaf_fail = [m for m in members if m["class"] == "dog" and m["leaf"] == best["leaf"]
                 and m["failure"]]  # fmt: skip
    inside = [m for m in leaf_fail if truth[m["image_id"]]["attr_background"] == "snow"
              and truth[m["image_id"]]["attr_size"] == "small"]  # fmt: skip
    assert len(inside) / len(leaf_fail) >= 0.95
    # the depth-1 tree splits on one of the two cause features and its leaf is valid too
    one = Barlow(tags_from=ATTRS).fit(planted).results_.to_pylist()
    top_dog = next(r for r in one if r["class"] == "dog")
    assert top_dog["valid"] and top_dog["conditions"][0]["feature"] in (0, 1)
    assert top_dog["selected_features"][-1] in (0, 1)  # the highest mutual information


def test_leaf_metrics_equal_a_recount_from_the_stored_membership(planted):
    est = Barlow(max_depth=3).fit(planted)
    members = est.read_table(planted, "barlow_tree_members").to_pylist()
    truth = _truth(planted)
    for cls in ("cat", "dog"):
        rows = [r for r in est.results_.to_pylist() if r["class"] == cls]
        group = [m for m in members if m["class"] == cls]
        assert all(m["failure"] == truth[m["image_id"]]["failure"] for m in group)
        assert all(truth[m["image_id"]]["label"] == cls for m in group)
        n_all = len(group)
        f_all = sum(m["failure"] for m in group)
        assert n_all == sum(1 for t in truth.values() if t["label"] == cls)
        aler = Fraction(0)
        for r in rows:
            inside = [m for m in group if m["leaf"] == r["leaf"]]
            n, f = len(inside), sum(m["failure"] for m in inside)
            assert (r["size"], r["failures"]) == (n, f)
            assert r["error_rate"] == pytest.approx(f / n, abs=1e-12)
            assert r["error_coverage"] == pytest.approx(f / f_all, abs=1e-12)
            assert r["importance"] == pytest.approx((f / n) * (f / f_all), abs=1e-12)
            assert r["valid"] == (Fraction(f, n) > Fraction(f_all, n_all) + Fraction(1, 10)
                                  and Fraction(f, f_all) > Fraction(2, 10))  # fmt: skip
            aler += Fraction(f, n) * Fraction(f, f_all)
        assert sum(r["error_coverage"] for r in rows) == pytest.approx(1.0, abs=1e-12)
        assert {m["leaf"] for m in group} == {r["leaf"] for r in rows}
        for r in rows:
            assert r["base_error_rate"] == pytest.approx(f_all / n_all, abs=1e-12)
            assert r["aler"] == pytest.approx(float(aler), abs=1e-12)
            assert r["aler"] >= r["base_error_rate"]
            assert r["aler_gain"] == pytest.approx(r["aler"] - r["base_error_rate"], abs=1e-12)


def test_groups_without_failures_or_only_failures_get_a_status_row(tmp_path):
    store = build(tmp_path / "s", n=200)
    preds = store.read("predictions")
    label = {r["image_id"]: r["label"] for r in store.read("images", ["image_id", "label"])
             .to_pylist()}  # fmt: skip
    correct = [label[i] == "cat" for i in preds["image_id"].to_pylist()]  # cats right, dogs wrong
    preds = preds.set_column(preds.schema.get_field_index("correct"), "correct",
                             pa.array(correct))  # fmt: skip
    store.upsert("predictions", preds)
    rows = {r["class"]: r for r in Barlow().fit(store).results_.to_pylist()}
    assert rows["cat"]["status"] == "no failures" and rows["cat"]["leaf"] is None
    assert rows["dog"]["status"] == "only failures" and rows["dog"]["leaf"] is None
    assert rows["dog"]["base_error_rate"] == 1.0 and rows["cat"]["group_failures"] == 0


def test_prediction_grouping_classes_and_splits(planted):
    est = Barlow(by="prediction", classes=["dog"], split="val").fit(planted)
    assert set(est.results_["class"].to_pylist()) == {"dog"}
    members = est.read_table(planted, "barlow_tree_members").to_pylist()
    preds = {r["image_id"]: r["prediction"] for r in planted.read("predictions").to_pylist()}
    splits = {r["image_id"]: r["split"] for r in planted.read("images").to_pylist()}
    assert members and all(preds[m["image_id"]] == "dog" for m in members)
    assert all(splits[m["image_id"]] == "val" for m in members)
    assert len(members) == sum(1 for i, p in preds.items() if p == "dog" and splits[i] == "val")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"classes": ["dgo"]},
         "classes: no image has label 'dgo'; did you mean 'dog'? known: cat, dog"),
        ({"split": "vla"}, "split: no image has split 'vla'; did you mean 'val'? known: test, val"),
        ({"max_depth": 4}, "max_depth must be between 1 and 3, got 4"),
        ({"tags_from": ["label"]}, "tags_from cannot use 'label'; analyses look within each "
         "class; give categorical metadata columns such as attr_background"),
    ],
)  # fmt: skip
def test_bad_parameters_are_one_line_and_write_nothing(planted, params, message):
    before = planted.versions(["analysis_runs"]) if planted.has_table("analysis_runs") else {}
    with pytest.raises(ConfigError) as info:
        Barlow(**params).fit(planted)
    assert info.value.one_line() == message
    after = planted.versions(["analysis_runs"]) if planted.has_table("analysis_runs") else {}
    assert before == after


def test_a_store_without_robust_features_says_how_to_get_them(tmp_path):
    store = build(tmp_path / "s", n=100)
    images = store.read("images").drop_columns(["robust_model", "robust_features"])
    store.replace("images", images)
    with pytest.raises(StoreError) as info:
        Barlow().fit(store)
    assert info.value.one_line().endswith(
        "has no robust features (images.robust_features); ingest with --robust MODEL first"
    )


def test_stored_queries_show_the_latest_run_of_each_class(tmp_path):
    store = build(tmp_path / "s", n=600)
    full = Barlow().fit(store)
    dog_only = Barlow(classes=["dog"], max_depth=2).fit(store)
    # another tree depth is another run of the same run_key: dog from the newer run, cat kept
    shown = run_sql(store, "SELECT DISTINCT class, run_id FROM barlow_leaves ORDER BY class")
    assert shown.to_pylist() == [
        {"class": "cat", "run_id": full.run_id_},
        {"class": "dog", "run_id": dog_only.run_id_},
    ]
    members = run_sql(store, "SELECT class, count(*) AS n FROM barlow_members GROUP BY 1 "
                             "ORDER BY 1").to_pylist()  # fmt: skip
    labels = store.read("images", ["label"])["label"].to_pylist()
    assert members == [{"class": c, "n": labels.count(c)} for c in ("cat", "dog")]
    classes = run_sql(store, "SELECT * FROM barlow_classes ORDER BY class").to_pylist()
    for row in classes:
        leaves = [r for r in run_sql(store, "SELECT * FROM barlow_leaves").to_pylist()
                  if r["class"] == row["class"]]  # fmt: skip
        assert row["valid_leaves"] == sum(r["valid"] for r in leaves)
        best = max(leaves, key=lambda r: r["importance"])
        assert (row["best_rule"], row["aler_gain"]) == (best["rule"], best["aler_gain"])
    only_valid = run_sql(store, "SELECT count(*) AS n FROM barlow_leaves", params={"valid": "true"})
    assert only_valid.column("n")[0].as_py() == sum(r["valid_leaves"] for r in classes)


def _cli(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()",
           "--store", str(store.path), "barlow", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_prints_valid_leaves_first_and_json_has_every_column(planted):
    r = _cli(planted, "--format", "json", "--tags-from", ",".join(ATTRS), "--max-depth", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    valid = [row["valid"] for row in rows]
    assert valid == sorted(valid, reverse=True) and valid[0]
    from failstore.queries.barlow.estimator import LEAVES_SCHEMA

    assert list(rows[0]) == LEAVES_SCHEMA.names
    table = _cli(planted, "--class", "dog", "--max-depth", "2", "--tags-from", ",".join(ATTRS))
    header = table.stdout.splitlines()[0]
    assert [h.strip() for h in header.split("│")][:4] == ["class", "valid", "rule", "ER"]


def test_cli_says_why_there_is_no_valid_leaf(planted):
    r = _cli(planted, "--delta", "1", "--format", "csv")
    assert r.returncode == 0
    assert r.stderr.strip().startswith("no valid leaf: ")
    assert "--delta 1" in r.stderr and "--max-depth" in r.stderr


def test_mutual_info_ranking_puts_the_cause_first_in_every_failing_group(planted):
    est = Barlow(top_k=8).fit(planted)
    dog = next(r for r in est.results_.to_pylist() if r["class"] == "dog")
    order = np.asarray(dog["selected_features"])
    assert set(order[-2:].tolist()) == {0, 1}  # ascending MI: the two causes last
    assert dog["mutual_info"] == sorted(dog["mutual_info"])


def test_cli_pictures_draw_every_valid_leaf_feature_from_the_real_robust_model(tmp_path):
    """A real ingest (untrained demo networks) and `--pictures`: the files the
    table lists exist and decode, one image / heatmap / attack per rank, and the listed top
    images are the group's largest values of the feature."""
    torch = pytest.importorskip("torch")
    from conftest import write_colour_folder
    from PIL import Image

    from failstore.demo.nets import BottleneckCNN, PooledCNN, export_model
    from failstore.ingest.pipeline import IngestOptions, ingest

    torch.manual_seed(3)
    names, mean, std = ["red", "green", "blue"], [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    kw = {"num_classes": 3, "widths": [8, 8, 16, 16], "bottleneck": 10}
    export_model(BottleneckCNN(**kw), tmp_path / "target", "failstore.demo.nets:BottleneckCNN",
                 kw, names, mean, std, {}, size=32)  # fmt: skip
    rkw = {"num_classes": 3, "widths": [8, 8, 8, 12]}
    export_model(PooledCNN(**rkw), tmp_path / "robust", "failstore.demo.nets:PooledCNN", rkw,
                 names, mean, std, {}, size=32)  # fmt: skip
    images = write_colour_folder(tmp_path / "images", per_class=8, size=(40, 34), seed=2)
    target, robust = str(tmp_path / "target"), str(tmp_path / "robust")
    opts = IngestOptions(source=images, workers=0, batch_size=8, target=target, robust=robust)
    ingest(tmp_path / "S", opts)
    store = Store(tmp_path / "S")
    out = tmp_path / "pictures"
    # the untrained target predicts one class: group by prediction to have failures and successes
    r = _cli(store, "--by", "prediction", "--delta", "0", "--tau", "0", "--pictures", str(out),
             "--attack-steps", "2", "--top-images", "3", "--format", "csv")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = run_sql(store, "SELECT * FROM barlow_pictures").to_pylist()
    leaves = run_sql(store, "SELECT * FROM barlow_leaves WHERE valid").to_pylist()
    assert leaves, "no valid leaf to draw"
    want = {(lf["class"], lf["leaf"], c["feature"]) for lf in leaves for c in lf["conditions"]}
    assert {(p["class"], p["leaf"], p["feature"]) for p in rows} == want
    assert len(rows) == 3 * 3 * len(want)  # 3 ranks x (image, heatmap, attack)
    for p in rows:
        assert p["path"].startswith(str((out / "prediction").resolve())), p["path"]
        with Image.open(p["path"]) as im:
            assert im.size == (32, 32)
    stored = store.read("images", ["image_id", "robust_features"]).to_pylist()
    feats = {r["image_id"]: r["robust_features"] for r in stored}
    members = run_sql(store, "SELECT class, image_id FROM barlow_members").to_pylist()
    for cls, _, feature in want:
        group = [m["image_id"] for m in members if m["class"] == cls]
        best = sorted(group, key=lambda i: -feats[i][feature])[:3]
        tops = sorted((p for p in rows if p["class"] == cls and p["feature"] == feature
                       and p["kind"] == "image"), key=lambda p: p["rank"])  # fmt: skip
        listed = [p["image_id"] for p in tops][:3]
        assert [feats[i][feature] for i in listed] == [feats[i][feature] for i in best]
