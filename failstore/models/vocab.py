"""Tag vocabulary files (for CLIP) and class-name files (for targets). Pure Python.

Vocabulary format (UTF-8, one entry a line)::

    # comment lines and blank lines are ignored
    template: a photo of {}.
    template: a blurry photo of {}.
    dog
    snow | 0.3
    night | | a photo taken at night ; a dark photo
    grass | 0.27 | a photo of grass ; a lawn

``template:`` lines (any number, anywhere) replace the default single template
``a photo of {}.``; ``{}`` is replaced by the tag. A tag line is ``TAG``, ``TAG | THRESHOLD`` or
``TAG | THRESHOLD | PROMPT ; PROMPT ...``; explicit prompts replace the templates for that tag and
an empty THRESHOLD means "the default threshold".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from failstore.errors import InputError

DEFAULT_TEMPLATES = ("a photo of {}.",)
TEMPLATE_PREFIX = "template:"


@dataclass
class Vocabulary:
    tags: list[str]
    thresholds: list[float | None]  # None: use the adapter's default threshold
    explicit_prompts: list[list[str] | None]  # None: use the templates
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    source: str | None = None

    def __len__(self) -> int:
        return len(self.tags)

    def prompts(self) -> list[list[str]]:
        """The prompt strings of every tag, in tag order."""
        out = []
        for tag, explicit in zip(self.tags, self.explicit_prompts, strict=True):
            out.append(
                list(explicit) if explicit else [t.replace("{}", tag) for t in self.templates]
            )
        return out

    def resolved_thresholds(self, default: float) -> list[float]:
        return [default if t is None else t for t in self.thresholds]


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: {what} file is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def _parse_threshold(text: str, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"{where}: threshold {text!r} is not a number; write TAG | 0.25 or leave it empty"
        ) from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InputError(
            f"{where}: threshold {text!r} is outside [-1, 1] (tag scores are cosine similarities)"
        )
    return value


def parse_vocab(text: str, source: str = "<vocabulary>") -> Vocabulary:
    tags: list[str] = []
    thresholds: list[float | None] = []
    explicit: list[list[str] | None] = []
    templates: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{source} line {lineno}"
        if not line or line.startswith("#"):
            continue
        if line.startswith(TEMPLATE_PREFIX):
            template = line[len(TEMPLATE_PREFIX) :].strip()
            if "{}" not in template:
                raise InputError(f"{where}: template {template!r} has no {{}} for the tag")
            templates.append(template)
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) > 3:
            raise InputError(
                f"{where}: too many '|' fields; write TAG, TAG | THRESHOLD or "
                "TAG | THRESHOLD | PROMPT ; PROMPT"
            )
        tag = parts[0]
        if not tag:
            raise InputError(f"{where}: empty tag before '|'")
        if tag in seen:
            raise InputError(f"{where}: duplicate tag {tag!r} (first on line {seen[tag]})")
        seen[tag] = lineno
        threshold = _parse_threshold(parts[1], where) if len(parts) > 1 else None
        prompts = [p.strip() for p in parts[2].split(";") if p.strip()] if len(parts) > 2 else []
        tags.append(tag)
        thresholds.append(threshold)
        explicit.append(prompts or None)
    if not tags:
        raise InputError(f"{source}: the vocabulary has no tags; write one tag per line")
    return Vocabulary(tags, thresholds, explicit, templates or list(DEFAULT_TEMPLATES), source)


def read_vocab(path: str | Path) -> Vocabulary:
    """Parse a vocabulary file; errors are ``InputError`` naming the file and line."""
    p = Path(path)
    return parse_vocab("\n".join(_read_lines(p, "vocabulary")), str(p))


def _check_field(value: str, what: str, forbidden: str) -> str:
    value = value.strip()
    if not value or any(c in value for c in forbidden + "\n\r") or value.startswith("#"):
        raise ValueError(
            f"{what} {value!r} cannot be written (empty, starts with #, or has {forbidden!r})"
        )
    return value


def write_vocab(
    path: str | Path,
    tags: Sequence[str],
    thresholds: Sequence[float | None] | None = None,
    templates: Sequence[str] | None = None,
    prompts: Sequence[Sequence[str] | None] | None = None,
) -> Path:
    """Write a vocabulary file that ``read_vocab`` parses back to the same values."""
    n = len(tags)
    if thresholds is not None and len(thresholds) != n:
        raise ValueError(f"{len(thresholds)} thresholds for {n} tags")
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompt lists for {n} tags")
    lines = ["# failstore tag vocabulary: TAG | THRESHOLD | PROMPT ; PROMPT"]
    for t in templates or ():
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no {{}}")
        lines.append(f"{TEMPLATE_PREFIX} {_check_field(t, 'template', '')}")
    for i, tag in enumerate(tags):
        fields = [_check_field(tag, "tag", "|")]
        thr = thresholds[i] if thresholds is not None else None
        ps = list(prompts[i] or ()) if prompts is not None else []
        if thr is not None or ps:
            fields.append("" if thr is None else repr(float(thr)))
        if ps:
            fields.append(" ; ".join(_check_field(p, "prompt", "|;") for p in ps))
        lines.append(" | ".join(fields).replace("|  |", "| |"))
    out = Path(path)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def read_class_names(path: str | Path) -> list[str]:
    """Class names, one per line, in logit order. Trailing blank lines are ignored; a blank
    line before the last name or a duplicate name is an ``InputError``."""
    p = Path(path)
    lines = [line.strip() for line in _read_lines(p, "class names")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError(f"{p}: no class names; write one class name per line in logit order")
    seen: dict[str, int] = {}
    for i, name in enumerate(lines, start=1):
        if not name:
            raise InputError(f"{p} line {i}: empty class name; one name per line in logit order")
        if name in seen:
            raise InputError(
                f"{p} line {i}: duplicate class name {name!r} (first on line {seen[name]})"
            )
        seen[name] = i
    return lines
