"""Stored queries: file format, user queries, and the built-ins against brute-force answers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from failstore.errors import InputError, SqlError, SqlRefused
from failstore.queries.sql.engine import SqlEngine
from failstore.queries.sql.session import make_user_query
from failstore.queries.sql.stored import (
    Param,
    StoredQuery,
    builtin_queries,
    parse_sql_file,
)
from failstore.schemas import (
    FILE_FIELDS,
    IMAGE_BASE_FIELDS,
    PREDICTIONS_SCHEMA,
    SAVED_QUERIES_SCHEMA,
    clip_fields,
    robust_fields,
)

GOOD_FILE = """\
-- name: slow_images
-- description: Images slower than a limit,
-- description: per split.
-- a free comment line
-- param: limit = 30 -- the limit in ms
-- param: note = 'a -- b' -- a default with dashes
-- param: split
SELECT * FROM images WHERE width > $limit AND split = $split AND uri <> $note;
"""


def test_parse_sql_file_reads_the_header() -> None:
    q = parse_sql_file(GOOD_FILE, "builtin", filename="slow.sql")
    assert q.name == "slow_images"
    assert q.description == "Images slower than a limit, per split."
    assert q.parameters == (
        Param("limit", "30", "the limit in ms"),
        Param("note", "'a -- b'", "a default with dashes"),
        Param("split", None, ""),
    )
    assert q.sql == "SELECT * FROM images WHERE width > $limit AND split = $split AND uri <> $note"
    assert q.source == "builtin"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- description: x\nSELECT 1", "q.sql:1: missing '-- name: NAME' header line"),
        (
            "-- name: q\n-- parm: x = 1\nSELECT 1",
            "q.sql:2: unknown header key 'parm'; use one of name, description, param",
        ),
        (
            "-- name: q\n-- param: 1x = 1\nSELECT 1",
            "q.sql:2: bad parameter name '1x'; use letters, digits and underscores",
        ),
        (
            "-- name: q\n\n-- param: x = now()\nSELECT 1",
            "q.sql:3: default of parameter 'x' is not a SQL literal: 'now()'; use a quoted string "
            "('label'), a number, NULL, TRUE or FALSE",
        ),
        (
            "-- name: q\n-- param: x =\nSELECT 1",
            "q.sql:2: parameter 'x' has '=' but no default value",
        ),
        (
            "-- name: q\n-- param: x\n-- param: x = 1\nSELECT 1",
            "q.sql:3: parameter 'x' declared twice",
        ),
        ("-- name: q\n-- name: r\nSELECT 1", "q.sql:2: header key 'name' given twice"),
        (
            "-- name: bad-name\nSELECT 1",
            "q.sql: bad query name 'bad-name'; use letters, digits and underscores",
        ),
        (
            "-- name: q\n-- description: nothing\n",
            "q.sql: no SQL after the header; add one SELECT query",
        ),
    ],
)
def test_bad_headers_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_sql_file(text, "store", filename="q.sql")
    assert str(info.value) == message


def test_builtin_queries() -> None:
    queries = builtin_queries()
    assert {"class_error_rates", "confusions", "samples"} <= set(queries)
    assert all(q.source == "builtin" and q.description for q in queries.values())
    cer = queries["class_error_rates"]
    assert [(p.name, p.default) for p in cer.parameters] == [
        ("grouping", "'label'"),
        ("model", "NULL"),
    ]
    assert [(p.name, p.default) for p in queries["confusions"].parameters] == [("model", "NULL")]


def test_row_round_trip() -> None:
    q = make_user_query(
        "cats", "SELECT * FROM images WHERE label = $lab", "the cats", {"lab": "'cat'"}
    )
    row = q.to_row()
    assert set(row) == set(SAVED_QUERIES_SCHEMA.names)
    assert json.loads(row["parameters"]) == {"lab": "'cat'"}
    pa.Table.from_pylist([row], schema=SAVED_QUERIES_SCHEMA)  # fits the table's schema
    back = StoredQuery.from_row(row)
    assert back == StoredQuery("cats", "the cats", (Param("lab", "'cat'", ""),), q.sql, "store")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("images", "SELECT 1"), "query name 'images' is a table name; choose another name"),
        (
            ("saved_queries", "SELECT 1"),
            "query name 'saved_queries' is a table name; choose another name",
        ),
        (
            ("prime_slices", "SELECT 1"),
            "query name 'prime_slices' is a table name; choose another name",
        ),
        (("samples", "SELECT 1"), "query name 'samples' is a built-in query; choose another name"),
        (
            ("my-query", "SELECT 1"),
            "bad query name 'my-query'; use letters, digits and underscores, e.g. my_query",
        ),
        (
            ("q", "DELETE FROM images"),
            "DELETE is not allowed; only one read-only query is allowed: SELECT, WITH ... SELECT, "
            "UNION/INTERSECT/EXCEPT",
        ),
        (
            ("q", "SELECT 1; SELECT 2"),
            "2 statements given; only one read-only query is allowed: SELECT, WITH ... SELECT, "
            "UNION/INTERSECT/EXCEPT",
        ),
        (
            ("q", "SELECT * FROM read_csv('x')"),
            "table function read_csv() is not allowed in FROM/JOIN; read the store's tables, "
            "stored "
            "queries or CTEs (allowed table functions: unnest, range, generate_series)",
        ),
        (
            ("q", "SELECT * FROM images WHERE label = $lab"),
            "query 'q' uses undeclared parameter(s) $lab; declare them with a default, "
            "e.g. --param NAME=VALUE",
        ),
        (
            ("q", "SELECT $x AS x", "", {"x": "now()"}),
            "default of parameter 'x' is not a SQL literal: 'now()'; "
            "use a quoted string ('label'), "
            "a number, NULL, TRUE or FALSE",
        ),
    ],
)
def test_make_user_query_refusals(args: tuple, message: str) -> None:
    with pytest.raises(SqlRefused) as info:
        make_user_query(*args)
    assert str(info.value) == message


# --- the built-ins over data --------------------------------------------------------------

LABELS = ["cat", "dog", "bird", "fish"]  # 'fish' is no model's class
CLASSES = ["cat", "dog", "bird"]
MODELS = ["m1", "m2"]


def make_world(seed: int = 7, n: int = 80) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    images = [
        {
            "image_id": f"img{i:03d}",
            "uri": f"/data/{i}.png",
            "split": "train" if i % 3 else "test",
            "label": None if i == 5 else str(rng.choice(LABELS)),
            "width": 32,
            "height": 32,
            "attr_background": str(rng.choice(["grass", "snow"])),
        }
        for i in range(n)
    ]
    predictions = []
    for model in MODELS:
        for img in images:
            target = img["label"] if img["label"] in CLASSES else None
            pred = target if target and rng.random() < 0.6 else str(rng.choice(CLASSES))
            predictions.append(
                {
                    "model": model,
                    "image_id": img["image_id"],
                    "target": target,
                    "prediction": pred,
                    "confidence": float(rng.random()),
                    "correct": None if target is None else pred == target,
                }
            )
    return images, predictions


def write_world(root: Path, images_schema: pa.Schema, extra: dict | None = None) -> SqlEngine:
    images, predictions = make_world()
    rows = [{**img, **(extra or {})} for img in images]
    lance.write_dataset(pa.Table.from_pylist(rows, schema=images_schema), str(root / "images"))
    lance.write_dataset(
        pa.Table.from_pylist(predictions, schema=PREDICTIONS_SCHEMA), str(root / "predictions")
    )
    return SqlEngine(
        {
            name: (lambda name=name: lance.dataset(str(root / name)))
            for name in ("images", "predictions")
        },
        {"images": images_schema, "predictions": PREDICTIONS_SCHEMA},
        builtin_queries(),
    )


FULL_IMAGES = pa.schema(
    [
        *IMAGE_BASE_FIELDS,
        *clip_fields(4, 2),
        *robust_fields(3),
        pa.field("attr_background", pa.string()),
    ]
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SqlEngine:
    extra = {
        "clip_model": "c",
        "clip_embedding": [0.5] * 4,
        "tag_scores": [0.1, 0.9],
        "tags": ["grass"],
        "robust_model": "r",
        "robust_features": [1.0, 2.0, 3.0],
    }
    return write_world(tmp_path_factory.mktemp("full"), FULL_IMAGES, extra)


def brute_force_error_rates(grouping: str, model: str | None = None) -> list[dict]:
    images, predictions = make_world()
    label_of = {img["image_id"]: img["label"] for img in images}
    counts: Counter = Counter()
    errors: Counter = Counter()
    for p in predictions:
        if model is not None and p["model"] != model:
            continue
        cls = label_of[p["image_id"]] if grouping == "label" else p["prediction"]
        counts[p["model"], cls] += 1
        errors[p["model"], cls] += p["correct"] is not True
    rows = [
        {
            "model": m,
            "grouping": grouping,
            "class": c,
            "n": n,
            "errors": errors[m, c],
            "error_rate": errors[m, c] / n,
        }
        for (m, c), n in counts.items()
    ]
    return sorted(
        rows, key=lambda r: (r["model"], -r["error_rate"], r["class"] is None, r["class"] or "")
    )


@pytest.mark.parametrize("grouping", ["label", "prediction"])
def test_class_error_rates_match_brute_force(engine: SqlEngine, grouping: str) -> None:
    out = engine.execute("SELECT * FROM class_error_rates", params={"grouping": grouping})
    assert out.schema.names == ["model", "grouping", "class", "n", "errors", "error_rate"]
    assert out.schema.field("error_rate").type == pa.float64()
    # Same integer division in SQL and Python: exact equality, order included.
    assert out.to_pylist() == brute_force_error_rates(grouping)


def test_class_error_rates_model_filter_and_bad_grouping(engine: SqlEngine) -> None:
    out = engine.execute("SELECT * FROM class_error_rates", params={"model": "m2"})
    assert out.to_pylist() == brute_force_error_rates("label", "m2")
    with pytest.raises(SqlError, match="grouping must be 'label' or 'prediction'"):
        engine.execute("SELECT * FROM class_error_rates", params={"grouping": "split"})


def test_confusions_match_brute_force(engine: SqlEngine) -> None:
    images, predictions = make_world()
    label_of = {img["image_id"]: img["label"] for img in images}
    expected = Counter((p["model"], label_of[p["image_id"]], p["prediction"]) for p in predictions)
    out = engine.execute("SELECT * FROM confusions")
    assert out.schema.names == ["model", "label", "prediction", "n"]
    got = {(r["model"], r["label"], r["prediction"]): r["n"] for r in out.to_pylist()}
    assert got == dict(expected)
    ns = out.column("n").to_pylist()
    assert ns == sorted(ns, reverse=True)
    only_m1 = engine.execute("SELECT * FROM confusions", params={"model": "'m1'"})
    assert set(only_m1.column("model").to_pylist()) == {"m1"}


SAMPLES_COLUMNS = [
    "model",
    "image_id",
    "uri",
    "split",
    "label",
    "target",
    "prediction",
    "confidence",
    "correct",
    "tags",
]


def test_samples_columns_with_all_model_columns(engine: SqlEngine) -> None:
    out = engine.execute("SELECT * FROM samples WHERE model = 'm1' ORDER BY image_id LIMIT 3")
    assert out.schema.names == [
        *SAMPLES_COLUMNS,
        "width",
        "height",
        "ingested_at",
        "clip_model",
        "robust_model",
        "attr_background",
    ]
    assert out.column("tags").to_pylist() == [["grass"]] * 3
    assert out.column("image_id").to_pylist() == ["img000", "img001", "img002"]
    assert engine.execute("SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 160}]


def test_samples_without_model_columns(tmp_path: Path) -> None:
    # the file stat columns ingest records are bookkeeping, not something to browse
    bare = pa.schema([*IMAGE_BASE_FIELDS, *FILE_FIELDS, pa.field("attr_background", pa.string())])
    engine = write_world(tmp_path, bare)
    out = engine.execute("SELECT * FROM samples ORDER BY model, image_id LIMIT 2")
    assert out.schema.names == [
        *SAMPLES_COLUMNS,
        "width",
        "height",
        "ingested_at",
        "attr_background",
    ]
    assert out.schema.field("tags").type == pa.list_(pa.string())
    assert out.column("tags").to_pylist() == [None, None]


def test_stored_queries_compose_in_user_sql(engine: SqlEngine) -> None:
    out = engine.execute(
        "SELECT s.attr_background, avg(CASE WHEN s.correct THEN 0.0 ELSE 1.0 END) AS err "
        "FROM samples AS s WHERE s.model = $m GROUP BY 1 ORDER BY 1",
        params={"m": "m1"},
    )
    images, predictions = make_world()
    bg = {img["image_id"]: img["attr_background"] for img in images}
    for row in out.to_pylist():
        mine = [
            p
            for p in predictions
            if p["model"] == "m1" and bg[p["image_id"]] == row["attr_background"]
        ]
        assert row["err"] == pytest.approx(np.mean([p["correct"] is not True for p in mine]))
