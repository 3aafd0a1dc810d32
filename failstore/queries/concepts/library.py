"""A concept library on disk: ``<root>/<concept>/*.jpg``, one folder per concept, shared across
models (the CES paper's setting), and optionally a folder of negative images.

The images are embedded with the target model as it was ingested (``load_model``: the same
weights, checked against the recorded sha256) through the ingest's own decoding and
normalisation (:func:`failstore.ingest.files.run_on_files`); they are never added to the store's
``images``. A bank run records each library file, with its image id or the reason it could not
be used, in ``concept_images``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from failstore.errors import InputError
from failstore.ingest.files import as_items, fingerprint, image_files, run_on_files
from failstore.ingest.sources import SourceItem
from failstore.store import Store

LIBRARY_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("tag_source", pa.string()),
        pa.field("concept", pa.string()),  # null: an image of the negatives folder
        pa.field("uri", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("error", pa.string()),
    ]
)
LAYOUT = "lay it out as <folder>/<concept>/*.jpg, one sub-folder per concept"


@dataclass
class Library:
    """The listed library: ``items`` carry their concept as ``label`` (None: a negative)."""

    root: str
    negatives: str | None
    names: list[str]
    items: list[SourceItem]

    def fingerprint(self) -> str:
        return fingerprint(self.items)


def absolute(folder: str | Path) -> str:
    return os.path.abspath(Path(folder).expanduser())


def open_library(folder: str | Path, negatives: str | Path | None = None) -> Library:
    """List the library; raises ``InputError`` (one line, naming the folder) when it is not one."""
    root = Path(absolute(folder))
    if not root.is_dir():
        raise InputError(f"concept folder {root} does not exist or is not a folder", hint=LAYOUT)
    neg = absolute(negatives) if negatives is not None else None
    subs = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and str(d) != neg
    )
    if not subs:
        raise InputError(f"concept folder {root} has no concept sub-folders", hint=LAYOUT)
    items: list[SourceItem] = []
    for d in subs:
        items += as_items(image_files(d), label=d.name)
    if not items:
        raise InputError(f"concept folder {root} has no images in its sub-folders", hint=LAYOUT)
    if neg is not None:
        found = image_files(neg)
        if not found:
            raise InputError(
                f"negatives folder {neg} has no images",
                hint="give a folder of images that show none of the concepts",
            )
        items += as_items(found, label=None)
    return Library(str(root), neg, [d.name for d in subs], items)


def embed_library(
    store: Store, model: str, library: Library, *, workers: int = 0
) -> tuple[np.ndarray, list[str | None], pa.Table]:
    """The bottleneck embeddings (N x m float64) of the library's usable images, their concept
    (None: negatives folder) and the ``concept_images`` rows of every file."""
    from failstore.models.loading import load_model

    adapter = load_model(store, model)
    out = run_on_files(adapter, library.items, workers=workers)
    source = tag_source_of(library.root)
    rows = [
        {"model": model, "tag_source": source, "concept": it.label, "uri": it.uri,
         "image_id": image_id, "error": None}
        for it, image_id in zip(out.items, out.image_ids, strict=True)
    ] + [
        {"model": model, "tag_source": source, "concept": it.label, "uri": it.uri,
         "image_id": None, "error": reason}
        for it, reason in out.errors
    ]  # fmt: skip
    rows.sort(key=lambda r: (r["concept"] is None, r["concept"] or "", r["uri"]))
    emb = out.outputs.get("embedding")
    if emb is None:
        first, reason = out.errors[0]
        raise InputError(
            f"none of the {len(out.errors)} images of concept folder {library.root} could be "
            f"used ({first.uri}: {reason})",
            hint="check the files with an image viewer; see docs/concepts.md",
        )
    return (
        np.asarray(emb, dtype=np.float64),
        [it.label for it in out.items],
        pa.Table.from_pylist(rows, schema=LIBRARY_SCHEMA),
    )


def tag_source_of(root: str) -> str:
    """A folder bank's ``tag_source``."""
    return f"folder:{root}"
