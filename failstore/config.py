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
    return int(_positive(MAX_FILE_ENV, DEFAULT_MAX_FILE_MB) * 1024 * 1024)


SQL_MAX_ROWS_ENV = "FAILSTORE_SQL_MAX_ROWS"
SQL_MAX_MB_ENV = "FAILSTORE_SQL_MAX_MB"
SQL_MEMORY_ENV = "FAILSTORE_SQL_MEMORY"
DEFAULT_SQL_MAX_ROWS = 20_000_000  # rows one query may return
DEFAULT_SQL_MAX_MB = 2048  # Arrow bytes one query may return
DEFAULT_SQL_MEMORY_FRACTION = 0.5  # of physical memory, DuckDB's memory_limit


def _positive(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        from failstore.errors import ConfigError

        raise ConfigError(f"{env}={raw!r} is not a positive number")
    return value


def sql_max_rows() -> int:
    return int(_positive(SQL_MAX_ROWS_ENV, DEFAULT_SQL_MAX_ROWS))


def sql_max_bytes() -> int:
    return int(_positive(SQL_MAX_MB_ENV, DEFAULT_SQL_MAX_MB) * 2**20)


def sql_memory_limit() -> str:
    """DuckDB's ``memory_limit``: ``$FAILSTORE_SQL_MEMORY`` megabytes, else half the RAM."""
    if os.environ.get(SQL_MEMORY_ENV):
        return f"{int(_positive(SQL_MEMORY_ENV, 1))}MB"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4GB"
    return f"{int(total * DEFAULT_SQL_MEMORY_FRACTION / 2**20)}MB"


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
