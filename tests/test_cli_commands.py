"""CLI behaviour: one-line errors and exit codes, --debug, queries save/list/show/drop, info,
hostile SQL refused (tests/fixtures/hostile_sql.sql)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
from hostile_sql import (
    CASES,
    failstore_command,
    make_store,
    run_cli_batch,
    snapshot,
    sql_args,
)

from failstore import schemas
from failstore.store import Store


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture
def store(tmp_path):
    s = Store.init(tmp_path / "s")
    s.upsert(
        "ingest_errors",
        pa.table(
            {"uri": ["/a.png", "/b.png"], "reason": ["x", "y"], "time": [None, None]},
            schema=schemas.INGEST_ERRORS_SCHEMA,
        ),
    )
    return s


def test_unknown_target_spec_fails_before_any_write(tmp_path, colour_folder):
    r = run("--store", str(tmp_path / "s"), "ingest", str(colour_folder), "--target", "nope_net")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "nope_net" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_missing_torchvision_weights_name_the_expected_file(tmp_path, colour_folder):
    r = run(
        "--store",
        str(tmp_path / "s"),
        "ingest",
        str(colour_folder),
        "--target",
        "torchvision:resnet18",
        env={"TORCH_HOME": str(tmp_path / "th")},
    )
    assert r.returncode == 1
    assert str(tmp_path / "th" / "hub" / "checkpoints") in r.stderr
    loading, *errors = r.stderr.strip().splitlines()  # the progress line, then a one-line error
    assert loading == "loading models: torchvision:resnet18 (target)..." and len(errors) == 1
    assert not (tmp_path / "s").exists()


def test_broken_manifest_names_the_column_and_writes_nothing(tmp_path, colour_folder):
    m = tmp_path / "m.csv"
    m.write_text("path,lbl\nred/0.png,red\n")
    r = run("--store", str(tmp_path / "s"), "ingest", str(m))
    assert r.returncode == 1 and "has no 'label' column" in r.stderr
    assert not (tmp_path / "s").exists()


def test_debug_shows_the_traceback(tmp_path):
    plain = run("--store", str(tmp_path / "none"), "info")
    debug = run("--store", str(tmp_path / "none"), "--debug", "info")
    assert plain.returncode == 1 and plain.stderr.startswith("error: no store at ")
    assert "Traceback" not in plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError" in debug.stderr


def test_info_json(store):
    r = run("--store", str(store.path), "info", "--format", "json")
    data = json.loads(r.stdout)
    assert data["tables"] == [
        {
            "table": "ingest_errors",
            "rows": 2,
            "version": store.version("ingest_errors"),
            "columns": 3,
        }
    ]


def test_sql_param_and_out_parquet(store, tmp_path):
    r = run(
        "--store",
        str(store.path),
        "sql",
        "SELECT uri FROM ingest_errors WHERE reason = $r",
        "--param",
        "r=y",
        "--format",
        "csv",
    )
    assert r.stdout == "uri\n/b.png\n"
    out = tmp_path / "o.parquet"
    r = run("--store", str(store.path), "sql", "SELECT * FROM ingest_errors", "--out", str(out))
    assert r.stdout == f"wrote 2 rows to {out}\n"
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 2
    bad = run("--store", str(store.path), "sql", "SELECT 1", "--param", "oops")
    assert bad.returncode == 1 and bad.stderr == (
        "error: --param 'oops' is not KEY=VALUE; e.g. --param grouping=label\n"
    )


def test_queries_save_list_show_drop(store):
    s = str(store.path)
    r = run(
        "--store",
        s,
        "queries",
        "save",
        "bad_uris",
        "SELECT uri FROM ingest_errors WHERE reason = $why",
        "--description",
        "uris by reason",
        "--param",
        "why='x'",
    )
    assert (r.returncode, r.stdout) == (0, "saved query 'bad_uris'\n"), r.stderr
    listed = json.loads(run("--store", s, "queries", "list", "--format", "json").stdout)
    mine = [q for q in listed if q["name"] == "bad_uris"]
    assert mine == [
        {
            "name": "bad_uris",
            "source": "store",
            "description": "uris by reason",
            "parameters": "why",
        }
    ]
    assert {"samples", "class_error_rates", "confusions"} <= {q["name"] for q in listed}
    shown = run("--store", s, "queries", "show", "bad_uris").stdout
    assert "-- name: bad_uris" in shown and "-- param: why = 'x'" in shown
    used = run("--store", s, "sql", "SELECT * FROM bad_uris", "--format", "json").stdout
    assert [r["uri"] for r in json.loads(used)] == ["/a.png"]
    used = run("--store", s, "sql", "SELECT * FROM bad_uris", "--param", "why=y", "-f", "csv")
    assert used.stdout == "uri\n/b.png\n"
    assert run("--store", s, "queries", "drop", "bad_uris").stdout == "dropped query 'bad_uris'\n"
    gone = run("--store", s, "queries", "drop", "bad_uris")
    assert gone.returncode == 1 and gone.stderr.startswith("error: no saved query 'bad_uris'")


def test_saving_a_write_query_is_refused(store):
    r = run("--store", str(store.path), "queries", "save", "evil", "DELETE FROM ingest_errors")
    assert r.returncode == 1 and "DELETE is not allowed" in r.stderr
    assert store.count("ingest_errors") == 2 and not store.has_table("saved_queries")


def test_a_saved_query_cannot_shadow_a_table_of_the_store(store):
    store.replace("my_results", pa.table({"x": [1]}))
    r = run("--store", str(store.path), "queries", "save", "My_Results", "SELECT 1 AS x")
    assert r.returncode == 1
    assert r.stderr == "error: query name 'My_Results' is a table name; choose another name\n"
    assert not store.has_table("saved_queries")


# ----------------------------------------------------------------------------- hostile SQL


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory):
    """Every case of tests/fixtures/hostile_sql.sql through `failstore sql` on a real store,
    batched in one subprocess (about 1 s instead of one interpreter start per case)."""
    path = tmp_path_factory.mktemp("hostile") / "store"
    make_store(path)
    before = snapshot(path)
    results = run_cli_batch(path, [c.sql for c in CASES])
    return path, before, dict(zip(CASES, results, strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_sql_is_one_error_line_and_changes_nothing(hostile_runs, case):
    _, before, results = hostile_runs
    r = results[case]
    assert (r["code"], r["stdout"]) == (1, "")
    assert r["stderr"] == f"error: {case.message}\n"  # exactly one line, no traceback
    assert r["versions"] == {name: version for name, (version, _) in before.items()}


def test_hostile_sql_leaves_every_table_as_it_was(hostile_runs):
    path, before, _ = hostile_runs
    assert snapshot(path) == before
    assert sorted(before) == ["images", "models", "predictions"]
    ok = run("--store", str(path), "sql", "SELECT count(*) AS n FROM images", "-f", "json")
    assert (ok.returncode, ok.stdout) == (0, '[{"n": 4}]\n')


FIRST_OF_EACH_SECTION = list({c.section: c for c in reversed(CASES)}.values())


@pytest.mark.parametrize("case", FIRST_OF_EACH_SECTION, ids=[c.id for c in FIRST_OF_EACH_SECTION])
def test_hostile_sql_through_the_installed_command(hostile_runs, case):
    """The batch driver calls the entry point in-process; these run the real `failstore`."""
    path, before, _ = hostile_runs
    cmd = [*failstore_command(), "--store", str(path), "sql", *sql_args(case.sql)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"error: {case.message}\n")
    assert snapshot(path) == before


def test_out_follows_the_file_extension(store, tmp_path):
    for name in ("o.csv", "o.json"):
        out = tmp_path / name
        r = run("--store", str(store.path), "sql", "SELECT uri FROM ingest_errors ORDER BY uri",
                "--out", str(out))  # fmt: skip
        assert r.returncode == 0 and r.stdout == f"wrote 2 rows to {out}\n", r.stderr
    assert (tmp_path / "o.csv").read_text() == "uri\n/a.png\n/b.png\n"
    assert json.loads((tmp_path / "o.json").read_text()) == [{"uri": "/a.png"}, {"uri": "/b.png"}]
    cases = {
        "o.txt": f"error: --out {tmp_path / 'o.txt'}: unknown file type '.txt'; end the name "
        "with .parquet, .csv or .json\n",
        "missing/o.csv": f"error: --out {tmp_path / 'missing/o.csv'}: folder "
        f"{tmp_path / 'missing'} does not exist; create it first\n",
    }
    for name, message in cases.items():
        r = run("--store", str(store.path), "sql", "SELECT 1 AS x", "--out", str(tmp_path / name))
        assert (r.returncode, r.stderr) == (1, message)
    r = run("--store", str(store.path), "sql", "SELECT 1 AS x", "--out", str(tmp_path / "a.csv"),
            "-f", "json")  # fmt: skip
    assert (
        r.stderr
        == f"error: --out {tmp_path / 'a.csv'} is csv but --format is json; drop --format\n"
    )
    assert not (tmp_path / "a.csv").exists()


def test_sql_from_stdin(store):
    import os

    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()",
           "--store", str(store.path), "sql", "-", "-f", "json"]  # fmt: skip
    r = subprocess.run(cmd, input="SELECT count(*) AS n\nFROM ingest_errors\n",
                       capture_output=True, text=True, env=dict(os.environ))  # fmt: skip
    assert (r.returncode, r.stdout) == (0, '[{"n": 2}]\n'), r.stderr


def test_saved_query_names_ignore_case_and_overwriting_needs_replace(store):
    s = str(store.path)
    assert run("--store", s, "queries", "save", "casey", "SELECT 1 AS x").returncode == 0
    r = run("--store", s, "queries", "save", "CASEY", "SELECT 2 AS x")
    assert (r.returncode, r.stderr) == (
        1, "error: a saved query 'casey' exists; pass --replace to overwrite it, or choose "
        "another name\n",
    )  # fmt: skip
    r = run("--store", s, "queries", "save", "CASEY", "SELECT 2 AS x", "--replace")
    assert (r.returncode, r.stdout) == (0, "saved query 'CASEY'\n"), r.stderr
    assert store.read("saved_queries", ["name"]).column("name").to_pylist() == ["CASEY"]
    got = run("--store", s, "sql", "SELECT x FROM casey", "-f", "json").stdout
    assert json.loads(got) == [{"x": 2}]


def test_at_names_get_a_parameter_hint(store):
    r = run("--store", str(store.path), "sql", "SELECT uri FROM ingest_errors WHERE reason = @why")
    assert r.returncode == 1
    assert r.stderr == (
        "error: unknown column 'why': @why is the absolute value of a column in DuckDB; "
        "write $why for a parameter and give it with --param why=VALUE\n"
    )


def test_schema_lists_columns_and_sql_types(store):
    r = run("--store", str(store.path), "schema", "ingest_errors", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"table": "ingest_errors", "column": "uri", "type": "VARCHAR", "nullable": False},
        {"table": "ingest_errors", "column": "reason", "type": "VARCHAR", "nullable": True},
        {"table": "ingest_errors", "column": "time", "type": "TIMESTAMPTZ", "nullable": True},
    ]
    bad = run("--store", str(store.path), "schema", "ingest_error")
    assert (bad.returncode, bad.stderr) == (
        1, f"error: no table 'ingest_error' in {store.path}; did you mean 'ingest_errors'? "
        "tables: ingest_errors\n",
    )  # fmt: skip


def test_a_table_that_takes_a_saved_query_name_later_is_not_silently_used(store):
    s = str(store.path)
    assert run("--store", s, "queries", "save", "model_metrics", "SELECT 1 AS x").returncode == 0
    store.replace("model_metrics", pa.table({"x": [7]}))  # e.g. the demo writes its table
    r = run("--store", s, "sql", "SELECT x FROM model_metrics")
    assert (r.returncode, r.stderr) == (
        1, "error: 'model_metrics' is both a table and a saved query; drop or rename the saved "
        "query (failstore queries drop model_metrics)\n",
    )  # fmt: skip
    assert run("--store", s, "queries", "drop", "model_metrics").returncode == 0
    assert json.loads(
        run("--store", s, "sql", "SELECT x FROM model_metrics", "-f", "json").stdout
    ) == [{"x": 7}]
