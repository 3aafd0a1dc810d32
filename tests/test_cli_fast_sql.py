"""``failstore sql``'s fast path (failstore/cli/fast_sql.py) answers exactly as the Typer
command: the same argument lists are run both ways and stdout, stderr and the exit code are
compared; the fast path takes exactly the plain calls."""

from __future__ import annotations

import io
import subprocess
import sys

import pyarrow as pa
import pytest

from failstore import schemas
from failstore.cli import fast_sql
from failstore.cli.app import hoist_global_options, main
from failstore.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store.init(tmp_path_factory.mktemp("fast") / "store")
    n = 12
    images = pa.table(
        {
            "image_id": [f"{i:064x}" for i in range(n)],
            "uri": [f"/d/{i}.png" for i in range(n)],
            "split": ["val", "test"] * (n // 2),
            "label": ["cat", "dog", "cow"] * (n // 3),
            "width": [8] * n,
            "height": [8] * n,
            "boxes": pa.nulls(n, pa.list_(schemas.BOX_TYPE)),
            "mask": pa.nulls(n, pa.binary()),
            "ingested_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=pa.schema(schemas.IMAGE_BASE_FIELDS),
    )
    s.append("images", images, schema=pa.schema(schemas.IMAGE_BASE_FIELDS))
    return s


def cases(store: Store, tmp: str) -> list[tuple[list[str], bool]]:
    """(argv, whether the fast path takes it)."""
    s = str(store.path)
    q = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label"
    return [
        (["--store", s, "sql", q], True),
        (["sql", q, "--store", s, "-f", "csv"], True),
        ([f"--store={s}", "sql", q, "--format=json"], True),
        (["--store", s, "sql", "SELECT $x AS x", "--param", "x=3", "--timeout", "5"], True),
        (["--store", s, "sql", "SELECT TOP 2 label FROM images", "--dialect", "tsql"], True),
        (["--store", s, "sql", "SELECT nope FROM images"], True),
        (["--store", s, "sql", "DELETE FROM images"], True),
        (["--store", s, "sql", "SELECT 1 AS x", "--param", "novalue"], True),
        (["--store", s, "sql", "SELECT 1 AS x", "--timeout", "0"], True),
        (["--store", s, "sql", q, "--out", f"{tmp}/r.csv"], True),
        (["--store", s, "sql", q, "--out", f"{tmp}/r.txt"], True),
        (["--store", f"{tmp}/none", "sql", "SELECT 1 AS x"], True),
        (["--store", s, "sql", "-"], True),
        (["--store", s, "sql", q, "-f", "xml"], False),
        (["--store", s, "sql", q, "--timeout", "soon"], False),
        (["--store", s, "sql", q, "--frmat", "csv"], False),
        (["--store", s, "sql"], False),
        (["--store", s, "sql", q, "extra"], False),
        (["--store", s, "sql", "--help"], False),
        (["--debug", "--store", s, "sql", q], False),
        (["--store", s, "sql", q, "-fcsv"], False),
    ]


def outcome(argv: list[str], capsys, monkeypatch, typer_only: bool) -> tuple[str, str, int]:
    if typer_only:
        monkeypatch.setenv(fast_sql.NO_FAST_ENV, "1")
    else:
        monkeypatch.delenv(fast_sql.NO_FAST_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 42 AS answer"))
    code = 0
    try:
        main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return out, err, code


def test_the_fast_path_answers_exactly_as_typer(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FAILSTORE_STORE", raising=False)
    for argv, fast in cases(store, str(tmp_path)):
        monkeypatch.delenv(fast_sql.NO_FAST_ENV, raising=False)
        assert (fast_sql.parse(hoist_global_options(argv)) is not None) == fast, argv
        typer_said = outcome(argv, capsys, monkeypatch, typer_only=True)
        written = (tmp_path / "r.csv").read_text() if (tmp_path / "r.csv").exists() else None
        (tmp_path / "r.csv").unlink(missing_ok=True)
        fast_said = outcome(argv, capsys, monkeypatch, typer_only=False)
        assert fast_said == typer_said, argv
        if written is not None:
            assert (tmp_path / "r.csv").read_text() == written
            (tmp_path / "r.csv").unlink()


def test_the_store_variable_is_read_the_same_way(store, capsys, monkeypatch):
    monkeypatch.setenv("FAILSTORE_STORE", str(store.path))
    argv = ["sql", "SELECT count(*) AS n FROM images", "-f", "csv"]
    assert fast_sql.parse(argv) is not None
    said = outcome(argv, capsys, monkeypatch, typer_only=False)
    assert said == ("n\n12\n", "", 0)
    assert outcome(argv, capsys, monkeypatch, typer_only=True) == said


def test_a_plain_sql_call_loads_neither_typer_nor_pydantic(store):
    probe = (
        "import sys\n"
        "from failstore.cli.app import main\n"
        f"main(['--store', {str(store.path)!r}, 'sql', 'SELECT count(*) AS n FROM images'])\n"
        "print(sorted(m for m in ('typer', 'pydantic', 'click') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
