"""Read-cache files built in the background, and refreshed after writes.

A query that reads a table from Lance because its read-cache file for that version does not
exist yet asks ``CacheBuilds`` for it: one thread per session copies it while the session goes
on (the next queries use it once it is there). ``refresh(store)`` builds them for the latest
versions right away, at the end of the commands that write many rows (ingest, compact), so
that the first query after them is already fast.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from failstore.queries.sql.readcache import ReadCache, enabled

if TYPE_CHECKING:
    from failstore.store import Store

# A table copied less than this long ago is not copied again meanwhile: while an ingest commits
# every few seconds, a server's queries read Lance instead of copying 1M rows after each commit.
COOLDOWN_S = 30.0


class CacheBuilds:
    """The background builder of one session's store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int]] = []
        self._asked: set[tuple[str, int]] = set()
        self._thread: threading.Thread | None = None
        self._built_at: dict[str, float] = {}  # table -> when its last copy ended

    def request(self, tables: Iterable[str], versions: Mapping[str, int | None]) -> None:
        if not enabled():
            return
        with self._lock:
            now = time.monotonic()
            for table in sorted(tables):
                version = versions.get(table)
                if version is None or (table, version) in self._asked:
                    continue
                if now - self._built_at.get(table, -COOLDOWN_S) < COOLDOWN_S:
                    continue  # asked again after the cool-down, if still uncached
                self._asked.add((table, version))
                self._pending.append((table, version))
            if self._pending and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(
                    target=self._run, name="failstore-sql-cache", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        cache = ReadCache(self.store.path)
        while True:
            with self._lock:
                if not self._pending:
                    return
                table, version = self._pending.pop(0)
            if self.store.manifest_version(table) != version:
                continue  # written again since it was asked for: the next query asks anew
            # a failed build (a read-only store, a full disk) only leaves the table on Lance
            with contextlib.suppress(Exception):
                cache.build(table, self.store.dataset(table, version))
            with self._lock:
                self._built_at[table] = time.monotonic()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the builds asked for so far."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def refresh(store: Store, tables: Iterable[str] | None = None) -> None:
    """Build the read-cache files of ``tables`` (default: every table) at their latest
    versions, where missing; small tables get only their note."""
    if not enabled():
        return
    cache = ReadCache(store.path)
    for table in tables if tables is not None else store.table_names():
        if store.has_table(table):
            cache.build(table, store.dataset(table))
