"""load_model: every kind of model, ingested through the real pipeline, reloaded from its
``models`` row; encode() must reproduce the stored rows. Plus the checkpoint checks and the
autograd access to the torch module."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_colour_folder

from failstore.errors import ModelSpecError, StoreError, WeightsNotFoundError
from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.models import load_model, save_state_dict_dir, write_vocab
from failstore.models.loading import CheckpointChangedError
from failstore.store import Store

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

TOL = {"rtol": 1e-5, "atol": 1e-5}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_ingest(store: Path, images: Path, **models) -> None:
    opts = IngestOptions(source=images, workers=0, batch_size=4, **models)
    ingest(store, opts)


def batch_for(uris: list[str], pre):
    """The pipeline's own decode + normalisation of the given files."""
    from failstore.ingest.decode import decode_one
    from failstore.ingest.sources import SourceItem
    from failstore.models.pixels import normalise

    arrays = []
    for uri in uris:
        dec = decode_one(SourceItem(uri, None, None, None, None), [pre])
        assert dec.error is None
        arrays.append(dec.arrays[pre.key()])
    return normalise(np.stack(arrays), pre, "cpu")


def uris_by_id(store: Store) -> dict[str, str]:
    rows = store.read("images", ["image_id", "uri"]).to_pylist()
    return {r["image_id"]: r["uri"] for r in rows}


def check_target(store: Store, name: str, layer: str):
    from failstore.ingest.rows import softmax

    adapter = load_model(store, name)
    rows = store.read("predictions", ["image_id", "probabilities", "embedding"],
                      filter=f"model = '{name}'").to_pylist()  # fmt: skip
    assert len(rows) == 6
    uris = uris_by_id(store)
    out = adapter.encode(batch_for([uris[r["image_id"]] for r in rows], adapter.preprocess))
    np.testing.assert_allclose(softmax(out["logits"]), [r["probabilities"] for r in rows], **TOL)
    np.testing.assert_allclose(out["embedding"], [r["embedding"] for r in rows], **TOL)
    assert adapter.record().layer == layer
    return adapter


def check_robust(store: Store, name: str, layer: str):
    adapter = load_model(store, name)
    rows = store.read("images", ["uri", "robust_features"]).to_pylist()
    out = adapter.encode(batch_for([r["uri"] for r in rows], adapter.preprocess))
    np.testing.assert_allclose(out["robust_features"], [r["robust_features"] for r in rows], **TOL)
    assert adapter.record().layer == layer
    return adapter


def check_clip(store: Store, name: str):
    adapter = load_model(store, name)
    rows = store.read("images", ["uri", "clip_embedding", "tag_scores", "tags"]).to_pylist()
    out = adapter.encode(batch_for([r["uri"] for r in rows], adapter.preprocess))
    np.testing.assert_allclose(out["clip_embedding"], [r["clip_embedding"] for r in rows], **TOL)
    np.testing.assert_allclose(out["tag_scores"], [r["tag_scores"] for r in rows], **TOL)
    assert adapter.tags_for(out["tag_scores"]) == [r["tags"] for r in rows]
    return adapter


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("img") / "images", 2, (40, 34), seed=5)


# --- the demo's formats: state-dict directories + a tiny open_clip dir ---------------------------


@pytest.fixture(scope="module")
def demo_store(images: Path, tmp_path_factory: pytest.TempPathFactory):
    from test_models_clip import TAGS, write_tiny_clip

    from failstore.demo.nets import BottleneckCNN, PooledCNN, export_model

    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(11)
    names, mean, std = ["red", "green", "blue"], [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    kw = {"num_classes": 3, "widths": [8, 8, 16, 16], "bottleneck": 10}
    export_model(BottleneckCNN(**kw), root / "target", "failstore.demo.nets:BottleneckCNN", kw,
                 names, mean, std, {"note": "untrained"}, size=32)  # fmt: skip
    rkw = {"num_classes": 3, "widths": [8, 8, 8, 12]}
    export_model(PooledCNN(**rkw), root / "robust", "failstore.demo.nets:PooledCNN", rkw,
                 names, mean, std, {}, size=32)  # fmt: skip
    clip = write_tiny_clip(root / "tiny-clip")
    vocab = write_vocab(root / "tags.txt", TAGS, [0.1, None, -0.05], ["a photo of {}."],
                        [None, ["a lawn", "grass"], None])  # fmt: skip
    store = root / "S"
    run_ingest(store, images, target=str(root / "target"), robust=str(root / "robust"),
               clip=f"local-dir:{clip}", tags=str(vocab), tag_threshold=0.02)  # fmt: skip
    return Store(store), root, clip


def test_demo_formats_round_trip(demo_store) -> None:
    store, _, clip = demo_store
    target = check_target(store, "target", "head:input")
    assert target.record().class_names == ["red", "green", "blue"]
    check_robust(store, "robust", "head:input")
    adapter = check_clip(store, clip.name)
    assert adapter.thresholds.tolist() == pytest.approx([0.1, 0.02, -0.05])
    assert adapter.prompts == [["a photo of snow."], ["a lawn", "grass"], ["a photo of night."]]


def test_module_and_gradients(demo_store) -> None:
    store, _, _ = demo_store
    for name in ("target", "robust"):
        adapter = load_model(store, name)
        layers = dict(adapter.module.named_modules())
        assert adapter.head_name == "head" and isinstance(layers["head"], torch.nn.Linear)
        assert "features.1.0" in layers and not adapter.module.training
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        x.requires_grad_(True)
        logits = adapter.logits(x)
        pred = logits.argmax(1)
        (grad,) = torch.autograd.grad(logits[torch.arange(3), pred].sum(), x)
        assert grad.shape == x.shape and bool(grad.abs().sum() > 0)
        assert all(bool(g.abs().sum() > 0) for g in grad)  # every image gets its own gradient
        with torch.no_grad():  # the module called directly = what logits() computed
            np.testing.assert_allclose(adapter.module(x).numpy(), logits.detach().numpy(), **TOL)
        out = adapter.encode(x.detach())  # hooks are not polluted by the graph-building calls
        emb = adapter.features(x)[1].detach().numpy()
        key = "embedding" if name == "target" else "robust_features"
        np.testing.assert_allclose(out[key], emb, **TOL)


def test_changed_and_missing_checkpoint(demo_store) -> None:
    store, root, _ = demo_store
    weights = root / "target" / "model.safetensors"
    saved = weights.read_bytes()
    expected = sha(weights)
    try:
        data = bytearray(saved)
        data[len(data) // 2] ^= 0x01  # one byte in the tensor data
        weights.write_bytes(bytes(data))
        with pytest.raises(CheckpointChangedError) as exc:
            load_model(store, "target")
        assert str(exc.value) == (
            f"model 'target': checkpoint {weights} changed (sha256 {sha(weights)} expected "
            f"{expected}); re-ingest with the new file or restore it"
        )
        weights.unlink()
        with pytest.raises(WeightsNotFoundError) as exc:
            load_model(store, "target")
        assert str(exc.value) == (
            f"model 'target': checkpoint {weights.resolve()} is missing (expected sha256 "
            f"{expected}); restore the file, or re-ingest with another checkpoint under a new name"
        )
    finally:
        weights.write_bytes(saved)  # restored: loads again
    assert load_model(store, "target").record().checkpoint_sha256 == expected

    with pytest.raises(StoreError) as exc:
        load_model(store.path, "nope")
    assert str(exc.value) == (
        f"no model 'nope' in {store.path}; known models: robust (robust), target (target), "
        "tiny-clip (clip)"
    )


def test_changed_preprocessing_is_refused(demo_store) -> None:
    store, root, _ = demo_store
    meta_file = root / "target" / "failstore_model.json"
    saved = meta_file.read_text()
    meta = json.loads(saved)
    meta["preprocess"]["crop"] = 30
    try:
        meta_file.write_text(json.dumps(meta))  # the weights (and their sha256) are unchanged
        with pytest.raises(ModelSpecError) as exc:
            load_model(store, "target")
    finally:
        meta_file.write_text(saved)
    assert str(exc.value) == (
        'model \'target\': preprocessing changed (recorded {"crop": 32, "interpolation": '
        '"bilinear", "mean": [0.5, 0.4, 0.3], "resize": 32, "std": [0.2, 0.25, 0.3]}, rebuilt '
        '{"crop": 30, "interpolation": "bilinear", "mean": [0.5, 0.4, 0.3], "resize": 32, "std": '
        '[0.2, 0.25, 0.3]}); re-ingest with the model as it is now'
    )


# --- TorchScript, robustness-library and factory models ---------------------------------------


def test_torchscript_robustness_and_factory(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_models_robust import robustness_checkpoint
    from test_models_target import FACTORY, TINY_PRE, Tiny

    torch.manual_seed(3)
    ts = tmp_path / "scripted.pt"
    meta = {"class_names": ["red", "green", "blue"], "preprocess": TINY_PRE}
    torch.jit.save(torch.jit.script(Tiny().eval()), str(ts),
                   _extra_files={"failstore.json": json.dumps(meta)})  # fmt: skip
    ckpt = tmp_path / "r18_robust.pt"
    robustness_checkpoint(ckpt, "resnet18")
    (tmp_path / "fs_load_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    store_path = tmp_path / "S"
    run_ingest(store_path, images, target=str(ts), robust=f"robustness:{ckpt}")
    run_ingest(store_path, images, target="fs_load_factory:make")
    store = Store(store_path)
    script = check_target(store, "scripted", "embed")
    assert "head" in dict(script.module.named_modules()) and script.head_name == "head"
    assert script.record().class_names == ["red", "green", "blue"]  # the file's own names

    names = tmp_path / "names.txt"  # names given at ingest come back without the file
    names.write_text("r\ng\nb\n")
    run_ingest(tmp_path / "S2", images, target=str(ts), class_names=names)
    names.unlink()
    assert load_model(tmp_path / "S2", "scripted").record().class_names == ["r", "g", "b"]
    check_robust(store, "r18_robust", "fc:input")
    factory = check_target(store, "fs_load_factory:make", "6:input")
    assert factory.head_name == "6"

    # a factory whose weights changed: the state dict digest no longer matches
    changed = FACTORY.replace("manual_seed(4)", "manual_seed(400)")  # another size: no stale pyc
    (tmp_path / "fs_load_factory.py").write_text(changed)
    monkeypatch.delitem(sys.modules, "fs_load_factory")
    importlib.invalidate_caches()
    want = json.loads(store.read("models", ["extra"], filter="name = 'fs_load_factory:make'")
                      .column("extra")[0].as_py())["state_dict_sha256"]  # fmt: skip
    with pytest.raises(CheckpointChangedError) as exc:
        load_model(store, "fs_load_factory:make")
    from failstore.models.target import _sd_sha

    now = _sd_sha(importlib.import_module("fs_load_factory").make()[0])
    assert str(exc.value) == (
        f"model 'fs_load_factory:make': the state dict of fs_load_factory:make() changed (sha256 "
        f"{now} expected {want}); re-ingest with the new weights or restore the old ones"
    )


def test_robust_without_head_is_its_output(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_models_target import FACTORY

    (tmp_path / "fs_bare_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_ingest(tmp_path / "S", images, robust="fs_bare_factory:bare")
    adapter = check_robust(Store(tmp_path / "S"), "fs_bare_factory:bare", "<output>")
    assert adapter.head_name is None


# --- pretrained-model specs: the bundled EfficientNet, torchvision and timm caches -------------


def test_pretrained_specs(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import torchvision
    from safetensors.torch import save_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.manual_seed(1)
    tv = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    tv.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), tv)
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = repo / "snapshots" / "0123abcd" / "model.safetensors"
    save_file(timm.create_model("test_resnet.r160_in1k").state_dict(), str(weights))

    store_path = tmp_path / "S"
    robust = "torchvision:resnet18:IMAGENET1K_V1"  # the same file; a model name is one row
    run_ingest(store_path, images, target="efficientnet_lite0", robust=robust,
               robust_layer="avgpool")  # fmt: skip
    run_ingest(store_path, images, target="torchvision:resnet18")
    run_ingest(store_path, images, target="timm:test_resnet.r160_in1k")
    store = Store(store_path)
    check_target(store, "efficientnet_lite0", "_fc:input")
    check_target(store, "torchvision:resnet18", "fc:input")
    timm_adapter = check_target(store, "timm:test_resnet.r160_in1k", "fc:input")
    assert timm_adapter.record().checkpoint_sha256 == sha(weights)
    check_robust(store, robust, "avgpool")

    with pytest.raises(CheckpointChangedError) as exc:  # the cache file replaced by another
        torch.manual_seed(2)
        torch.save(torchvision.models.resnet18().state_dict(), tv)
        load_model(store, "torchvision:resnet18")
    assert f"checkpoint {tv} changed (sha256 {sha(tv)} expected " in str(exc.value)


def test_state_dict_dir_checks(tmp_path: Path) -> None:
    from failstore.models import resolve

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(ValueError, match=r"does not rebuild this model"):
        save_state_dict_dir(net, tmp_path / "m", "failstore.demo.nets:PooledCNN",
                            {"num_classes": 2})  # fmt: skip
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", str(tmp_path / "plain"))
    assert str(exc.value).startswith(
        f"model spec '{tmp_path / 'plain'}': directory {tmp_path / 'plain'} holds no "
        "failstore_model.json, so it is not a state-dict directory; accepted: "
    )
