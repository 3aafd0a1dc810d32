"""The SQL guard: exact refusals, did-you-mean messages, dialects, parameters, expansion."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
from hostile_sql import CASES, SCHEMAS, Case, failstore_command, known_text, make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from failstore.errors import SqlError, SqlRefused
from failstore.queries.sql.guard import guard, guard_query
from failstore.queries.sql.stored import Param, StoredQuery, builtin_queries
from failstore.schemas import (
    IMAGE_BASE_FIELDS,
    MODELS_SCHEMA,
    PREDICTIONS_SCHEMA,
    clip_fields,
)

IMAGES = pa.schema(
    [*IMAGE_BASE_FIELDS, *clip_fields(4, 3), pa.field("attr_background", pa.string())]
)
TABLES = {"images": IMAGES, "predictions": PREDICTIONS_SCHEMA, "models": MODELS_SCHEMA}
STORED = builtin_queries()
ALLOWED = "only one read-only query is allowed: SELECT, WITH ... SELECT, UNION/INTERSECT/EXCEPT"
KNOWN = f"Known tables: images, models, predictions; stored queries: {', '.join(sorted(STORED))}"


def run_guard(sql: str, **kwargs) -> str:
    return guard(sql, tables=TABLES, stored=STORED, **kwargs)


def refusal(sql: str, **kwargs) -> str:
    with pytest.raises(SqlRefused) as info:
        run_guard(sql, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_queries_are_refused_with_their_exact_message(case: Case) -> None:
    """Every case of tests/fixtures/hostile_sql.sql (also run by the session and CLI tests)."""
    with pytest.raises(SqlRefused) as info:
        guard(case.sql, tables=SCHEMAS, stored=STORED)
    assert str(info.value) == case.message


def test_the_hostile_fixture_holds_every_case() -> None:
    # The fixture's test store has the same tables as TABLES here, so {KNOWN} is the same.
    assert set(SCHEMAS) == set(TABLES) and known_text() == KNOWN
    assert len(CASES) == 81 and len({c.sql for c in CASES}) == 81


@pytest.mark.parametrize("sql", ["", "   ", "\n\t"])
def test_blank_queries_are_refused(sql: str) -> None:
    # Blank SQL cannot be written in the fixture (a blank line ends a case).
    assert refusal(sql) == f"empty query; {ALLOWED}"


def test_comments_cannot_smuggle_a_statement() -> None:
    out = run_guard("SELECT label FROM images -- ; DROP TABLE images\n/* ; DROP TABLE images */")
    assert out == "SELECT label FROM images"


def test_unknown_table_suggests_the_closest_name() -> None:
    assert refusal("SELECT * FROM imgaes") == (
        f"unknown table 'imgaes'; did you mean 'images'? {KNOWN}"
    )
    assert refusal("SELECT * FROM sampels") == (
        f"unknown table 'sampels'; did you mean 'samples'? {KNOWN}"
    )


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT labl FROM images",
            "unknown column 'labl' in table 'images'; did you mean 'label'?",
        ),
        (
            "SELECT i.labl FROM images AS i",
            "unknown column 'labl' in table 'images'; did you mean 'label'?",
        ),
        (
            "SELECT label FROM images WHERE attr_backgrund = 'x'",
            "unknown column 'attr_backgrund' in table 'images'; did you mean 'attr_background'?",
        ),
        (
            "SELECT predction FROM images i JOIN predictions p USING (image_id)",
            "unknown column 'predction' in tables 'images', 'predictions'; "
            "did you mean 'prediction'?",
        ),
        (
            "SELECT lbl FROM samples",
            "unknown column 'lbl' in table 'samples'; did you mean 'label'?",
        ),
        (
            "SELECT t.tg FROM images, UNNEST(tags) AS t(tag)",
            "unknown column 'tg' in table 't'; did you mean 'tag'?",
        ),
        (
            "SELECT x.label FROM images AS i",
            "unknown table or alias 'x'; tables and aliases here: i",
        ),
        (
            "SELECT zzzz FROM models",
            "unknown column 'zzzz' in table 'models'; its columns are: "
            + ", ".join(MODELS_SCHEMA.names),
        ),
    ],
)
def test_unknown_columns_get_one_line_messages(sql: str, message: str) -> None:
    assert refusal(sql) == message


def test_unknown_dialect_lists_valid_ones() -> None:
    message = refusal("SELECT 1", dialect="postgresql")
    assert message.startswith("unknown SQL dialect 'postgresql'; valid dialects: ")
    assert "postgres, presto" in message and "tsql" in message


@pytest.mark.parametrize(
    ("sql", "dialect", "expected"),
    [
        (
            "SELECT label::text FROM images LIMIT 5",
            "postgres",
            "SELECT CAST(label AS TEXT) FROM images LIMIT 5",
        ),
        ("SELECT TOP 3 label FROM images", "tsql", "SELECT label FROM images LIMIT 3"),
        ("SELECT `label` FROM `images`", "bigquery", 'SELECT "label" FROM "images"'),
        (
            "SELECT label FROM images WHERE label = :lab",
            "snowflake",
            "SELECT label FROM images WHERE label = 'cat'",
        ),
    ],
)
def test_dialects_are_transpiled_to_duckdb(sql: str, dialect: str, expected: str) -> None:
    assert run_guard(sql, dialect=dialect, params={"lab": "cat"} if ":lab" in sql else None) == (
        expected
    )


def test_other_dialects_are_checked_too() -> None:
    assert refusal("DELETE FROM images", dialect="tsql") == f"DELETE is not allowed; {ALLOWED}"
    assert refusal("SELECT * FROM imgaes", dialect="bigquery").startswith("unknown table 'imgaes'")


def test_parameters_become_literals_never_sql() -> None:
    out = run_guard(
        "SELECT label FROM images WHERE label = $lab AND width > $w",
        params={"lab": "x'; DROP TABLE images; --", "w": "30"},
    )
    assert (
        out == "SELECT label FROM images WHERE label = 'x''; DROP TABLE images; --' AND width > 30"
    )
    assert len(sqlglot.parse(out, read="duckdb")) == 1
    assert run_guard("SELECT $v AS v", params={"v": "'quoted'"}) == "SELECT 'quoted' AS v"
    assert run_guard("SELECT $v AS v", params={"v": "-2.5e3"}) == "SELECT -2.5E+3 AS v"
    assert run_guard("SELECT $v AS v", params={"v": "12abc"}) == "SELECT '12abc' AS v"


def test_missing_and_unknown_parameters() -> None:
    assert refusal("SELECT $lab AS v") == (
        "missing parameter $lab in the query; pass it with --param lab=VALUE"
    )
    assert refusal("SELECT 1 AS v", params={"lab": "x"}) == (
        "unknown parameter(s) lab; this query takes: no parameters"
    )
    assert refusal("SELECT * FROM class_error_rates", params={"grouping": "label", "x": "1"}) == (
        "unknown parameter(s) x; this query takes: grouping, model"
    )


def test_stored_queries_expand_as_ctes_with_parameters() -> None:
    result = guard_query(
        "SELECT * FROM class_error_rates AS c WHERE c.n > 1",
        tables=TABLES,
        stored=STORED,
        params={"grouping": "prediction"},
    )
    assert result.tables == frozenset({"images", "predictions"})
    tree = sqlglot.parse_one(result.sql, read="duckdb")
    ctes = [cte.alias for cte in tree.args["with_"].expressions]
    assert ctes == ["_stored_class_error_rates"]
    assert "WHERE 'prediction' = 'prediction'" in result.sql
    assert "AND (NULL IS NULL OR p.model = NULL)" in result.sql
    assert result.sql.endswith("SELECT * FROM _stored_class_error_rates AS c WHERE c.n > 1")


def test_nested_stored_queries_cycles_and_shadowing() -> None:
    stored = dict(STORED)
    stored["cats"] = StoredQuery(
        "cats", "", (Param("lab", "'cat'"),), "SELECT * FROM samples WHERE label = $lab", "store"
    )
    stored["a"] = StoredQuery("a", "", (), "SELECT * FROM b", "store")
    stored["b"] = StoredQuery("b", "", (), "SELECT * FROM a", "store")
    out = guard("SELECT image_id FROM cats", tables=TABLES, stored=stored)
    tree = sqlglot.parse_one(out, read="duckdb")
    assert [c.alias for c in tree.args["with_"].expressions] == ["_stored_samples", "_stored_cats"]
    assert "WHERE label = 'cat'" in out
    with pytest.raises(
        SqlRefused, match=r"^stored queries refer to each other in a cycle: a -> b -> a$"
    ):
        guard("SELECT * FROM a", tables=TABLES, stored=stored)
    # A user CTE named like a stored query shadows it.
    out = guard(
        "WITH samples AS (SELECT 1 AS x) SELECT x FROM samples", tables=TABLES, stored=stored
    )
    assert out == "WITH samples AS (SELECT 1 AS x) SELECT x FROM samples"


def test_samples_without_model_columns_fills_null_tags() -> None:
    bare = pa.schema([*IMAGE_BASE_FIELDS, pa.field("attr_light", pa.string())])
    out = guard("SELECT * FROM samples", tables={**TABLES, "images": bare}, stored=STORED)
    assert 'CAST(NULL AS TEXT[]) AS "tags"' in out
    tree = sqlglot.parse_one(out, read="duckdb")
    body = tree.args["with_"].expressions[0].this
    assert body.named_selects == [
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
        "width",
        "height",
        "ingested_at",
        "attr_light",
    ]


def test_allowed_queries_pass_unchanged_in_meaning() -> None:
    ok = [
        "SELECT tag, count(*) AS n FROM images, UNNEST(tags) AS t(tag) GROUP BY tag",
        "SELECT image_id FROM images ORDER BY array_cosine_similarity(clip_embedding, "
        "[1, 0, 0, 0]::FLOAT[4]) DESC LIMIT 3",
        "SELECT * FROM range(3)",
        "(SELECT label FROM images) UNION (SELECT prediction FROM predictions) ORDER BY 1",
        "SELECT label FROM images INTERSECT SELECT target FROM predictions",
        "SELECT label AS l FROM images WHERE l = 'cat'",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT n FROM r",
        "SELECT list_transform(tags, x -> upper(x)) AS t FROM images",
    ]
    for sql in ok:
        tree = sqlglot.parse_one(run_guard(sql), read="duckdb")
        assert isinstance(tree, exp.Query), sql


# ----------------------------------------------------------------------------- odd input


STAGE = "is not allowed: it reads files; read the store's tables, stored queries or CTEs"
DIALECT_CASES = [
    ("SELECT $1 FROM @stage", "snowflake", f"stage @stage {STAGE}"),
    ("SELECT * FROM @stage/path/data.csv", "snowflake", f"stage @stage/path/data.csv {STAGE}"),
    ("SELECT $1:a FROM @s (FILE_FORMAT => 'f')", "snowflake", f"stage @s {STAGE}"),
    ("EXEC proc", "tsql", f"EXECUTE is not allowed; {ALLOWED}"),
    ("EXECUTE sp_executesql N'DROP TABLE images'", "tsql", f"EXECUTE is not allowed; {ALLOWED}"),
    ("SELECT label FROM images WHERE label =", "tsql", "syntax error near '=' at line 1, "
     "column 38: something is missing after it (read as tsql SQL)"),
    ("SELECT [label FROM images", "tsql",
     "unterminated name starting at line 1, column 8: close it with ] (read as tsql SQL)"),
    ("SELECT ARRAY_UNION_AGG(tags) FROM images", "snowflake",
     "the query cannot be translated from snowflake to DuckDB SQL faithfully "
     "(ARRAY_UNION_AGG is not supported in DuckDB); write that part in DuckDB SQL"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "dialect", "message"), DIALECT_CASES)
def test_odd_input_in_other_dialects_is_one_refusal(sql: str, dialect: str, message: str) -> None:
    """A Snowflake stage, T-SQL EXEC, syntax errors and constructs with no DuckDB form: one
    line each (the fixture's cases are all DuckDB SQL)."""
    assert refusal(sql, dialect=dialect) == message


def test_sqlglot_logs_nothing_while_guarding(caplog: pytest.LogCaptureFixture) -> None:
    """sqlglot's warnings ("Unsupported Execute syntax", Command fallbacks) would be a second
    stderr line next to the refusal."""
    caplog.set_level(logging.DEBUG, logger="sqlglot")
    for sql, dialect in [("EXEC proc", "tsql"), ("GET @s file:///tmp", "snowflake"),
                         ("CHECKPOINT", None), ("SELECT ARRAY_UNION_AGG(tags) FROM images",
                                                "snowflake")]:  # fmt: skip
        with pytest.raises(SqlRefused):
            run_guard(sql, dialect=dialect)
    assert caplog.records == []
    logging.getLogger("sqlglot").warning("still logged outside the guard")
    assert [r.getMessage() for r in caplog.records] == ["still logged outside the guard"]


DIALECTS = ["duckdb", "snowflake", "tsql", "bigquery", "postgres", "mysql", "spark", "oracle"]
PIECES = [
    "SELECT", "FROM", "WHERE", "images", "label", "(", ")", "[", "]", "{", "}", "'", '"', "`",
    "$", "@", "?", ":", "::", ";", ",", ".", "*", "/*", "*/", "--", "\n", "$$", "=", "->", "1",
    "0x", "E'", "CASE", "END", "JOIN", "WITH", "AS", "EXEC", "@stage", "$1", "UNNEST(tags)",
]  # fmt: skip
QUERIES = [
    "SELECT label, count(*) AS n FROM images GROUP BY label",
    "SELECT tag FROM images, UNNEST(tags) AS t(tag) WHERE label = 'cat' LIMIT 3",
    "WITH q AS (SELECT image_id FROM images) SELECT * FROM q",
    "SELECT [1, 2][1], {'a': 1}, 'x''y', \"label\" FROM images",
]


@st.composite
def garbled(draw: st.DrawFn) -> str:
    """A real query with pieces inserted, deleted or cut off, or random pieces and text."""
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=12)))
    text = draw(st.sampled_from(QUERIES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "cut"]))
        if edit == "insert":
            text = text[:i] + draw(st.sampled_from(PIECES)) + text[i:]
        elif edit == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 6)) :]
        else:
            text = text[:i]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=garbled(), dialect=st.sampled_from(DIALECTS))
def test_garbled_sql_is_refused_in_one_line(sql: str, dialect: str) -> None:
    """Whatever sqlglot makes of it, the guard accepts it or raises SqlError with one line in
    the user's terms: no token or class reprs, no sqlglot bug passed on as such."""
    try:
        run_guard(sql, dialect=dialect)
    except SqlError as e:
        message = str(e)
        assert message and "\n" not in message and message == e.one_line()
        for internal in ("<Token", "<class", "TokenType.", "Traceback", "sqlglot cannot"):
            assert internal not in message, message


def test_odd_input_through_the_cli_is_one_stderr_line(tmp_path: Path) -> None:
    """The real `failstore` command: exit 1 and exactly one `error:` line on stderr."""
    store = make_store(tmp_path / "store")
    for sql, dialect, message in [DIALECT_CASES[0], DIALECT_CASES[3]]:
        cmd = [*failstore_command(), "--store", str(store.path), "sql", "--dialect", dialect, sql]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"error: {message}\n")


def test_duckdb_limits_are_one_line_with_a_fix_that_works(tmp_path: Path) -> None:
    """Past the guard, DuckDB's own messages advise `SET ...`, which the locked connection
    refuses: the message says what the user can do instead. (Engine messages, tested here
    with the other odd input.)"""
    import duckdb

    from failstore.queries.sql.session import run_sql

    store = make_store(tmp_path / "store")
    with pytest.raises(SqlError) as info:  # a flat but long expression: DuckDB's depth limit
        run_sql(store, "SELECT " + " + ".join(["width"] * 1500) + " AS x FROM images")
    assert str(info.value) == (
        "the query is nested too deeply for DuckDB (over 1,000 levels of operators); split "
        "the long expression into steps (WITH)"
    )
    assert run_sql(store, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 4}]
    from failstore.queries.sql.engine import query_failed

    oom = duckdb.OutOfMemoryException(
        "Out of Memory Error: failed to allocate data of size 16.0 MiB (34.9 MiB/47.6 MiB "
        "used)\n\nPossible solutions:\n* Reducing the number of threads (SET threads=X)\n"
        "* Increasing the memory limit (SET memory_limit='...GB')\n\nSee also https://duckdb.org"
    )
    assert str(query_failed(oom)) == (
        "query failed: Out of Memory Error: failed to allocate data of size 16.0 MiB (34.9 "
        "MiB/47.6 MiB used); aggregate it or add WHERE or LIMIT, or raise the memory limit "
        "(FAILSTORE_SQL_MEMORY, megabytes)"
    )
