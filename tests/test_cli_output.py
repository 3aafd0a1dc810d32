"""Table / JSON / CSV rendering of Arrow results."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from hostile_sql import failstore_command

from failstore.cli.output import Format, emit, to_text
from failstore.queries.slices.search import slice_schema

SLICE_COLUMNS = slice_schema(False).names


def _table() -> pa.Table:
    return pa.table(
        {
            "label": ["cat", None],
            "n": [3, 4],
            "rate": [0.25, float("nan")],
            "vec": pa.array([[0.5] * 16, [1.0] * 16], pa.list_(pa.float32(), 16)),
            "tags": [["water", "small"], []],
            "blob": pa.array([b"\x89PNG", None], pa.binary()),
            "t": pa.array(
                [datetime(2026, 1, 2, tzinfo=timezone.utc)] * 2, pa.timestamp("us", tz="UTC")
            ),
        }
    )


def test_json_is_a_list_of_row_objects():
    rows = json.loads(to_text(_table(), Format.json))
    assert rows[0]["label"] == "cat" and rows[0]["n"] == 3 and rows[0]["vec"] == [0.5] * 16
    assert rows[1]["label"] is None and rows[1]["rate"] is None  # NaN -> null
    assert rows[0]["tags"] == ["water", "small"]
    assert rows[0]["blob"] == "iVBORw=="  # base64
    assert rows[0]["t"] == "2026-01-02T00:00:00+00:00"


def test_json_of_one_count():
    assert to_text(pa.table({"n": [7]}), Format.json) == '[{"n": 7}]\n'


def test_csv_nested_values_are_json():
    lines = to_text(_table(), Format.csv).splitlines()
    assert lines[0] == "label,n,rate,vec,tags,blob,t"
    assert lines[1].startswith('cat,3,0.25,"[0.5, 0.5,')
    assert '"[""water"", ""small""]"' in lines[1]
    assert lines[2].startswith(",4,,")


def test_table_elides_vectors_and_binary():
    buf = io.StringIO()
    emit(_table(), Format.table, buf)
    text = buf.getvalue()
    assert "<float[16]>" in text and "<4 bytes>" in text
    assert "0.5, 0.5" not in text
    assert "(2 rows)" in text


# ----------------------------------------------------------------------------- fitting the width

RUN_ID = "3f2a9c1e" + "7b" * 12
IMAGE_ID = "ab" * 32


def _wide() -> pa.Table:
    """Long ids, full paths, long headers, numbers and wrapped text: wider than 120 columns."""
    return pa.table(
        {
            "run_id": [RUN_ID, "short"],
            "image_id": [IMAGE_ID, None],
            "uri": ["/data/sets/photos/train/dog/IMG_0001.jpeg", "s3://bucket/a/b.png"],
            "description": [
                "dog images tagged 'small' + 'snow': error rate 0.79 vs 0.18 " * 2,
                "x",
            ],
            "base_error_rate": [0.17654321, 0.5],
            "error_coverage": [0.8461538, 1.0],
            "accuracy_drop": [0.6092, 0.0],
            "p_value": [5.052e-25, 1.0],
            "created_at": pa.array(
                [datetime(2026, 1, 2, 10, 11, 12, 345, tzinfo=timezone.utc)] * 2,
                pa.timestamp("us", tz="UTC"),
            ),
            "holds": [True, False],
            "tags": [["small", "snow"], []],
            "importance": [0.6648, 0.0],
            "q_value": [5.557e-24, 1.0],
        }
    )


def table_text(table: pa.Table, columns: int, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    buf = io.StringIO()
    emit(table, Format.table, buf)
    return buf.getvalue()


RULES = "─━┼╇┿╋┡┩"  # the line under a table's header (any rich box)


def _inner(line: str) -> str:
    """A table line without its outer edges, if the box draws them."""
    line = line.rstrip()
    return line[1:-1] if line.startswith("│") and line.endswith("│") else line


def headers(text: str) -> list[list[str]]:
    """Each shown column's header lines (the lines above the rule under the header)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line.strip()) <= set(RULES))
    cells = [
        [c.strip() for c in _inner(line.replace("┃", "│")).split("│")]
        for line in lines[:rule]
        if "│" in line or "┃" in line
    ]
    return [[row[j] for row in cells if row[j]] for j in range(len(cells[0]))]


def assert_readable(text: str, columns: int, names: list[str]) -> list[str]:
    """No line wider than the terminal; every header a column name broken only after "_";
    returns the names shown, in order."""
    assert all(len(line) <= columns for line in text.splitlines()), text
    shown = []
    for parts in headers(text):
        assert "".join(parts) in names, (parts, text)
        assert all(p.endswith("_") for p in parts[:-1]), (parts, text)
        shown.append("".join(parts))
    return shown


@pytest.mark.parametrize("columns", [80, 120])
def test_a_wide_table_fits_the_terminal_with_whole_headers(columns, monkeypatch):
    table = _wide()
    text = table_text(table, columns, monkeypatch)
    shown = assert_readable(text, columns, table.column_names)
    assert shown == table.column_names[: len(shown)] and len(shown) >= 4
    hidden = table.column_names[len(shown) :]
    assert hidden and f"too wide to show {', '.join(hidden)}" in " ".join(text.split())
    assert "3f2a9c1e " in text and RUN_ID[:9] not in text  # ids: their first 8 characters
    assert "abababab " in text and IMAGE_ID[:9] not in text
    assert "IMG_0001.jpeg" in text and "/data/" not in text and "b.png" in text  # file names
    numbers = {"base_error_rate": "0.1765", "error_coverage": "0.8462", "p_value": "5.052e-25"}
    for name, number in numbers.items():
        assert (number in text) == (name in shown)  # numbers shown are never broken


def test_everything_fits_when_the_terminal_is_wide(monkeypatch):
    table = _wide()
    text = table_text(table, 240, monkeypatch)
    assert assert_readable(text, 240, table.column_names) == table.column_names
    assert "2026-01-02 10:11:12Z" in text and "too wide" not in text


def test_csv_and_json_keep_full_ids_and_paths():
    table = _wide()
    rows = json.loads(to_text(table, Format.json))
    assert rows[0]["run_id"] == RUN_ID and rows[0]["image_id"] == IMAGE_ID
    assert rows[0]["uri"] == "/data/sets/photos/train/dog/IMG_0001.jpeg"
    text = to_text(table, Format.csv)
    assert f"{RUN_ID},{IMAGE_ID},/data/sets/photos/train/dog/IMG_0001.jpeg," in text


# ----------------------------------------------------------------------------- the real CLI

# Runs `failstore --store S ARGS` for each (COLUMNS, ARGS) of a JSON list on stdin, in this one
# process through the CLI's entry point; prints [[exit code, stdout, stderr], ...] as JSON.
_DRIVER = """
import contextlib, io, json, os, sys
from failstore.cli.app import main
store, calls = sys.argv[1], json.load(sys.stdin)
results = []
for columns, args in calls:
    os.environ["COLUMNS"] = str(columns)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--store", store, *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""

SLICES = ["slices", "--min-size", "10", "--limit", "3"]
SAMPLES = ["sql", "SELECT * FROM samples ORDER BY image_id LIMIT 3"]
CALLS = [
    (80, SLICES), (120, SLICES), (80, ["runs"]), (120, ["runs"]), (80, SAMPLES), (120, SAMPLES),
    (80, ["queries", "list"]), (80, ["schema", "images"]), (80, ["info"]),
    (80, [*SLICES, "-f", "json"]), (80, ["runs", "-f", "json"]), (80, [*SAMPLES, "-f", "csv"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """Every call of CALLS on a planted store, batched in one subprocess (not one interpreter
    start per call)."""
    import planted_store

    path = tmp_path_factory.mktemp("wide") / "store"
    planted_store.build(path, n=400)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(path)],
        input=json.dumps(CALLS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for (columns, args), (code, _, err) in zip(CALLS, results, strict=True):
        assert (code, err) == (0, ""), (columns, args, err)
    return path, [out for _, out, _ in results]


@pytest.mark.parametrize("call", range(9), ids=[f"{c} {' '.join(a[:2])}" for c, a in CALLS[:9]])
def test_cli_tables_fit_80_and_120_columns(cli_outputs, call):
    columns, _ = CALLS[call]
    text = cli_outputs[1][call]
    assert all(len(line) <= columns for line in text.splitlines()), text
    for parts in headers(text.split("\n", 1)[1] if text.startswith("store:") else text):
        assert all(p.endswith("_") for p in parts[:-1]), (parts, text)  # whole words


def test_slices_table_starts_with_the_description(cli_outputs):
    for text, columns in ((cli_outputs[1][0], 80), (cli_outputs[1][1], 120)):
        shown = assert_readable(text, columns, ["class", *SLICE_COLUMNS])
        assert shown[:2] == ["description", "class"]
        lines = text.splitlines()
        first_row = next(i for i, line in enumerate(lines) if "┼" in line) + 1
        assert lines[first_row].startswith("dog images tagged")  # the first column's value
    rows = json.loads(cli_outputs[1][9])  # json: the documented order, every column
    assert list(rows[0])[:3] == ["class", "grouping", "model"] and "description" in rows[0]


def test_ids_and_paths_are_short_in_tables_and_full_in_csv_and_json(cli_outputs):
    texts = cli_outputs[1]
    runs = json.loads(texts[10])
    run_id = runs[0]["run_id"]
    assert len(run_id) > 8 and run_id[:8] in texts[2] and run_id not in texts[2]
    image_id = f"{0:064x}"
    assert image_id[:8] in texts[4] and image_id not in texts[4]
    assert "0.png" in texts[4] and "/x/0.png" not in texts[4]
    csv_lines = texts[11].splitlines()
    assert csv_lines[0].startswith("model,image_id,uri,")
    assert csv_lines[1].startswith(f"m,{image_id},/x/0.png,")


def test_the_installed_command_fits_80_columns(cli_outputs):
    path, _ = cli_outputs
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run(
        [*failstore_command(), "--store", str(path), *SAMPLES], capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip
    assert (r.returncode, r.stderr) == (0, "")
    shown = assert_readable(r.stdout, 80, cli_outputs[1][11].splitlines()[0].split(","))
    assert shown[:4] == ["model", "image_id", "uri", "split"]
