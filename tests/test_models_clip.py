"""CLIP adapter on a tiny random open_clip model saved in the real local-dir format."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from preprocess_oracle import to_batch

from failstore.errors import InputError, ModelSpecError, WeightsNotFoundError
from failstore.models import resolve, tags_from_scores, write_vocab
from failstore.models.protocol import Preprocess

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PRE_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
TAGS = ["snow", "grass", "night"]


def write_tiny_clip(d: Path) -> Path:
    """An open_clip directory ``d`` (weights + config) of the tiny CLIP, randomly initialised
    from torch's current seed; ``local-dir:d`` loads it."""
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    save_file(open_clip.CLIP(**MODEL_CFG).state_dict(), str(d / "open_clip_model.safetensors"))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PRE_CFG}
    (d / "open_clip_config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "tags.txt"
    prompts = [None, ["a lawn", "green grass"], None]
    return write_vocab(path, TAGS, [0.5, None, -0.2], ["a photo of {}.", "{} outside"], prompts)


@pytest.fixture(scope="module")
def registered(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = tmp_path_factory.mktemp("cfg") / "tiny-clip-test.json"
    cfg.write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(cfg)
    yield "tiny-clip-test"
    open_clip.factory._MODEL_CONFIGS.pop("tiny-clip-test", None)


def pictures(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(n)]


def brute_force(clip_dir: Path, batch, prompts: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores computed directly with open_clip, one tag at a time."""
    model = open_clip.create_model(f"local-dir:{clip_dir}").eval()
    tok = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    with torch.no_grad():
        img = model.encode_image(batch)
        img = img / img.norm(dim=-1, keepdim=True)
        rows = []
        for ps in prompts:
            t = model.encode_text(tok(ps))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(t / t.norm())
        text = torch.stack(rows)
    return img.numpy(), (img @ text.T).numpy()


@pytest.mark.parametrize(
    "form", ["local-dir:{d}", "{d}", "{model}:{d}/open_clip_model.safetensors"]
)
def test_clip_scores_match_open_clip(
    clip_dir: Path, vocab_file: Path, registered: str, form: str
) -> None:
    spec = form.format(d=clip_dir, model=registered)
    adapter = resolve("clip", spec, vocab=vocab_file, tag_threshold=0.1)
    if form.startswith("{model}"):  # a config name + weights: open_clip's default preprocessing
        assert adapter.preprocess == Preprocess(32, 32, OPENAI_MEAN, OPENAI_STD, "bicubic")
    else:  # the dir's preprocess_cfg
        assert adapter.preprocess == Preprocess(32, 32, (0.5,) * 3, (0.25,) * 3, "bilinear")
    np.testing.assert_array_equal(adapter.thresholds, np.array([0.5, 0.1, -0.2], np.float32))
    adapter.load()
    batch = to_batch(pictures(), adapter.preprocess)
    out = adapter.encode(batch)
    assert set(out) == {"clip_embedding", "tag_scores"}
    emb, scores = out["clip_embedding"], out["tag_scores"]
    assert (
        emb.shape == (4, 32) and scores.shape == (4, 3) and emb.dtype == scores.dtype == np.float32
    )
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    prompts = [
        ["a photo of snow.", "snow outside"],
        ["a lawn", "green grass"],
        ["a photo of night.", "night outside"],
    ]
    ref_emb, ref_scores = brute_force(clip_dir, batch, prompts)
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    expected = [
        [t for t, s, th in zip(TAGS, row, [0.5, 0.1, -0.2], strict=True) if s >= th]
        for row in scores
    ]
    assert adapter.tags_for(scores) == expected
    assert tags_from_scores(scores, adapter.tags, adapter.thresholds) == expected

    rec = adapter.record()
    weights = clip_dir / "open_clip_model.safetensors"
    assert rec.checkpoint_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (rec.role, rec.spec, rec.embedding_dim, rec.tags) == ("clip", spec, 32, TAGS)
    assert [json.loads(p) for p in rec.prompts] == prompts
    assert rec.thresholds == pytest.approx([0.5, 0.1, -0.2])
    assert rec.extra["default_threshold"] == 0.1
    expected_name = (
        "tiny-clip" if form.startswith(("local", "{d}")) else "tiny-clip-test:open_clip_model"
    )
    assert adapter.name == rec.name == expected_name


def test_default_threshold_and_no_vocab(clip_dir: Path, tmp_path: Path) -> None:
    v = tmp_path / "v.txt"
    v.write_text("a\nb | 0.4\n")
    adapter = resolve("clip", str(clip_dir), vocab=v)
    np.testing.assert_array_equal(adapter.thresholds, np.array([0.25, 0.4], np.float32))
    bare = resolve("clip", str(clip_dir))
    bare.load()
    out = bare.encode(to_batch(pictures(2), bare.preprocess))
    assert out["tag_scores"].shape == (2, 0) and bare.record().tags == []


def test_pretrained_tag_from_local_hf_cache(
    clip_dir: Path, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        registered,
        {
            "unit": {
                "hf_hub": "someorg/tiny-clip/",
                "url": "",
                "mean": (0.1, 0.2, 0.3),
                "quick_gelu": False,
            }
        },
    )
    adapter = resolve("clip", f"{registered}:unit")
    assert adapter.preprocess.mean == (0.1, 0.2, 0.3) and adapter.preprocess.crop == 32
    repo = tmp_path / "hub" / "models--someorg--tiny-clip"
    with pytest.raises(WeightsNotFoundError) as exc:
        adapter.load()
    assert str(exc.value) == (
        f"CLIP {registered}:unit: weights not in the local cache (looked for "
        f"{repo}/snapshots/<revision>/open_clip_pytorch_model.bin); copy the file there, or pass "
        "MODEL:/path/to/checkpoint"
    )
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    target = repo / "snapshots" / "c0ffee" / "open_clip_model.safetensors"
    target.write_bytes((clip_dir / "open_clip_model.safetensors").read_bytes())
    adapter.load()
    assert adapter.record().checkpoint_sha256 == hashlib.sha256(target.read_bytes()).hexdigest()


def test_missing_weights_and_bad_specs(clip_dir: Path, tmp_path: Path, registered: str) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text((clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve("clip", f"local-dir:{empty}")
    assert str(exc.value) == (
        f"local-dir:{empty}: no CLIP weights in {empty} (expected "
        f"{empty}/open_clip_model.safetensors or open_clip_pytorch_model.bin); "
        "copy the weights file into that directory"
    )
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve("clip", f"{registered}:{missing}")
    assert str(exc.value) == (
        f"{registered}:{missing}: CLIP weights file not found: {missing}; "
        "copy the checkpoint there or fix the path"
    )
    with pytest.raises(ModelSpecError) as exc:
        resolve("clip", "ViT-B-32")
    assert str(exc.value) == (
        "CLIP model spec 'ViT-B-32' is not understood; accepted: local-dir:/path/to/dir, a "
        "directory path, hf-hub:org/repo (local cache), MODEL:/path/to/weights or "
        "MODEL:PRETRAINED_TAG"
    )
    with pytest.raises(ModelSpecError, match=re.escape(f"no open_clip_config.json in {tmp_path}")):
        resolve("clip", f"local-dir:{tmp_path}")
    with pytest.raises(ModelSpecError, match="'nosuch' is not an open_clip model config"):
        resolve("clip", f"nosuch:{clip_dir}/open_clip_model.safetensors").load()
    with pytest.raises(ModelSpecError, match=r"'bogus' is neither a pretrained tag of ViT-B-32 \("):
        resolve("clip", "ViT-B-32:bogus").load()
    with pytest.raises(WeightsNotFoundError, match="hf-hub:someorg/absent: not in the local"):
        resolve("clip", "hf-hub:someorg/absent")
    with pytest.raises(ModelSpecError, match="--layer and --class-names apply only"):
        resolve("clip", str(clip_dir), layer="visual")
    bad = tmp_path / "bad.txt"
    bad.write_text("a | x\n")
    with pytest.raises(InputError, match=re.escape(f"{bad} line 1: threshold 'x' is not a number")):
        resolve("clip", str(clip_dir), vocab=bad)
