"""Results the server already computed, reused while the store has not changed.

A stored query or page query is a function of the tables it reads, so a result is kept under
its SQL, its parameters, its page and the Lance version of every table of the store: the first
write to any table makes every older entry unreachable (and it ages out). Reading the versions
costs about a millisecond, so a cached answer is never stale.

Concurrent requests for the same key wait for the one computing it (single flight): 20
dashboards asking at once cost one query. Errors are never kept. Entries are evicted, least
recently used first, past ``max_bytes`` of Arrow data.

Ad-hoc SQL (``/api/sql``, the SQL page) is not cached: it may call ``random()`` or ``now()``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from failstore.store import Store

DEFAULT_MAX_BYTES = 64 << 20
_ATTR = "_failstore_serve_cache"
_CREATE = threading.Lock()


class ResultCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._running: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value under ``key`` (an Arrow table, bytes, ...), computed by ``compute`` once
        however many ask at once."""
        if self.max_bytes <= 0:
            return compute()
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[0]
            running = self._running.get(key)
            if running is None:
                mine: Future[Any] = Future()
                self._running[key] = mine
                self.misses += 1
        if running is not None:
            return running.result()  # raises the computing request's error
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                del self._running[key]
            mine.set_exception(e)
            raise
        with self._lock:
            del self._running[key]
            self._keep(key, value)
        mine.set_result(value)
        return value

    def _keep(self, key: Hashable, value: Any) -> None:
        size = _size(value)
        if size > self.max_bytes // 4:
            return  # one huge result would evict everything else
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _size(value: Any) -> int:
    """Bytes of a cached value: Arrow's buffers, a body's length, else a small constant."""
    if isinstance(value, (bytes, str)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, tuple):
        return sum(_size(v) for v in value)
    return 1024


def cache_for(store: Store) -> ResultCache:
    """The result cache of a store object (created on first use)."""
    with _CREATE:
        found = getattr(store, _ATTR, None)
        if found is None:
            found = ResultCache()
            setattr(store, _ATTR, found)
        return found


def configure(store: Store, max_bytes: int) -> ResultCache:
    """Set the cache size of ``store`` (0 turns caching off)."""
    cache = cache_for(store)
    cache.max_bytes = max_bytes
    cache.clear()
    return cache
