"""`failstore.sql(...)`: the notebook entry point (issue 9: users try `.to_pandas()` first)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from planted_store import build

import failstore
from failstore.errors import SqlError

QUERY = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("api") / "s", n=200)


def test_sql_from_a_path_gives_a_table_that_converts_to_pandas(store):
    df = failstore.sql(str(store.path), QUERY).to_pandas()
    assert isinstance(df, pd.DataFrame)
    labels = store.read("images", columns=["label"]).column("label").to_pylist()
    expected = pd.DataFrame(
        {"label": ["cat", "dog"], "n": [labels.count("cat"), labels.count("dog")]}
    )
    pd.testing.assert_frame_equal(df, expected, check_dtype=False)
    assert df["n"].sum() == 200


def test_sql_takes_a_store_object_parameters_and_the_same_guard(store):
    t = failstore.sql(
        store, "SELECT count(*) AS n FROM images WHERE label = $c", params={"c": "dog"}
    )
    assert t.column("n")[0].as_py() == store.read("images", columns=["label"]).column(
        "label"
    ).to_pylist().count("dog")
    with pytest.raises(SqlError, match="read-only"):
        failstore.sql(store, "DELETE FROM images")
    with pytest.raises(SqlError, match="positive number of seconds"):
        failstore.sql(store, "SELECT 1", timeout_s=0)


def test_importing_failstore_stays_cheap():
    probe = (
        "import sys, failstore; "
        "print(sorted(m for m in ('pyarrow', 'duckdb', 'lance', 'torch') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
