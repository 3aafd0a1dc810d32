"""`ConceptBank` over the store (issue 11, the concept bank from tags), on the planted store:
its bottleneck embeddings carry `snow` in dimension 0 and `small` in dimension 1."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from planted_store import build
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from failstore.queries.concepts import ConceptBank
from failstore.queries.concepts.examples import tag_examples
from failstore.queries.sql.session import run_sql
from failstore.store import Store


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return build(tmp_path_factory.mktemp("bank") / "s")


def _embeddings(store: Store) -> tuple[list[str], np.ndarray, list[list[str]], list[str]]:
    preds = {r["image_id"]: r["embedding"] for r in store.read("predictions").to_pylist()}
    images = sorted(store.read("images", ["image_id", "label", "tags"]).to_pylist(),
                    key=lambda r: r["image_id"])  # fmt: skip
    ids = [r["image_id"] for r in images]
    return (
        ids,
        np.array([preds[i] for i in ids]),
        [r["tags"] for r in images],
        [r["label"] for r in images],
    )


def test_the_planted_concepts_are_kept_and_point_along_their_dimension(planted):
    rows = {r["concept"]: r for r in ConceptBank().fit(planted).results_.to_pylist()}
    assert set(rows) == {"water", "sand", "snow", "small", "large"}  # the store's CLIP tags
    for concept, dim in (("snow", 0), ("small", 1)):
        r = rows[concept]
        assert r["kept"] and r["reason"] is None and r["val_accuracy"] >= 0.9, r
        direction = np.array(r["direction"])
        assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-6)
        assert int(np.argmax(np.abs(direction))) == dim and direction[dim] > 0
    # water/sand/large carry no signal in the embedding: dropped by the 0.7 rule, with why
    for concept in ("water", "sand"):
        assert not rows[concept]["kept"] and rows[concept]["direction"] is None
        assert rows[concept]["reason"].startswith("held-out accuracy ")


def test_a_cav_equals_a_direct_svm_fit_on_the_same_examples(planted):
    row = next(r for r in ConceptBank().fit(planted).results_.to_pylist()
               if r["concept"] == "snow")  # fmt: skip
    _, emb, tags, labels = _embeddings(planted)
    names = ["water", "sand", "snow", "small", "large"]  # the CLIP vocabulary order
    matrix = np.array([[n in t for n in names] for t in tags])
    ex = tag_examples(matrix, np.array(labels), max_examples=500, seed=0)[names.index("snow")]
    x = np.concatenate([emb[ex.positives], emb[ex.negatives]])
    y = np.concatenate([np.ones(len(ex.positives)), np.zeros(len(ex.negatives))])
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    svm = SVC(kernel="linear", C=0.001).fit(xt, yt)
    coef = svm.coef_[0]
    np.testing.assert_allclose(row["direction"], coef / np.linalg.norm(coef), atol=1e-5)
    assert row["val_accuracy"] == pytest.approx(float((svm.predict(xv) == yv).mean()), abs=1e-12)
    assert (row["positives"], row["negatives"]) == (len(ex.positives), len(ex.negatives))


def test_negatives_never_carry_the_concept_and_are_balanced_over_classes(planted):
    _, _, tags, labels = _embeddings(planted)
    names = ["water", "sand", "snow", "small", "large"]
    matrix = np.array([[n in t for n in names] for t in tags])
    label = np.array(labels)
    for j, ex in enumerate(tag_examples(matrix, label, max_examples=500, seed=0)):
        assert len(ex.negatives) == len(ex.positives)
        assert not matrix[ex.negatives, j].any()
        counts = [int(np.sum(label[ex.negatives] == c)) for c in ("cat", "dog")]
        assert abs(counts[0] - counts[1]) <= 1, (names[j], counts)  # both classes have plenty


def test_stored_query_and_cli(planted):
    est = ConceptBank(tags_from=["attr_background", "attr_size"], min_accuracy=0.9).fit(planted)
    shown = run_sql(planted, "SELECT concept, kept FROM concept_bank WHERE tag_source <> 'tags' "
                             "ORDER BY concept").to_pylist()  # fmt: skip
    assert [r["concept"] for r in shown] == sorted(est.results_["concept"].to_pylist())
    kept = {r["concept"] for r in shown if r["kept"]}
    assert {"attr_background=snow", "attr_size=small"} <= kept
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", "--store",
           str(planted.path), "concepts", "--svm-c", "0.001", "--min-accuracy", "2"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --min-accuracy must be between 0 and 1, got 2.0"
