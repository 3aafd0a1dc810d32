"""SqlEngine over real Lance datasets: known answers, types, dialects, parameters, time limit;
the hostile SQL fixture through run_sql on a real store leaves every table intact."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from hostile_sql import CASES, Case, make_store, snapshot

from failstore.errors import SqlError, SqlRefused, SqlTimeout
from failstore.queries.sql.engine import SqlEngine, duckdb_message
from failstore.queries.sql.session import run_sql
from failstore.queries.sql.stored import builtin_queries
from failstore.schemas import IMAGE_BASE_FIELDS, PREDICTIONS_SCHEMA, clip_fields
from failstore.store import Store

IMAGES = pa.schema(
    [*IMAGE_BASE_FIELDS, *clip_fields(4, 3), pa.field("attr_background", pa.string())]
)
LABELS = ["cat", "dog", "cat", "dog", "bird", "cat"]
TAGS = [["grass"], ["snow", "grass"], [], None, ["water"], ["grass"]]
BACKGROUND = ["grass", "snow", "grass", "snow", "water", "grass"]
PREDICTED = ["cat", "cat", "cat", "dog", "cat", "dog"]
EMBEDDINGS = [
    [1, 0, 0, 0],
    [0, 1, 0, 0],
    [0.9, 0.1, 0, 0],
    [0, 0, 1, 0],
    [0, 0, 0, 1],
    [-1, 0, 0, 0],
]


def images_table() -> pa.Table:
    n = len(LABELS)
    return pa.table(
        {
            "image_id": [f"id{i}" for i in range(n)],
            "uri": [f"/data/{i}.png" for i in range(n)],
            "split": ["train"] * 3 + ["test"] * 3,
            "label": LABELS,
            "width": [32] * n,
            "height": [24] * n,
            "boxes": [None] * n,
            "mask": [None] * n,
            "ingested_at": [None] * n,
            "clip_model": ["tiny-clip"] * n,
            "clip_embedding": EMBEDDINGS,
            "tag_scores": [[0.1, 0.2, 0.3]] * n,
            "tags": TAGS,
            "attr_background": BACKGROUND,
        },
        schema=IMAGES,
    )


def predictions_table() -> pa.Table:
    n = len(LABELS)
    targets = [lab if lab in ("cat", "dog") else None for lab in LABELS]
    return pa.table(
        {
            "model": ["m1"] * n,
            "image_id": [f"id{i}" for i in range(n)],
            "target": targets,
            "prediction": PREDICTED,
            "prediction_index": [0 if p == "cat" else 1 for p in PREDICTED],
            "confidence": [0.5 + 0.05 * i for i in range(n)],
            "correct": [
                None if t is None else t == p for t, p in zip(targets, PREDICTED, strict=True)
            ],
            "probabilities": [[0.5, 0.5]] * n,
            "embedding": [[0.0, 1.0, 2.0]] * n,
            "predicted_at": [None] * n,
        },
        schema=PREDICTIONS_SCHEMA,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    lance.write_dataset(images_table(), str(root / "images"))
    lance.write_dataset(predictions_table(), str(root / "predictions"))
    return root


def make_engine(root: Path, timeout_s: float = 30.0, calls: list[str] | None = None) -> SqlEngine:
    def factory(name: str):
        def open_dataset():
            if calls is not None:
                calls.append(name)
            return lance.dataset(str(root / name))

        return open_dataset

    return SqlEngine(
        {"images": factory("images"), "predictions": factory("predictions")},
        {"images": IMAGES, "predictions": PREDICTIONS_SCHEMA},
        builtin_queries(),
        timeout_s=timeout_s,
    )


def test_known_answer_group_by(store: Path) -> None:
    out = make_engine(store).execute(
        "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY n DESC, label"
    )
    assert out.to_pylist() == [
        {"label": "cat", "n": 3},
        {"label": "dog", "n": 2},
        {"label": "bird", "n": 1},
    ]
    assert out.schema.field("n").type == pa.int64()


def test_unnest_tags(store: Path) -> None:
    out = make_engine(store).execute(
        "SELECT tag, count(*) AS n FROM images, UNNEST(tags) AS t(tag) GROUP BY tag ORDER BY tag"
    )
    assert out.to_pylist() == [
        {"tag": "grass", "n": 3},
        {"tag": "snow", "n": 1},
        {"tag": "water", "n": 1},
    ]


def test_vector_columns_keep_their_types(store: Path) -> None:
    out = make_engine(store).execute(
        "SELECT image_id, clip_embedding, tags FROM images ORDER BY image_id LIMIT 2"
    )
    emb = out.schema.field("clip_embedding").type
    assert pa.types.is_fixed_size_list(emb) and emb.list_size == 4
    assert emb.value_type == pa.float32()
    assert pa.types.is_list(out.schema.field("tags").type)
    assert out.column("clip_embedding").to_pylist() == [[1, 0, 0, 0], [0, 1, 0, 0]]


def test_vector_similarity_ranks_neighbours(store: Path) -> None:
    out = make_engine(store).execute(
        "SELECT image_id, array_cosine_similarity(clip_embedding, [1, 0, 0, 0]::FLOAT[4]) AS sim "
        "FROM images ORDER BY sim DESC LIMIT 3"
    )
    emb = np.array(EMBEDDINGS, dtype=np.float32)
    sims = emb[:, 0] / np.linalg.norm(emb, axis=1)
    expected = [f"id{i}" for i in np.argsort(-sims, kind="stable")[:3]]
    assert out.column("image_id").to_pylist() == expected
    assert out.column("sim").to_pylist() == pytest.approx(np.sort(sims)[::-1][:3].tolist(), 1e-6)


def test_only_referenced_tables_are_opened(store: Path) -> None:
    calls: list[str] = []
    make_engine(store, calls=calls).execute("SELECT count(*) AS n FROM images")
    assert calls == ["images"]
    calls.clear()
    make_engine(store, calls=calls).execute("SELECT count(*) AS n FROM samples")
    assert sorted(calls) == ["images", "predictions"]
    calls.clear()
    make_engine(store, calls=calls).execute("SELECT 1 AS one")
    assert calls == []


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store(tmp_path_factory.mktemp("hostile") / "store")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_queries_are_refused_by_run_sql_and_change_nothing(
    real_store: Store, case: Case
) -> None:
    """Every case of tests/fixtures/hostile_sql.sql through the session on a real store (one
    ``Store`` object, so one session and one DuckDB connection for all of them)."""
    before = snapshot(real_store.path)
    with pytest.raises(SqlRefused) as info:
        run_sql(real_store, case.sql)
    assert str(info.value) == case.message
    assert snapshot(real_store.path) == before  # every table: same Lance version, same rows
    assert sorted(before) == ["images", "models", "predictions"]
    # The session's connection still answers.
    assert run_sql(real_store, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 4}]


def test_injection_through_a_parameter_is_just_a_string(store: Path) -> None:
    engine = make_engine(store)
    out = engine.execute(
        "SELECT count(*) AS n FROM images WHERE label = $lab",
        params={"lab": "cat'; DELETE FROM images; --"},
    )
    assert out.to_pylist() == [{"n": 0}]
    assert lance.dataset(str(store / "images")).count_rows() == len(LABELS)


def test_parameters(store: Path) -> None:
    engine = make_engine(store)
    out = engine.execute(
        "SELECT image_id FROM images WHERE label = $lab AND width >= $w ORDER BY image_id",
        params={"lab": "dog", "w": "32"},
    )
    assert out.column("image_id").to_pylist() == ["id1", "id3"]
    assert engine.execute("SELECT $n + 1 AS v", params={"n": "41"}).to_pylist() == [{"v": 42}]
    with pytest.raises(SqlRefused, match=r"^missing parameter \$lab in the query"):
        engine.execute("SELECT * FROM images WHERE label = $lab")


@pytest.mark.parametrize(
    ("sql", "dialect", "expected"),
    [
        (
            "SELECT label::text AS l FROM images ORDER BY image_id LIMIT 5",
            "postgres",
            ["cat", "dog", "cat", "dog", "bird"],
        ),
        ("SELECT TOP 3 label FROM images ORDER BY image_id", "tsql", ["cat", "dog", "cat"]),
        (
            "SELECT `label` FROM `images` WHERE `split` = 'test' ORDER BY `image_id`",
            "bigquery",
            ["dog", "bird", "cat"],
        ),
        ("SELECT label FROM images ORDER BY image_id LIMIT 2", "snowflake", ["cat", "dog"]),
        ("SELECT label FROM images ORDER BY image_id LIMIT 2", "mysql", ["cat", "dog"]),
    ],
)
def test_dialects(store: Path, sql: str, dialect: str, expected: list[str]) -> None:
    out = make_engine(store).execute(sql, dialect=dialect)
    assert out.column(0).to_pylist() == expected


def test_duckdb_errors_become_one_line_sql_errors(store: Path) -> None:
    with pytest.raises(SqlError) as info:
        make_engine(store).execute("SELECT CAST(label AS INTEGER) AS x FROM images")
    message = str(info.value)
    assert message.startswith("query failed: Conversion Error: Could not convert string 'cat'")
    assert "\n" not in message and "LINE 1" not in message
    assert not isinstance(info.value, SqlRefused)


def test_duckdb_message_drops_the_echoed_sql() -> None:
    err = RuntimeError("Binder Error: bad thing\n\nLINE 1: SELECT x\n               ^")
    assert duckdb_message(err) == "Binder Error: bad thing"


def test_slow_query_times_out(store: Path) -> None:
    engine = make_engine(store, timeout_s=0.3)
    with pytest.raises(SqlTimeout) as info:
        engine.execute(
            "SELECT sum(a.range * b.range) AS s FROM range(1000000000) AS a, range(1000000) AS b"
        )
    assert str(info.value) == (
        "query ran longer than 0.3 s; narrow it with WHERE or LIMIT, or raise the time limit"
    )
    # The engine keeps working after a timeout.
    assert engine.execute("SELECT count(*) AS n FROM images").to_pylist() == [{"n": 6}]


def test_duckdb_second_line_of_defence(tmp_path: Path) -> None:
    """Even a query that got past the guard could not read files or unlock the config."""
    import duckdb

    from failstore.queries.sql.engine import DUCKDB_CONFIG

    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    con = duckdb.connect(config=dict(DUCKDB_CONFIG))
    con.execute("SET lock_configuration = true")
    with pytest.raises(duckdb.PermissionException):
        con.sql(f"SELECT * FROM read_csv('{secret}')").fetchall()
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    con.close()
