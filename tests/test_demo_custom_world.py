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
    got = run_sql(store,
        "SELECT DISTINCT attr_background FROM images WHERE split = 'train' AND label = 'cow'"
    ).to_pylist()
    assert got == [{"attr_background": "grass"}]  # the custom rule holds in train
    assert {"target", "robust", "clip"} <= {
        r["role"] for r in store.read("models", ["role"]).to_pylist()
    }
    assert store.count("tagger_audit") > 0 and store.count("model_metrics") > 0
