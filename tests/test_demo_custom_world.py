"""A world spec with a rule of its own (another class, another attribute) goes through the whole
demo — generation, training, ingest, analyses, report — without code changes."""

from __future__ import annotations

import yaml

from failstore.demo.run import run_demo
from failstore.demo.train_clip import ClipConfig
from failstore.demo.train_robust import RobustConfig
from failstore.demo.train_target import TargetConfig
from failstore.queries.sql.session import run_sql
from failstore.store import Store

SPEC = {
    "name": "cows-on-grass",
    "seed": 7,
    "image_size": 64,
    "classes": ["bird", "cow", "giraffe"],
    "sizes": {"train": 240, "val": 120, "test": 120},
    "eval_splits": ["val", "test"],
    "min_slice_count": 0,
    "silhouettes": "auto",
    "rules": [
        {
            "name": "cows live on grass",
            "split": "train",
            "when": {"class": "cow"},
            "set": {"attr_background": {"grass": 1.0}},
            "slice_name": "cows off grass",
        },
    ],
}


def test_custom_world_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILSTORE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cows.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    tiny = {
        "target": TargetConfig(samples=512, batch_size=64, warmup_steps=1),
        "robust": RobustConfig(samples=256, batch_size=64, eval_adv_images=32),
        "clip": ClipConfig(
            samples=256,
            batch_size=64,
            width=32,
            layers=1,
            text_width=32,
            text_layers=1,
            embed_dim=32,
        ),
    }
    result = run_demo(tmp_path / "store", world=path, log=lambda m: None, workers=0, configs=tiny)
    store = Store(result.store)
    assert result.metrics["target"]["steps"] == 512 // 64  # the tiny budgets were used
    assert store.count("images") == 480 and store.count("predictions") == 480
    assert [f.planted for f in result.findings] == ["cows off grass"]
    got = run_sql(
        store, "SELECT DISTINCT attr_background FROM images WHERE split = 'train' AND label = 'cow'"
    ).to_pylist()
    assert got == [{"attr_background": "grass"}]  # the custom rule holds in train
    assert {"target", "robust", "clip"} <= {
        r["role"] for r in store.read("models", ["role"]).to_pylist()
    }
    check_demo_tables(store, result.metrics)
    check_planted_modes(store, result)
    # the static report, beside the store: every class of the world has its page
    assert result.report == (tmp_path / "store-report" / "index.html").resolve()
    index = result.report.read_text()
    classes = {r["label"] for r in store.read("images", ["label"]).to_pylist()}
    for cls in classes:
        assert f"<td>{cls}</td>" in index, cls
        (page,) = result.report.parent.glob(f"class-target_{cls}-*.html")
        assert f'href="{page.name}"' in index


def numeric_metrics(metrics: dict) -> dict[tuple[str, str], float]:
    """(model, metric) -> value for every number (not bool) in the per-model metric dicts."""
    return {
        (model, k): float(v)
        for model, m in metrics.items()
        if isinstance(m, dict)
        for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def check_demo_tables(store: Store, metrics: dict) -> None:
    # model_metrics: one row per numeric metric of the run's metrics, with its value.
    rows = store.read("model_metrics").to_pylist()
    expected = numeric_metrics(metrics)
    assert len(rows) == len(expected)
    assert {(r["model"], r["metric"]): r["value"] for r in rows} == expected
    assert {"steps", "test_accuracy"} <= {k for (model, k) in expected if model == "target"}
    assert ("robust", "adv_accuracy") in expected
    # tagger_audit: one row per tag of the CLIP model's vocabulary, in vocabulary order, whose
    # counts agree with a recount of the test images' tags and attributes.
    clip = store.read("models", ["tags"], filter="role = 'clip'").to_pylist()
    (vocab,) = [r["tags"] for r in clip]
    audit = store.read("tagger_audit").to_pylist()
    assert [r["tag"] for r in audit] == vocab and len(vocab) >= 1
    test_images = store.read("images", filter="split = 'test'").to_pylist()
    assert len(test_images) == 120
    for r in audit:
        assert r["predicted"] == sum(r["tag"] in (im["tags"] or []) for im in test_images)
        if r["attribute"]:
            assert r["support"] == sum(im[r["attribute"]] == r["tag"] for im in test_images)
        else:
            assert r["support"] == 0
    # Each table was written as one run, recorded in analysis_runs.
    runs = {r["run_id"]: r for r in store.read("analysis_runs").to_pylist()}
    for table, n in (("model_metrics", len(expected)), ("tagger_audit", len(vocab))):
        (run_id,) = set(store.read(table, ["run_id"]).column("run_id").to_pylist())
        assert (runs[run_id]["analysis"], runs[run_id]["result_table"]) == (f"demo.{table}", table)
        assert runs[run_id]["rows"] == n


def check_planted_modes(store: Store, result) -> None:
    """`planted_modes`: one row per planted slice and evaluation split, equal to the result's,
    whose counts agree with a recount through SQL over `samples`; a coverage share per found
    slice."""
    rows = store.read("planted_modes").to_pylist()
    assert [(r["planted"], r["split"]) for r in rows] == [
        ("cows off grass", "val"), ("cows off grass", "test")]
    assert [{k: v for k, v in r.items() if k != "run_id"} for r in rows] == [
        m.row() for m in result.planted_modes]
    assert rows[0]["rule_text"] == ("cows live on grass (train): when class = cow, set "
                                    "attr_background = grass 1")
    for r in rows:
        (got,) = run_sql(
            store,
            "SELECT count(*) AS n, count(*) FILTER (WHERE NOT correct) AS k FROM samples "
            "WHERE split = $s AND label = 'cow' AND attr_background <> 'grass'",
            params={"s": r["split"]},
        ).to_pylist()
        assert (r["size"], r["errors"]) == (got["n"], got["k"]) and got["n"] > 0
        assert r["learned"] == (r["error_rate"] >= 0.3
                                and r["error_rate"] >= 2 * r["class_error_rate"])
    runs = {x["run_id"]: x for x in store.read("analysis_runs").to_pylist()}
    (run_id,) = {r["run_id"] for r in rows}
    assert runs[run_id]["analysis"] == "demo.planted_modes"
    for f in result.findings + result.findings_attr:
        assert f.planted_size is not None and f.planted_size > 0
        assert (f.covered is None) == (not f.found)
