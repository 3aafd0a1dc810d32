"""Mapping dataset labels onto a target model's class names (``--label-map``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from failstore.errors import InputError


def load_label_map(path: str | Path) -> dict[str, str]:
    """Read a label map: a JSON object ``{"dataset label": "model class"}`` or a CSV file with
    two columns (header optional: ``label,class``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"label map {p} does not exist", hint="pass a JSON or CSV file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"label map {p} is not UTF-8 text (byte {e.start})",
            hint="save it as UTF-8 (JSON object or CSV 'label,class')",
        ) from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"label map {p}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise InputError(
                f"label map {p} must be a JSON object of strings",
                hint='e.g. {"kitty": "tabby", "handbag": "purse"}',
            )
        return dict(data)
    out: dict[str, str] = {}
    for i, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or (i == 1 and [c.strip().lower() for c in row] == ["label", "class"]):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise InputError(
                f"label map {p} line {i}: expected two columns 'dataset label,model class', "
                f"got {row!r}"
            )
        out[row[0].strip()] = row[1].strip()
    return out


def map_labels(
    labels: Sequence[str | None], class_names: Sequence[str], label_map: Mapping[str, str]
) -> list[str | None]:
    """Each dataset label as one of ``class_names`` (through ``label_map`` first), else None."""
    known = set(class_names)
    out: list[str | None] = []
    for lab in labels:
        if lab is None:
            out.append(None)
            continue
        mapped = label_map.get(lab, lab)
        out.append(mapped if mapped in known else None)
    return out


def unknown_labels(
    labels: Iterable[str | None], class_names: Sequence[str], label_map: Mapping[str, str]
) -> list[str]:
    known = set(class_names)
    return sorted(
        {lab for lab in labels if lab is not None and label_map.get(lab, lab) not in known}
    )
