"""The Store: creation, keyed upserts, column evolution, clear errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from failstore import schemas
from failstore.errors import StoreError
from failstore.queries.sql.session import run_sql, session
from failstore.store import Store


def _errors(uris: list[str], reason: str = "bad") -> pa.Table:
    return pa.table(
        {"uri": uris, "reason": [reason] * len(uris), "time": [None] * len(uris)},
        schema=schemas.INGEST_ERRORS_SCHEMA,
    )


def test_open_missing_store_says_how_to_fix(tmp_path):
    with pytest.raises(StoreError) as e:
        Store(tmp_path / "nope")
    assert str(e.value) == (
        f"no store at {tmp_path / 'nope'}; run `failstore init` or `failstore ingest` first, "
        "or pass --store PATH"
    )


def test_non_store_directory_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(StoreError, match="is not a failstore store"):
        Store(tmp_path)


def test_upsert_is_keyed_and_idempotent(tmp_path):
    store = Store.init(tmp_path / "s")
    v1 = store.upsert("ingest_errors", _errors(["a", "b"]))
    v2 = store.upsert("ingest_errors", _errors(["a", "b"]))
    assert store.count("ingest_errors") == 2
    assert v2 == v1 + 1  # one commit per upsert
    store.upsert("ingest_errors", _errors(["b", "c"], "worse"))
    got = dict(
        zip(*store.read("ingest_errors", ["uri", "reason"]).to_pydict().values(), strict=True)
    )
    assert got == {"a": "bad", "b": "worse", "c": "worse"}


def test_read_projects_columns_and_filters(tmp_path):
    store = Store.init(tmp_path / "s")
    store.upsert("ingest_errors", _errors(["a", "b", "c"]))
    t = store.read("ingest_errors", ["uri"], filter="uri > 'a'")
    assert t.column_names == ["uri"]
    assert sorted(t.column("uri").to_pylist()) == ["b", "c"]


def test_ensure_columns_adds_nullable_and_refuses_type_change(tmp_path):
    store = Store.init(tmp_path / "s")
    base = pa.schema(schemas.IMAGE_BASE_FIELDS)
    row = {n: None for n in base.names} | {"image_id": "h1", "uri": "/x.png"}
    store.upsert("images", pa.Table.from_pylist([row], schema=base), schema=base)
    store.ensure_columns("images", schemas.robust_fields(4))
    assert store.schema("images").field("robust_features").type == pa.list_(pa.float32(), 4)
    assert store.read("images", ["robust_features"]).column(0).to_pylist() == [None]
    with pytest.raises(StoreError, match="has type fixed_size_list"):
        store.ensure_columns("images", schemas.robust_fields(8))


def test_partial_upsert_keeps_other_columns(tmp_path):
    store = Store.init(tmp_path / "s")
    base = pa.schema(schemas.IMAGE_BASE_FIELDS + schemas.robust_fields(2))
    row = {n: None for n in base.names} | {"image_id": "h1", "uri": "/x.png", "label": "cat"}
    store.upsert("images", pa.Table.from_pylist([row], schema=base), schema=base)
    upd = pa.table(
        {
            "image_id": ["h1"],
            "robust_model": ["r"],
            "robust_features": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2)),
        }
    )
    store.upsert("images", upd, insert=False)
    got = store.read("images", ["label", "robust_model", "robust_features"]).to_pylist()
    assert got == [{"label": "cat", "robust_model": "r", "robust_features": [1.0, 2.0]}]


def test_versions_and_info(tmp_path):
    store = Store.init(tmp_path / "s")
    assert store.info()["tables"] == []
    store.upsert("ingest_errors", _errors(["a"]))
    info = store.info()
    assert info["tables"] == [
        {
            "table": "ingest_errors",
            "rows": 1,
            "version": store.version("ingest_errors"),
            "columns": 3,
        }
    ]
    assert store.versions() == {"ingest_errors": store.version("ingest_errors")}


def test_unknown_table_lists_known_ones(tmp_path):
    store = Store.init(tmp_path / "s")
    store.upsert("ingest_errors", _errors(["a"]))
    with pytest.raises(StoreError) as e:
        store.dataset("imgs")
    assert str(e.value) == f"table 'imgs' does not exist in {store.path}; tables: ingest_errors"


def test_replace_stamps_metadata(tmp_path):
    store = Store.init(tmp_path / "s")
    v = store.replace("results", pa.table({"x": [1, 2]}), metadata={"failstore.params": "{}"})
    assert store.version("results") == v
    assert store.table_metadata("results")["failstore.params"] == "{}"
    store.replace("results", pa.table({"x": [3]}))
    assert store.read("results").column("x").to_pylist() == [3]


def test_sql_reuses_one_locked_connection_across_queries_and_failures(tmp_path):
    from failstore.errors import SqlRefused, SqlTimeout

    store = Store.init(tmp_path / "s")
    store.upsert("ingest_errors", _errors([f"u{i}" for i in range(300)]))
    assert run_sql(store, "SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 300}]
    con = session(store)._connection()
    with pytest.raises(SqlRefused):
        run_sql(store, "DELETE FROM ingest_errors")
    with pytest.raises(SqlTimeout):
        run_sql(
            store,
            "SELECT count(*) FROM ingest_errors a, ingest_errors b, ingest_errors c, "
            "ingest_errors d",
            timeout_s=0.2,
        )
    assert session(store)._connection() is con
    import duckdb

    with pytest.raises(duckdb.CatalogException):  # unregistered after each query
        con.sql("SELECT * FROM ingest_errors").fetchall()
    assert con.sql("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
    assert run_sql(store, "SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 300}]


def _data_files(store: Store, name: str) -> set[str]:
    return {f.path for frag in store.dataset(name).get_fragments() for f in frag.data_files()}


def test_append_evolves_the_schema_and_rewrites_no_row(tmp_path):
    from failstore.errors import StoreError

    store = Store.init(tmp_path / "s")
    store.append("r", pa.table({"run_id": ["a", "a"], "x": [1, 2]}))
    before = _data_files(store, "r")
    # new rows with one more column and one less
    store.append("r", pa.table({"run_id": ["b"], "y": [0.5]}))
    got = store.read("r").to_pylist()
    assert got == [
        {"run_id": "a", "x": 1, "y": None},
        {"run_id": "a", "x": 2, "y": None},
        {"run_id": "b", "x": None, "y": 0.5},
    ]
    assert before <= _data_files(store, "r")  # the first rows' files are still the data
    with pytest.raises(StoreError, match="table 'r' column 'x' has type int64, this write has"):
        store.append("r", pa.table({"run_id": ["c"], "x": ["not a number"]}))
    assert store.count("r") == 3
