"""`Explain` (CES over the store) against a brute-force numpy computation written here, on the
planted store (dogs small AND on snow fail; the bottleneck carries snow and small)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from planted_store import build

from failstore.queries.concepts import ConceptBank, Explain
from failstore.queries.sql.session import run_sql
from failstore.store import Store


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return build(tmp_path_factory.mktemp("explain") / "s")


def _prob(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: int) -> float:
    z = w @ x + b
    z = np.exp(z - z.max())
    return float((z / z.sum())[y])


def _brute(store: Store, delta: float) -> tuple[dict, dict]:
    bank = [r for r in ConceptBank().fit(store).results_.to_pylist() if r["kept"]]
    model = store.read("models").to_pylist()
    head = next(m for m in model if m["role"] == "target")
    w = np.array(head["head_weight"]).reshape(head["head_rows"], head["head_cols"])
    b = np.array(head["head_bias"])
    label = {r["image_id"]: r["label"] for r in store.read("images").to_pylist()}
    per_image, sums = {}, {}
    for p in store.read("predictions").to_pylist():
        if p["correct"]:
            continue
        e = np.array(p["embedding"], dtype=np.float64)
        y = head["class_names"].index(p["target"])
        for c in bank:
            v = np.array(c["direction"], dtype=np.float64)

            s = _prob(w, b, e + delta * v, y) - _prob(w, b, e, y)
            per_image[(p["image_id"], c["concept"])] = s
            key = (label[p["image_id"]], p["prediction"], c["concept"])
            sums[key] = sums.get(key, 0.0) + s
    return per_image, sums


def test_scores_equal_a_brute_force_softmax_loop(planted):
    est = Explain(delta=0.5).fit(planted)
    per_image, sums = _brute(planted, 0.5)
    images = est.read_table(planted, "ces_images").to_pylist()
    assert len(images) == len(per_image)
    for r in images:
        assert r["score"] == pytest.approx(per_image[(r["image_id"], r["concept"])], abs=1e-12)
    rows = est.results_.to_pylist()
    for r in rows:
        assert r["raw"] == pytest.approx(sums[(r["label"], r["prediction"], r["concept"])],
                                         abs=1e-9)  # fmt: skip
        same_set = [s["raw"] for s in rows if (s["label"], s["prediction"]) ==
                    (r["label"], r["prediction"])]  # fmt: skip
        assert r["score"] == pytest.approx(r["raw"] / max(abs(x) for x in same_set), abs=1e-12)
    # the planted mistakes (dogs predicted cat) would be right with less snow / less small
    dog = sorted((r for r in rows if r["label"] == "dog"), key=lambda r: r["rank"])
    assert dog[0]["concept"] in ("snow", "small") and dog[0]["score"] < 0


def test_selection_by_class_image_and_where(planted):
    only_dogs = Explain(classes=["dog"]).fit(planted)
    assert set(only_dogs.results_["label"].to_pylist()) == {"dog"}
    one = only_dogs.read_table(planted, "ces_images")["image_id"][0].as_py()
    single = Explain(image=one).fit(planted)
    assert set(single.read_table(planted, "ces_images")["image_id"].to_pylist()) == {one}
    snowy = Explain(where="attr_background = 'snow'").fit(planted)
    ids = set(snowy.read_table(planted, "ces_images")["image_id"].to_pylist())
    bg = {r["image_id"]: r["attr_background"] for r in planted.read("images").to_pylist()}
    assert ids and all(bg[i] == "snow" for i in ids)


def test_stored_query_and_cli_sentence(planted):
    est = Explain().fit(planted)
    shown = run_sql(planted, "SELECT DISTINCT run_id FROM ces").column("run_id").to_pylist()
    assert shown == [est.run_id_]
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", "--store",
           str(planted.path), "explain", "--class", "dog"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("dog -> cat on ") and " images: would be right with less " in first
