"""`failstore serve`'s JSON/CSV API, through a real server process and a real HTTP client:
every endpoint, paging, and hostile input (4xx with a one-line JSON error, store unchanged)."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote, urlencode

import pytest
from serve_server import planted_with_slices, running

from failstore.queries.sql.session import run_sql


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = planted_with_slices(tmp_path_factory.mktemp("serve") / "s")
    with running(store) as server:
        yield store, server


def sql_url(q: str, **more) -> str:
    return "/api/sql?" + urlencode({"q": q, **more})


def one_line_error(status: int, body: dict, expect: int | tuple[int, ...] = 400) -> str:
    assert status in ((expect,) if isinstance(expect, int) else expect), (status, body)
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


def test_sql_json_and_csv(served):
    store, server = served
    status, body = server.json(
        sql_url("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label")
    )
    assert status == 200
    assert body["columns"] == ["label", "n"] and body["types"] == ["VARCHAR", "BIGINT"]
    want = run_sql(store, "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label")
    assert body["rows"] == want.to_pylist() and body["next"] is None
    status, headers, raw = server.get(
        sql_url("SELECT label FROM images ORDER BY image_id", format="csv", limit=5)
    )
    assert status == 200 and headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0] == ["label"] and len(rows) == 6


def test_sql_paging(served):
    store, server = served
    q = "SELECT image_id FROM images ORDER BY image_id"
    every = run_sql(store, q).column("image_id").to_pylist()
    got, offset = [], 0
    while offset is not None:
        status, body = server.json(sql_url(q, limit=100, offset=offset))
        assert status == 200 and len(body["rows"]) <= 100
        got += [r["image_id"] for r in body["rows"]]
        offset = body["next"]
    assert got == every
    status, body = server.json(sql_url(q))  # default limit
    assert len(body["rows"]) == 100 and body["limit"] == 100


def test_sql_parameters(served):
    _, server = served
    status, body = server.json(
        sql_url("SELECT count(*) AS n FROM images WHERE label = $cls", cls="dog")
    )
    assert status == 200 and body["rows"][0]["n"] > 0


def test_stored_queries(served):
    _, server = served
    status, listing = server.json("/api/queries")
    assert status == 200
    names = {q["name"] for q in listing}
    assert {"class_error_rates", "confusions", "samples", "slices"} <= names
    rates = next(q for q in listing if q["name"] == "class_error_rates")
    assert [p["name"] for p in rates["parameters"]] == ["grouping", "model"]
    status, body = server.json("/api/queries/class_error_rates?grouping=prediction&model=m")
    assert status == 200 and {r["grouping"] for r in body["rows"]} == {"prediction"}
    status, body = server.json("/api/queries/slices")
    assert (
        status == 200 and body["rows"] and {"tags", "class", "importance"} <= set(body["columns"])
    )
    status, body = server.json("/api/queries/coverage_lowest?param.limit=3")
    assert "coverage" in one_line_error(status, body)  # its analysis has not run
    one_line_error(*server.json("/api/queries/no_such_query"), expect=404)
    one_line_error(*server.json("/api/queries/class_error_rates?grouping=colour"))


def test_tables(served):
    store, server = served
    status, body = server.json("/api/tables")
    assert status == 200
    assert [t["name"] for t in body] == store.table_names()
    images = next(t for t in body if t["name"] == "images")
    cols = {c["name"]: c["type"] for c in images["columns"]}
    assert cols["image_id"] == "VARCHAR" and cols["tags"] == "VARCHAR[]"
    assert images["rows"] == store.count("images")


def test_image_bytes_and_thumbnails(served):
    store, server = served
    row = store.read("images", ["image_id", "uri"]).to_pylist()[0]
    status, headers, body = server.get(f"/api/images/{row['image_id']}")
    assert status == 200 and headers["content-type"] == "image/png"
    with open(row["uri"], "rb") as f:
        assert body == f.read()
    for size, want in (("64", 64), ("128", 128), ("100", 128), ("100000", 512), ("x", 128)):
        status, headers, thumb = server.get(f"/api/images/{row['image_id']}/thumb?size={size}")
        assert status == 200 and headers["content-type"] == "image/png"
        from PIL import Image

        assert max(Image.open(io.BytesIO(thumb)).size) == want
    cached = list((store.path / ".serve-cache" / "thumbs").glob(f"{row['image_id']}-*.png"))
    assert len(cached) == 3  # 64, 128, 512
    status, headers, overlay = server.get(
        f"/api/images/{row['image_id']}/saliency?model=m&method=gradient"
    )
    assert status == 200 and overlay[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(*server.json(f"/api/images/{row['image_id']}/saliency?method=nope"), expect=404)


HOSTILE_SQL = [
    "DROP TABLE images",
    "DELETE FROM images",
    "INSERT INTO images SELECT * FROM images",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "COPY images TO '/tmp/out.csv'",
    "ATTACH '/tmp/x.db' AS x",
    "SELECT 1; DROP TABLE images",
    "SELECT 1) AS a; DROP TABLE images; SELECT (1",
    "PRAGMA version",
    "SET threads = 1",
    "",
]
HOSTILE_PATHS = [
    "/api/images/../../etc/passwd",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/images/%2e%2e/thumb",
    "/api/images/..%2F..%2Fetc%2Fpasswd/thumb",
    "/api/images/" + "0" * 63 + "g",
    "/api/images/" + "0" * 64,
    "/api/images/" + "A" * 64,
    "/api/images/abc/thumb",
    "/api/images/" + quote("/etc/passwd", safe=""),
    "/api/nothing/here",
]


def test_hostile_input_is_refused_and_the_store_unchanged(served):
    store, server = served
    before = store.versions()
    for q in HOSTILE_SQL:
        one_line_error(*server.json(sql_url(q)))
    for limit in ("1001", "100000000000", "-1", "ten"):
        one_line_error(*server.json(sql_url("SELECT 1 AS x", limit=limit)))
    one_line_error(*server.json(sql_url("SELECT 1 AS x", offset="-5")))
    one_line_error(*server.json(sql_url("SELECT 1 AS x", format="xml")))
    one_line_error(*server.json("/api/sql"))
    for path in HOSTILE_PATHS:
        status, body = server.json(path)
        one_line_error(status, body, expect=(400, 404))
    # parameter values are literals, never SQL text
    evil = urlencode({"model": "m'; DROP TABLE images; --"})
    status, body = server.json(f"/api/queries/confusions?{evil}")
    assert status == 200 and body["rows"] == []
    # a huge result is paged, never materialised
    status, body = server.json(sql_url("SELECT range AS i FROM range(1000000000)", limit=1000))
    assert status == 200 and len(body["rows"]) == 1000 and body["next"] == 1000
    assert store.versions() == before
