"""Checkpoint files: sha256, local cache lookups, offline mode. No torch at import time.

failstore never downloads weights. Every lookup here only inspects the local disk and returns
``None`` (or raises ``WeightsNotFoundError``) when a file is not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from failstore.errors import ModelSpecError, WeightsNotFoundError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (memoised on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def sha256_files(paths: list[Path]) -> str | None:
    """One file: its sha256. Several: sha256 of their sorted hex digests. None: None."""
    if not paths:
        return None
    if len(paths) == 1:
        return sha256_file(paths[0])
    digests = sorted(sha256_file(p) for p in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Force Hugging Face hub / transformers into offline mode for the duration.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once at import, so an already-imported module's
    constant is patched too; both are restored afterwards.
    """
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    for k in _OFFLINE_VARS:
        os.environ[k] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None) if constants else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const  # type: ignore[attr-defined]


# --- Hugging Face hub cache -------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The HF hub cache, resolved from the environment now (HF_HUB_CACHE, HF_HOME, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg) / "huggingface" / "hub"


def hf_repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def hf_cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """Path of ``filename`` of ``repo_id`` in the local HF cache, or None.

    Looks in the snapshot named by ``refs/<revision>`` (default ``main``), or in
    ``snapshots/<revision>`` when the revision is a commit hash; without ``refs/main``, in the
    one snapshot that holds the file.
    """
    repo = hf_repo_dir(repo_id)
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    candidate = repo / "snapshots" / commit / filename
    if candidate.is_file():
        return candidate
    if revision is None and not ref.is_file() and (repo / "snapshots").is_dir():
        # no refs/main (e.g. a copied snapshot): accept the only snapshot holding the file
        found = sorted((repo / "snapshots").glob(f"*/{filename}"))
        if len(found) == 1 and found[0].is_file():
            return found[0]
    return None


def hf_expected_path(repo_id: str, filename: str) -> str:
    return str(hf_repo_dir(repo_id) / "snapshots" / "<revision>" / filename)


# --- torch hub cache --------------------------------------------------------------------------


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: $TORCH_HOME/hub or XDG cache."""
    if "torch.hub" in sys.modules:
        return Path(sys.modules["torch.hub"].get_dir())
    home = os.environ.get("TORCH_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        home = os.path.join(xdg, "torch")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps its file."""
    return torch_hub_dir() / "checkpoints" / os.path.basename(urlparse(url).path)


# --- one lookup over both caches -------------------------------------------------------------


def find_cached_weights(
    label: str,
    *,
    hf_repo: str | None = None,
    hf_names: list[str] | tuple[str, ...] = (),
    hf_revision: str | None = None,
    hf_expected: str | None = None,
    url_file: Path | None = None,
    hint: str,
) -> Path:
    """The first cached weights file: ``hf_names`` (in order) in the snapshot of ``hf_repo``
    in the local HF cache, then ``url_file`` (where a URL download would have been kept).

    Raises ``WeightsNotFoundError`` ``"{label}: weights not in the local cache (looked for
    A or B); {hint}"`` where A is ``hf_expected`` (default: the first name) in the repo's
    snapshot dir and B is ``url_file``.
    """
    tried = []
    if hf_repo:
        for fname in hf_names:
            found = hf_cached_file(hf_repo, fname, hf_revision)
            if found is not None:
                return found
        tried.append(hf_expected_path(hf_repo, hf_expected or hf_names[0]))
    if url_file is not None:
        if url_file.is_file():
            return url_file
        tried.append(str(url_file))
    raise WeightsNotFoundError(
        f"{label}: weights not in the local cache (looked for {' or '.join(tried)})", hint=hint
    )


# --- TorchScript archives ---------------------------------------------------------------------

TS_META_FILE = "failstore.json"


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``<root>/code/`` and ``<root>/constants.pkl``;
    a plain ``torch.save`` zip holds ``data.pkl`` but no ``code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) and any(
        n.endswith("constants.pkl") for n in names
    )


def torchscript_meta(path: Path) -> dict:
    """The ``failstore.json`` extra file of a TorchScript archive ({} if absent)."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.split("/", 1)[-1] == f"extra/{TS_META_FILE}":
                raw = zf.read(name)
                try:
                    meta = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise ModelSpecError(
                        f"{path}: extra file {TS_META_FILE} is not valid JSON ({exc})"
                    ) from exc
                if not isinstance(meta, dict):
                    raise ModelSpecError(f"{path}: extra file {TS_META_FILE} must hold an object")
                return meta
    return {}
