"""The ingest pipeline with tiny fake models: rows, keys, reruns, resume, bad input."""

from __future__ import annotations

import pytest
from conftest import COLOURS
from fakes import FakeClip, FakeRobust, FakeTarget

from failstore.errors import IngestError, InputError
from failstore.ingest import preflight
from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.queries.sql.session import run_sql
from failstore.store import Store


@pytest.fixture
def fakes(monkeypatch):
    made: dict[str, object] = {}

    def resolve(opts):
        out = {}
        if opts.target:
            out["target"] = made.setdefault(opts.target, FakeTarget(opts.target))
        if opts.robust:
            out["robust"] = made.setdefault(opts.robust, FakeRobust(opts.robust))
        if opts.clip:
            out["clip"] = made.setdefault(opts.clip, FakeClip(opts.clip, dim=3))
        return out

    monkeypatch.setattr(preflight, "resolve_models", resolve)
    return made


def _opts(src, **kw):
    base = dict(
        source=src, target="t1", robust="r", clip="c", workers=0, batch_size=5, commit_every=4
    )
    base.update(kw)
    return IngestOptions(**base)


def test_ingest_lands_one_row_per_image_and_records_bad_files(
    tmp_path, colour_folder_with_bad, fakes
):
    report = ingest(tmp_path / "s", _opts(colour_folder_with_bad))
    store = Store(tmp_path / "s")
    assert (report.seen, report.new_images, report.errors, report.predictions) == (13, 12, 1, 12)
    assert store.count("images") == 12 and store.count("predictions") == 12
    err = store.read("ingest_errors").to_pylist()
    assert len(err) == 1 and err[0]["uri"].endswith("red/corrupt.png")
    rows = store.read("images", ["label", "tags", "robust_features", "clip_model"]).to_pylist()
    for r in rows:
        assert r["tags"] == [{"red": "reddish", "green": "greenish", "blue": "blueish"}[r["label"]]]
        assert len(r["robust_features"]) == 4 and r["clip_model"] == "c"
    preds = run_sql(store, "SELECT label, prediction, correct FROM samples").to_pylist()
    assert all(p["prediction"] == p["label"] and p["correct"] for p in preds)
    models = {m["name"]: m for m in store.read("models").to_pylist()}
    assert models["t1"]["class_names"] == ["red", "green", "blue"]
    assert models["t1"]["head_rows"] == 3 and len(models["t1"]["head_weight"]) == 12
    assert models["c"]["tags"] == list(FakeClip.tags)


def test_rerun_changes_nothing(tmp_path, colour_folder_with_bad, fakes):
    ingest(tmp_path / "s", _opts(colour_folder_with_bad))
    store = Store(tmp_path / "s")
    before = store.versions()
    encoded = {k: v.encoded for k, v in fakes.items()}
    report = ingest(tmp_path / "s", _opts(colour_folder_with_bad))
    assert store.versions() == before  # no table got a new version
    assert {k: v.encoded for k, v in fakes.items()} == encoded  # no model ran again
    assert (report.new_images, report.predictions, report.unchanged) == (0, 0, 12)
    assert store.count("images") == 12 and store.count("ingest_errors") == 1


def test_second_target_adds_predictions_only(tmp_path, colour_folder, fakes):
    ingest(tmp_path / "s", _opts(colour_folder))
    robust_calls, clip_calls = fakes["r"].encoded, fakes["c"].encoded
    report = ingest(tmp_path / "s", _opts(colour_folder, target="t2"))
    store = Store(tmp_path / "s")
    assert report.predictions == 12 and report.new_images == 0
    assert fakes["r"].encoded == robust_calls and fakes["c"].encoded == clip_calls
    assert fakes["t2"].encoded == 12
    assert store.count("predictions") == 24
    got = run_sql(
        store, "SELECT model, count(*) AS n FROM predictions GROUP BY model ORDER BY model"
    )
    assert got.to_pylist() == [{"model": "t1", "n": 12}, {"model": "t2", "n": 12}]


def test_adding_clip_later_fills_only_clip_columns(tmp_path, colour_folder, fakes):
    ingest(tmp_path / "s", _opts(colour_folder, clip=None))
    store = Store(tmp_path / "s")
    assert "tags" not in store.schema("images").names
    report = ingest(tmp_path / "s", _opts(colour_folder))
    assert report.updated_images == 12 and report.new_images == 0
    assert fakes["r"].encoded == 12  # robust not recomputed
    tags = store.read("images", ["tags"]).column("tags").to_pylist()
    assert all(len(t) == 1 for t in tags)


def test_killed_ingest_resumes_without_duplicates(tmp_path, colour_folder, fakes, monkeypatch):
    calls = {"n": 0}
    real = Store.upsert

    def dying_upsert(self, name, data, **kw):
        if name == "predictions":
            calls["n"] += 1
            if calls["n"] == 2:  # die after images of the 2nd commit landed, before predictions
                raise KeyboardInterrupt
        return real(self, name, data, **kw)

    monkeypatch.setattr(Store, "upsert", dying_upsert)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "s", _opts(colour_folder))
    monkeypatch.setattr(Store, "upsert", real)
    store = Store(tmp_path / "s")
    partial_images, partial_preds = store.count("images"), store.count("predictions")
    assert partial_images > partial_preds  # killed between the two commits
    report = ingest(tmp_path / "s", _opts(colour_folder))
    assert store.count("images") == 12 and store.count("predictions") == 12
    assert report.predictions == 12 - partial_preds
    ids = store.read("predictions", ["image_id"]).column("image_id").to_pylist()
    assert len(set(ids)) == 12


def test_unknown_labels_warn_once_and_label_map_fixes_them(tmp_path, colour_folder, fakes):
    (colour_folder / "red").rename(colour_folder / "crimson")
    warnings: list[str] = []
    ingest(tmp_path / "s", _opts(colour_folder), warn=warnings.append)
    assert warnings == [
        "1 dataset labels are not among t1's classes: crimson; their images count as "
        "incorrect. Map them with --label-map FILE (JSON or CSV: dataset label -> model class)"
    ]
    store = Store(tmp_path / "s")
    got = run_sql(store, "SELECT label, target, correct FROM samples WHERE label = 'crimson'")
    assert {(r["target"], r["correct"]) for r in got.to_pylist()} == {(None, False)}
    lm = tmp_path / "map.json"
    lm.write_text('{"crimson": "red"}')
    warnings.clear()
    ingest(tmp_path / "s2", _opts(colour_folder, label_map=lm), warn=warnings.append)
    got = run_sql(
        Store(tmp_path / "s2"),
        "SELECT DISTINCT target, correct FROM samples WHERE label = 'crimson'",
    )
    assert got.to_pylist() == [{"target": "red", "correct": True}] and warnings == []


def test_all_bad_is_an_error_and_strict_flags_partial_failures(
    tmp_path, colour_folder_with_bad, fakes
):
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"")
    with pytest.raises(IngestError, match="nothing was ingested: all 1 images failed"):
        ingest(tmp_path / "s", _opts(tmp_path / "bad"))
    with pytest.raises(IngestError, match=r"1 of 13 images failed \(--strict\)"):
        ingest(tmp_path / "s2", _opts(colour_folder_with_bad, strict=True))
    assert Store(tmp_path / "s2").count("images") == 12  # the good ones are kept


def test_broken_manifest_writes_nothing(tmp_path, colour_folder, fakes):
    m = tmp_path / "m.csv"
    m.write_text("path,lbl\nred/0.png,red\n")
    with pytest.raises(InputError, match="no 'label' column"):
        ingest(tmp_path / "s", _opts(m))
    assert not (tmp_path / "s").exists()


def test_manifest_metadata_boxes_and_masks_land(tmp_path, colour_folder, fakes):
    from PIL import Image

    Image.new("L", (24, 20), 0).save(tmp_path / "mask.png")
    m = tmp_path / "m.csv"
    m.write_text(
        "path,label,split,x0,y0,x1,y1,mask_path,site\n"
        f"{colour_folder}/red/0.png,red,val,1,2,10,12,mask.png,north\n"
        f"{colour_folder}/green/0.png,green,test,,,,,,south\n"
    )
    ingest(tmp_path / "s", _opts(m))
    rows = run_sql(
        Store(tmp_path / "s"),
        "SELECT label, split, site, boxes, mask IS NOT NULL AS has_mask FROM images ORDER BY label",
    ).to_pylist()
    assert rows[0]["label"] == "green" and not rows[0]["boxes"] and not rows[0]["has_mask"]
    assert rows[1]["site"] == "north" and rows[1]["split"] == "val" and rows[1]["has_mask"]
    assert rows[1]["boxes"] == [{"label": None, "x0": 1.0, "y0": 2.0, "x1": 10.0, "y1": 12.0}]


def test_a_fixed_file_leaves_ingest_errors(tmp_path, colour_folder_with_bad, fakes):
    import shutil

    ingest(tmp_path / "s", _opts(colour_folder_with_bad))
    store = Store(tmp_path / "s")
    assert store.count("ingest_errors") == 1
    bad = colour_folder_with_bad / "red" / "corrupt.png"
    shutil.copy(colour_folder_with_bad / "red" / "0.png", bad)  # now a good duplicate, same label
    report = ingest(tmp_path / "s", _opts(colour_folder_with_bad))
    assert report.errors == 0 and report.duplicates == 1
    assert store.count("ingest_errors") == 0


def test_one_model_in_two_roles_is_refused_before_any_write(tmp_path, colour_folder, fakes):
    from failstore.errors import ConfigError, StoreError

    with pytest.raises(ConfigError) as info:
        ingest(tmp_path / "s", _opts(colour_folder, target="m", robust="m"))
    assert info.value.one_line() == (
        "--target and --robust name the same model 'm'; a model has one role in a store; "
        "give each role its own checkpoint (or a copy under another file name)"
    )
    assert not (tmp_path / "s" / "models.lance").exists()
    ingest(tmp_path / "s", _opts(colour_folder, target="m"))
    versions = Store(tmp_path / "s").versions()
    with pytest.raises(StoreError) as info2:
        ingest(tmp_path / "s", _opts(colour_folder, robust="m"))
    assert info2.value.one_line() == (
        f"model 'm' is already in {tmp_path / 's'} as the target model, not as robust; "
        "give this role its own checkpoint (or a copy under another file name)"
    )
    assert Store(tmp_path / "s").versions() == versions


@pytest.mark.parametrize("target", ["o'brien", "x' OR '1'='1"])
def test_quotes_in_model_class_and_split_names(tmp_path, colour_folder, fakes, target):
    """Every filter built from a name is quoted (issue 9: `o'brien` broke the rerun, and
    `x' OR '1'='1` reported 0 predictions and wrote none)."""
    from failstore.queries.slices import Slices

    m = tmp_path / "m.csv"
    rows = [f"{colour_folder}/{c}/{i}.png,{c}'s,it's {i % 2}" for c in COLOURS for i in range(4)]
    m.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    ingest(tmp_path / "s", _opts(m, target=target, robust=None, clip=None))
    store = Store(tmp_path / "s")
    assert store.count("predictions") == 12 and fakes[target].encoded == 12
    ingest(tmp_path / "s", _opts(m, target=target, robust=None, clip=None))  # the rerun
    assert store.count("predictions") == 12 and fakes[target].encoded == 12
    got = run_sql(store, "SELECT DISTINCT model, split FROM samples ORDER BY split").to_pylist()
    assert got == [{"model": target, "split": "it's 0"}, {"model": target, "split": "it's 1"}]
    est = Slices(split="it's 0", model=target, tags_from=["split"], min_size=1).fit(store)
    assert est.source_versions_ and est.results_.schema.names[0] == "class"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": -5}, "--limit must be >= 1, got -5; leave it out to ingest every image"),
        ({"limit": 0}, "--limit must be >= 1, got 0; leave it out to ingest every image"),
        ({"target": ""}, "--target is empty; give a model spec, or leave --target out"),
        ({"clip": "  "}, "--clip is empty; give a model spec, or leave --clip out"),
        ({"clip": None, "tag_threshold": 0.2},
         "--tag-threshold applies to --clip, which is not given; add --clip MODEL or drop "
         "--tag-threshold"),
        ({"target": None, "layer": "fc"},
         "--layer applies to --target, which is not given; add --target MODEL or drop --layer"),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_options_that_cannot_work_are_refused_before_any_write(
    tmp_path, colour_folder, fakes, options, message
):
    from failstore.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        ingest(tmp_path / "s", _opts(colour_folder, **options))
    assert info.value.one_line() == message
    assert not (tmp_path / "s").exists()


def test_ingest_errors_exists_from_the_first_ingest(tmp_path, colour_folder, fakes):
    ingest(tmp_path / "s", _opts(colour_folder))
    assert run_sql(
        Store(tmp_path / "s"), "SELECT count(*) AS n FROM ingest_errors"
    ).to_pylist() == [{"n": 0}]


def test_a_label_map_that_is_not_utf8_is_one_line(tmp_path, colour_folder, fakes):
    from failstore.errors import InputError

    lm = tmp_path / "map.csv"
    lm.write_bytes(b"red,r\xe9d\n")
    with pytest.raises(InputError) as info:
        ingest(tmp_path / "s", _opts(colour_folder, label_map=lm))
    assert info.value.one_line() == (
        f"label map {lm} is not UTF-8 text (byte 5); save it as UTF-8 (JSON object or CSV "
        "'label,class')"
    )
    assert not (tmp_path / "s").exists()


def test_a_metadata_type_conflict_is_refused_before_any_write(tmp_path, colour_folder, fakes):
    from failstore.errors import StoreError

    first = tmp_path / "a.csv"
    first.write_text(f"path,label,site\n{colour_folder}/red/0.png,red,1\n")
    ingest(tmp_path / "s", _opts(first))
    second = tmp_path / "b.csv"
    second.write_text(f"path,label,site\n{colour_folder}/red/1.png,red,north\n")
    store = Store(tmp_path / "s")
    versions = store.versions()
    with pytest.raises(StoreError) as info:
        ingest(tmp_path / "s", _opts(second, target="t2"))  # a new model row would be written
    have = store.schema("images").field("site").type
    assert info.value.one_line() == (
        f"manifest column 'site' is string here but {have} in {tmp_path / 's'}; write 'site' "
        f"as {have} in the manifest (or rename the column), or use a new --store"
    )
    assert store.versions() == versions
    assert "t2" not in store.model_names()


def test_manifest_columns_can_be_named(tmp_path, colour_folder, fakes):
    m = tmp_path / "m.csv"
    m.write_text(f"file,cls\n{colour_folder}/red/0.png,red\n{colour_folder}/green/0.png,green\n")
    ingest(tmp_path / "s", _opts(m, path_column="file", label_column="cls"))
    got = run_sql(Store(tmp_path / "s"), "SELECT label FROM images ORDER BY label")
    assert got.to_pylist() == [{"label": "green"}, {"label": "red"}]


def test_adding_models_later_commits_once_per_flush_not_per_batch(tmp_path, fakes):
    from conftest import write_colour_folder

    root = write_colour_folder(tmp_path / "img", per_class=20)  # 60 images, batches of 5
    ingest(tmp_path / "s", _opts(root, robust=None, clip=None, commit_every=1000))
    before = Store(tmp_path / "s").version("images")
    ingest(tmp_path / "s", _opts(root, commit_every=1000))  # adds robust and CLIP columns
    store = Store(tmp_path / "s")
    # one commit adding the new columns, then one merge per model (was one per 5-image batch)
    assert store.version("images") - before == 3
    got = run_sql(store, "SELECT count(*) AS n FROM images WHERE robust_model IS NOT NULL "
                         "AND clip_model IS NOT NULL")  # fmt: skip
    assert got.to_pylist() == [{"n": 60}]


def test_identical_bytes_under_two_labels_are_recorded(tmp_path, colour_folder, fakes):
    import shutil

    copy = colour_folder / "green" / "copy_of_red0.png"
    shutil.copy(colour_folder / "red" / "0.png", copy)
    warnings: list[str] = []
    report = ingest(tmp_path / "s", _opts(colour_folder), warn=warnings.append)
    assert (report.duplicates, report.label_conflicts) == (1, 1)
    assert warnings == [
        "1 files have the same bytes as an earlier file with another label; each is a row of "
        'ingest_errors (failstore sql "SELECT * FROM ingest_errors")'
    ]
    store = Store(tmp_path / "s")
    got = run_sql(store, "SELECT uri, reason FROM ingest_errors").to_pylist()
    red = colour_folder / "red" / "0.png"  # class folders are read in name order: green first
    assert got == [
        {
            "uri": str(red),
            "reason": f"same bytes as {copy}, which is labelled 'green'; this file says 'red': "
            "the image keeps 'green' (fix the label of one of them)",
        }
    ]
    assert store.count("images") == 12
    versions = store.versions()
    ingest(tmp_path / "s", _opts(colour_folder))  # a rerun records nothing new
    assert store.versions() == versions
