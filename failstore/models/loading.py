"""``load_model(store, name)``: rebuild a model adapter from its row of the ``models`` table.

The row records everything needed to get the same adapter back: role, spec, layer, class
names, preprocessing and, for CLIP, the tag vocabulary (tags, prompts, thresholds). Before any
weights are read, the checkpoint file's sha256 is compared with the recorded
``checkpoint_sha256`` (for ``python.module:factory`` models, which read no file, the state
dict's digest is compared with ``extra.state_dict_sha256`` after the factory ran). After
loading, the rebuilt preprocessing, layer label and class names must equal the recorded ones,
so ``encode`` reproduces the stored embeddings and probabilities.

Importing this module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failstore.errors import ModelSpecError, StoreError, WeightsNotFoundError
from failstore.models.protocol import ModelAdapter
from failstore.models.vocab import DEFAULT_TEMPLATES, Vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from failstore.store import Store

# Layer labels the adapters record for their default capture (not module names).
_DEFAULT_LABELS = ("<output>",)


class CheckpointChangedError(ModelSpecError):
    """A model's weights differ from the ones recorded in the store."""


def load_model(store: Store | str | Path, name: str, device: str | None = None) -> ModelAdapter:
    """The adapter of model ``name`` as it was ingested into ``store``, loaded on ``device``
    (default ``"cpu"``).

    Target and robust adapters also expose the torch module (``adapter.module``) and logits
    with autograd enabled (``adapter.logits(batch)``, ``adapter.features(batch)``).

    Raises ``StoreError`` (no such model: the message lists the store's models),
    ``WeightsNotFoundError`` (the checkpoint file is gone), ``CheckpointChangedError`` (its
    sha256 differs from the recorded one) or ``ModelSpecError`` (the rebuilt preprocessing,
    layer or class names differ from the record). Every message is one line.
    """
    row = _row(_open(store), name)
    extra = json.loads(row.get("extra") or "{}")
    expected = row.get("checkpoint_sha256")
    recorded = [Path(p) for p in extra.get("checkpoint_files") or []]
    for path in recorded:
        if not path.is_file():
            raise _missing(name, path, expected)
    adapter = _rebuild(row, extra)
    if expected is not None:
        files = _checkpoint_files(adapter, name, recorded, expected)
        _verify_files(name, files, expected)
    adapter.load(device or "cpu")
    _check_loaded(adapter, row, extra)
    return adapter


def _open(store: Store | str | Path) -> Store:
    if isinstance(store, (str, Path)):
        from failstore.store import Store

        return Store(store)
    return store


def _row(store: Store, name: str) -> dict[str, Any]:
    rows = store.read("models").to_pylist() if store.has_table("models") else []
    for row in rows:
        if row["name"] == name:
            return dict(row)
    known = ", ".join(sorted(f"{r['name']} ({r['role']})" for r in rows)) or "none"
    raise StoreError(f"no model {name!r} in {store.path}; known models: {known}")


def _rebuild(row: dict[str, Any], extra: dict[str, Any]) -> ModelAdapter:
    from failstore.models.base import FeatureAdapter
    from failstore.models.clip import ClipAdapter
    from failstore.models.specs import _classifier_source
    from failstore.models.target import TorchScriptSource

    role, spec = row["role"], row["spec"]
    if role == "clip":
        tags = list(row.get("tags") or [])
        vocab = None
        if tags:
            prompts = [json.loads(p) for p in row.get("prompts") or []]
            vocab = Vocabulary(
                tags=tags,
                thresholds=[float(t) for t in row.get("thresholds") or []],
                explicit_prompts=list(prompts) or [None] * len(tags),
                templates=list(extra.get("templates") or DEFAULT_TEMPLATES),
                source=extra.get("vocab"),
            )
        return ClipAdapter(spec, vocab, extra.get("default_threshold"))
    if role not in ("target", "robust"):
        raise StoreError(f"model {row['name']!r} has unknown role {role!r}")
    source = _classifier_source(spec)
    layer = row.get("layer")
    if layer in _DEFAULT_LABELS or (layer == "embed" and isinstance(source, TorchScriptSource)):
        layer = None
    # names given with --class-names at ingest are taken from the row; the model's own names
    # must come back by themselves (checked against the row after loading)
    names = row.get("class_names") if role == "target" and "class_names_from" in extra else None
    return FeatureAdapter(role, spec, source, layer=layer, class_names=names)


def _checkpoint_files(
    adapter: Any, name: str, recorded: list[Path], expected: str
) -> list[Path]:
    try:
        files = adapter.checkpoint_files() if adapter.role == "clip" else adapter.source.files()
    except WeightsNotFoundError:
        if recorded:
            return recorded
        raise
    for path in files:
        if not Path(path).is_file():
            raise _missing(name, Path(path), expected)
    return [Path(p) for p in files]


def _missing(name: str, path: Path, expected: str | None) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"model {name!r}: checkpoint {path} is missing (expected sha256 {expected})",
        hint="restore the file, or re-ingest with another checkpoint under a new name",
    )


def _fresh_sha256(path: Path) -> str:
    """Not memoised: the point is to notice a file rewritten in place."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_files(name: str, files: list[Path], expected: str) -> None:
    if not files:
        raise CheckpointChangedError(
            f"model {name!r}: recorded checkpoint sha256 {expected}, but its spec now names "
            "no weights file"
        )
    digests = [_fresh_sha256(p) for p in files]
    if len(digests) == 1:
        got = digests[0]
    else:  # the combination sha256_files records for several files
        got = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    if got != expected:
        shown = files[0] if len(files) == 1 else ", ".join(str(p) for p in files)
        raise CheckpointChangedError(
            f"model {name!r}: checkpoint {shown} changed (sha256 {got} expected {expected})",
            hint="re-ingest with the new file or restore it",
        )


def _check_loaded(adapter: Any, row: dict[str, Any], extra: dict[str, Any]) -> None:
    name = row["name"]
    rec = adapter.record()
    want_sd = extra.get("state_dict_sha256")
    got_sd = rec.extra.get("state_dict_sha256")
    if row.get("checkpoint_sha256") is None and want_sd is not None and got_sd != want_sd:
        raise CheckpointChangedError(
            f"model {name!r}: the state dict of {row['spec']}() changed "
            f"(sha256 {got_sd} expected {want_sd})",
            hint="re-ingest with the new weights or restore the old ones",
        )
    recorded_pre = json.loads(row["preprocess"]) if row.get("preprocess") else None
    rebuilt_pre = json.loads(rec.preprocess.to_json())
    if recorded_pre is not None and recorded_pre != rebuilt_pre:
        raise ModelSpecError(
            f"model {name!r}: preprocessing changed (recorded {json.dumps(recorded_pre)}, "
            f"rebuilt {json.dumps(rebuilt_pre)})",
            hint="re-ingest with the model as it is now",
        )
    checks = {
        "layer": (row.get("layer"), rec.layer),
        "embedding width": (row.get("embedding_dim"), rec.embedding_dim),
        "class names": (row.get("class_names"), rec.class_names),
        "tags": (row.get("tags"), rec.tags),
        "prompts": (row.get("prompts"), rec.prompts),
    }
    for what, (want, got) in checks.items():
        if want is not None and want != got:
            raise ModelSpecError(
                f"model {name!r}: rebuilt {what} {_short(got)} differ from the recorded "
                f"{_short(want)}",
                hint="re-ingest with the model as it is now",
            )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
