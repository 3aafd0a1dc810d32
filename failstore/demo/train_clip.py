"""Train the demo's tiny CLIP tagger and calibrate its tag thresholds.

The model is built by open_clip from a custom ``model_cfg`` (small ModifiedResNet + small text
transformer; the text tower keeps open_clip's 49408-token BPE vocabulary so its stock tokenizer
stays valid) and saved as a ``local-dir:`` directory (``open_clip_config.json`` and
``open_clip_model.safetensors``).

Training is contrastive with multiple positives. Each image in a batch gets one text: its world
caption, a caption composed from a random subset of its attributes (e.g. "a small brown animal on
sand") or one tag prompt (e.g. "an animal on snow"). Texts are de-duplicated per batch, and text
u is a positive of image i whenever i satisfies everything u states (same caption string for
world captions), so partial captions are not pushed away from the many images they describe.
Every batch also gets every prompt of every tag ("a gray animal", "a photo of a gray animal",
...). Loss: symmetric soft-target InfoNCE over the (images x unique texts) logits, plus two terms
on the tag prompts: a per-attribute softmax of each image over that attribute's tag embeddings
(the mean of the tag's prompt embeddings, as the tagger scores), and a text-text InfoNCE that
matches a tag's two prompts against the other tags'. The latter breaks the text tower's initial
symmetry: from a random init "an animal on the left" and "... right" embed almost identically
(cosine ~0.99), which left position, object, size and colour at chance for the whole budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from failstore.demo import calibrate as cal
from failstore.demo.calibrate import calibrate_clip as calibrate_clip
from failstore.demo.calibrate import encode_images as encode_images
from failstore.demo.calibrate import load_clip_dir as load_clip_dir
from failstore.demo.nets import (
    Log,
    Normalizer,
    channel_stats,
    cosine_lr,
    no_log,
    random_shift,
    seed_everything,
    split_indices,
    to_tensor,
)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
QUALITY_WORDS = {"grayscale": ("grayscale", "black and white"), "noisy": ("noisy", "grainy")}


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int = 128
    tower: str = "resnet"  # "resnet": open_clip's ModifiedResNet; "vit": VisionTransformer
    width: int = 24  # ResNet stem width (channels: 4x..32x after the bottleneck stages)
    resnet_layers: tuple[int, ...] = (1, 1, 1, 1)
    head_width: int = 32
    layers: int = 4  # ViT only
    patch_size: int = 16  # ViT only
    text_width: int = 128
    text_layers: int = 3
    context_length: int = 32
    samples: int = 60_000  # training (image, text) pairs seen
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    shift: int = 2
    p_world_caption: float = 0.3
    p_tag_prompt: float = 0.3  # the rest: captions composed from attribute subsets
    all_tag_prompts: bool = True  # add every prompt of every tag to every batch's texts
    tag_loss_weight: float = 1.0  # per-attribute softmax over tag embeddings (all_tag_prompts)
    text_sep_weight: float = 1.0  # text-text InfoNCE between each tag's first and last prompt
    text_buckets: int = 6  # training encodes texts trimmed to length, in this many groups

    @classmethod
    def quick(cls) -> ClipConfig:
        return cls(samples=12_288, batch_size=64)

    def model_cfg(self) -> dict[str, Any]:
        vision: dict[str, Any] = {"image_size": 64, "width": self.width}
        vision["head_width"] = self.head_width
        if self.tower == "resnet":
            vision["layers"] = list(self.resnet_layers)
        else:
            vision.update(layers=self.layers, patch_size=self.patch_size)
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": max(1, self.text_width // 32),
                "layers": self.text_layers,
            },
        }


class TextSampler:
    """Draws one training text per image and encodes what each text requires of an image."""

    def __init__(
        self,
        labels: np.ndarray,
        class_names: Sequence[str],
        attributes: Mapping[str, np.ndarray],
        captions: Sequence[str],
        cfg: ClipConfig,
    ) -> None:
        self.cfg = cfg
        self.class_names = list(class_names)
        self.kinds = sorted(attributes)
        self.values = {k: np.asarray(attributes[k]).astype(str) for k in self.kinds}
        self.labels = np.asarray(labels)
        self.captions = list(captions)
        self.caption_ids = np.unique(np.asarray(self.captions), return_inverse=True)[1]
        # image codes: class, one column per attribute, caption id
        cols = [self.labels]
        self.vocab: dict[str, list[str]] = {}
        for k in self.kinds:
            uniq, inv = np.unique(self.values[k], return_inverse=True)
            self.vocab[k] = list(uniq)
            cols.append(inv)
        cols.append(self.caption_ids)
        self.codes = np.stack(cols, axis=1).astype(np.int64)  # (N, K + 2)

    def _phrase(self, kind: str, value: str, rng: np.random.Generator) -> str:
        short = cal.attribute_kind(kind)
        if short == "quality":
            words = QUALITY_WORDS.get(value, (value,))
            return f"a {words[int(rng.integers(len(words)))]} photo of"
        if short == "background":
            return f"on {value}"
        if short == "position":
            return f"on the {value}"
        if short == "object":
            return f"next to a {value}"
        return value

    def sample(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        """Texts for images ``idx`` and their requirement codes (-1 = any) (B, K + 2)."""
        req = np.full((len(idx), self.codes.shape[1]), -1, dtype=np.int64)
        texts: list[str] = []
        u = rng.random(len(idx))
        for j, i in enumerate(idx):
            if u[j] < self.cfg.p_world_caption:
                texts.append(self.captions[i])
                req[j, -1] = self.caption_ids[i]
                continue
            present = [
                (c, k)
                for c, k in enumerate(self.kinds, start=1)
                if self.values[k][i].lower() not in cal.ABSENT_VALUES
            ]
            if u[j] < self.cfg.p_world_caption + self.cfg.p_tag_prompt and present:
                c, k = present[int(rng.integers(len(present)))]
                prompts = cal.prompts_for(cal.attribute_kind(k), self.values[k][i])
                texts.append(prompts[int(rng.integers(len(prompts)))])
                req[j, c] = self.codes[i, c]
                continue
            keep = {k for _, k in present if rng.random() < 0.5}
            parts: dict[str, str] = {}
            for c, k in present:
                if k in keep:
                    parts[cal.attribute_kind(k)] = self._phrase(k, self.values[k][i], rng)
                    req[j, c] = self.codes[i, c]
            noun = "animal"
            if rng.random() < 0.5:
                noun = self.class_names[self.labels[i]]
                req[j, 0] = self.labels[i]
            words = [parts.get("quality", ""), "a", parts.get("size", ""), parts.get("color", "")]
            words += [noun, parts.get("background", ""), parts.get("position", "")]
            words.append(parts.get("object", ""))
            words += [v for k, v in parts.items() if k not in _COMPOSED]
            texts.append(cal.fix_articles(" ".join(w for w in words if w)))
        return texts, req

    def tag_prompt_texts(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every prompt of every tag (attribute value): texts, requirement rows, tag index."""
        texts: list[str] = []
        rows: list[np.ndarray] = []
        tag: list[int] = []
        for c, k in enumerate(self.kinds, start=1):
            for code, value in enumerate(self.vocab[k]):
                if value.lower() in cal.ABSENT_VALUES:
                    continue
                prompts = cal.prompts_for(cal.attribute_kind(k), value)
                row = np.full(self.codes.shape[1], -1, dtype=np.int64)
                row[c] = code
                texts += prompts
                rows += [row] * len(prompts)
                tag += [tag[-1] + 1 if tag else 0] * len(prompts)
        req = np.stack(rows) if rows else np.zeros((0, self.codes.shape[1]), np.int64)
        return texts, req, np.asarray(tag, dtype=np.int64)

    def positives(self, idx: np.ndarray, req: np.ndarray) -> np.ndarray:
        """(B, U) bool: image idx[b] satisfies requirement row u."""
        img = self.codes[idx][:, None, :]
        return ((req[None, :, :] < 0) | (img == req[None, :, :])).all(-1)


_COMPOSED = {"quality", "size", "color", "background", "position", "object"}


def _soft_infonce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    pos = pos.float()
    i2t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    has = pos.sum(0) > 0  # a tag prompt may have no positive image in a small batch
    pos, logits = pos[:, has], logits[:, has]
    t2i = -(pos / pos.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (i2t + t2i) / 2


class TagLosses:
    """The two tag-prompt loss terms of the module docstring. ``texts`` and ``req``: every prompt
    of every tag and its requirement row (added to every batch's texts)."""

    def __init__(self, sampler: TextSampler) -> None:
        texts, self.req, tag = sampler.tag_prompt_texts()
        self.texts = np.asarray(texts)
        first = np.unique(tag, return_index=True)[1]  # each tag's prompts are consecutive
        self.first, self.last = first, np.append(first[1:], len(tag)) - 1
        self.column = (self.req[first] >= 0).argmax(1)  # the tag's attribute (code column)
        self.code = self.req[first, self.column]
        self.groups = [np.flatnonzero(self.column == c) for c in np.unique(self.column)]
        avg = (tag[None, :] == np.arange(len(first))[:, None]) / np.bincount(tag)[:, None]
        self.mean = torch.from_numpy(avg.astype(np.float32))  # (tags, prompts) averaging
        self.codes = sampler.codes

    def __call__(
        self, img: torch.Tensor, txt: torch.Tensor, uniq: np.ndarray, bi: np.ndarray, scale: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attribute loss, text separation loss); ``txt`` are the embeddings of ``uniq``."""
        tag_txt = txt[torch.from_numpy(np.searchsorted(uniq, self.texts))]
        logits = scale * img @ nn.functional.normalize(self.mean @ tag_txt, dim=-1).T
        truth = torch.from_numpy(self.codes[bi][:, self.column] == self.code[None, :])
        attr = logits.new_zeros(())
        for cols in self.groups:
            rows = truth[:, cols].any(1)  # images whose value is a tag (object "none" is not)
            if rows.any():
                target = truth[rows][:, cols].int().argmax(1)
                attr = attr + nn.functional.cross_entropy(logits[rows][:, cols], target)
        tt = scale * tag_txt[self.first] @ tag_txt[self.last].T
        same = torch.arange(len(tt))
        sep = nn.functional.cross_entropy(tt, same) + nn.functional.cross_entropy(tt.T, same)
        return attr / max(1, len(self.groups)), sep / 2


def encode_text_trimmed(model: Any, tokens: torch.Tensor, buckets: int) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on sequences cut after their end-of-text token.

    The text tower is causal and pools at the end-of-text token (the largest id), so later
    positions never reach the output: texts are sorted by length and encoded in ``buckets``
    groups, each trimmed to its longest member (a tag prompt is a third of the context).
    """
    ends = tokens.argmax(dim=-1)
    order = torch.argsort(ends, stable=True)
    out = torch.zeros(len(tokens), model.text_projection.shape[1])
    for part in torch.tensor_split(order, max(1, min(buckets, len(order)))):
        n = int(ends[part].max()) + 1
        x = model.token_embedding(tokens[part, :n]) + model.positional_embedding[:n]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        out = out.index_put((part,), x[torch.arange(len(part)), ends[part]] @ model.text_projection)
    return out


def save_clip_dir(
    model: nn.Module,
    directory: Path,
    cfg: ClipConfig,
    mean: Sequence[float],
    std: Sequence[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": cfg.model_cfg(),
        "preprocess_cfg": {
            "size": 64,
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bilinear",
            "resize_mode": "shortest",
        },
    }
    if extra:
        config["failstore"] = extra
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def train_clip(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    captions: Sequence[str],
    out_dir: Path,
    vocab_path: Path,
    config: ClipConfig | None = None,
    seed: int = 0,
    log: Log = no_log,
) -> dict[str, Any]:
    """Train on ``train`` pairs, save the ``local-dir`` model to ``out_dir``, reload it the way
    the CLIP loader does, calibrate tag thresholds on train, audit on test, write the vocabulary.
    """
    import open_clip

    cfg = config or ClipConfig()
    seed_everything(seed)
    t0 = time.perf_counter()
    idx = split_indices(split)
    train = idx["train"]
    if len(train) == 0:
        raise ValueError("no images in the 'train' split")
    mean, std = channel_stats(images[train])
    norm = Normalizer(mean, std)
    x_all = to_tensor(images)
    sampler = TextSampler(labels, class_names, attributes, captions, cfg)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)

    model = open_clip.CLIP(**cfg.model_cfg())
    model.visual.to(memory_format=torch.channels_last)  # ~1.6x faster convolutions on CPU
    # the 49408 x width token embedding: sparse gradients and SparseAdam (few rows are used)
    model.token_embedding.sparse = True
    emb = model.token_embedding.weight
    dense = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    opt_emb = torch.optim.SparseAdam([emb], lr=cfg.lr)
    tag_losses = TagLosses(sampler)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = max(1, cfg.samples // cfg.batch_size)
    token_cache: dict[str, torch.Tensor] = {}
    model.train()
    running = 0.0
    perm, pos = rng.permutation(train), 0
    for step in range(steps):
        if pos + cfg.batch_size > len(train) and pos > 0:
            perm, pos = rng.permutation(train), 0
        bi = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        texts, req = sampler.sample(bi, rng)
        if cfg.all_tag_prompts:
            texts, req = texts + tag_losses.texts.tolist(), np.concatenate([req, tag_losses.req])
        uniq, first = np.unique(np.asarray(texts), return_index=True)
        new = [t for t in uniq.tolist() if t not in token_cache]
        if new:
            token_cache.update(zip(new, tokenizer(new), strict=True))
        tokens = torch.stack([token_cache[t] for t in uniq.tolist()])
        positives = torch.from_numpy(sampler.positives(bi, req[first]))
        x = norm(norm.unit(random_shift(x_all[torch.from_numpy(bi)], cfg.shift, gen)))
        for group in opt.param_groups + opt_emb.param_groups:
            group["lr"] = cosine_lr(step, steps, cfg.lr, cfg.warmup_steps)
        img = model.encode_image(x.contiguous(memory_format=torch.channels_last))
        img = nn.functional.normalize(img, dim=-1)
        txt = nn.functional.normalize(encode_text_trimmed(model, tokens, cfg.text_buckets), dim=-1)
        scale = model.logit_scale.exp()
        loss = _soft_infonce(scale * img @ txt.T, positives)
        if cfg.all_tag_prompts and (cfg.tag_loss_weight or cfg.text_sep_weight):
            attr_loss, sep_loss = tag_losses(img, txt, uniq, bi, scale)
            loss = loss + cfg.tag_loss_weight * attr_loss + cfg.text_sep_weight * sep_loss
        opt.zero_grad(set_to_none=True)
        opt_emb.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt_emb.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(100.0)))
        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"clip: step {step + 1}/{steps} loss {running:.3f}")
    train_seconds = time.perf_counter() - t0

    metrics: dict[str, Any] = {"steps": steps, "train_seconds": round(train_seconds, 2)}
    save_clip_dir(model, out_dir, cfg, mean, std, extra={"seed": seed, "trainer": "failstore"})
    metrics.update(calibrate_clip(out_dir, vocab_path, x_all, idx, attributes, norm, log=log))
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    metrics["config"] = asdict(cfg)
    metrics["seed"] = seed
    meta_path = Path(out_dir) / CONFIG_FILE
    stored = json.loads(meta_path.read_text(encoding="utf-8"))
    stored["failstore"]["metrics"] = {k: v for k, v in metrics.items() if k != "tag_audit"}
    meta_path.write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")
    return metrics
