"""`failstore sanity` over a real store (issue 13): linear targets whose attributions are known
in closed form (the gradient of a linear model is its weight row), ingested from a manifest
with masks; figures checked against scipy / scikit-image run here on maps built by hand."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failstore.errors import ConfigError
from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.queries.sql.session import run_sql
from failstore.store import Store

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")
skimage_metrics = pytest.importorskip("skimage.metrics")

SIDE = 16
CENTRE = (slice(4, 10), slice(4, 10))  # where the "centre" images' object lies
CORNER = (slice(9, 15), slice(9, 15))

FACTORY = textwrap.dedent(
    f"""
    import torch
    from torch import nn

    SIDE = {SIDE}
    PRE = {{"resize": SIDE, "crop": SIDE, "mean": [0.5] * 3, "std": [0.25] * 3}}
    CLASSES = ["square", "plain"]

    def background_weights():
        w = torch.ones(3, SIDE, SIDE)
        w[:, 4:10, 4:10] = 0.0  # class 0 looks only off the centre square
        return w.reshape(-1)

    def linear(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 2))
        with torch.no_grad():
            net[1].weight[0] = background_weights()
        return net

    def make():
        return linear(0), CLASSES, PRE

    def make_twin():  # the same weights as make
        return linear(0), CLASSES, PRE

    def make_other():  # other weights for class 1, and class 0 random too
        torch.manual_seed(5)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 2))
        return net, CLASSES, PRE

    class Aux(nn.Module):
        # logits = head(x); the aux layer runs but is multiplied by 0: it cannot change a map
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.head = nn.Linear(3 * SIDE * SIDE, 2)
            self.aux = nn.Linear(3 * SIDE * SIDE, 2)

        def forward(self, x):
            f = x.flatten(1)
            return self.head(f) + 0.0 * self.aux(f)

    def make_aux():
        return Aux(), CLASSES, PRE
    """
)


def _write_world(root: Path) -> Path:
    """12 images 16 x 16, each with a mask: 8 'square' (4 with the square at the centre,
    4 in the corner), 4 'plain' (a faint square in the corner)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = "square" if i < 8 else "plain"
        pos = "centre" if i < 4 else "corner"
        arr = rng.integers(0, 60, (SIDE, SIDE, 3)).astype(np.uint8)
        where = CENTRE if pos == "centre" else CORNER
        arr[where] = 230 if label == "square" else 120
        Image.fromarray(arr).save(root / f"img{i}.png")
        mask = np.zeros((SIDE, SIDE), np.uint8)
        mask[where] = 255
        Image.fromarray(mask).save(root / f"mask{i}.png")
        rows.append(
            {
                "path": str(root / f"img{i}.png"),
                "label": label,
                "split": "test",
                "mask_path": str(root / f"mask{i}.png"),
                "pos": pos,
            }
        )
    manifest = root / "manifest.csv"
    lines = ["path,label,split,mask_path,pos"]
    lines += [
        ",".join(str(r[k]) for k in ("path", "label", "split", "mask_path", "pos")) for r in rows
    ]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sanity")
    (root / "fs_sanity_lin.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        manifest = _write_world(root)
        for factory in ("make_other", "make_twin", "make_aux", "make"):  # "make" last: default
            ingest(
                root / "store",
                IngestOptions(
                    source=manifest, workers=0, batch_size=4, target=f"fs_sanity_lin:{factory}"
                ),
            )
        yield Store(root / "store"), root
    finally:
        sys.path.remove(str(root))


# ---------------------------------------------------------------- oracles written here


def _abs_norm(m: np.ndarray) -> np.ndarray:
    s = np.abs(m.astype(np.float64)).sum(axis=0)
    lo, p99 = s.min(), np.percentile(s, 99)
    return np.clip((s - lo) / (p99 - lo), 0, 1)


def _ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """The reference's SSIM of two (C, H, W) maps, each min-max normalised over all values."""

    def mm(m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float64)
        return ((m - m.min()) / (m.max() - m.min())).transpose(1, 2, 0)

    return float(
        skimage_metrics.structural_similarity(
            mm(a),
            mm(b),
            data_range=data_range,
            gaussian_weights=True,
            use_sample_covariance=True,
            channel_axis=-1,
        )
    )


def _weights(store: Store, model: str) -> np.ndarray:
    from failstore.models.loading import load_model

    return load_model(store, model).module[1].weight.detach().numpy().reshape(2, 3, SIDE, SIDE)


def _rows(est, store: Store) -> list[dict]:
    return sorted(
        est.read_table(store, "sanity_scores").to_pylist(),
        key=lambda r: (r["method"], r["step"], r["group"] or "", r["image_id"]),
    )


# ---------------------------------------------------------------- tests


def test_cascading_gradient_of_a_linear_model_equals_its_weight_rows(world):
    """The gradient of logit c of a linear model is W[c]: the trained and the randomised maps
    are known exactly, so every stored figure is checked against scipy / scikit-image."""
    from failstore.queries.sanity import Sanity
    from failstore.queries.sanity.randomise import cascading

    store, _ = world
    est = Sanity(model="fs_sanity_lin:make", methods=["gradient"], explain="label").fit(store)
    from failstore.models.loading import load_model

    module = load_model(store, "fs_sanity_lin:make").module
    ((done, randomised),) = list(cascading(module, ["1"], seed=0))
    assert done == ("1",)
    w0 = module[1].weight.detach().numpy().reshape(2, 3, SIDE, SIDE)
    w1 = randomised[1].weight.detach().numpy().reshape(2, 3, SIDE, SIDE)
    rows = _rows(est, store)
    labels = {r["image_id"]: r["label"] for r in store.read("images").to_pylist()}
    assert len(rows) == 12 and {r["step"] for r in rows} == {1}
    for r in rows:
        c = ["square", "plain"].index(labels[r["image_id"]])
        assert (r["layer"], r["layers"], r["explained"]) == ("1", ["1"], labels[r["image_id"]])
        a, b = w0[c], w1[c]
        rho = scipy_stats.spearmanr(_abs_norm(a).ravel(), _abs_norm(b).ravel())[0]
        assert r["rank_abs"] == pytest.approx(rho, abs=1e-9)
        assert r["ssim"] == pytest.approx(_ssim(a, b, 2.0), abs=1e-9)
        assert r["ssim_range1"] == pytest.approx(_ssim(a, b, 1.0), abs=1e-9)
        assert np.isnan(r["hog"])  # 16 x 16 is below HOG's 48 x 48 block
    (v,) = est.results_.to_pylist()
    figure = np.mean([r["rank_abs"] for r in rows])
    assert v["figure"] == pytest.approx(figure) and v["metric"] == "rank_abs"
    assert v["verdict"] == "passes" and v["images"] == 12 and v["threshold"] == 0.5
    assert v["low"] <= v["figure"] <= v["high"]
    sem = np.std([r["rank_abs"] for r in rows], ddof=1) / np.sqrt(12)
    assert v["sem"] == pytest.approx(sem)


def test_every_fit_sets_its_clock_a_reused_fit_one_without_passes(world):
    """``clock_`` describes the latest fit: one that computes counts its attribution passes
    (the trained maps, then one per step), one that reuses the stored run has a fresh clock
    with none, never the previous fit's."""
    from failstore.queries.sanity import Sanity
    from failstore.queries.sanity.runner import Clock

    store, _ = world
    kwargs = {"model": "fs_sanity_lin:make_aux", "methods": ["gradient"], "seed": 7}
    est = Sanity(**kwargs).fit(store, reuse=False)
    computed = est.clock_
    assert not est.reused_ and computed.passes == 3 and computed.attribution_s > 0
    est.fit(store)  # the same parameters, the store unchanged: the run is reused
    assert est.reused_ and est.clock_ is not computed
    assert isinstance(est.clock_, Clock)
    assert (est.clock_.passes, est.clock_.attribution_s) == (0, 0.0)
    fresh = Sanity(**kwargs).fit(store)  # a new estimator reusing the run has a clock too
    assert fresh.reused_ and (fresh.clock_.passes, fresh.clock_.attribution_s) == (0, 0.0)


def test_explaining_the_prediction_follows_the_randomised_model(world):
    from failstore.models.loading import load_model
    from failstore.queries.sanity import Sanity
    from failstore.queries.sanity.randomise import cascading

    store, _ = world
    est = Sanity(model="fs_sanity_lin:make", methods=["gradient"]).fit(store)
    module = load_model(store, "fs_sanity_lin:make").module
    ((_, randomised),) = list(cascading(module, ["1"], seed=0))
    images = store.read("images", ["image_id", "uri"]).to_pylist()
    expected = {}
    for r in images:
        arr = np.asarray(Image.open(r["uri"]).convert("RGB"), np.float64)
        x = torch.tensor(((arr / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None], dtype=torch.float32)
        expected[r["image_id"]] = ["square", "plain"][int(randomised(x).argmax())]
    assert {r["image_id"]: r["explained"] for r in _rows(est, store)} == expected


def test_a_layer_that_cannot_change_the_maps_fails_the_test(world):
    """aux runs in the forward pass but is multiplied by 0: randomising it leaves every map as
    it was (rank correlation exactly 1): the method 'fails', as a method blind to the model
    would. Blocks are found in forward order: head, then aux (the top)."""
    from failstore.queries.sanity import Sanity

    store, _ = world
    est = Sanity(
        model="fs_sanity_lin:make_aux", methods=["gradient", "input_x_gradient"], layers=["aux"]
    ).fit(store)
    for v in est.results_.to_pylist():
        assert v["verdict"] == "fails" and v["figure"] == pytest.approx(1.0), v
        assert "keep a mean of 1.000 (>= 0.5) over 12 images" in v["reason"]
    full = Sanity(model="fs_sanity_lin:make_aux", methods=["gradient"]).fit(store)
    rows = _rows(full, store)
    assert [(r["step"], r["layer"]) for r in rows[::12]] == [(1, "aux"), (2, "head")]
    assert all(r["rank_abs"] == pytest.approx(1.0) for r in rows if r["step"] == 1)
    assert full.results_["verdict"].to_pylist() == ["passes"]
    assert (
        full.results_["reason"][0]
        .as_py()
        .endswith("; it stays >= 0.5 through 1 of 2 steps (down to aux)")
    )
    top = Sanity(model="fs_sanity_lin:make_aux", methods=["gradient"], verdict_step=1).fit(store)
    (v,) = top.results_.to_pylist()
    assert v["verdict"] == "fails" and v["figure"] == pytest.approx(1.0)
    assert v["reason"].startswith("after the top 1 of 2 blocks are randomised (down to aux) its ")
    independent = Sanity(
        model="fs_sanity_lin:make_aux", methods=["gradient"], test="independent"
    ).fit(store)
    (v,) = independent.results_.to_pylist()
    assert v["verdict"] == "passes" and "randomising head alone changes it most" in v["reason"]


def test_spurious_background_shows_on_the_suspected_images(world):
    """Class 0's weights are 1 off the centre square and 0 on it: its gradient map is exactly
    the ideal background-only map of the centre images (SSIM 1), not of the corner ones."""
    from failstore.queries.sanity import Sanity
    from failstore.queries.sanity.similarity import ssim_to_map

    store, _ = world
    est = Sanity(
        model="fs_sanity_lin:make",
        methods=["gradient"],
        test="spurious",
        where="pos = 'centre'",
        classes=["square"],
        explain="label",
    ).fit(store)
    rows = _rows(est, store)
    groups = {g: [r for r in rows if r["group"] == g] for g in ("slice", "control")}
    assert (len(groups["slice"]), len(groups["control"])) == (4, 4)
    w = _weights(store, "fs_sanity_lin:make")[0]
    for r in groups["slice"]:
        assert r["ssim"] == pytest.approx(1.0) and r["rank_abs"] == pytest.approx(1.0)
    corner_bg = np.ones((SIDE, SIDE))
    corner_bg[CORNER] = 0
    want = float(ssim_to_map(w[None], corner_bg[None])[0])
    by_hand = skimage_metrics.structural_similarity(
        _abs_norm(w), corner_bg, data_range=2.0, gaussian_weights=True, use_sample_covariance=True
    )
    assert want == pytest.approx(by_hand, abs=1e-9)
    for r in groups["control"]:
        assert r["ssim"] == pytest.approx(by_hand, abs=1e-9)
    (v,) = est.results_.to_pylist()
    assert v["metric"] == "ssim" and v["figure"] == pytest.approx(1.0 - by_hand)
    assert v["verdict"] == "shows the shortcut" and v["threshold"] is None


def test_reference_model_tells_other_weights_apart_and_not_the_same_ones(world):
    from failstore.queries.sanity import Sanity

    store, _ = world
    same = Sanity(
        model="fs_sanity_lin:make",
        methods=["gradient"],
        test="reference",
        reference_model="fs_sanity_lin:make_twin",
    ).fit(store)
    (v,) = same.results_.to_pylist()
    assert v["figure"] == pytest.approx(1.0) and v["verdict"] == "does not tell them apart"
    other = Sanity(
        model="fs_sanity_lin:make",
        methods=["gradient"],
        test="reference",
        reference_model="fs_sanity_lin:make_other",
        explain="label",
    ).fit(store)
    (v,) = other.results_.to_pylist()
    w0, w1 = _weights(store, "fs_sanity_lin:make"), _weights(store, "fs_sanity_lin:make_other")
    labels = {r["image_id"]: r["label"] for r in store.read("images").to_pylist()}
    rhos = []
    for r in _rows(other, store):
        c = ["square", "plain"].index(labels[r["image_id"]])
        rhos.append(scipy_stats.spearmanr(_abs_norm(w0[c]).ravel(), _abs_norm(w1[c]).ravel())[0])
    assert v["figure"] == pytest.approx(np.mean(rhos)) and v["verdict"] == "tells them apart"
    assert v["reference_model"] == "fs_sanity_lin:make_other"


def test_images_skipped_after_ingest_are_counted_in_every_reason(world, tmp_path):
    """Two files rewritten since the ingest and one no longer an image: the run compares the
    other 9 and every verdict's reason says how many were skipped and why (a reference run
    decodes the files twice but counts each image once)."""
    from failstore.queries.sanity import Sanity

    manifest = _write_world(tmp_path)
    for factory in ("make_twin", "make"):
        ingest(
            tmp_path / "store",
            IngestOptions(
                source=manifest, workers=0, batch_size=4, target=f"fs_sanity_lin:{factory}"
            ),
        )
    store = Store(tmp_path / "store")
    for i in (0, 5):  # other pixels: another content hash than the stored image_id
        arr = np.asarray(Image.open(tmp_path / f"img{i}.png")).copy()
        arr[0, 0] = 255 - arr[0, 0]
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    (tmp_path / "img9.png").write_bytes(b"not an image")
    note = (
        "; 3 images skipped: the file changed since it was ingested (2), "
        "cannot identify the image format (corrupt or not an image) (1)"
    )
    common = {"model": "fs_sanity_lin:make", "methods": ["gradient", "input_x_gradient"]}
    for kwargs in ({}, {"test": "reference", "reference_model": "fs_sanity_lin:make_twin"}):
        est = Sanity(**common, **kwargs).fit(store)
        assert len({r["image_id"] for r in _rows(est, store)}) == 9
        for v in est.results_.to_pylist():
            assert v["images"] == 9 and v["reason"].endswith(note), v["reason"]
    spurious = Sanity(
        **common, test="spurious", where="pos = 'centre'", classes=["square"], explain="label"
    ).fit(store)
    for v in spurious.results_.to_pylist():  # img0 was a suspected one, img5 a control
        assert "on 3 suspected images" in v["reason"] and "on 3 control images" in v["reason"]
        assert v["reason"].endswith("; 2 images skipped: the file changed since it was ingested")


def test_skipped_note_counts_each_image_once():
    from failstore.queries.sanity.verdicts import skipped_note

    assert skipped_note([]) == ""
    assert skipped_note([("a", "file not found")]) == "; 1 image skipped: file not found"
    twice = [("a", "x"), ("b", "y"), ("b", "y"), ("c", "y")]
    assert skipped_note(twice) == "; 3 images skipped: y (2), x (1)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"test": "spurious"},
            "test 'spurious' needs the suspected shortcut's images: --slice TAGS or --where SQL",
        ),
        (
            {"test": "reference"},
            "test 'reference' needs --reference-model (another target model of the store)",
        ),
        (
            {"test": "reference", "reference_model": "fs_sanity_lin:make"},
            "--reference-model is the model under test; name another one",
        ),
        (
            {"reference_model": "x"},
            "--reference-model applies to --test reference, not 'cascading'",
        ),
        (
            {"test": "spurious", "where": "true", "metric": "hog"},
            "test 'spurious' compares maps "
            "with the background by rank_abs, ssim, ssim_range1; --metric hog is not one of them",
        ),
        ({"layers": ["fc9"]}, "unknown layer 'fc9'; the model's layers are: 1"),
        (
            {"where": "pos = 'nowhere'"},
            "found 0 images (split test; where pos = 'nowhere'); the test needs at least 2",
        ),
    ],
)
def test_bad_requests_are_one_line_errors_and_write_nothing(world, kwargs, message):
    from failstore.queries.sanity import Sanity

    store, _ = world
    before = store.count("sanity_verdicts") if store.has_table("sanity_verdicts") else 0
    with pytest.raises(ConfigError) as info:
        Sanity(model="fs_sanity_lin:make", methods=["gradient"], **kwargs).fit(store)
    line = info.value.one_line()
    assert line.startswith(message) and "\n" not in line, line
    after = store.count("sanity_verdicts") if store.has_table("sanity_verdicts") else 0
    assert after == before


def test_stored_queries_curves_and_coverage_carry_the_verdict(world):
    from failstore.queries.coverage.estimator import Coverage
    from failstore.queries.saliency.compute import SaliencyOptions, compute_saliency
    from failstore.queries.sanity import Sanity

    store, _ = world
    model = "fs_sanity_lin:make_aux"
    compute_saliency(store, SaliencyOptions(model=model, method="gradient"))
    Coverage(model=model, method="gradient").fit(store)
    before = run_sql(
        store, "SELECT DISTINCT sanity FROM coverage WHERE model = $m", params={"m": model}
    )
    est = Sanity(model=model, methods=["gradient"], layers=["aux"]).fit(store)
    shown = run_sql(
        store,
        "SELECT DISTINCT sanity, sanity_reason FROM coverage WHERE model = $m",
        params={"m": model},
    ).to_pylist()
    assert shown == [{"sanity": "fails", "sanity_reason": est.results_["reason"][0].as_py()}]
    assert before["sanity"].to_pylist() in ([None], ["passes"], ["fails"])
    verdicts = run_sql(
        store,
        "SELECT run_id, verdict FROM sanity WHERE model = $m AND test = 'cascading'",
        params={"m": model},
    ).to_pylist()
    assert verdicts == [{"run_id": est.run_id_, "verdict": "fails"}]
    curves = run_sql(
        store,
        "SELECT * FROM sanity_curves WHERE model = $m AND test = 'cascading'",
        params={"m": model},
    ).to_pylist()
    rows = _rows(est, store)
    (c,) = curves
    assert (c["step"], c["layer"], c["images"]) == (1, "aux", 12)
    v = np.array([r["ssim"] for r in rows])
    assert c["ssim"] == pytest.approx(v.mean())
    assert c["ssim_sem"] == pytest.approx(v.std(ddof=1) / np.sqrt(12))
    assert c["hog"] is None  # every HOG figure undefined at 16 x 16


def test_cli_prints_verdicts_and_plots_curves(world, tmp_path):
    store, root = world
    env = {"PYTHONPATH": f"{root}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from failstore.cli.app import main; main()",
            "--store",
            str(store.path),
            "sanity",
            "--model",
            "fs_sanity_lin:make_aux",
            "--methods",
            "gradient,input_x_gradient",
            "--layers",
            "aux",
            "--images",
            "6",
            "--plot",
            str(tmp_path / "plots"),
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("model,method,")
    assert len(lines) == 3 and all(",fails," in line for line in lines[1:])
    assert (tmp_path / "plots" / "cascading.png").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "from failstore.cli.app import main; main()",
            "--store",
            str(store.path),
            "sanity",
            "--test",
            "spurious",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "needs the suspected shortcut's images" in bad.stderr
