"""Where things live and the defaults, resolved from options, environment and fallbacks."""

from __future__ import annotations

import os
from pathlib import Path

STORE_ENV = "FAILSTORE_STORE"
CACHE_ENV = "FAILSTORE_CACHE"
DEFAULT_STORE = "failstore-store"

DEFAULT_BATCH_SIZE = 64
DEFAULT_COMMIT_EVERY = 1024  # images per Lance commit during ingest
DEFAULT_SQL_TIMEOUT_S = 120.0


MAX_FILE_ENV = "FAILSTORE_MAX_FILE_MB"
DEFAULT_MAX_FILE_MB = 512


def max_file_bytes() -> int:
    """The largest image (or mask) file ingest reads: ``$FAILSTORE_MAX_FILE_MB`` megabytes,
    default 512."""
    raw = os.environ.get(MAX_FILE_ENV)
    if not raw:
        return DEFAULT_MAX_FILE_MB * 1024 * 1024
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        from failstore.errors import ConfigError

        raise ConfigError(f"{MAX_FILE_ENV}={raw!r} is not a positive number of megabytes")
    return int(mb * 1024 * 1024)


def store_path(option: str | Path | None = None) -> Path:
    """``--store`` wins, then ``$FAILSTORE_STORE``, then ``./failstore-store``."""
    if option:
        return Path(option).expanduser()
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_STORE)


def cache_dir() -> Path:
    """Demo worlds and trained demo models: ``$FAILSTORE_CACHE`` or ``~/.cache/failstore``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "failstore"


def default_workers() -> int:
    """Decode worker processes: one per spare core (torch takes the rest), 0 = inline."""
    n = os.cpu_count() or 1
    return max(1, n // 2)
