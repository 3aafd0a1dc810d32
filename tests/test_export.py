"""`failstore export`: Parquet, CSV and one DuckDB file hold failstore's tables and stored query
results with publish's column conventions; files appear whole; stale ones go."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from planted_store import build

from failstore.feeds.catalog import QueryRequest
from failstore.feeds.export import export
from failstore.queries.slices.estimator import Slices
from failstore.queries.sql.session import run_sql


def rows(table, *keys):
    return sorted(table.to_pylist(), key=lambda r: tuple(str(r[k]) for k in keys))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = build(tmp_path_factory.mktemp("export") / "s", n=400)
    Slices(min_size=10).fit(s)
    return s


def test_parquet_holds_every_table_and_query_result(store, tmp_path):
    out = tmp_path / "out"
    summary = export(store, out)
    names = {p.name for p in summary.published}
    assert set(store.table_names()) <= names
    assert {"class_error_rates", "slices", "samples", "confusions"} <= names
    assert {s.name for s in summary.skipped} >= {"sanity", "ces"}  # analyses not run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.parquet" for n in names] + ["failstore_export.json"]
    )  # and no temporary files
    images = pq.read_table(out / "images.parquet")
    assert "clip_embedding" not in images.column_names and "mask" not in images.column_names
    assert images.schema.field("tags").type.value_type == "string"
    assert images.schema.field("ingested_at").type.tz in {"UTC", "Etc/UTC"}  # DuckDB says Etc/
    assert images.num_rows == 400
    for query, keys in [("class_error_rates", ("model", "class")), ("slices", ("description",))]:
        got = pq.read_table(out / f"{query}.parquet")
        assert rows(got, *keys) == rows(run_sql(store, f"SELECT * FROM {query}"), *keys)
    manifest = json.loads((out / "failstore_export.json").read_text())
    by_name = {o["name"]: o for o in manifest["objects"]}
    assert by_name["slices"]["sources"] == {
        "analysis_runs": store.version("analysis_runs"),
        "prime_slices": store.version("prime_slices"),
    }


def test_csv_writes_nested_values_as_json(store, tmp_path):
    export(store, tmp_path, fmt="csv")
    images = pacsv.read_csv(tmp_path / "images.csv").to_pylist()
    first = min(images, key=lambda r: r["image_id"])
    stored = store.read("images", columns=["image_id", "boxes", "tags"]).sort_by("image_id")
    assert json.loads(first["boxes"]) == stored["boxes"][0].as_py()
    assert json.loads(first["tags"]) == stored["tags"][0].as_py()


def test_one_duckdb_file_with_tables_and_views(store, tmp_path):
    export(store, tmp_path, fmt="duckdb", with_vectors=True)
    con = duckdb.connect(str(tmp_path / "failstore.duckdb"), read_only=True)
    kinds = dict(con.sql("SELECT table_name, table_type FROM information_schema.tables").fetchall())
    assert kinds["images"] == "BASE TABLE" and kinds["class_error_rates"] == "VIEW"
    got = con.sql("SELECT * FROM class_error_rates").to_arrow_table()
    want = run_sql(store, "SELECT * FROM class_error_rates")
    assert rows(got, "model", "class") == rows(want, "model", "class")
    assert "clip_embedding" in con.sql("SELECT * FROM images LIMIT 0").columns
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "failstore.duckdb",
        "failstore_export.json",
    ]


def test_a_query_no_longer_exported_loses_its_file(store, tmp_path):
    asked = QueryRequest("class_error_rates", {"grouping": "prediction"})
    export(store, tmp_path, requests=[asked])
    extra = tmp_path / "class_error_rates__grouping_prediction.parquet"
    assert set(pq.read_table(extra)["grouping"].to_pylist()) == {"prediction"}
    summary = export(store, tmp_path)
    assert summary.dropped == [extra.name] and not extra.exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_errors_and_summary(store, tmp_path):
    done = _cli("--store", str(store.path), "export", str(tmp_path / "x"), "--format", "xlsx")
    assert (done.returncode, done.stderr) == (
        1,
        "error: --format 'xlsx' is not one of parquet, csv, duckdb\n",
    )
    (tmp_path / "file").write_text("")
    done = _cli("--store", str(store.path), "export", str(tmp_path / "file"))
    assert done.stderr == (
        f"error: {tmp_path / 'file'} is a file, not a folder; give a folder to export into\n"
    )
    done = _cli("--store", str(store.path), "export", str(tmp_path / "y"), "--query", "nope")
    assert done.returncode == 1
    assert done.stderr.startswith("error: --query nope: no such stored query; known: ")
    done = _cli("--store", str(store.path), "export", str(tmp_path / "z"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["action"] == "exported" and summary["schema"] == "parquet"
    assert {p["name"] for p in summary["published"]} >= {"images", "slices"}


def test_whole_table_copies_scan_with_little_readahead(store, monkeypatch):
    """The engine of a publish or export hands DuckDB datasets whose scanner reads ahead 2
    batches and 1 fragment (Lance's defaults made memory grow with the table)."""
    import lance

    from failstore.feeds import catalog
    from failstore.queries.sql.session import session

    seen: list[dict] = []
    original = lance.LanceDataset.scanner

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lance.LanceDataset, "scanner", spy)
    engine = catalog.bounded(session(store).engine(versions=store.versions()))
    ds = engine.datasets["images"]()
    assert isinstance(ds, lance.LanceDataset)
    got = engine.execute("SELECT count(*) AS n FROM images")["n"][0].as_py()
    assert got == store.count("images")
    assert any(
        k.get("batch_readahead") == 2 and k.get("fragment_readahead") == 1 for k in seen
    ), seen
