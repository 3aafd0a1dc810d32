"""Test 3 of the issue ("model against model", `--test reference`) on models trained here.

Three L2-regularised logistic-regression models (a linear layer under softmax cross-entropy,
every parameter regularised: a strictly convex objective) are trained to convergence, full
batch, on one small image set, then saved as state-dict directories (the trained weights in a
safetensors file whose sha256 the store records and checks on every load) and ingested as
targets. Two are trained on the clean labels from different seeds: a strictly convex objective
has one minimum, so their weights, hence their gradient maps, coincide and the test cannot tell
them apart. The third is trained on randomly permuted labels (the paper's data-randomisation
test): its gradient is other weights, and the test tells them apart.

The gradient of logit c of a linear model is its weight row W[c], so each stored figure is also
checked against scipy's Spearman on the weights the store loads back.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.store import Store

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

SIDE = 16
CLASSES = ["centre", "corner"]
PRE = {"resize": SIDE, "crop": SIDE, "mean": [0.5] * 3, "std": [0.25] * 3}
N_IMAGES = 24
L2 = 1e-2
ARCH = textwrap.dedent(
    f"""
    from torch import nn

    def logistic():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * {SIDE} * {SIDE}, 2))
    """
)


def _images(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """N_IMAGES noise images, a bright square at the centre (class 0) or in the corner (1);
    the manifest, the model's inputs (N, 3, SIDE, SIDE) and the labels (indices)."""
    rng = np.random.default_rng(0)
    lines, xs, ys = ["path,label,split"], [], []
    for i in range(N_IMAGES):
        y = i % 2
        arr = rng.integers(0, 256, (SIDE, SIDE, 3)).astype(np.uint8)
        at = slice(4, 10) if y == 0 else slice(9, 15)
        arr[at, at] = 255
        Image.fromarray(arr).save(root / f"img{i}.png")
        lines.append(f"{root / f'img{i}.png'},{CLASSES[y]},test")
        xs.append(((arr / 255.0 - 0.5) / 0.25).transpose(2, 0, 1))
        ys.append(y)
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, np.stack(xs), np.array(ys)


def _train(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[object, object]:
    """Cross-entropy + L2 / 2 * |params|^2, full batch L-BFGS in float64 to convergence, from
    the seed's initialisation; the module (float32) and its initial state."""
    from fs_sanity_lr import logistic

    torch.manual_seed(seed)
    net = logistic().double()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.LBFGS(
        net.parameters(),
        lr=1.0,
        max_iter=1000,
        tolerance_grad=1e-12,
        tolerance_change=0.0,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        penalty = sum((p**2).sum() for p in net.parameters())
        loss = torch.nn.functional.cross_entropy(net(xt), yt) + L2 / 2 * penalty
        loss.backward()
        return loss

    opt.step(loss_fn)
    loss_fn()
    grad = max(float(p.grad.abs().max()) for p in net.parameters())
    assert grad < 1e-8, f"training did not converge (largest gradient {grad:.2e})"
    return net.float().eval(), start


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The store with the three trained targets (names: their directories' names)."""
    from failstore.models import save_state_dict_dir

    root = tmp_path_factory.mktemp("sanity_trained")
    (root / "fs_sanity_lr.py").write_text(ARCH)
    sys.path.insert(0, str(root))
    try:
        manifest, x, y = _images(root)
        shuffled = np.random.default_rng(0).permutation(y)
        assert (shuffled == y).mean() == 0.5  # half the images relabelled
        runs = {"clean_s0": (y, 0), "clean_s1": (y, 1), "shuffled_s0": (shuffled, 0)}
        nets, starts = {}, {}
        for name, (labels, seed) in runs.items():
            nets[name], starts[name] = _train(x, labels, seed)
            save_state_dict_dir(
                nets[name],
                root / name,
                "fs_sanity_lr:logistic",
                class_names=CLASSES,
                preprocess=PRE,
                extra={"trained_on": "permuted labels" if labels is shuffled else "labels"},
            )
            ingest(
                root / "store",
                IngestOptions(source=manifest, workers=0, batch_size=8, target=str(root / name)),
            )
        yield Store(root / "store"), nets, starts
    finally:
        sys.path.remove(str(root))


def _abs_norm(w: np.ndarray) -> np.ndarray:
    s = np.abs(w.astype(np.float64)).sum(axis=0)
    lo, p99 = s.min(), np.percentile(s, 99)
    return np.clip((s - lo) / (p99 - lo), 0, 1)


def _loaded_weights(store: Store, model: str) -> np.ndarray:
    from failstore.models.loading import load_model

    module = load_model(store, model).module
    return module[1].weight.detach().numpy().reshape(2, 3, SIDE, SIDE)


def _reference(store: Store, model: str, other: str):
    from failstore.queries.sanity import Sanity

    est = Sanity(model=model, methods=["gradient"], test="reference", reference_model=other)
    est.fit(store)
    (verdict,) = est.results_.to_pylist()
    return verdict, est.read_table(store, "sanity_scores").to_pylist()


def _oracle(store: Store, model: str, other: str, rows: list[dict]) -> list[float]:
    """Spearman of the |gradient| maps: W_model[explained] against W_other[other's top
    class], the other's top class computed here from the images' stored predictions."""
    w, w2 = _loaded_weights(store, model), _loaded_weights(store, other)
    top = {
        r["image_id"]: r["prediction_index"]
        for r in store.read("predictions", filter=f"model = '{other}'").to_pylist()
    }
    out = []
    for r in sorted(rows, key=lambda r: r["image_id"]):
        a, b = w[CLASSES.index(r["explained"])], w2[top[r["image_id"]]]
        out.append(scipy_stats.spearmanr(_abs_norm(a).ravel(), _abs_norm(b).ravel())[0])
    return out


def test_two_seeds_of_a_strictly_convex_model_are_not_told_apart(trained):
    store, nets, starts = trained
    a, b = nets["clean_s0"], nets["clean_s1"]
    assert not torch.equal(starts["clean_s0"]["1.weight"], starts["clean_s1"]["1.weight"])
    # one minimum: the seeds' weights coincide, and the store loads back what was trained
    np.testing.assert_allclose(a[1].weight.detach(), b[1].weight.detach(), atol=1e-6)
    np.testing.assert_array_equal(
        _loaded_weights(store, "clean_s0").reshape(2, -1), a[1].weight.detach().numpy()
    )
    v, rows = _reference(store, "clean_s0", "clean_s1")
    assert len(rows) == N_IMAGES and all(r["rank_abs"] > 0.99 for r in rows)
    assert v["figure"] > 0.99 and v["metric"] == "rank_abs"
    assert v["verdict"] == "does not tell them apart" and v["images"] == N_IMAGES
    assert v["reason"] == f"mean {v['figure']:.3f} >= 0.5 over {N_IMAGES} images"
    oracle = _oracle(store, "clean_s0", "clean_s1", rows)
    assert v["figure"] == pytest.approx(np.mean(oracle), abs=1e-9)


def test_a_model_trained_on_permuted_labels_is_told_apart(trained):
    store, _, _ = trained
    v, rows = _reference(store, "clean_s0", "shuffled_s0")
    assert len(rows) == N_IMAGES
    assert v["figure"] < 0.5 and v["verdict"] == "tells them apart"
    assert v["high"] < 0.5 and v["reference_model"] == "shuffled_s0"
    oracle = _oracle(store, "clean_s0", "shuffled_s0", rows)
    assert [r["rank_abs"] for r in sorted(rows, key=lambda r: r["image_id"])] == pytest.approx(
        oracle, abs=1e-9
    )
