"""Guarded queries remembered, so that a query asked again skips the guard (and the import of
sqlglot): dashboards, notebooks and scripts send the same queries over and over.

A plan is the guard's output for one query text, dialect and parameters, against one state of
the store: the Lance version of every table (so any write, a new table, or a saved query added
or changed, gives new keys) and the code that guards and expands queries (failstore's SQL
package and its stored ``.sql`` files, by size and modification time). Only accepted queries
are kept; a refusal is computed every time, with its message.

Plans live in memory (per session, a few hundred) and on disk, one small JSON file per key
under ``<store>/_sql_cache/plans/``, so that a new ``failstore sql`` process finds them too.
Files are written under a temporary name and renamed; the folder is trimmed to ``MAX_FILES``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FOLDER = "plans"
MAX_MEMORY = 512
MAX_FILES = 2000
FORMAT = 1


@dataclass(frozen=True)
class GuardedQuery:
    """What the guard returns for an accepted query."""

    sql: str  # DuckDB SQL to run
    tables: frozenset[str]  # base tables the query reads
    # names of the columns it reads (stars expanded, lower case); None: sqlglot could not tell
    columns: frozenset[str] | None = None


@functools.cache
def code_fingerprint() -> str:
    """Size and modification time of every file that decides what the guard returns."""
    queries = Path(__file__).resolve().parents[1]  # failstore/queries
    files = sorted([*queries.glob("**/*.sql"), *Path(__file__).parent.glob("*.py")])
    h = hashlib.sha256(str(FORMAT).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(queries)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def plan_key(
    sql: str,
    dialect: str | None,
    params: Mapping[str, str] | None,
    versions: Mapping[str, object],
) -> str:
    doc = json.dumps(
        [
            code_fingerprint(),
            sql,
            dialect,
            sorted((params or {}).items()),
            sorted((k, repr(v)) for k, v in versions.items()),
        ]
    )
    return hashlib.sha256(doc.encode()).hexdigest()


class Plans:
    """Remembered plans of one store (``folder`` None: in memory only)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: OrderedDict[str, GuardedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> GuardedQuery | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        found = self._read(key)
        if found is not None:
            self._remember(key, found)
        return found

    def put(self, key: str, plan: GuardedQuery) -> None:
        self._remember(key, plan)
        if self.folder is None:
            return
        doc = {
            "sql": plan.sql,
            "tables": sorted(plan.tables),
            "columns": None if plan.columns is None else sorted(plan.columns),
        }
        with contextlib.suppress(OSError):  # a read-only store: plans stay in memory
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.folder / f"{key}.json")
            self._trim()

    def _remember(self, key: str, plan: GuardedQuery) -> None:
        with self._lock:
            self._memory[key] = plan
            self._memory.move_to_end(key)
            while len(self._memory) > MAX_MEMORY:
                self._memory.popitem(last=False)

    def _read(self, key: str) -> GuardedQuery | None:
        if self.folder is None:
            return None
        try:
            doc = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        columns = doc.get("columns")
        return GuardedQuery(
            doc["sql"], frozenset(doc["tables"]), None if columns is None else frozenset(columns)
        )

    def _trim(self) -> None:
        """Keep the ``MAX_FILES`` newest plan files (checked on every 100th write or so)."""
        assert self.folder is not None
        if uuid.uuid4().int % 100:
            return
        files = []
        for entry in os.scandir(self.folder):
            with contextlib.suppress(FileNotFoundError):
                files.append((entry.stat().st_mtime, entry.path))
        files.sort(reverse=True)
        for _, path in files[MAX_FILES:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
