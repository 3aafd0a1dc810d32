"""Concept sources other than tags (issue 11): a concept library of image folders embedded with the
reloaded target model, a negatives folder, and arrays from Python; then `Explain` on them and on
a slice of `failstore slices`.

The target model here is a factory whose bottleneck is the image's mean colour (normalised), so a
"red" concept must point along the red channel, and whose head sends every blue image to green.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import write_colour_folder
from planted_store import build
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from failstore.errors import ConfigError, InputError
from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.queries.concepts import ConceptBank, Explain
from failstore.queries.concepts.examples import folder_examples
from failstore.queries.slices import Slices
from failstore.queries.sql.session import run_sql
from failstore.store import Store

torch = pytest.importorskip("torch")

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
        with torch.no_grad():  # red -> red, green -> green, blue -> green (green's bias)
            net[2].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0]]))
            net[2].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
        return net, ["red", "green", "blue"], {"resize": 36, "crop": 32,
                                               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    """
)
MODEL = "fs_concept_colours:make"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("library")
    (root / "fs_concept_colours.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        images = write_colour_folder(root / "dataset", 6, (40, 36), seed=1)
        ingest(root / "store", IngestOptions(source=images, workers=0, batch_size=8, target=MODEL))
        library = write_colour_folder(root / "library", 12, (40, 36), seed=2)
        yield Store(root / "store"), library, root
    finally:
        sys.path.remove(str(root))


def _embed_by_hand(files: list[Path]) -> np.ndarray:
    """The bottleneck computed here: resize the shorter side to 36 (bilinear), centre-crop 32,
    normalise, average each channel."""
    from PIL import Image

    from failstore.models.pixels import center_crop, resize_shorter

    out = []
    for f in files:
        with Image.open(f) as im:
            small = resize_shorter(im.convert("RGB"), 36, Image.Resampling.BILINEAR)
            crop = center_crop(np.asarray(small), 32)
        out.append(((crop.astype(np.float64) / 255 - 0.5) / 0.25).mean(axis=(0, 1)))
    return np.array(out)


def _library_files(library: Path) -> tuple[list[Path], list[str], list[str]]:
    names = sorted(d.name for d in library.iterdir() if d.is_dir())
    files = [f for n in names for f in sorted((library / n).glob("*.png"))]
    return files, names, [f.parent.name for f in files]


def test_folder_concepts_equal_a_direct_svm_on_embeddings_made_by_hand(world):
    store, library, _ = world
    before = store.read("images", ["image_id"])["image_id"].to_pylist()
    bank = ConceptBank(folder=str(library)).fit(store)
    rows = {r["concept"]: r for r in bank.results_.to_pylist()}
    assert sorted(rows) == ["blue", "green", "red"]
    assert {r["tag_source"] for r in rows.values()} == {f"folder:{library}"}
    files, names, groups = _library_files(library)
    emb = _embed_by_hand(files)
    for j, ex in enumerate(folder_examples(groups, names, max_examples=500, seed=0)):
        row = rows[names[j]]
        assert row["kept"] and row["val_accuracy"] == 1.0
        x = np.concatenate([emb[ex.positives], emb[ex.negatives]])
        y = np.concatenate([np.ones(len(ex.positives)), np.zeros(len(ex.negatives))])
        xt, _, yt, _ = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
        coef = SVC(kernel="linear", C=0.001).fit(xt, yt).coef_[0]
        np.testing.assert_allclose(row["direction"], coef / np.linalg.norm(coef), atol=2e-3)
        assert int(np.argmax(row["direction"])) == ["red", "green", "blue"].index(names[j])
        # negatives: as many, from the two other concepts, balanced
        other = [groups[i] for i in ex.negatives]
        assert len(other) == 12 and names[j] not in other
        assert sorted(other.count(n) for n in set(other)) == [6, 6]
    # the library is kept apart from the dataset: recorded per run, never in images
    used = bank.read_table(store, "concept_images").to_pylist()
    assert sorted(r["uri"] for r in used) == sorted(str(f) for f in files)
    assert all(r["image_id"] and r["error"] is None for r in used)
    assert store.read("images", ["image_id"])["image_id"].to_pylist() == before


def test_an_unchanged_library_is_reused_and_a_changed_one_is_a_new_run(world, tmp_path):
    store, library, _ = world
    import shutil

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    first = ConceptBank(folder=str(lib)).fit(store)
    assert not first.reused_
    assert ConceptBank(folder=str(lib)).fit(store).reused_
    shutil.copy(lib / "red" / "0.png", lib / "red" / "extra.png")
    again = ConceptBank(folder=str(lib)).fit(store)
    assert not again.reused_ and again.run_id_ != first.run_id_
    red = next(r for r in again.results_.to_pylist() if r["concept"] == "red")
    assert red["positives"] == 13


def test_a_negatives_folder_and_a_bad_file(world, tmp_path):
    store, library, _ = world
    import shutil

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    (lib / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    grey = tmp_path / "grey"
    grey.mkdir()
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (40, 36), (100 + 10 * i,) * 3).save(grey / f"{i}.png")
    bank = ConceptBank(folder=str(lib), negatives=str(grey), min_accuracy=0.0).fit(store)
    rows = {r["concept"]: r for r in bank.results_.to_pylist()}
    assert {r["negatives"] for r in rows.values()} == {5}  # all 5 grey images, never another colour
    assert rows["red"]["positives"] == 12  # the broken file is not a positive
    used = bank.read_table(store, "concept_images").to_pylist()
    broken = [r for r in used if r["uri"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["image_id"] is None and broken[0]["error"]
    assert sum(r["concept"] is None for r in used) == 5


def test_library_errors_are_one_line(world, tmp_path):
    store, library, _ = world
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    cases = [
        (dict(folder=str(tmp_path / "nope")), InputError,
         f"concept folder {tmp_path / 'nope'} does not exist or is not a folder; lay it out as "
         "<folder>/<concept>/*.jpg, one sub-folder per concept"),
        (dict(folder=str(tmp_path / "flat")), InputError,
         f"concept folder {tmp_path / 'flat'} has no concept sub-folders; lay it out as "
         "<folder>/<concept>/*.jpg, one sub-folder per concept"),
        (dict(folder=str(library), tags_from=["attr_x"]), ConfigError,
         "tags_from and folder are two sources of concepts: give one"),
        (dict(negatives=str(library)), ConfigError,
         "negatives is a folder of negative images for a folder library; give folder too"),
    ]  # fmt: skip
    for kwargs, kind, message in cases:
        with pytest.raises(kind) as exc:
            ConceptBank(**kwargs).fit(store)
        assert str(exc.value) == message


def test_arrays_from_python(world):
    store, _, _ = world
    rng = np.random.default_rng(0)
    pos = rng.normal(0, 1, (40, 3)) + np.array([0, 0, 3])
    neg = rng.normal(0, 1, (40, 3))
    bank = ConceptBank().fit(store, concepts={"bluish": (pos, neg)})
    (row,) = bank.results_.to_pylist()
    assert row["tag_source"] == "arrays" and row["kept"]
    x, y = np.concatenate([pos, neg]), np.r_[np.ones(40), np.zeros(40)]
    xt, _, yt, _ = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    coef = SVC(kernel="linear", C=0.001).fit(xt, yt).coef_[0]
    np.testing.assert_allclose(row["direction"], coef / np.linalg.norm(coef), atol=1e-5)
    assert ConceptBank().fit(store, concepts={"bluish": (pos, neg)}).reused_
    assert not ConceptBank().fit(store, concepts={"bluish": (pos, neg[:-1])}).reused_
    assert vars(bank).keys() >= {"results_", "run_id_"} and "_arrays" not in vars(bank)
    with pytest.raises(InputError) as exc:
        ConceptBank().fit(store, concepts={"wide": (np.ones((4, 5)), np.zeros((4, 5)))})
    assert str(exc.value) == (
        f"concepts have 5 dimensions, the bottleneck of '{MODEL}' has 3; give embeddings from "
        "predictions.embedding of that model"
    )
    with pytest.raises(InputError) as exc:
        ConceptBank().fit(store, concepts={"odd": (np.ones((4, 3)), np.zeros((4, 2)))})
    assert str(exc.value) == "concept 'odd': negatives must be a n x 3 matrix, got shape (4, 2)"
    # Explain on this bank: blue images are all predicted green; "bluish" says more blue
    est = Explain(delta=1.0).fit(store, bank=bank)
    sets = est.results_.to_pylist()
    assert {(r["label"], r["prediction"], r["concept"]) for r in sets} == {
        ("blue", "green", "bluish")
    }
    assert sets[0]["tag_source"] == "arrays" and sets[0]["images"] == 6


def test_explain_with_the_folder_bank(world):
    store, library, _ = world
    est = Explain(folder=str(library), delta=1.0).fit(store)
    sets = est.results_.to_pylist()
    assert {r["tag_source"] for r in sets} == {f"folder:{library}"}
    assert {r["concept"] for r in sets} == {"red", "green", "blue"}
    assert {(r["label"], r["prediction"], r["images"]) for r in sets} == {("blue", "green", 6)}
    # the stored query shows the folder bank beside the others
    shown = run_sql(store, "SELECT DISTINCT tag_source FROM concept_bank").column(0).to_pylist()
    assert f"folder:{library}" in shown


def test_cli_folder_bank(world):
    store, library, root = world
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", "--store",
           str(store.path), "concepts", "--folder", str(library)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "red" in r.stdout and "blue" in r.stdout


# --- --slice: the mistakes of one slice of `failstore slices` ---------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return build(tmp_path_factory.mktemp("slice") / "s")


def test_explain_a_slice_explains_exactly_its_mistakes(planted):
    slices = Slices(classes=["dog"]).fit(planted).results_.to_pylist()
    top = slices[0]
    assert sorted(top["tags"]) == ["small", "snow"]
    est = Explain(slice_tags=["snow", "small"], delta=0.5).fit(planted)
    chosen = {r["image_id"] for r in est.read_table(planted, "ces_images").to_pylist()}
    images = {r["image_id"]: r for r in planted.read("images").to_pylist()}
    brute = {
        p["image_id"]
        for p in planted.read("predictions").to_pylist()
        if not p["correct"]
        and images[p["image_id"]]["label"] == "dog"
        and {"snow", "small"} <= set(images[p["image_id"]]["tags"])
    }
    assert chosen == brute and len(brute) > 20
    with pytest.raises(ConfigError) as exc:
        Explain(slice_tags=["sand", "large"]).fit(planted)
    assert str(exc.value).startswith(
        "slice: no slice 'large + sand' in the latest `failstore slices` run of 'm' (it has: "
    )
