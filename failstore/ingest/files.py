"""Run one loaded model over image files that are not (and will not be) the store's images.

Analyses use this for images outside the dataset, e.g. a concept library's folders
(``failstore concepts --folder``): the files are listed, decoded and normalised exactly as
the ingest pipeline does it (same ``decode_one`` / ``DecodePool``, same ``Preprocess``, same
normalisation), batched through the adapter's ``encode``, and nothing is written anywhere.
Bad files come back as one-line reasons, never as an exception.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from failstore.errors import InputError
from failstore.ingest.decode import Decoded
from failstore.ingest.decode_pool import DecodePool
from failstore.ingest.sources import SourceItem, is_image_name, storable_path
from failstore.models.protocol import ModelAdapter, Preprocess


@dataclass
class FileOutputs:
    """What ``run_on_files`` returns: the outputs of the images that decoded (in input order,
    one row per entry of ``items``), and the others as (item, reason)."""

    items: list[SourceItem]
    image_ids: list[str]
    outputs: dict[str, np.ndarray]
    errors: list[tuple[SourceItem, str]]


def image_files(folder: str | Path) -> list[str]:
    """The image files under ``folder`` (any depth, hidden folders skipped), sorted, absolute."""
    root = Path(os.path.abspath(Path(folder).expanduser()))
    if not root.is_dir():
        raise InputError(f"{root} is not a folder", hint="give a folder of images")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, n) for n in sorted(filenames) if is_image_name(n)]
    return found


def as_items(files: Sequence[str], label: str | None = None) -> list[SourceItem]:
    """Source items for ``files`` (a name the store could not hold becomes an item's error)."""
    items = []
    for f in files:
        uri, error = storable_path(f)
        items.append(SourceItem(uri, label, None, None, None, error=error))
    return items


def fingerprint(items: Sequence[SourceItem]) -> str:
    """A digest of the files as they are now (path, label, size, mtime): it changes when a file
    is added, removed, renamed, moved to another label or rewritten."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: (i.uri, i.label or "")):
        try:
            st = os.stat(it.uri)
            state = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError as e:
            state = f"error:{e.errno}"
        h.update(f"{it.uri}\0{it.label}\0{state}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def run_on_files(
    adapter: ModelAdapter,
    items: Sequence[SourceItem],
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "cpu",
) -> FileOutputs:
    """Decode ``items`` like the ingest does and run ``adapter.encode`` on them in batches."""
    from failstore.models.pixels import normalise

    pre = adapter.preprocess
    ok: list[SourceItem] = []
    ids: list[str] = []
    errors: list[tuple[SourceItem, str]] = []
    chunks: dict[str, list[np.ndarray]] = {}
    batch: list[Decoded] = []

    def flush() -> None:
        if not batch:
            return
        out = adapter.encode(normalise(np.stack([d.arrays[pre.key()] for d in batch]), pre, device))
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v))
        ok.extend(d.item for d in batch)
        ids.extend(str(d.image_id) for d in batch)
        batch.clear()

    for dec in decode_files(items, pre, workers):
        if dec.error is not None:
            errors.append((dec.item, dec.error))
            continue
        batch.append(dec)
        if len(batch) >= batch_size:
            flush()
    flush()
    outputs = {k: np.concatenate(v) for k, v in chunks.items()}
    return FileOutputs(ok, ids, outputs, errors)


def decode_files(
    items: Sequence[SourceItem], pre: Preprocess, workers: int = 0
) -> Iterator[Decoded]:
    """``items`` decoded and cropped for ``pre`` as the ingest does (bad ones with ``error``):
    first the items known bad before decoding, then the others in input order."""
    good = [it for it in items if it.error is None]
    for it in items:
        if it.error is not None:
            yield Decoded(item=it, image_id=None, error=it.error)
    with DecodePool([pre], workers=workers) as pool:
        yield from pool.imap(good)
