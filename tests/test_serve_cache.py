"""The server's result cache (single flight, errors not kept, eviction, never stale) and its
concurrency: a slow query neither holds up the others nor outlives the time limit."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlencode

import pyarrow as pa
import pytest
from serve_server import planted_with_slices, running
from starlette.testclient import TestClient

from failstore.queries.sql.session import run_sql
from failstore.serve.app import create_app
from failstore.serve.cache import ResultCache, cache_for, configure
from failstore.store import Store


def test_concurrent_askers_share_one_computation():
    cache, calls, release = ResultCache(), [], threading.Event()

    def compute() -> bytes:
        calls.append(1)
        release.wait(10)
        return b"result"

    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", compute)))
               for _ in range(16)]  # fmt: skip
    for t in threads:
        t.start()
    time.sleep(0.2)  # every thread is waiting for the first one
    release.set()
    for t in threads:
        t.join(10)
    assert got == [b"result"] * 16 and len(calls) == 1
    assert cache.get("k", compute) == b"result" and len(calls) == 1
    assert (cache.misses, cache.hits) == (1, 1)


def test_errors_reach_every_waiter_and_are_not_kept():
    cache, calls, release = ResultCache(), [], threading.Event()

    def failing() -> bytes:
        calls.append(1)
        release.wait(10)
        raise ValueError("boom")

    errors: list[str] = []

    def ask() -> None:
        try:
            cache.get("k", failing)
        except ValueError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(10)
    assert errors == ["boom"] * 4 and len(calls) == 1
    assert cache.get("k", lambda: b"fine") == b"fine"  # the error was not kept


def test_least_recently_used_go_first_past_the_size():
    cache = ResultCache(max_bytes=1000)
    for i in range(5):
        cache.get(i, lambda: b"x" * 200)
    assert cache.get(0, lambda: b"new") == b"x" * 200  # 1000 bytes: all kept; 0 is now recent
    cache.get(5, lambda: b"y" * 200)  # 1200 > 1000: the least recent (1) goes
    assert cache.get(1, lambda: b"recomputed") == b"recomputed"
    assert cache.get(0, lambda: b"new") == b"x" * 200
    table = pa.table({"a": list(range(1000))})  # 8,000 bytes > a quarter: never kept
    cache.get("big", lambda: table)
    assert cache.get("big", lambda: None) is None
    off = ResultCache(max_bytes=0)
    off.get("k", lambda: b"a")
    assert off.get("k", lambda: b"b") == b"b"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return planted_with_slices(tmp_path_factory.mktemp("serve_cache") / "s")


def _second_model(store: Store) -> None:
    preds = store.read("predictions")
    i = preds.schema.get_field_index("model")
    store.append("predictions", preds.set_column(i, "model", pa.array(["m2"] * preds.num_rows)))


def test_stored_queries_are_answered_from_the_cache_until_the_store_changes(planted, tmp_path):
    import shutil

    store = Store(shutil.copytree(planted.path, tmp_path / "s"))
    cache = configure(store, 64 << 20)
    client = TestClient(create_app(store))
    url = "/api/queries/class_error_rates?limit=1000"
    first = client.get(url).json()
    assert client.get(url).json() == first
    assert (cache.misses, cache.hits) == (2, 2)  # the list of stored queries, the page
    assert first["rows"] == run_sql(store, "SELECT * FROM class_error_rates").to_pylist()
    _second_model(store)
    after = client.get(url).json()
    assert after != first  # the new version is a new key: never a stale answer
    assert after["rows"] == run_sql(store, "SELECT * FROM class_error_rates").to_pylist()
    assert {r["model"] for r in after["rows"]} == {"m", "m2"}
    assert cache.misses == 3  # the page again; the stored queries did not change
    # ad-hoc SQL is never cached: it may call random()
    q = "/api/sql?" + urlencode({"q": "SELECT random() AS r"})
    assert client.get(q).json()["rows"] != client.get(q).json()["rows"]
    assert cache_for(store).misses == 3


SLOW = (
    "SELECT count(*) AS n FROM images a, images b, images c, images d "
    "WHERE hash(a.image_id || b.image_id || c.image_id || d.image_id) % 7 = 3"
)


def test_a_slow_query_holds_up_no_other_and_stops_at_the_time_limit(planted):
    with running(planted, "--timeout", "3") as server:
        slow: list[tuple[int, dict, float]] = []

        def ask_slow() -> None:
            t = time.monotonic()
            status, _, body = server.get("/api/sql?" + urlencode({"q": SLOW}))
            slow.append((status, json.loads(body), time.monotonic() - t))

        thread = threading.Thread(target=ask_slow)
        thread.start()
        time.sleep(0.5)  # the slow query is running
        quick = []
        for i in range(5):
            t = time.monotonic()
            status, body = server.json(f"/api/queries/confusions?limit={10 + i}")
            quick.append(time.monotonic() - t)
            assert status == 200 and body["rows"], body
        assert slow == [], "the slow query ended before the quick ones were asked"
        thread.join(60)
    (status, body, seconds) = slow[0]
    assert status == 400 and body == {
        "error": "query ran longer than 3 s; narrow it with WHERE or LIMIT, or raise the time limit"
    }, body
    assert 3 <= seconds < 10, seconds
    assert max(quick) < 2.5, quick
