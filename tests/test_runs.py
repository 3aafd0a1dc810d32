"""`failstore runs` (list, drop) and `failstore compact` on a planted store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pyarrow.compute as pc
import pytest
from planted_store import build
from typer.testing import CliRunner

from failstore.cli.app import app
from failstore.errors import StoreError
from failstore.queries.framework.runs import drop_runs, list_runs
from failstore.queries.slices import Slices
from failstore.queries.sql.session import run_sql


@pytest.fixture
def store(tmp_path):
    return build(tmp_path / "s", n=600)


def _cli(store, *args):
    return CliRunner().invoke(app, ["--store", str(store.path), *args])


def test_runs_lists_every_run_most_recent_first(store):
    a = Slices(min_size=20).fit(store)
    b = Slices(min_size=20, split="val").fit(store)
    r = _cli(store, "runs", "--analysis", "slices", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["run_id"] for x in rows] == [b.run_id_, a.run_id_]
    assert rows[0]["rows"] == b.results_.num_rows
    assert json.loads(rows[0]["params"])["split"] == "val"
    assert set(json.loads(rows[0]["source_versions"])) == {"images", "predictions", "models"}
    Slices(min_size=20).fit(store)  # reuse: a becomes the most recently used
    assert list_runs(store).column("run_id").to_pylist() == [a.run_id_, b.run_id_]
    assert json.loads(_cli(store, "runs", "--analysis", "nope", "-f", "json").stdout) == []


def test_drop_removes_one_run_and_keeps_the_other(store):
    a = Slices(min_size=20).fit(store)
    b = Slices(min_size=20, split="val").fit(store)
    before = store.count("prime_slices", f"run_id = '{a.run_id_}'")
    r = _cli(store, "runs", "drop", b.run_id_[:6])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"dropped 1 run\n{b.run_id_}\n"
    assert store.count("prime_slices", f"run_id = '{b.run_id_}'") == 0
    assert store.count("prime_slices", f"run_id = '{a.run_id_}'") == before
    assert list_runs(store).column("run_id").to_pylist() == [a.run_id_]
    # the stored query falls back to the run that is left
    got = run_sql(store, "SELECT DISTINCT run_id FROM slices").column("run_id").to_pylist()
    assert got == [a.run_id_]
    # and a refit of the dropped parameters computes it again
    again = Slices(min_size=20, split="val").fit(store)
    assert not again.reused_ and again.run_id_ == b.run_id_


def test_drop_older_than_and_errors(store):
    a = Slices(min_size=20).fit(store)
    with pytest.raises(StoreError, match="run id 'ffffffff' is not a run in this store"):
        drop_runs(store, ["ffffffff"])
    assert drop_runs(store, older_than=timedelta(days=1)) == []
    assert drop_runs(store, older_than=timedelta(0)) == [a.run_id_]
    assert store.count("prime_slices") == 0 and store.count("analysis_runs") == 0
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store.path), "runs", "drop",
         "--older-than", "soon"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == (
        "error: --older-than 'soon' is not a duration; "
        "write a number and a unit: 30m, 12h, 7d, 2w\n"
    )
    r = _cli(store, "runs", "drop")
    assert r.exit_code == 1


def test_compact_keeps_the_data_and_removes_old_versions(store):
    for split in ("val", "test", None):
        Slices(min_size=20, split=split).fit(store)
    content = store.read("prime_slices").sort_by("run_id")
    old = store.version("prime_slices")
    assert old >= 3
    r = _cli(store, "compact", "--older-than", "0s", "--format", "json")
    assert r.exit_code == 0, r.output
    report = {row["table"]: row for row in json.loads(r.stdout)}
    assert set(report) == set(store.table_names())
    assert report["prime_slices"]["versions_removed"] >= old - 1
    after = store.read("prime_slices").sort_by("run_id")
    assert after.equals(content)
    with pytest.raises(ValueError):  # time travel to a removed version is gone
        store.dataset("prime_slices", version=1).count_rows()
    runs = list_runs(store)
    assert pc.sum(runs["rows"]).as_py() == content.num_rows
