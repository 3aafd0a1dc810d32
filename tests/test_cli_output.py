"""Table / JSON / CSV rendering of Arrow results."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pyarrow as pa

from failstore.cli.output import Format, emit, to_text


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
