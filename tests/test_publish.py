"""`failstore publish` into a real PostgreSQL server (tests/pg_server.py, started by the tests):
what a dashboard asks gives failstore's numbers, column conventions, incremental copies,
atomicity against concurrent readers, a connection broken mid-publish, credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import adbc_driver_postgresql.dbapi as pgdb
import numpy as np
import pyarrow as pa
import pytest
from planted_store import build

from failstore.errors import PublishError
from failstore.feeds.catalog import QueryRequest
from failstore.feeds.publish import publish
from failstore.queries.coverage import Coverage
from failstore.queries.slices.estimator import Slices
from failstore.queries.sql.session import run_sql
from failstore.store import Store


def pg_table(url: str, sql: str) -> pa.Table:
    with pgdb.connect(url) as con, con.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def pg_scalar(url: str, sql: str):
    return pg_table(url, sql).column(0)[0].as_py()


def rows(table: pa.Table, *keys: str) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: tuple(str(r[k]) for k in keys))


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """The planted store (small dogs on snow fail) with slices and coverage run."""
    path = tmp_path_factory.mktemp("publish") / "s"
    store = build(path, n=600)
    Slices(min_size=10).fit(store)
    Coverage(method="gradient").fit(store)
    return path


@pytest.fixture
def store(analysed, tmp_path) -> Store:
    """A private copy, free to change."""
    shutil.copytree(analysed, tmp_path / "s")
    return Store(tmp_path / "s")


def test_what_a_dashboard_asks_equals_failstore_sql(store, pg):
    schema = new_schema()
    summary = publish(store, pg.url, schema=schema)
    published = {p.name for p in summary.published}
    assert {"images", "predictions", "prime_slices", "class_error_rates", "slices",
            "coverage", "coverage_cases", "samples"} <= published  # fmt: skip
    # error rate per class, from the published raw tables, as a dashboard would write it
    by_hand = pg_table(
        pg.url,
        f"SELECT p.model, i.label AS class, count(*) AS n, "
        f"avg(CASE WHEN p.correct THEN 0.0 ELSE 1.0 END)::float8 AS error_rate "
        f"FROM {schema}.predictions p JOIN {schema}.images i USING (image_id) "
        f"GROUP BY 1, 2",
    )
    ours = run_sql(store, "SELECT model, class, n, error_rate FROM class_error_rates")
    got = rows(by_hand, "model", "class")
    want = rows(ours, "model", "class")
    assert [(r["model"], r["class"], r["n"]) for r in got] == [
        (r["model"], r["class"], r["n"]) for r in want
    ]
    assert np.allclose([r["error_rate"] for r in got], [r["error_rate"] for r in want])
    # the published stored queries hold exactly failstore's results
    for query, keys in [
        ("class_error_rates", ("model", "class")),
        ("coverage_cases", ("model", "method", "label", "case")),
    ]:
        assert rows(pg_table(pg.url, f"SELECT * FROM {schema}.{query}"), *keys) == rows(
            run_sql(store, f"SELECT * FROM {query}"), *keys
        )
    # top failure slices with their descriptions
    top = (
        "SELECT class, description, error_rate FROM {} "
        "ORDER BY error_rate DESC, description LIMIT 5"
    )
    assert (
        pg_table(pg.url, top.format(f"{schema}.slices")).to_pylist()
        == run_sql(store, top.format("slices")).to_pylist()
    )
    assert pg_table(pg.url, top.format(f"{schema}.slices"))["class"][0].as_py() == "dog"


def test_column_types_a_bi_tool_understands(store, pg):
    schema = new_schema()
    publish(store, pg.url, schema=schema)
    types = {
        (r["table_name"], r["column_name"]): r["data_type"]
        for r in pg_table(
            pg.url,
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = '{schema}'",
        ).to_pylist()
    }
    assert types[("images", "tags")] == "ARRAY"
    assert pg_scalar(pg.url, f"SELECT pg_typeof(tags)::text FROM {schema}.images LIMIT 1") == (
        "text[]"
    )
    assert types[("images", "ingested_at")] == "timestamp with time zone"
    assert types[("images", "boxes")] == "text"  # a list of structs: JSON text
    assert ("images", "clip_embedding") not in types  # vectors are left out
    assert ("images", "mask") not in types  # so are binary masks
    assert ("predictions", "embedding") not in types
    boxes = json.loads(pg_scalar(pg.url, f"SELECT boxes FROM {schema}.images ORDER BY image_id"))
    first = store.read("images", columns=["image_id", "boxes"]).sort_by("image_id")
    assert boxes == first["boxes"][0].as_py()
    # with --with-vectors: real[] holding the store's values
    schema2 = new_schema()
    publish(store, pg.url, schema=schema2, with_vectors=True)
    vec = pg_table(
        pg.url,
        f"SELECT image_id, clip_embedding, pg_typeof(clip_embedding)::text AS t "
        f"FROM {schema2}.images ORDER BY image_id LIMIT 3",
    ).to_pylist()
    assert vec[0]["t"] == "real[]"
    stored = store.read("images", columns=["image_id", "clip_embedding"]).sort_by("image_id")
    assert np.allclose(vec[0]["clip_embedding"], stored["clip_embedding"][0].as_py())


def test_only_what_changed_is_copied_again(store, pg):
    schema = new_schema()
    first = publish(store, pg.url, schema=schema)
    assert first.kept == []
    again = publish(store, pg.url, schema=schema)
    assert again.published == []
    assert sorted(again.kept) == sorted(p.name for p in first.published)
    Slices(min_size=12).fit(store)  # new rows in prime_slices and analysis_runs
    third = publish(store, pg.url, schema=schema)
    changed = {p.name for p in third.published}
    # the two tables that changed, and exactly the stored queries reading either of them
    readers = {p.name for p in first.published if p.kind == "query"} - {
        "class_error_rates",
        "confusions",
        "samples",
    }
    assert changed == {"prime_slices", "analysis_runs"} | readers
    assert "images" in third.kept and "predictions" in third.kept
    book = {
        r["name"]: r
        for r in pg_table(pg.url, f"SELECT * FROM {schema}.failstore_publish").to_pylist()
    }
    versions = store.versions()
    assert json.loads(book["prime_slices"]["sources"]) == {"prime_slices": versions["prime_slices"]}
    assert json.loads(book["slices"]["sources"]) == {
        "analysis_runs": versions["analysis_runs"],
        "prime_slices": versions["prime_slices"],
    }
    assert pg_scalar(pg.url, f"SELECT count(*) FROM {schema}.prime_slices") == store.count(
        "prime_slices"
    )
    full = publish(store, pg.url, schema=schema, full=True)
    assert full.kept == [] and len(full.published) == len(first.published)


def test_saved_queries_are_published_and_follow_their_sql(store, pg):
    from failstore.queries.sql.session import make_user_query, session

    schema = new_schema()
    publish(store, pg.url, schema=schema)
    sql = session(store)
    sql.save_query(make_user_query("dogs", "SELECT count(*) AS n FROM images WHERE label = 'dog'"))
    saved = publish(store, pg.url, schema=schema)
    # saving a query writes saved_queries: the new query and that table are copied, and
    # every stored query again (the set of stored queries changed: their keys did)
    assert {"dogs", "saved_queries"} <= {p.name for p in saved.published}
    assert "images" in saved.kept
    dogs = store.count("images", "label = 'dog'")
    assert pg_scalar(pg.url, f"SELECT n FROM {schema}.dogs") == dogs
    sql.save_query(
        make_user_query("dogs", "SELECT count(*) AS n FROM images WHERE label <> 'dog'"),
        replace=True,
    )
    replaced = publish(store, pg.url, schema=schema)
    assert "dogs" in {p.name for p in replaced.published}
    assert pg_scalar(pg.url, f"SELECT n FROM {schema}.dogs") == store.count("images") - dogs


def test_extra_queries_with_parameters_come_and_go(store, pg):
    schema = new_schema()
    asked = QueryRequest("class_error_rates", {"grouping": "prediction"})
    summary = publish(store, pg.url, schema=schema, requests=[asked])
    name = "class_error_rates__grouping_prediction"
    assert name in {p.name for p in summary.published}
    got = pg_table(pg.url, f"SELECT * FROM {schema}.{name}")
    want = run_sql(store, "SELECT * FROM class_error_rates", params={"grouping": "prediction"})
    assert rows(got, "model", "class") == rows(want, "model", "class")
    assert set(got["grouping"].to_pylist()) == {"prediction"}
    named = QueryRequest("coverage_lowest", {"limit": "5"}, as_name="worst5")
    later = publish(store, pg.url, schema=schema, requests=[named])
    assert later.dropped == [name]
    assert pg_scalar(pg.url, f"SELECT count(*) FROM {schema}.worst5") == 5
    assert pg_scalar(pg.url, f"SELECT to_regclass('{schema}.{name}')::text") is None


def test_a_table_failstore_did_not_publish_is_never_replaced(store, pg):
    schema = new_schema()
    with pgdb.connect(pg.url) as con, con.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"CREATE TABLE {schema}.images (mine int)")
        con.commit()
    with pytest.raises(PublishError) as e:
        publish(store, pg.url, schema=schema)
    assert e.value.one_line() == (
        f"schema {schema} holds images, which failstore did not publish; nothing changed; "
        "drop them or publish into another --schema"
    )
    assert pg_scalar(pg.url, f"SELECT to_regclass('{schema}.failstore_publish')::text") is None
    assert pg_table(pg.url, f"SELECT * FROM {schema}.images").column_names == ["mine"]


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "failstore.cli.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


def test_connection_failures_are_one_line_without_the_password(store, pg):
    closed = f"postgresql://u:topsecret@127.0.0.1:{_closed_port()}/dash"
    p = _cli("--store", str(store.path), "publish", closed)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, err
    port = closed.split(":")[3].split("/")[0]
    assert err.startswith(
        f"error: cannot connect to PostgreSQL at 127.0.0.1:{port}, database dash: "
        "Connection refused"
    )
    assert err.count("\n") == 1 and "topsecret" not in err + out
    wrong = pg.bare_url.replace("@", ":wrong-password@")
    p = _cli("--store", str(store.path), "publish", wrong)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3
    assert err == (
        f"error: cannot connect to PostgreSQL at 127.0.0.1:{pg.port}, database postgres: "
        'password authentication failed for user "failstore_test"\n'
    )
    assert "wrong-password" not in err + out


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_credentials_from_pgpassword_and_pgpass(store, pg, tmp_path):
    import pg_server

    schema = new_schema()
    bare = [
        "--store", str(store.path), "publish", pg.bare_url, "--schema", schema, "--quiet"
    ]  # fmt: skip
    p = _cli(*bare, env={"PGPASSWORD": pg_server.PASSWORD})
    out, err = p.communicate(timeout=300)
    assert (p.returncode, out, err) == (0, "", "")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.port}:postgres:failstore_test:{pg_server.PASSWORD}\n")
    passfile.chmod(0o600)
    p = _cli(*bare, "--json", env={"PGPASSFILE": str(passfile), "PGPASSWORD": ""})
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    summary = json.loads(out)
    assert summary["published"] == [] and "images" in summary["kept"]
    assert set(summary) == {
        "action", "schema", "where", "published", "kept", "dropped", "skipped", "rows", "seconds"
    }  # fmt: skip
    p = _cli(*bare, env={"PGPASSFILE": str(tmp_path / "none"), "PGPASSWORD": ""})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3
    assert err == (
        f"error: cannot connect to PostgreSQL at 127.0.0.1:{pg.port}, database postgres: "
        "fe_sendauth: no password supplied\n"
    )


def _second_model(store: Store) -> None:
    """Predictions of a second model: predictions and class_error_rates change, images not."""
    preds = store.read("predictions")
    m2 = preds.set_column(
        preds.schema.get_field_index("model"), "model", pa.array(["m2"] * preds.num_rows)
    )
    store.append("predictions", m2)


STAGED = "tablename LIKE '\\_failstore\\_new%'"
CONSISTENCY = (
    "SELECT (SELECT count(*) FROM {s}.images) AS images, "
    "(SELECT count(*) FROM {s}.predictions) AS predictions, "
    "(SELECT sum(n)::bigint FROM {s}.class_error_rates) AS n, "
    "(SELECT count(DISTINCT model) FROM {s}.samples) AS models"
)


def test_concurrent_readers_see_the_old_or_the_new_state_never_a_mix(store, pg):
    schema = new_schema()
    publish(store, pg.url, schema=schema)
    q = CONSISTENCY.format(s=schema)
    old = tuple(pg_table(pg.url, q).to_pylist()[0].values())
    _second_model(store)
    seen: list[tuple] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with pgdb.connect(pg.url, autocommit=True) as con, con.cursor() as cur:
                while not stop.is_set():
                    cur.execute(q)
                    seen.append(tuple(cur.fetch_arrow_table().to_pylist()[0].values()))
        except BaseException as e:  # reported below
            errors.append(e)

    def wait_for(state: tuple, count: int) -> None:
        end = time.monotonic() + 60
        while seen.count(state) < count and time.monotonic() < end and not errors:
            time.sleep(0.02)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(old, 6)  # the readers are reading before the publish starts
    publish(store, pg.url, schema=schema)
    new = (old[0], 2 * old[1], 2 * old[2], 2)
    wait_for(new, 6)  # and after it
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert tuple(pg_table(pg.url, q).to_pylist()[0].values()) == new
    assert set(seen) <= {old, new}, set(seen) - {old, new}
    assert old in seen and new in seen


def _wait_for_blocked_publisher(url: str, timeout: float = 120) -> int:
    """The backend pid of a publish waiting for a lock at its swap."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = pg_table(
            url,
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'DROP TABLE%'",
        )
        if found.num_rows:
            return int(found["pid"][0].as_py())
        time.sleep(0.1)
    raise AssertionError("the publisher never reached its swap")


@pytest.mark.parametrize("how", ["kill the process", "terminate the connection"])
def test_a_publish_broken_at_its_last_step_leaves_the_previous_state(store, pg, how):
    """A reader holds a lock on `predictions`, so the publisher, having copied everything,
    waits at its swap; then it dies (SIGKILL) or its connection is cut by the server."""
    schema = new_schema()
    publish(store, pg.url, schema=schema)
    q = CONSISTENCY.format(s=schema)
    old = pg_table(pg.url, q).to_pylist()
    book = pg_table(pg.url, f"SELECT * FROM {schema}.failstore_publish ORDER BY name")
    _second_model(store)
    holder = pgdb.connect(pg.url)
    cur = holder.cursor()
    cur.execute(f"SELECT count(*) FROM {schema}.predictions")  # takes ACCESS SHARE until rollback
    cur.fetchall()
    p = _cli("--store", str(store.path), "publish", pg.url, "--schema", schema)
    try:
        backend = _wait_for_blocked_publisher(pg.url)
        if how == "kill the process":
            p.send_signal(signal.SIGKILL)
        else:
            pg_table(pg.url, f"SELECT pg_terminate_backend({backend})")
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        holder.rollback()
        holder.close()
    if how == "kill the process":
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 3
        *progress, last = err.splitlines()
        assert all(line.startswith("copied ") for line in progress)
        assert last.startswith(
            f"error: publishing to 127.0.0.1:{pg.port}, database postgres failed, nothing changed: "
        ), last
        assert "terminat" in last, last
    assert pg_table(pg.url, q).to_pylist() == old
    assert pg_table(pg.url, f"SELECT * FROM {schema}.failstore_publish ORDER BY name").equals(book)
    staged = f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND {STAGED}"
    copied = [line for line in err.splitlines() if line.startswith("copied ")]
    assert len(copied) >= 2  # predictions, class_error_rates and what reads them
    assert pg_scalar(pg.url, staged) == len(copied)  # staged, never live
    publish(store, pg.url, schema=schema)  # and the next publish goes through
    assert pg_table(pg.url, q).to_pylist() != old
    assert pg_scalar(pg.url, staged) == 0  # and removes what the killed one staged


def test_a_reader_queued_behind_the_switch_reads_the_new_state_whole(store, pg):
    """PostgreSQL's DROP/RENAME is not MVCC-safe: a COPY that queues behind the switch's lock
    has a snapshot from before the switch committed. Had the rows been written in the
    switching transaction, it would read the new ``predictions`` as empty (seen once as
    (600, 0, None, 0) by the concurrent readers test before the publish had two transactions)."""
    schema = new_schema()
    publish(store, pg.url, schema=schema)
    q = CONSISTENCY.format(s=schema)
    old = tuple(pg_table(pg.url, q).to_pylist()[0].values())
    _second_model(store)
    holder = pgdb.connect(pg.url)
    cur = holder.cursor()
    cur.execute(f"SELECT count(*) FROM {schema}.predictions")  # ACCESS SHARE until rollback
    cur.fetchall()
    done: list[BaseException | None] = []
    publisher = threading.Thread(
        target=lambda: done.append(_or_error(lambda: publish(store, pg.url, schema=schema)))
    )
    publisher.start()
    seen: list[tuple] = []
    try:
        _wait_for_blocked_publisher(pg.url)
        reader = threading.Thread(target=lambda: seen.append(_copy_out(pg.url, q)))
        reader.start()
        _wait_for_lock_waiters(pg.url, "COPY (SELECT (SELECT count(*)%", 1)
    finally:
        holder.rollback()
        holder.close()
    publisher.join(timeout=120)
    reader.join(timeout=120)
    assert done == [None]
    new = (old[0], 2 * old[1], 2 * old[2], 2)
    assert seen == [new]


def _copy_out(url: str, query: str) -> tuple:
    """``COPY (query) TO STDOUT`` (what psql's \\copy and exports run): a utility statement
    whose snapshot is taken before its query waits for locks."""
    import psycopg

    with (
        psycopg.connect(url, autocommit=True) as con,
        con.cursor() as cur,
        cur.copy(f"COPY ({query}) TO STDOUT") as copy,
    ):
        (row,) = list(copy.rows())
    return tuple(None if v is None else int(v) for v in row)


def _or_error(call) -> BaseException | None:
    try:
        call()
    except BaseException as e:  # reported by the caller's assert
        return e
    return None


def _wait_for_lock_waiters(url: str, like: str, count: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        f"AND query LIKE '{like}'"
    )
    while pg_scalar(url, query) < count:
        assert time.monotonic() < end, f"no query like {like!r} ever waited for a lock"
        time.sleep(0.05)
