"""The SQL session under threads, and the time limit's validation (issue 9)."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from planted_store import build

from failstore.errors import SqlError
from failstore.queries.sql.session import run_sql


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("session") / "s", n=600)


def test_eight_threads_share_one_store(store):
    queries = [
        "SELECT count(*) AS n FROM images",
        "SELECT label, count(*) AS n FROM samples GROUP BY label ORDER BY label",
        "SELECT class, error_rate FROM class_error_rates ORDER BY class",
    ]
    want = [run_sql(store, q).to_pylist() for q in queries]

    def work(i: int) -> list:
        return [run_sql(store, queries[(i + k) % 3]).to_pylist() for k in range(12)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, got in enumerate(results):
        assert got == [want[(i + k) % 3] for k in range(12)]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_the_time_limit_is_positive_and_finite(store, bad):
    with pytest.raises(SqlError) as info:
        run_sql(store, "SELECT 1 AS x", timeout_s=bad)
    assert info.value.one_line() == (
        f"the time limit must be a positive number of seconds, got {bad!r}; e.g. --timeout 30"
    )


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf"])
def test_cli_timeout_errors_are_one_line(store, text):
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store.path), "sql",
         "SELECT 1 AS x", "--timeout", text],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("error: the time limit must be a positive number of seconds")
    assert r.stderr.count("\n") == 1 and r.stdout == ""


def test_a_result_past_the_row_cap_stops_early(store, monkeypatch):
    from failstore.errors import SqlTooLarge
    from failstore.queries.sql.session import SqlSession

    monkeypatch.setenv("FAILSTORE_SQL_MAX_ROWS", "1000000")
    own = SqlSession(store)  # a session of its own: caps are read when it runs
    with pytest.raises(SqlTooLarge) as info:
        own.execute("SELECT * FROM range(1000000000)")
    assert info.value.one_line() == (
        "the result has more than 1,000,000 rows or 2,048 MiB; aggregate it, add WHERE or "
        "LIMIT, or raise the limit (FAILSTORE_SQL_MAX_ROWS / FAILSTORE_SQL_MAX_MB)"
    )
    # the connection is usable right after (the result was closed)
    assert own.execute("SELECT count(*) AS n FROM images").to_pylist() == [{"n": 600}]
    assert own.execute("SELECT * FROM range(1000000)").num_rows == 1_000_000


def test_duckdb_memory_limit_is_set(store, monkeypatch):
    from failstore.queries.sql.session import SqlSession

    monkeypatch.setenv("FAILSTORE_SQL_MEMORY", "512")
    con = SqlSession(store)._connection()
    assert con.sql("SELECT current_setting('memory_limit')").fetchall() == [("488.2 MiB",)]


def test_cli_row_cap_is_one_line(store):
    import os

    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store.path), "sql",
         "SELECT * FROM range(100000000)"],
        capture_output=True, text=True, env={**os.environ, "FAILSTORE_SQL_MAX_ROWS": "10"},
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: the result has more than 10 rows")
    assert r.stderr.count("\n") == 1


def test_a_session_does_not_keep_its_store_alive(tmp_path):
    """Each Store used for SQL gets a session with a DuckDB connection (and its threads); when
    the Store goes, so must they (before: five stores kept five live databases)."""
    import gc
    import weakref

    from failstore.queries.sql.session import run_sql, session
    from failstore.store import Store

    refs = []
    for k in range(3):
        store = Store.init(tmp_path / f"s{k}")
        assert run_sql(store, "SELECT 41 + 1 AS n").column("n")[0].as_py() == 42
        refs.append((weakref.ref(store), weakref.ref(session(store))))
        del store
    gc.collect()
    assert [(s(), q()) for s, q in refs] == [(None, None)] * 3
