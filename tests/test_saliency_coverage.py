"""`failstore saliency` and `failstore coverage` over a real store (issue 12): a tiny conv target
ingested from a manifest with masks and boxes; maps checked against Captum run by hand on the
same pixels, coverage against a brute-force rasterisation written here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.queries.coverage.estimator import Coverage
from failstore.queries.saliency.compute import SaliencyOptions, compute_saliency
from failstore.queries.sql.session import run_sql
from failstore.store import Store

torch = pytest.importorskip("torch")

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 2))
        return net, ["square", "plain"], {"resize": 24, "crop": 24,
                                          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    """
)
MODEL = "fs_sal_tiny:make"


def _write_world(root: Path) -> Path:
    """8 images 30 x 24: 'square' ones with a bright square (masked or boxed), 'plain' ones
    without; one image has neither mask nor box."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        arr = rng.integers(0, 60, (24, 30, 3)).astype(np.uint8)
        x0, y0 = 4 + i, 3 + (i % 4)
        label = "square" if i % 2 == 0 else "plain"
        if label == "square":
            arr[y0 : y0 + 9, x0 : x0 + 11] = 230
        path = root / f"img{i}.png"
        Image.fromarray(arr).save(path)
        row = {
            "path": str(path),
            "label": label,
            "split": "test",
            "mask_path": None,
            "x0": None,
            "y0": None,
            "x1": None,
            "y1": None,
        }
        if i < 4:
            mask = np.zeros((24, 30), np.uint8)
            mask[y0 : y0 + 9, x0 : x0 + 11] = 255
            Image.fromarray(mask).save(root / f"mask{i}.png")
            row["mask_path"] = str(root / f"mask{i}.png")
        elif i < 7:
            row.update(x0=float(x0), y0=float(y0), x1=float(x0 + 11), y1=float(y0 + 9))
        rows.append(row)
    manifest = root / "manifest.csv"
    _csv(rows, manifest)
    return manifest


def _csv(rows: list[dict], path: Path) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("saliency")
    (root / "fs_sal_tiny.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        manifest = _write_world(root)
        ingest(
            root / "store", IngestOptions(source=manifest, workers=0, batch_size=4, target=MODEL)
        )
        yield Store(root / "store"), root
    finally:
        sys.path.remove(str(root))


def _by_hand(store: Store, method: str, explain: str) -> dict[str, np.ndarray]:
    """Captum on the model reloaded here, on pixels decoded here (PIL, no failstore decoding)."""
    from failstore.models.loading import load_model
    from failstore.queries.saliency.methods import attribute

    adapter = load_model(store, MODEL)
    images = store.read("images", ["image_id", "uri"]).to_pylist()
    preds = {r["image_id"]: r for r in store.read("predictions").to_pylist()}
    out = {}
    for r in images:
        with Image.open(r["uri"]) as im:  # 30 x 24: resize shorter side 24 = no-op; crop 24
            arr = np.asarray(im.convert("RGB"))[:, 3:27]
        x = torch.tensor(((arr / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)[None], dtype=torch.float32)
        cls = preds[r["image_id"]]["prediction" if explain == "prediction" else "target"]
        target = torch.tensor([["square", "plain"].index(cls)])
        out[r["image_id"]] = attribute(adapter.module, x, target, method, None)[0]
    return out


def test_maps_equal_captum_on_the_same_pixels_and_reruns_compute_nothing(world):
    store, _ = world
    report = compute_saliency(store, SaliencyOptions(method="gradient", batch_size=3))
    assert (report.selected, report.computed, report.already, report.errors) == (8, 8, 0, [])
    stored = {r["image_id"]: r for r in store.read("saliency_maps").to_pylist()}
    hand = _by_hand(store, "gradient", "prediction")
    for image_id, m in hand.items():
        row = stored[image_id]
        assert (row["height"], row["width"]) == (24, 24)
        assert (row["x0"], row["y0"], row["x1"], row["y1"]) == (3.0, 0.0, 27.0, 24.0)
        np.testing.assert_allclose(np.reshape(row["map"], (24, 24)), m, rtol=1e-4, atol=1e-6)
    again = compute_saliency(store, SaliencyOptions(method="gradient"))
    assert (again.computed, again.already) == (0, 8)
    assert store.count("saliency_maps") == 8
    # another resolution is another setting: stored beside, averaged down exactly
    small = compute_saliency(store, SaliencyOptions(method="gradient", resolution=8))
    assert small.computed == 8 and store.count("saliency_maps") == 16
    row = store.read("saliency_maps", filter="height = 8").to_pylist()[0]
    full = hand[row["image_id"]]
    np.testing.assert_allclose(
        np.reshape(row["map"], (8, 8)),
        full.reshape(8, 3, 8, 3).mean(axis=(1, 3)),
        rtol=1e-4,
        atol=1e-6,
    )


def _region_brute(row: dict, img: dict, h: int) -> np.ndarray | None:
    """G by hand: for each map pixel centre, inside the mask / a box (half-open)."""
    out = np.zeros((h, h), bool)
    scale = (row["x1"] - row["x0"]) / h
    mask = None
    if img["mask"]:
        import io

        mask = np.asarray(Image.open(io.BytesIO(img["mask"])).convert("L"))
    elif not img["boxes"]:
        return None
    for i in range(h):
        for j in range(h):
            cx, cy = row["x0"] + (j + 0.5) * scale, row["y0"] + (i + 0.5) * scale
            if mask is not None:
                out[i, j] = mask[int(cy), int(cx)] > 0
            else:
                out[i, j] = any(
                    b["x0"] <= cx < b["x1"] and b["y0"] <= cy < b["y1"] for b in img["boxes"]
                )
    return out


def test_coverage_scores_equal_a_brute_force_on_the_stored_maps(world):
    store, _ = world
    compute_saliency(store, SaliencyOptions(method="grad_cam"))
    est = Coverage(method="grad_cam").fit(store)
    rows = {r["image_id"]: r for r in est.results_.to_pylist()}
    assert len(rows) == 8
    maps = {
        r["image_id"]: r
        for r in store.read("saliency_maps", filter="method = 'grad_cam'").to_pylist()
    }
    images = {r["image_id"]: r for r in store.read("images").to_pylist()}
    kinds = []
    for image_id, r in rows.items():
        m = np.reshape(maps[image_id]["map"], (24, 24)).astype(np.float64)
        g = _region_brute(maps[image_id], images[image_id], 24)
        if g is None:
            assert (r["truth"], r["case"], r["reason"]) == (
                None,
                "undefined",
                "the image has no mask or boxes",
            )
            kinds.append(None)
            continue
        kinds.append(r["truth"])
        norm = (m - m.min()) / (m.max() - m.min())
        s = norm >= norm.mean() + norm.std()
        inter, union = (g & s).sum(), (g | s).sum()
        assert r["truth_pixels"] == g.sum() and r["saliency_pixels"] == s.sum()
        assert r["iou"] == pytest.approx(inter / union)
        assert r["gtc"] == pytest.approx(inter / g.sum())
        assert r["sc"] == pytest.approx(inter / s.sum())
        assert r["soft_sc"] == pytest.approx(np.abs(m)[g].sum() / np.abs(m).sum())
    assert sorted(kinds, key=str) == sorted(["mask"] * 4 + ["boxes"] * 3 + [None], key=str)
    # the stored queries: the latest run's rows, the case mix adds up
    shown = run_sql(store, "SELECT count(*) AS n FROM coverage WHERE method = 'grad_cam'")
    assert shown["n"][0].as_py() == 8
    mix = run_sql(
        store,
        "SELECT label, sum(images) AS n, sum(rate) AS r FROM coverage_cases "
        "WHERE method = 'grad_cam' GROUP BY label",
    ).to_pylist()
    assert sum(m["n"] for m in mix) == 8 and all(m["r"] == pytest.approx(1) for m in mix)
    # view filters: a case, a class
    undefined = Coverage(method="grad_cam", case="undefined").fit(store)
    assert undefined.reused_ and undefined.results_.num_rows == 1


def test_cli_saliency_and_coverage(world):
    store, root = world
    base = [
        sys.executable,
        "-c",
        "from failstore.cli.app import main; main()",
        "--store",
        str(store.path),
    ]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [
            *base,
            "saliency",
            "--method",
            "integrated_gradients",
            "--param",
            "n_steps=8",
            "--class",
            "square",
            "--resolution",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"integrated_gradients maps of '{MODEL}': 4 computed")
    r = subprocess.run(
        [*base, "coverage", "--method", "integrated_gradients", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 4 and {x["label"] for x in rows} == {"square"}
    r = subprocess.run(
        [*base, "saliency", "--method", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: unknown saliency method 'nope'; choose one of gradient,")
    r = subprocess.run(
        [*base, "coverage", "--method", "smoothgrad"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: no saliency maps of model '{MODEL}' by method 'smoothgrad' (explain "
        "prediction); run `failstore saliency --method smoothgrad` first"
    )


def test_case_pictures(world, tmp_path):
    from failstore.queries.coverage.pictures import case_pictures

    store, _ = world
    compute_saliency(store, SaliencyOptions(method="grad_cam"))
    rows = Coverage(method="grad_cam").fit(store).results_
    drawn = case_pictures(store, rows, tmp_path / "pics")
    cases = {r["case"] for r in rows.to_pylist()} - {"undefined"}
    assert {d["case"] for d in drawn} == cases and cases
    for d in drawn:
        with Image.open(d["path"]) as im:
            assert im.size == (24 * 4 * 2 + 4, 24 * 4)
            arr = np.asarray(im)
        assert (arr[:, :96] == [40, 220, 60]).all(axis=2).any()  # the ground-truth outline


def test_explain_label_and_where_select_what_is_explained(world):
    store, _ = world
    rep = compute_saliency(
        store,
        SaliencyOptions(method="input_x_gradient", explain="label", where="label = 'plain'"),
    )
    assert (rep.selected, rep.computed) == (4, 4)
    rows = store.read("saliency_maps", filter="method = 'input_x_gradient'").to_pylist()
    labels = {r["image_id"]: r["label"] for r in store.read("images").to_pylist()}
    assert {labels[r["image_id"]] for r in rows} == {"plain"}
    assert {(r["explain"], r["class"], r["class_index"]) for r in rows} == {("label", "plain", 1)}
    hand = _by_hand(store, "input_x_gradient", "label")
    for r in rows:
        np.testing.assert_allclose(np.reshape(r["map"], (24, 24)), hand[r["image_id"]],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
