"""Tests for the demo model training (target CNN, robust CNN, tiny CLIP, tag calibration).

Training runs for a handful of steps on a small stand-in world; the tests check formats, round
trips, determinism and that every reported metric equals an independent recomputation, not
accuracy (that is checked on the real demo world).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["cat", "dog", "horse", "cow"]
BACKGROUNDS = {
    "grass": (70, 140, 60),
    "water": (50, 90, 170),
    "sand": (200, 180, 120),
    "snow": (235, 235, 240),
}
COLORS = {
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "orange": (230, 130, 30),
}
SIZES = {"small": 7, "large": 14}
POSITIONS = {"left": 20, "center": 32, "right": 44}
OBJECTS = ["none", "ball", "box"]
QUALITIES = ["clean", "blurry", "noisy"]


def make_standin_world(n: int = 400, seed: int = 0) -> dict:
    """A tiny stand-in for the demo world: shapes (class) with colour, size, position on a
    textured background, an optional object, a quality degradation, and captions.

    Shortcut planted: each class prefers one background (70%).
    """
    rng = np.random.default_rng(seed)
    bgs, cols, sizes = list(BACKGROUNDS), list(COLORS), list(SIZES)
    labels = rng.integers(0, len(CLASSES), n)
    bg = np.where(rng.random(n) < 0.7, labels % len(bgs), rng.integers(0, len(bgs), n))
    attrs = {
        "attr_background": np.array([bgs[i] for i in bg]),
        "attr_color": np.array([cols[i] for i in rng.integers(0, len(cols), n)]),
        "attr_size": np.array([sizes[i] for i in rng.integers(0, 2, n)]),
        "attr_position": np.array(list(POSITIONS))[rng.integers(0, 3, n)],
        "attr_object": np.array(OBJECTS)[rng.integers(0, 3, n)],
        "attr_quality": np.array(QUALITIES)[rng.choice(3, n, p=[0.6, 0.2, 0.2])],
    }
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    images = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i in range(n):
        img = np.array(BACKGROUNDS[attrs["attr_background"][i]], np.float32)[None, None]
        img = img + rng.normal(0, 12, (64, 64, 1)).astype(np.float32)
        img = np.broadcast_to(img, (64, 64, 3)).copy()
        r = SIZES[attrs["attr_size"][i]]
        cx, cy = POSITIONS[attrs["attr_position"][i]], 34
        dx, dy = np.abs(xx - cx), np.abs(yy - cy)
        shape = [
            (dx / r) ** 2 + (dy / (0.7 * r)) ** 2 <= 1,  # cat: ellipse
            (dx <= r) & (dy <= 0.6 * r),  # dog: rectangle
            (dx + dy <= r),  # horse: diamond
            ((dx <= r) & (dy <= 0.3 * r)) | ((dx <= 0.3 * r) & (dy <= r)),  # cow: cross
        ][labels[i]]
        img[shape] = COLORS[attrs["attr_color"][i]]
        obj = attrs["attr_object"][i]
        if obj == "ball":
            img[(xx - 56) ** 2 + (yy - 8) ** 2 <= 16] = (220, 30, 30)
        elif obj == "box":
            img[(np.abs(xx - 56) <= 4) & (np.abs(yy - 8) <= 4)] = (140, 40, 170)
        q = attrs["attr_quality"][i]
        if q == "blurry":
            k = np.ones(5, np.float32) / 5
            img = np.apply_along_axis(np.convolve, 0, img, k, "same")
            img = np.apply_along_axis(np.convolve, 1, img, k, "same")
        elif q == "noisy":
            img = img + rng.normal(0, 40, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    captions = []
    for i in range(n):
        q = attrs["attr_quality"][i]
        cap = "a blurry photo of " if q == "blurry" else "a noisy photo of " if q == "noisy" else ""
        cap += f"a {attrs['attr_size'][i]} {attrs['attr_color'][i]} {CLASSES[labels[i]]}"
        cap += f" on {attrs['attr_background'][i]}"
        if attrs["attr_object"][i] != "none":
            cap += f" next to a {attrs['attr_object'][i]}"
        captions.append(cap)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return {
        "images": images,
        "labels": labels.astype(np.int64),
        "class_names": list(CLASSES),
        "split": split,
        "attributes": attrs,
        "captions": captions,
    }


@pytest.fixture(scope="module")
def world() -> dict:
    return make_standin_world(240, seed=1)


# ---------------------------------------------------------------- calibrate


def _brute_best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    best = 0.0
    for thr in np.unique(scores):
        pred = scores >= thr
        tp = (pred & truth).sum()
        best = max(best, 2 * tp / (pred.sum() + truth.sum()))
    return best


def test_calibrate_thresholds_reaches_best_f1_and_handles_ties() -> None:
    from failstore.demo.calibrate import NEVER, apply_thresholds, calibrate_thresholds

    rng = np.random.default_rng(0)
    truth = rng.random((300, 5)) < [0.1, 0.3, 0.5, 0.02, 0.0]
    scores = rng.normal(0, 1, truth.shape) * 0.1 + truth * rng.uniform(0.0, 0.2, 5)
    scores[:, 2] = np.round(scores[:, 2], 1)  # heavy ties
    thr = calibrate_thresholds(scores, truth)
    assert thr.shape == (5,) and thr.dtype == np.float32
    pred = apply_thresholds(scores, thr)
    for t in range(4):
        tp = (pred[:, t] & truth[:, t]).sum()
        f1 = 2 * tp / (pred[:, t].sum() + truth[:, t].sum())
        assert f1 == pytest.approx(_brute_best_f1(scores[:, t], truth[:, t]), abs=1e-9)
    assert thr[4] == NEVER and not pred[:, 4].any()
    for t in range(4):  # each threshold is the midpoint of the cut it realises
        col = scores[:, t]
        cut = (col[pred[:, t]].min() + col[~pred[:, t]].max()) / 2
        assert thr[t] == np.float32(cut)


def test_calibrate_separable_scores_give_perfect_split() -> None:
    from failstore.demo.calibrate import calibrate_thresholds

    scores = np.array([[0.9], [0.8], [0.3], [0.2]])
    truth = np.array([[True], [True], [False], [False]])
    thr = calibrate_thresholds(scores, truth)
    assert thr[0] == np.float32(0.55)  # midway between the last positive and first negative
    with pytest.raises(ValueError):
        calibrate_thresholds(scores, truth[:3])


def test_vocabulary_tags_audit_and_argmax() -> None:
    from failstore.demo.calibrate import (
        argmax_within_attribute,
        build_tag_vocabulary,
        macro_f1,
        tagger_audit,
        truth_matrix,
    )  # fmt: skip

    attrs = {
        "attr_object": np.array(["none", "ball", "tree", "ball"]),
        "attr_color": np.array(["orange", "gray", "gray", "orange"]),
        "attr_background": np.array(["gray", "snow", "snow", "water"]),
    }
    tags = build_tag_vocabulary(attrs)
    names = [t.name for t in tags]
    assert "none" not in names and "ball" in names
    assert "gray_color" in names and "gray_background" in names  # collision disambiguated
    assert len(set(names)) == len(names)
    orange = next(t for t in tags if t.name == "orange")
    assert orange.prompts[0] == "an orange animal" and orange.kind == "color"
    truth = truth_matrix(tags, attrs)
    assert truth.shape == (4, len(tags))
    assert truth[:, names.index("ball")].tolist() == [False, True, False, True]

    pred = truth.copy()
    pred[0, names.index("ball")] = True  # one false positive
    audit = tagger_audit(pred, truth, tags)
    assert audit.column_names[:6] == ["tag", "attribute", "precision", "recall", "f1", "support"]
    row = audit.to_pylist()[names.index("ball")]
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == 1.0
    assert row["support"] == 2 and row["attribute"] == "attr_object"
    assert macro_f1(tagger_audit(truth, truth, tags)) == 1.0
    k = int((truth.sum(0) > 0).sum())  # tags with support; "ball" has F1 2*(2/3)/(5/3) = 0.8
    assert macro_f1(audit) == pytest.approx((k - 1 + 0.8) / k)

    scores = truth.astype(float) + 0.01 * np.arange(len(tags))
    arg = argmax_within_attribute(scores, tags)
    color_cols = [i for i, t in enumerate(tags) if t.attribute == "attr_color"]
    assert (arg[:, color_cols].sum(1) == 1).all()
    assert (arg[:, color_cols] == truth[:, color_cols]).all()


def test_vocabulary_file_parses_with_the_clip_loader(tmp_path: Path) -> None:
    from failstore.demo.calibrate import build_tag_vocabulary, write_vocabulary

    vocab_mod = pytest.importorskip("failstore.models.vocab")
    attrs = {"attr_background": np.array(["water", "snow"]), "attr_quality": np.array(["a", "b"])}
    tags = build_tag_vocabulary(attrs)
    thr = np.array([0.123456789, -0.5, 1.0, 0.25], dtype=np.float32)
    path = write_vocabulary(tmp_path / "tags.txt", tags, thr, header="line one\nline two")
    vocab = vocab_mod.read_vocab(path)
    assert vocab.tags == [t.name for t in tags]
    assert np.array_equal(np.asarray(vocab.thresholds, dtype=np.float32), thr)
    assert vocab.prompts() == [list(t.prompts) for t in tags]
    with pytest.raises(ValueError):
        write_vocabulary(tmp_path / "bad.txt", tags, thr[:2])


# ---------------------------------------------------------------- nets / target / robust


def test_random_shift_is_a_translation() -> None:
    import torch

    from failstore.demo.nets import random_shift

    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, 0, gen), x)
    y = random_shift(x, 3, gen)
    assert y.shape == x.shape and y.dtype == torch.uint8
    padded = torch.nn.functional.pad(x.float(), (3, 3, 3, 3), mode="replicate").to(torch.uint8)
    for i in range(6):  # every output is some 16x16 window of the padded input
        hits = [
            torch.equal(y[i], padded[i, :, dy : dy + 16, dx : dx + 16])
            for dy in range(7)
            for dx in range(7)
        ]
        assert any(hits)


def _tiny_target(samples: int = 256):
    from failstore.demo.train_target import TargetConfig

    return TargetConfig(widths=(8, 16, 16, 16), bottleneck=12, samples=samples, batch_size=64)


def _split_accuracy(model, world: dict, split: str, mean, std) -> float:
    """Oracle: argmax of the model's logits on one split, one image at a time in float64."""
    import torch

    correct, total = 0, 0
    for img, label, s in zip(world["images"], world["labels"], world["split"], strict=True):
        if s != split:
            continue
        x = (img.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
        x = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
        with torch.no_grad():
            correct += int(model(x).argmax(1).item() == label)
        total += 1
    return round(correct / total, 4)


def test_target_export_metrics_and_determinism(world: dict, tmp_path: Path) -> None:
    import torch

    from failstore.demo.nets import BottleneckCNN, load_exported
    from failstore.demo.train_target import train_target

    args = (world["images"], world["labels"], world["class_names"], world["split"])
    m1 = train_target(*args, tmp_path / "a", _tiny_target(), seed=3)
    train_target(*args, tmp_path / "b", _tiny_target(), seed=3)
    train_target(*args, tmp_path / "c", _tiny_target(), seed=4)
    mod, meta = load_exported(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "failstore_model.json", "model.safetensors"]  # fmt: skip
    assert meta["factory"] == "failstore.demo.nets:BottleneckCNN"
    assert meta["kwargs"] == {"num_classes": 4, "widths": [8, 16, 16, 16], "bottleneck": 12,
                              "stem_stride": 2}  # fmt: skip
    assert meta["class_names"] == CLASSES
    pre = meta["preprocess"]
    assert set(pre) == {"resize", "crop", "mean", "std", "interpolation"}
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (64, 64, "bilinear")
    mean, std = pre["mean"], pre["std"]
    train = world["images"][world["split"] == "train"].reshape(-1, 3).astype(np.float64) / 255
    # the train split's stats (the trainer sums in float32: ~4e-4 off the float64 values)
    assert mean == pytest.approx(train.mean(0).tolist(), abs=1e-3)
    assert std == pytest.approx((train.std(0) + 1e-3).tolist(), abs=1e-3)
    assert meta["metrics"] == json.loads(json.dumps(m1)) and (meta["role"], meta["arch"]) == (
        "target", "cnn")  # fmt: skip
    for split in ("train", "val", "test"):  # reported accuracies = an independent recount
        assert m1[f"{split}_accuracy"] == _split_accuracy(mod, world, split, mean, std)
    assert isinstance(mod, BottleneckCNN) and not mod.training
    assert isinstance(mod.head, torch.nn.Linear) and mod.head.weight.shape == (len(CLASSES), 12)
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        emb = mod.embed(x)
        assert emb.shape == (5, 12)
        assert torch.allclose(mod(x), mod.head(emb), atol=1e-5)
        assert mod(x).shape == (5, len(CLASSES))
    mod_b, _ = load_exported(tmp_path / "b")
    mod_c, _ = load_exported(tmp_path / "c")
    sa, sb, sc = (m.state_dict() for m in (mod, mod_b, mod_c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed: identical weights
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _oracle_adv_accuracy(model, x01, y, norm, eps: float, steps: int, seed: int) -> float:
    """Oracle for the reported PGD accuracy: L-inf PGD written out here (random start from a
    generator seeded ``seed + 1``, ``steps`` signed-gradient steps of eps/4), batch of 256."""
    import torch

    from failstore.demo.nets import channels_last

    gen = torch.Generator().manual_seed(seed + 1)
    model = model.to(memory_format=torch.channels_last).eval()
    correct = 0
    for i in range(0, len(y), 256):
        xb, yb = channels_last(x01[i : i + 256]), y[i : i + 256]
        delta = (torch.rand(xb.shape, generator=gen) * 2 - 1) * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            out = model(norm((xb + delta).clamp(0, 1)))
            (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, yb), delta)
            delta = (delta.detach() + eps / 4 * g.sign()).clamp(-eps, eps)
        with torch.no_grad():
            correct += int((model(norm((xb + delta).clamp(0, 1))).argmax(1) == yb).sum())
    return correct / len(y)


def test_robust_model_and_attacks(world: dict, tmp_path: Path) -> None:
    import torch

    from failstore.demo.nets import Normalizer, load_exported, to_tensor
    from failstore.demo.train_robust import RobustConfig, pgd_attack, train_robust

    cfg = RobustConfig(widths=(8, 16, 16, 24), samples=256, batch_size=64, eval_adv_images=32,
                       pgd_steps=3)  # fmt: skip
    args = (world["images"], world["labels"], world["class_names"], world["split"])
    metrics = train_robust(*args, tmp_path / "r", cfg, seed=0)
    assert metrics["adv_eval_images"] == 32
    assert metrics["attack"] == {
        "train": "FGSM-RS Linf eps=0.01569 alpha=0.01961 ([0,1] pixels)",
        "eval": "PGD-3 Linf eps=0.01569 step=0.00392 random start",
    }
    mod, meta = load_exported(tmp_path / "r")
    assert meta["factory"] == "failstore.demo.nets:PooledCNN"
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert mod.embed(x).shape == (4, 24)
        assert torch.allclose(mod(x), mod.head(mod.embed(x)), atol=1e-5)
    norm = Normalizer(meta["preprocess"]["mean"], meta["preprocess"]["std"])
    test = np.flatnonzero(world["split"] == "test")[:32]
    x_test = norm.unit(to_tensor(world["images"][test]))
    y_test = torch.as_tensor(world["labels"][test])
    oracle = _oracle_adv_accuracy(mod, x_test, y_test, norm, cfg.eps, cfg.pgd_steps, seed=0)
    assert metrics["adv_accuracy"] == round(oracle, 4)
    mean, std = meta["preprocess"]["mean"], meta["preprocess"]["std"]
    assert metrics["clean_accuracy"] == _split_accuracy(mod, world, "test", mean, std)

    x01 = norm.unit(to_tensor(world["images"][:32]))
    y = torch.as_tensor(world["labels"][:32])
    gen = torch.Generator().manual_seed(0)
    adv = pgd_attack(mod, x01, y, norm, 4 / 255, 5, gen)
    assert (adv - x01).abs().max() <= 4 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean_loss = torch.nn.functional.cross_entropy(mod(norm(x01)), y)
        adv_loss = torch.nn.functional.cross_entropy(mod(norm(adv)), y)
    assert adv_loss > clean_loss


def _reference_steps(model, x_train, y_train, norm, cfg, steps: int, seed: int, robust: bool):
    """The trainers' loop before it was shared, written out: the same RNG call order."""
    import torch

    from failstore.demo.nets import channels_last, cosine_lr, random_shift

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.to(memory_format=torch.channels_last).train()
    n, pos = len(x_train), 0
    perm = torch.randperm(n, generator=gen)
    for step in range(steps):
        if pos + cfg.batch_size > n and pos > 0:
            perm, pos = torch.randperm(n, generator=gen), 0
        bi = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        shifted = random_shift(x_train[bi], cfg.shift, gen)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, cfg.lr, cfg.warmup_steps)
        y = y_train[bi]
        if robust:
            x01 = channels_last(norm.unit(shifted))
            eps = cfg.eps * min(1.0, (step + 1) / max(1, steps // 5))
            delta = (torch.rand(x01.shape, generator=gen) * 2 - 1) * eps
            delta.requires_grad_(True)
            inner = torch.nn.functional.cross_entropy(model(norm((x01 + delta).clamp(0, 1))), y)
            (g,) = torch.autograd.grad(inner, delta)
            delta = (delta.detach() + cfg.alpha * eps / cfg.eps * g.sign()).clamp(-eps, eps)
            out = model(norm((x01 + delta).clamp(0, 1)))
        else:
            out = model(channels_last(norm(norm.unit(shifted))))
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("kind", ["target", "robust"])
def test_shared_loop_matches_the_reference_loop_bit_for_bit(world: dict, kind: str) -> None:
    import torch

    from failstore.demo.nets import BottleneckCNN, Normalizer, PooledCNN, to_tensor
    from failstore.demo.train_robust import RobustConfig, fgsm_loss
    from failstore.demo.train_target import fit_classifier
    from failstore.demo.training import LoopSettings, train_loop

    x = to_tensor(world["images"][:100])  # batch 48: a new permutation at step 3
    y = torch.as_tensor(world["labels"][:100])
    norm = Normalizer([0.5, 0.6, 0.55], [0.2, 0.25, 0.3])
    cfg = (_tiny_target() if kind == "target" else RobustConfig(widths=(8, 8, 8, 16)))
    cfg = type(cfg)(**{**cfg.__dict__, "batch_size": 48, "warmup_steps": 2})
    make = (lambda: BottleneckCNN(4, (8, 16, 16, 16), 12)) if kind == "target" else (
        lambda: PooledCNN(4, (8, 8, 8, 16)))  # fmt: skip
    torch.manual_seed(0)
    ref, new, untouched = make(), make(), make()
    new.load_state_dict(ref.state_dict())
    untouched.load_state_dict(ref.state_dict())
    _reference_steps(ref, x, y, norm, cfg, 3, seed=7, robust=kind == "robust")
    if kind == "target":
        fit_classifier(new, x, y, norm, cfg, 3, seed=7)
    else:
        settings = LoopSettings(3, 48, cfg.lr, cfg.weight_decay, 2, cfg.shift, seed=7)
        train_loop(new, x, y, norm, settings, fgsm_loss(norm, cfg, 3))
    a, b, c = ref.state_dict(), new.state_dict(), untouched.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])  # the steps did train


# ---------------------------------------------------------------- clip


def _tiny_clip(samples: int = 128):
    from failstore.demo.train_clip import ClipConfig

    return ClipConfig(
        embed_dim=32, width=8, head_width=8, text_width=32, text_layers=1,
        context_length=32, samples=samples, batch_size=64,
    )  # fmt: skip


def test_text_sampler_positives(world: dict) -> None:
    from failstore.demo.train_clip import TextSampler

    s = TextSampler(world["labels"], CLASSES, world["attributes"], world["captions"], _tiny_clip())
    idx = np.arange(64)
    texts, req = s.sample(idx, np.random.default_rng(0))
    assert len(texts) == 64 and req.shape == (64, len(world["attributes"]) + 2)
    pos = s.positives(idx, req)
    assert pos.diagonal().all()  # every image matches its own text
    for j, text in enumerate(texts):
        if text in world["captions"] and req[j, -1] >= 0:  # world caption: same string only
            same = np.array([world["captions"][i] == text for i in idx])
            assert (pos[:, j] == same).all()
    prompt = [j for j, t in enumerate(texts) if t.startswith("an animal on ") and "the" not in t]
    for j in prompt:  # a background prompt: positives are exactly the images on that background
        bg = texts[j].removeprefix("an animal on ")
        assert (pos[:, j] == (world["attributes"]["attr_background"][idx] == bg)).all()


def test_clip_local_dir_round_trip_and_calibration(world: dict, tmp_path: Path) -> None:
    import open_clip
    import torch

    from failstore.demo import calibrate as cal
    from failstore.demo.train_clip import encode_images, train_clip

    metrics = train_clip(
        world["images"], world["labels"], world["class_names"], world["split"],
        world["attributes"], world["captions"], tmp_path / "clip", tmp_path / "tags.txt",
        _tiny_clip(), seed=0,
    )  # fmt: skip
    cfg = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["image_size"] == 64
    assert cfg["preprocess_cfg"]["size"] == 64 and cfg["preprocess_cfg"]["resize_mode"]
    assert (tmp_path / "clip" / "open_clip_model.safetensors").is_file()

    ident = f"local-dir:{tmp_path / 'clip'}"
    model, _, preprocess = open_clip.create_model_and_transforms(ident)
    tokenizer = open_clip.get_tokenizer(ident)
    assert tokenizer.context_length == 32
    # the weights are the trained ones, not a fresh init
    fresh = open_clip.create_model(ident, load_weights=False)
    assert not torch.equal(fresh.visual.conv1.weight, model.visual.conv1.weight)
    from PIL import Image

    pil = Image.fromarray(world["images"][0])
    assert preprocess(pil).shape == (3, 64, 64)

    # thresholds in the vocabulary reproduce the tags computed from the reloaded model
    tags = cal.build_tag_vocabulary(world["attributes"])
    lines = [ln for ln in (tmp_path / "tags.txt").read_text().splitlines() if "|" in ln]
    lines = [ln for ln in lines if not ln.startswith("#")]
    assert [ln.split(" | ")[0] for ln in lines] == [t.name for t in tags]
    thr = np.array([float(ln.split(" | ")[1]) for ln in lines], dtype=np.float32)
    assert np.allclose(thr, [metrics["thresholds"][t.name] for t in tags])
    from failstore.demo.nets import Normalizer, to_tensor

    mean, std = cfg["preprocess_cfg"]["mean"], cfg["preprocess_cfg"]["std"]
    emb = encode_images(model, to_tensor(world["images"]), Normalizer(mean, std))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    scores = cal.tag_scores(
        emb, cal.tag_text_embeddings(model, tokenizer, [t.prompts for t in tags])
    )
    test = world["split"] == "test"
    audit = cal.tagger_audit(cal.apply_thresholds(scores[test], thr), cal.truth_matrix(tags, {
        k: v[test] for k, v in world["attributes"].items()}), tags)  # fmt: skip
    assert cal.macro_f1(audit) == pytest.approx(metrics["tag_macro_f1_test"], abs=2e-3)


# ---------------------------------------------------------------- train_all


def test_train_all_writes_cache_and_reuses_it(world: dict, tmp_path: Path) -> None:
    from failstore.demo.models import train_all
    from failstore.demo.train_robust import RobustConfig

    configs = {
        "target": _tiny_target(128),
        "robust": RobustConfig(widths=(8, 8, 8, 8), samples=64, batch_size=64,
                               eval_adv_images=16, pgd_steps=2),
        "clip": _tiny_clip(64),
    }  # fmt: skip
    arrays = (world["images"], world["labels"], world["class_names"], world["split"],
              world["attributes"], world["captions"])  # fmt: skip
    logs: list[str] = []
    out = train_all(*arrays, tmp_path / "cache", quick=True, seed=0, configs=configs,
                    log=logs.append)  # fmt: skip
    assert out["reused"] is False
    for key in ("tags", "metrics"):
        assert Path(out["paths"][key]).is_file()
    for key in ("target", "robust"):
        assert (Path(out["paths"][key]) / "model.safetensors").is_file()
    assert out["specs"]["clip"] == f"local-dir:{tmp_path / 'cache' / 'clip'}"
    assert out["specs"]["target"] == str(tmp_path / "cache" / "target")  # a state-dict dir
    assert out["ingest_args"][::2] == ["--target", "--robust", "--clip", "--tags"]
    m = out["metrics"]
    assert {"target", "robust", "clip", "seconds"} <= set(m)
    assert "adv_accuracy" in m["robust"] and "tag_macro_f1_test" in m["clip"]
    assert (m["target"]["steps"], m["robust"]["steps"]) == (128 // 64, 64 // 64)  # the budgets
    assert m["robust"]["adv_eval_images"] == min(16, int((world["split"] == "test").sum()))
    again = train_all(*arrays, tmp_path / "cache", quick=True, seed=0, configs=configs)
    assert again["reused"] is True and again["metrics"] == json.loads(json.dumps(m))
    changed = dict(world["attributes"])
    changed["attr_size"] = changed["attr_size"][::-1].copy()
    arrays2 = (*arrays[:4], changed, arrays[5])
    assert train_all(*arrays2, tmp_path / "cache", quick=True, seed=0, configs=configs)[
        "reused"
    ] is False  # fmt: skip


def test_trained_models_load_through_the_ingest_loaders(world: dict, tmp_path: Path) -> None:
    """The files train_all writes are read by failstore's own model loaders, and the CLIP
    loader's tag scores are the scores the thresholds were calibrated on."""
    import torch

    models = pytest.importorskip("failstore.models")
    from failstore.demo import calibrate as cal
    from failstore.demo.models import train_all
    from failstore.demo.nets import Normalizer, to_tensor
    from failstore.demo.train_clip import encode_images, load_clip_dir
    from failstore.demo.train_robust import RobustConfig

    configs = {
        "target": _tiny_target(64),
        "robust": RobustConfig(widths=(8, 8, 8, 8), samples=64, batch_size=64,
                               eval_adv_images=8, pgd_steps=1),
        "clip": _tiny_clip(64),
    }  # fmt: skip
    out = train_all(world["images"], world["labels"], world["class_names"], world["split"],
                    world["attributes"], world["captions"], tmp_path, configs=configs)  # fmt: skip
    specs = out["specs"]
    batch_u8 = to_tensor(world["images"][:8])

    target = models.resolve("target", specs["target"])
    target.load("cpu")
    pre = target.preprocess
    x = Normalizer(pre.mean, pre.std)(batch_u8.float() / 255)
    cols = target.encode(x)
    rec = target.record()
    assert rec.class_names == CLASSES and rec.layer == "head:input"
    # oracle: the architecture built by hand, filled from the safetensors file
    from safetensors.torch import load_file

    from failstore.demo.nets import BottleneckCNN, PooledCNN

    net = BottleneckCNN(4, (8, 16, 16, 16), 12).eval()
    net.load_state_dict(load_file(str(Path(specs["target"]) / "model.safetensors")))
    with torch.no_grad():
        np.testing.assert_allclose(cols["logits"], net(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cols["embedding"], net.embed(x).numpy(), rtol=1e-5, atol=1e-6)

    robust = models.resolve("robust", specs["robust"])
    robust.load("cpu")
    feats = robust.encode(x)["robust_features"]
    rnet = PooledCNN(4, (8, 8, 8, 8)).eval()
    rnet.load_state_dict(load_file(str(Path(specs["robust"]) / "model.safetensors")))
    with torch.no_grad():
        np.testing.assert_allclose(feats, rnet.embed(x).numpy(), rtol=1e-5, atol=1e-6)
    assert robust.record().layer == "head:input"

    clip = models.resolve("clip", specs["clip"], vocab=specs["tags"])
    clip.load("cpu")
    pre = clip.preprocess
    assert (pre.resize, pre.crop) == (64, 64)
    norm = Normalizer(pre.mean, pre.std)
    got = clip.encode(norm(batch_u8.float() / 255))
    model, _, tokenizer = load_clip_dir(Path(specs["clip"].removeprefix("local-dir:")))
    tags = cal.build_tag_vocabulary(world["attributes"])
    mine = cal.tag_scores(
        encode_images(model, batch_u8, norm),
        cal.tag_text_embeddings(model, tokenizer, [t.prompts for t in tags]),
    )
    assert got["tag_scores"].shape == mine.shape
    assert np.allclose(got["tag_scores"], mine, atol=1e-4)
