"""The SQL read cache (failstore/queries/sql/readcache.py) and remembered plans (plans.py):
a query reads a cache file only at the exact Lance version it names, returns what Lance would
return, and a repeated query skips the guard -- in this process and in new ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from failstore import schemas
from failstore.errors import ConfigError, SqlRefused
from failstore.queries.sql import guard as guard_module
from failstore.queries.sql.builds import refresh
from failstore.queries.sql.engine import locked_connection
from failstore.queries.sql.plans import plan_key
from failstore.queries.sql.readcache import (
    CACHE_DIR,
    FORMAT,
    MIN_ROWS_ENV,
    ReadCache,
    cacheable,
    min_rows,
)
from failstore.queries.sql.session import session
from failstore.store import Store

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SCHEMA = pa.schema(schemas.IMAGE_BASE_FIELDS + schemas.clip_fields(8, 4))
TAGS = ["dog", "snow", "small", "water"]


def images(start: int, n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed + start)
    ids = [f"{i:064x}" for i in range(start, start + n)]
    boxes = [
        None if i % 3 else [{"label": "dog", "x0": 1.0, "y0": 2.0, "x1": 30.0, "y1": 40.0}]
        for i in range(n)
    ]
    scores = rng.random((n, 4), dtype=np.float32)
    return pa.table(
        {
            "image_id": ids,
            "uri": [f"/data/{i}.png" for i in range(start, start + n)],
            "split": rng.choice(["val", "test"], n),
            "label": rng.choice(["cat", "dog", "cow"], n),
            "width": np.full(n, 64, np.int32),
            "height": np.full(n, 48, np.int32),
            "boxes": pa.array(boxes, pa.list_(schemas.BOX_TYPE)),
            "mask": [bytes([i % 251]) * 3 for i in range(n)],
            "ingested_at": [
                datetime(2026, 12, 1, 10, i % 60, tzinfo=timezone.utc) for i in range(n)
            ],
            "clip_model": ["clip"] * n,
            "clip_embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(8 * n, dtype=np.float32)), 8
            ),
            "tag_scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), 4),
            "tags": [[t for t, s in zip(TAGS, row, strict=True) if s > 0.5] for row in scores],
        },
        schema=IMAGE_SCHEMA,
    )


def predictions(table: pa.Table, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = table.num_rows
    labels = table["label"].to_pylist()
    pred = [lab if rng.random() < 0.7 else "cat" for lab in labels]
    return pa.table(
        {
            "model": ["m"] * n,
            "image_id": table["image_id"],
            "target": labels,
            "prediction": pred,
            "prediction_index": np.zeros(n, np.int32),
            "confidence": rng.random(n, dtype=np.float32),
            "correct": [p == t for p, t in zip(pred, labels, strict=True)],
            "probabilities": [[0.1, 0.9]] * n,
            "embedding": [[0.5, 0.25]] * n,
            "predicted_at": [datetime(2026, 12, 2, tzinfo=timezone.utc)] * n,
        },
        schema=schemas.PREDICTIONS_SCHEMA,
    )


def add(store: Store, start: int, n: int) -> None:
    t = images(start, n)
    store.append("images", t, schema=IMAGE_SCHEMA)
    store.append("predictions", predictions(t, start), schema=schemas.PREDICTIONS_SCHEMA)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv(MIN_ROWS_ENV, "0")  # cache every table, however small
    s = Store.init(tmp_path / "store")
    add(s, 0, 300)
    refresh(s)
    return s


def run(store: Store, sql: str, **kw):
    """(result, {table: "cache" | "lance"}) of one query through the store's session."""
    engine = session(store).engine(**kw)
    return engine.execute(sql), engine.sources


def on_lance(store: Store, sql: str, **kw) -> pa.Table:
    engine = session(store).engine(**kw)
    engine.cache = None
    return engine.execute(sql)


SCALAR_QUERIES = [
    "SELECT image_id, label, split FROM images WHERE label = 'dog' AND split = 'test'",
    "SELECT count(*) AS n, count(DISTINCT label) AS k FROM images",
    "SELECT i.image_id, i.uri, p.prediction, p.confidence FROM images AS i "
    "JOIN predictions AS p ON p.image_id = i.image_id WHERE NOT p.correct ORDER BY i.image_id",
    "SELECT t.tag, count(*) AS n FROM images AS i, UNNEST(i.tags) AS t(tag) GROUP BY t.tag",
    "SELECT image_id, boxes, ingested_at, tags, width * height AS area FROM images",
    "SELECT * FROM class_error_rates",
    "SELECT model, image_id, predicted_at FROM predictions ORDER BY confidence DESC LIMIT 7",
]


@pytest.mark.parametrize("sql", SCALAR_QUERIES)
def test_a_query_over_scalar_columns_reads_the_cache_and_returns_what_lance_returns(store, sql):
    got, sources = run(store, sql)
    assert set(sources.values()) == {"cache"}, sources
    want = on_lance(store, sql)
    assert got.schema == want.schema
    assert sorted(got.to_pylist(), key=repr) == sorted(want.to_pylist(), key=repr)
    assert got.num_rows > 0


@pytest.mark.parametrize(
    ("sql", "lance"),
    [
        ("SELECT * FROM images", {"images"}),
        ("SELECT image_id, clip_embedding[1] AS x FROM images", {"images"}),
        ("SELECT image_id, octet_length(mask) AS n FROM images", {"images"}),
        ("SELECT p.image_id, p.probabilities, i.label FROM predictions AS p "
         "JOIN images AS i ON i.image_id = p.image_id", {"predictions"}),
        ("SELECT COLUMNS('clip.*') FROM images", {"images"}),
        ("SELECT to_json(i) AS j FROM images AS i", {"images"}),
    ],
)  # fmt: skip
def test_a_query_reading_a_left_out_column_reads_that_table_from_lance(store, sql, lance):
    got, sources = run(store, sql)
    assert {t for t, s in sources.items() if s == "lance"} == lance
    assert got.equals(on_lance(store, sql))


def test_after_a_write_a_query_sees_the_new_rows_never_the_old_cache(store):
    v1 = store.version("predictions")
    assert run(store, "SELECT count(*) AS n FROM predictions")[0]["n"][0].as_py() == 300
    add(store, 300, 50)  # new versions; the cache files are those of the old ones
    got, sources = run(store, "SELECT count(*) AS n FROM predictions")
    assert got["n"][0].as_py() == 350
    assert sources == {"predictions": "lance"}
    session(store).builds.wait()  # the query asked for the new version's file
    got, sources = run(store, "SELECT count(*) AS n FROM predictions")
    assert (got["n"][0].as_py(), sources) == (350, {"predictions": "cache"})
    # A reader pinned at the old version reads the old version's file: 300 rows.
    old, sources = run(store, "SELECT count(*) AS n FROM predictions", versions={"predictions": v1})
    assert (old["n"][0].as_py(), sources) == (300, {"predictions": "cache"})
    store.delete("predictions", "image_id < '" + f"{10:064x}" + "'")
    assert run(store, "SELECT count(*) AS n FROM predictions")[0]["n"][0].as_py() == 340


def test_a_table_deleted_and_created_again_is_not_served_its_old_cache(store):
    sql = "SELECT count(*) AS n, min(uri) AS first FROM images"
    assert run(store, sql)[0]["n"][0].as_py() == 300
    before = store.version("images")
    shutil.rmtree(store.path / "images.lance")
    t = images(1000, 40)
    store.append("images", t, schema=IMAGE_SCHEMA)
    while store.version("images") < before:  # the same version number as the old table's
        store.upsert("images", t.slice(0, 1), schema=IMAGE_SCHEMA)
    assert store.version("images") == before
    got, sources = run(Store(store.path), sql)
    assert got.to_pylist() == [{"n": 40, "first": "/data/1000.png"}]
    assert sources == {"images": "lance"}


def test_manifest_version_is_lances_version_after_every_kind_of_write(store):
    assert store.manifest_version("images") == store.version("images")
    add(store, 300, 10)
    store.delete("images", "label = 'cow'")
    store.upsert("images", images(0, 5), schema=IMAGE_SCHEMA)
    assert store.manifest_version("images") == store.version("images")
    store.compact(older_than=timedelta(0))
    for name in store.table_names():
        assert store.manifest_version(name) == store.version(name), name
    assert store.manifest_version("no_such_table") is None


def test_a_cache_file_gone_under_a_query_is_read_from_lance(store, monkeypatch):
    sql = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    real = ReadCache.entry

    def vanished(self, table, version):
        found = real(self, table, version)
        found.path.unlink()  # removed between the check and DuckDB's read
        return found

    monkeypatch.setattr(ReadCache, "entry", vanished)
    got, sources = run(store, sql)
    assert sources == {"images": "lance"}  # the retry
    assert got.equals(on_lance(store, sql))


def test_the_query_connection_reads_the_cache_folder_and_nothing_else(store, tmp_path):
    folder = store.path / CACHE_DIR
    entry = ReadCache(store.path).entry("images", store.version("images"))
    con = locked_connection([folder])
    try:
        n = con.sql(f"SELECT count(*) FROM read_parquet('{entry.path}')").fetchall()[0][0]
        assert n == 300
        (tmp_path / "outside.csv").write_text("a\n1\n")
        for sql in (
            f"SELECT * FROM read_csv('{tmp_path / 'outside.csv'}')",
            f"SELECT * FROM read_parquet('{folder}/../images.lance/data/x.parquet')",
            "SET enable_external_access = true",
        ):
            with pytest.raises(Exception, match=r"disabled by configuration|locked"):
                con.sql(sql).fetchall()
    finally:
        con.close()
    # Through failstore, the files are not even nameable: table functions are refused.
    with pytest.raises(SqlRefused, match=r"table function read_parquet\(\) is not allowed"):
        run(store, f"SELECT * FROM read_parquet('{entry.path}')")


def test_a_repeated_query_skips_the_guard_until_the_store_changes(store, monkeypatch):
    calls = []
    real = guard_module.guard_query

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(guard_module, "guard_query", counted)
    sql = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    first = run(store, sql)[0]
    assert run(store, sql)[0].equals(first)
    assert len(calls) == 1
    add(store, 300, 5)  # every plan is keyed by the versions of every table
    run(store, sql)
    assert len(calls) == 2
    store2 = Store(store.path)  # a new session finds the plan on disk
    run(store2, sql)
    assert len(calls) == 2


def test_a_saved_query_replaced_is_run_as_replaced(store):
    from failstore.queries.sql.session import make_user_query

    s = session(store)
    s.save_query(make_user_query("dogs", "SELECT count(*) AS n FROM images WHERE label = 'dog'"))
    dogs = run(store, "SELECT n FROM dogs")[0]["n"][0].as_py()
    s.save_query(
        make_user_query("dogs", "SELECT count(*) + 1000 AS n FROM images WHERE label = 'dog'"),
        replace=True,
    )
    assert run(store, "SELECT n FROM dogs")[0]["n"][0].as_py() == dogs + 1000


def test_a_tampered_plan_file_runs_nothing_but_a_select(store):
    sql = "SELECT count(*) AS n FROM images"
    s = session(store)
    engine = s.engine()
    key = plan_key(sql, None, None, engine.plan_state)
    folder = store.path / CACHE_DIR / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    target = store.path / CACHE_DIR / "x.csv"
    bad = {"sql": f"COPY (SELECT 1) TO '{target}'", "tables": [], "columns": []}
    (folder / f"{key}.json").write_text(json.dumps(bad))
    with pytest.raises(SqlRefused, match="not a single SELECT"):
        run(Store(store.path), sql)
    assert not target.exists()


def test_prune_removes_older_versions_and_leftovers_of_killed_builds(store):
    cache = ReadCache(store.path)
    v1 = store.version("images")
    folder = cache.root / "images"
    (folder / f".v1.f{FORMAT}.parquet.dead.tmp").write_text("")
    add(store, 300, 5)
    cache.build("images", store.dataset("images"))
    assert cache.entry("images", v1) is not None  # kept: younger than KEEP_S
    cache.prune("images", store.version("images"), keep_s=0)
    assert cache.entry("images", v1) is None
    assert cache.entry("images", store.version("images")) is not None
    assert sorted(p.name for p in folder.iterdir()) == [
        f"v{store.version('images')}.f{FORMAT}.json",
        f"v{store.version('images')}.f{FORMAT}.parquet",
    ]


def test_small_tables_get_a_note_and_stay_on_lance(store, monkeypatch):
    monkeypatch.setenv(MIN_ROWS_ENV, "1000")
    add(store, 300, 5)
    entry = ReadCache(store.path).build("images", store.dataset("images"))
    assert entry is not None and entry.path is None and entry.rows == 305
    assert run(store, "SELECT count(*) AS n FROM images")[1] == {"images": "lance"}


def test_the_cache_switched_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILSTORE_SQL_CACHE", "0")
    monkeypatch.setenv(MIN_ROWS_ENV, "0")
    s = Store.init(tmp_path / "s")
    add(s, 0, 20)
    refresh(s)
    assert run(s, "SELECT count(*) AS n FROM images")[1] == {"images": "lance"}
    session(s).builds.wait()
    assert not (s.path / CACHE_DIR).exists()


@pytest.mark.parametrize("raw", ["-1", "lots", "1e5"])
def test_a_bad_minimum_is_one_line(monkeypatch, raw):
    monkeypatch.setenv(MIN_ROWS_ENV, raw)
    with pytest.raises(ConfigError) as e:
        min_rows()
    assert e.value.one_line() == (
        f"{MIN_ROWS_ENV}={raw!r} is not a whole number of rows; "
        "e.g. 100000; a table smaller than this is read from Lance only"
    )


def test_which_columns_are_cached():
    kept = {f.name for f in IMAGE_SCHEMA if cacheable(f)}
    assert kept == {
        "image_id", "uri", "split", "label", "width", "height", "boxes", "ingested_at",
        "clip_model", "tags",
    }  # fmt: skip
    kept = {f.name for f in schemas.PREDICTIONS_SCHEMA if cacheable(f)}
    assert "probabilities" not in kept and "embedding" not in kept and "confidence" in kept


PROBE = """
import sys
from failstore.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("sqlglot" in sys.modules, "lance" in sys.modules, file=sys.stderr)
"""


def test_failstore_sql_asked_again_imports_neither_sqlglot_nor_lance(store):
    sql = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    argv = ["--store", str(store.path), "sql", sql, "--format", "csv"]
    env = {**os.environ, MIN_ROWS_ENV: "0"}
    outs = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        outs.append((r.stdout, r.stderr.strip().splitlines()[-1]))
    assert outs[0][1] == "True True"  # guarded once: sqlglot, and Lance for the schema
    assert outs[1] == (outs[0][0], "False False")
    assert outs[0][0].splitlines()[0] == "label,n"


BUILD = """
import sys
from failstore.store import Store
from failstore.queries.sql.builds import refresh
refresh(Store(sys.argv[1]), ["images"])
"""


def test_two_processes_building_the_same_version_leave_one_good_file(tmp_path, monkeypatch):
    monkeypatch.setenv(MIN_ROWS_ENV, "0")
    s = Store.init(tmp_path / "s")
    add(s, 0, 2000)
    env = {**os.environ, MIN_ROWS_ENV: "0"}
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(s.path)], env=env) for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    sql = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    got, sources = run(s, sql)
    assert sources == {"images": "cache"}
    assert got.equals(on_lance(s, sql))
    left = sorted(p.name for p in (s.path / CACHE_DIR / "images").iterdir())
    assert left == [
        f"v{s.version('images')}.f{FORMAT}.json",
        f"v{s.version('images')}.f{FORMAT}.parquet",
    ]


def test_a_version_written_over_before_its_copy_starts_is_not_copied(store, monkeypatch):
    from failstore.queries.sql import builds

    add(store, 300, 5)
    add(store, 305, 5)  # the version before the latest has no file, and was written over
    b = builds.CacheBuilds(store)
    b.request(["images"], {"images": store.version("images") - 1})
    b.wait()
    assert ReadCache(store.path).entry("images", store.version("images") - 1) is None
    # The latest version is copied; asked again within the cool-down, nothing is copied.
    b.request(["images"], {"images": store.version("images")})
    b.wait()
    assert ReadCache(store.path).entry("images", store.version("images")) is not None
    add(store, 400, 5)  # within the cool-down of the last copy: not copied
    b.request(["images"], {"images": store.version("images")})
    b.wait()
    assert ReadCache(store.path).entry("images", store.version("images")) is None
    monkeypatch.setattr(builds, "COOLDOWN_S", 0.0)
    b.request(["images"], {"images": store.version("images")})
    b.wait()
    assert ReadCache(store.path).entry("images", store.version("images")) is not None


def test_kept_views_follow_each_query_cache_lance_cache_and_a_deleted_file(store):
    scalar = "SELECT count(*) AS n FROM images"
    vector = "SELECT count(clip_embedding) AS n FROM images"
    seen = [run(store, q) for q in (scalar, vector, scalar)]
    assert [(t["n"][0].as_py(), src["images"]) for t, src in seen] == [
        (300, "cache"),
        (300, "lance"),
        (300, "cache"),
    ]
    ReadCache(store.path).entry("images", store.version("images")).path.unlink()
    got, sources = run(store, scalar)
    assert (got["n"][0].as_py(), sources) == (300, {"images": "lance"})
