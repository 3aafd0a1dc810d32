"""Zero-shot tag vocabulary, per-tag thresholds and the tagger audit for the demo CLIP.

The tag vocabulary is every attribute value of the world (``water``, ``brown``, ``small``,
``ball``, ``blurry`` ...) except "absent" values such as ``none``. Each tag gets explicit prompts
from per-attribute templates. A tag's score is what the CLIP loader computes: the cosine of the
L2-normalised image embedding with the tag embedding (the mean of the L2-normalised prompt
embeddings, re-normalised). A tag fires when ``score >= threshold``; thresholds maximise F1 on
the training split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from failstore.demo.nets import Normalizer

# Attribute values that mean "absent"; they do not become tags.
ABSENT_VALUES = frozenset({"", "none", "no", "nan", "null"})
ATTR_PREFIX = "attr_"
# A threshold no cosine similarity reaches in practice: the tag never fires (no positive
# training example). The vocabulary parser accepts thresholds in [-1, 1].
NEVER = 1.0

# Prompt templates per attribute kind ("{}" is the value). Tags get one prompt per template.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "background": ("an animal on {}", "a photo of an animal on {} background"),
    "color": ("a {} animal", "a photo of a {} animal"),
    "size": ("a {} animal", "a photo of a {} animal"),
    "position": ("an animal on the {}", "a photo with an animal on the {} side"),
    "object": ("an animal next to a {}", "a photo of an animal with a {}"),
    "quality": ("a {} photo", "a {} photo of an animal"),
}
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {}", "an animal with {}")


@dataclass(frozen=True)
class TagSpec:
    """One tag: its name in the store, the attribute/value it audits against, its prompts."""

    name: str
    attribute: str  # e.g. "attr_background"
    value: str  # e.g. "water"
    prompts: tuple[str, ...]

    @property
    def kind(self) -> str:
        return attribute_kind(self.attribute)


def attribute_kind(attribute: str) -> str:
    """``attr_background`` -> ``background``."""
    return attribute[len(ATTR_PREFIX) :] if attribute.startswith(ATTR_PREFIX) else attribute


def fix_articles(text: str) -> str:
    """Fix articles: a orange animal -> an orange animal."""
    return _ARTICLE.sub(r"\1n ", text)


_ARTICLE = re.compile(r"\b([aA]) (?=[aeiouAEIOU])")


def prompts_for(kind: str, value: str) -> tuple[str, ...]:
    templates = PROMPT_TEMPLATES.get(kind, DEFAULT_TEMPLATES)
    return tuple(fix_articles(t.format(value)) for t in templates)


def build_tag_vocabulary(attributes: Mapping[str, np.ndarray]) -> list[TagSpec]:
    """One tag per present attribute value, sorted by attribute then value.

    A value that occurs in two attributes is named ``value_kind`` in both, so names stay unique.
    Names and prompts never contain the vocabulary file's separators (``|``, ``;``, ``#``).
    """
    pairs: list[tuple[str, str]] = []
    for attr in sorted(attributes):
        values = sorted({str(v) for v in np.asarray(attributes[attr]).astype(str)})
        pairs += [(attr, v) for v in values if v.strip().lower() not in ABSENT_VALUES]
    counts: dict[str, int] = {}
    for _, v in pairs:
        counts[v] = counts.get(v, 0) + 1
    tags = []
    for attr, v in pairs:
        clean = " ".join(v.replace("|", " ").replace(";", " ").replace("#", " ").split())
        kind = attribute_kind(attr)
        name = clean.replace(" ", "_") if counts[v] == 1 else f"{clean.replace(' ', '_')}_{kind}"
        tags.append(TagSpec(name=name, attribute=attr, value=v, prompts=prompts_for(kind, clean)))
    return tags


def truth_matrix(tags: Sequence[TagSpec], attributes: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, T) bool: image n has tag t's attribute value."""
    cols = [np.asarray(attributes[t.attribute]).astype(str) == t.value for t in tags]
    if not cols:
        n = len(next(iter(attributes.values()))) if attributes else 0
        return np.zeros((n, 0), dtype=bool)
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------- text embeddings


def tag_text_embeddings(
    model: Any, tokenizer: Callable[[list[str]], Any], prompts_per_tag: Sequence[Sequence[str]]
) -> np.ndarray:
    """(T, D) float32: per tag, the mean of its L2-normalised prompt embeddings, re-normalised.

    ``model`` is an open_clip model (``encode_text``); runs in eval mode without gradients.
    """
    import torch

    flat = [p for prompts in prompts_per_tag for p in prompts]
    if not flat:
        return np.zeros((0, 0), dtype=np.float32)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    with torch.no_grad():
        emb = model.encode_text(tokenizer(flat)).float()
        emb = torch.nn.functional.normalize(emb, dim=-1)
    if was_training:
        model.train()
    out, start = [], 0
    for prompts in prompts_per_tag:
        mean = emb[start : start + len(prompts)].mean(0)
        out.append(torch.nn.functional.normalize(mean, dim=0))
        start += len(prompts)
    return torch.stack(out).cpu().numpy().astype(np.float32)


def tag_scores(image_embeddings: np.ndarray, tag_embeddings: np.ndarray) -> np.ndarray:
    """(N, T) cosine similarities; image embeddings are L2-normalised here."""
    img = np.asarray(image_embeddings, dtype=np.float32)
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    return img @ np.asarray(tag_embeddings, dtype=np.float32).T


# ---------------------------------------------------------------- thresholds


def calibrate_thresholds(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(T,) per-tag thresholds maximising F1 of ``scores >= threshold`` against ``truth``.

    Vectorised: one sort per column. Candidate cuts lie between distinct consecutive sorted
    scores; the threshold is the midpoint of the cut. Tags without positives get ``NEVER``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must be equal (N, T)")
    n, t = scores.shape
    if n == 0:
        return np.full(t, NEVER, dtype=np.float32)
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)  # descending
    tp = np.cumsum(np.take_along_axis(truth, order, axis=0), axis=0)  # (N, T)
    positives = tp[-1]  # (T,)
    k = np.arange(1, n + 1)[:, None]
    f1 = 2.0 * tp / (k + positives[None, :])
    # a cut after row i is only realisable if the next score is strictly lower
    valid = np.ones_like(s, dtype=bool)
    valid[:-1] = s[:-1] > s[1:]
    f1 = np.where(valid, f1, -1.0)
    best = f1.argmax(axis=0)  # (T,)
    cols = np.arange(t)
    upper = s[best, cols]
    lower = np.where(best + 1 < n, s[np.minimum(best + 1, n - 1), cols], upper - 1e-3)
    thr = (upper + lower) / 2.0
    thr = np.where(positives > 0, thr, NEVER)
    return thr.astype(np.float32)


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.asarray(scores) >= np.asarray(thresholds)[None, :]


def argmax_within_attribute(scores: np.ndarray, tags: Sequence[TagSpec]) -> np.ndarray:
    """(N, T) bool: per attribute, only the highest-scoring value fires (values are exclusive).

    An alternative to thresholds; note an image whose value is absent (e.g. object ``none``)
    still gets one of that attribute's tags here.
    """
    scores = np.asarray(scores)
    pred = np.zeros(scores.shape, dtype=bool)
    groups: dict[str, list[int]] = {}
    for i, tag in enumerate(tags):
        groups.setdefault(tag.attribute, []).append(i)
    rows = np.arange(scores.shape[0])
    for idx in groups.values():
        cols = np.asarray(idx)
        pred[rows, cols[scores[:, cols].argmax(axis=1)]] = True
    return pred


# ---------------------------------------------------------------- audit


def tagger_audit(
    pred: np.ndarray, truth: np.ndarray, tags: Sequence[TagSpec] | Sequence[str]
) -> pa.Table:
    """Per tag: attribute, precision, recall, f1, support (true positives in truth), predicted."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ")
    tp = (pred & truth).sum(0).astype(np.float64)
    n_pred = pred.sum(0).astype(np.float64)
    support = truth.sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    names = [t.name if isinstance(t, TagSpec) else str(t) for t in tags]
    attrs = [t.attribute if isinstance(t, TagSpec) else "" for t in tags]
    return pa.table(
        {
            "tag": pa.array(names, pa.string()),
            "attribute": pa.array(attrs, pa.string()),
            "precision": pa.array(precision, pa.float64()),
            "recall": pa.array(recall, pa.float64()),
            "f1": pa.array(f1, pa.float64()),
            "support": pa.array(support.astype(np.int64), pa.int64()),
            "predicted": pa.array(n_pred.astype(np.int64), pa.int64()),
        }
    )


def macro_f1(audit: pa.Table) -> float:
    """Mean F1 over tags that have support (tags absent from the evaluated split are skipped)."""
    f1 = np.asarray(audit.column("f1").to_pylist(), dtype=np.float64)
    support = np.asarray(audit.column("support").to_pylist())
    keep = support > 0
    return float(f1[keep].mean()) if keep.any() else float("nan")


# ---------------------------------------------------------------- vocabulary file


def format_vocabulary(
    tags: Sequence[TagSpec], thresholds: Sequence[float], header: str | None = None
) -> str:
    """The vocabulary file text: ``TAG | THRESHOLD | PROMPT ; PROMPT`` per tag.

    No ``template:`` lines are written: every tag carries its explicit prompts, which are
    exactly the prompts the thresholds were calibrated with.
    """
    if len(tags) != len(thresholds):
        raise ValueError(f"{len(tags)} tags but {len(thresholds)} thresholds")
    lines = ["# failstore tag vocabulary (written by failstore.demo.calibrate)"]
    lines += [f"# {line}" for line in (header or "").splitlines() if line.strip()]
    lines.append("# TAG | THRESHOLD | PROMPT ; PROMPT ...  (score = cosine similarity)")
    for tag, thr in zip(tags, thresholds, strict=True):
        for text in (tag.name, *tag.prompts):
            if any(sep in text for sep in "|;#\n"):
                raise ValueError(f"tag {tag.name!r}: {text!r} contains a separator")
        lines.append(f"{tag.name} | {float(np.float32(thr))!r} | {' ; '.join(tag.prompts)}")
    return "\n".join(lines) + "\n"


def write_vocabulary(
    path: Path, tags: Sequence[TagSpec], thresholds: Sequence[float], header: str | None = None
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_vocabulary(tags, thresholds, header), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the saved CLIP directory


def load_clip_dir(directory: Path) -> tuple[Any, Any, Any]:
    """(model in eval mode, preprocess transform, tokenizer) via open_clip's ``local-dir:``."""
    import open_clip

    ident = f"local-dir:{Path(directory).resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(ident)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(ident)


def encode_images(model: Any, images: Any, norm: Normalizer, batch_size: int = 512) -> np.ndarray:
    """(N, D) L2-normalised image embeddings of a uint8 NCHW tensor."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            emb = model.encode_image(norm(norm.unit(images[i : i + batch_size]))).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1))
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def calibrate_clip(
    clip_dir: Path,
    vocab_path: Path,
    x_all: Any,
    idx: Mapping[str, np.ndarray],
    attributes: Mapping[str, np.ndarray],
    norm: Normalizer,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Reload the saved model through open_clip, score every tag (as the loader does), pick
    thresholds on train, audit on test, write the vocabulary file."""
    model, _, tokenizer = load_clip_dir(clip_dir)
    tags = build_tag_vocabulary(attributes)
    tag_emb = tag_text_embeddings(model, tokenizer, [t.prompts for t in tags])
    truth = truth_matrix(tags, attributes)
    train, test = np.asarray(idx["train"]), np.asarray(idx["test"])
    scores = tag_scores(encode_images(model, x_all[np.concatenate([train, test])], norm), tag_emb)
    s_train, s_test = scores[: len(train)], scores[len(train) :]
    thresholds = calibrate_thresholds(s_train, truth[train])
    audit = tagger_audit(apply_thresholds(s_test, thresholds), truth[test], tags)
    argmax_audit = tagger_audit(argmax_within_attribute(s_test, tags), truth[test], tags)
    train_audit = tagger_audit(apply_thresholds(s_train, thresholds), truth[train], tags)
    macro = macro_f1(audit)
    write_vocabulary(
        vocab_path,
        tags,
        [float(t) for t in thresholds],
        header=f"demo CLIP tagger {Path(clip_dir).name}; thresholds maximise F1 on train; "
        f"test macro-F1 {macro:.3f}",
    )
    log(f"clip: tagger macro-F1 test {macro:.3f} (train {macro_f1(train_audit):.3f})")
    return {
        "tag_macro_f1_test": round(macro, 4),
        "tag_macro_f1_train": round(macro_f1(train_audit), 4),
        "tag_macro_f1_test_argmax": round(macro_f1(argmax_audit), 4),
        "tag_audit": audit.to_pylist(),
        "thresholds": {t.name: float(v) for t, v in zip(tags, thresholds, strict=True)},
    }
