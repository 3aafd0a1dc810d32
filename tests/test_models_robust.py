"""Robust adapters: robustness-library checkpoints and target-style specs used for features."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from preprocess_oracle import to_batch

from failstore.errors import ModelSpecError
from failstore.models import resolve
from failstore.models.protocol import IMAGENET_MEAN, IMAGENET_STD, Preprocess

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def robustness_checkpoint(path: Path, arch: str, key: str = "model", normalizer: bool = True):
    """Write ``arch`` with random weights in the robustness library's checkpoint format:
    an AttackerModel's state dict (normalizer + model + attacker copies) plus training state."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None).eval()
    sd: dict[str, torch.Tensor] = {}
    if normalizer:
        sd["module.normalizer.new_mean"] = torch.tensor(MEAN).reshape(3, 1, 1)
        sd["module.normalizer.new_std"] = torch.tensor(STD).reshape(3, 1, 1)
    for k, v in net.state_dict().items():
        sd[f"module.model.{k}"] = v
    if normalizer:
        sd["module.attacker.normalize.new_mean"] = torch.tensor(MEAN).reshape(3, 1, 1)
        sd["module.attacker.normalize.new_std"] = torch.tensor(STD).reshape(3, 1, 1)
    for k, v in net.state_dict().items():
        sd[f"module.attacker.model.{k}"] = v
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50)
    torch.save(
        {key: sd, "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "epoch": 120}, path
    )
    return net


def images(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (230, 250, 3), dtype=np.uint8) for _ in range(n)]


def penultimate(net, batch):
    with torch.inference_mode():
        trunk = torch.nn.Sequential(*list(net.children())[:-1])  # up to avgpool
        return trunk(batch).flatten(1).numpy()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("robust") / "imagenet_l2_3_0.pt"
    return path, robustness_checkpoint(path, "resnet50")


def test_resnet50_robustness_checkpoint(resnet50_file) -> None:
    path, net = resnet50_file
    adapter = resolve("robust", str(path))
    assert adapter.name == "imagenet_l2_3_0" and adapter.role == "robust"
    adapter.load()
    assert adapter.preprocess == Preprocess(256, 224, MEAN, STD)
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)
    assert list(out) == ["robust_features"]
    assert out["robust_features"].shape == (2, 2048) and out["robust_features"].dtype == np.float32
    np.testing.assert_allclose(
        out["robust_features"], penultimate(net, batch), rtol=1e-4, atol=1e-5
    )
    rec = adapter.record()
    assert rec.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (rec.layer, rec.embedding_dim, rec.extra["arch"]) == ("fc:input", 2048, "resnet50")
    assert rec.head_weight is None and rec.class_names is None


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_resnet18_format_variants(tmp_path: Path, key: str) -> None:
    path = tmp_path / "r18.ckpt"
    net = robustness_checkpoint(path, "resnet18", key=key, normalizer=False)
    adapter = resolve("robust", f"robustness:{path}")
    adapter.load()
    assert adapter.preprocess == Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)["robust_features"]
    np.testing.assert_allclose(out, penultimate(net, batch), rtol=1e-4, atol=1e-5)
    assert adapter.record().extra["arch"] == "resnet18"


def test_robustness_checkpoint_as_target(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    net = robustness_checkpoint(path, "resnet18")
    adapter = resolve("target", str(path))
    adapter.load()
    batch = to_batch(images(), adapter.preprocess)
    out = adapter.encode(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], net(batch).numpy(), rtol=1e-4, atol=1e-4)
    rec = adapter.record()
    assert rec.class_names[285] == "Egyptian cat"
    np.testing.assert_allclose(
        out["embedding"] @ rec.head_weight.T + rec.head_bias, out["logits"], rtol=1e-4, atol=1e-4
    )


def test_not_a_robustness_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelSpecError) as exc:
        resolve("robust", str(path)).load()
    assert str(exc.value) == (
        f"{path}: not a robustness-library checkpoint (expected a dict with 'model' or "
        "'state_dict' holding keys 'module.model.*'); TorchScript files must be made with "
        "torch.jit.save"
    )


class Opaque:
    pass


def test_pickled_objects_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"module.model.x": torch.zeros(1)}, "args": Opaque()}, path)
    monkeypatch.delenv("FAILSTORE_ALLOW_PICKLE", raising=False)
    with pytest.raises(ModelSpecError, match=re.escape(f"{path}: checkpoint holds objects")) as exc:
        resolve("robust", str(path)).load()
    assert str(exc.value).endswith("; set FAILSTORE_ALLOW_PICKLE=1 if you trust the file")
    monkeypatch.setenv("FAILSTORE_ALLOW_PICKLE", "1")
    with pytest.raises(ModelSpecError, match=r"are not a torchvision ResNet \(blocks per stage"):
        resolve("robust", str(path)).load()  # unpickled; then the 1-key model is rejected


def test_robust_from_torchvision_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(5)
    net = torchvision.models.resnet18().eval()
    ckpt = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt)
    batch = to_batch(images(), Preprocess(256, 224))
    expected = penultimate(net, batch)
    for layer in ("avgpool", "fc:input", None):
        adapter = resolve("robust", "torchvision:resnet18", layer=layer)
        adapter.load()
        got = adapter.encode(batch)["robust_features"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert adapter.record().layer == (layer or "fc:input")
    adapter = resolve("robust", "torchvision:resnet18", layer="layer4.1.conv2")
    adapter.load()
    assert adapter.encode(batch)["robust_features"].shape == (2, 512 * 7 * 7)


def test_robust_from_torchscript_embed(tmp_path: Path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.head = torch.nn.Linear(8, 4)

        @torch.jit.export
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x))

    torch.manual_seed(6)
    net = Net().eval()
    path = tmp_path / "robust_demo.pt"
    meta = {"class_names": list("abcd"), "preprocess": {"resize": 36, "crop": 32}}
    torch.jit.save(
        torch.jit.script(net), str(path), _extra_files={"failstore.json": json.dumps(meta)}
    )
    adapter = resolve("robust", str(path))
    adapter.load()
    batch = to_batch(images(), adapter.preprocess)
    with torch.inference_mode():
        expected = net.embed(batch).numpy()
    np.testing.assert_allclose(
        adapter.encode(batch)["robust_features"], expected, rtol=1e-5, atol=1e-6
    )
    assert adapter.record().embedding_dim == 8
