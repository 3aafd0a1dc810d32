"""What the pages and the API read: guarded SQL over the store, with missing analyses turned
into a message instead of an error, and the SQL that picks a slice's or a leaf's images."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from failstore.errors import FailstoreError, InputError
from failstore.queries.sql.session import session
from failstore.serve import cache
from failstore.store import Store

PAGE_TIMEOUT_S = 20.0
MAX_QUERY_CHARS = 20_000
ID_RE = re.compile(r"^[0-9a-f]{64}$")
COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GROUPINGS = ("label", "prediction")


@dataclass
class Result:
    """Rows of one query, or why there are none (an analysis not run yet, a bad parameter)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    missing: str | None = None

    @property
    def ok(self) -> bool:
        return self.missing is None


def run(store: Store, sql: str, params: Mapping[str, str] | None = None) -> pa.Table:
    """One guarded read-only query (raises SqlError and friends), from the result cache when
    the store has not changed since it last ran."""
    p = dict(params or {})
    versions = store.versions()
    return cache.cache_for(store).get(
        ("run", sql, _frozen(p), _frozen(versions)),
        lambda: (
            session(store)
            .engine(versions=versions, timeout_s=PAGE_TIMEOUT_S)
            .execute(sql, params=p)
        ),
    )


def _frozen(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def check_body(sql: str) -> str:
    """The query without a trailing semicolon; InputError when empty or too long."""
    body = sql.strip().rstrip(";").strip()
    if not body:
        raise InputError("empty query", hint="pass q=SELECT ...")
    if len(body) > MAX_QUERY_CHARS:
        raise InputError(f"query longer than {MAX_QUERY_CHARS} characters")
    return body


def paged_query(sql: str, limit: int, offset: int) -> str:
    """``sql`` wrapped in a page (one more row than ``limit``, to tell whether there is more);
    the guard checks the whole statement (one read-only query)."""
    return f"SELECT * FROM (\n{check_body(sql)}\n) AS _page LIMIT {limit + 1} OFFSET {offset}"


def page(
    store: Store,
    sql: str,
    params: Mapping[str, str] | None,
    limit: int,
    offset: int = 0,
    timeout_s: float = PAGE_TIMEOUT_S,
    versions: Mapping[str, int] | None = None,
) -> pa.Table:
    """At most ``limit + 1`` rows of a query from ``offset``: the query is guarded on its own
    first (so a refusal names the user's query, not the page around it), then run as a page,
    at ``versions`` of the tables when given (the API's cache key), else at their latest."""
    p = dict(params or {})
    engine = session(store).engine(versions=versions, timeout_s=timeout_s)
    engine.guard(check_body(sql), params=p)
    return engine.execute(paged_query(sql, limit, offset), params=p)


def rows(store: Store, sql: str, params: Mapping[str, str] | None = None) -> Result:
    """Rows of a query, or the one-line reason it could not run (e.g. "no `barlow` run yet:
    run `failstore barlow`")."""
    try:
        table = run(store, sql, params)
    except FailstoreError as e:
        return Result(missing=e.one_line())
    return Result(table.to_pylist(), table.column_names)


def stored(store: Store, name: str, params: Mapping[str, str] | None = None) -> Result:
    """Rows of a stored query; a message when it does not exist or its analysis has not run."""
    if name not in stored_queries(store):
        return Result(missing=f"no stored query `{name}` in this failstore")
    return rows(store, f'SELECT * FROM "{name}"', params)


def stored_queries(store: Store) -> dict[str, Any]:
    """The store's stored queries by name, read again only when ``saved_queries`` changes."""
    version = store.versions(["saved_queries"]).get("saved_queries")
    return cache.cache_for(store).get(  # type: ignore[no-any-return]
        ("stored_queries", version), lambda: session(store).stored_queries()
    )


def check_id(image_id: str) -> str:
    """A 64-hex image id, or InputError (so ids never become paths or SQL text)."""
    if not ID_RE.match(image_id):
        raise InputError(f"bad image id {image_id[:80]!r}", hint="ids are 64 hex digits")
    return image_id


@dataclass(frozen=True)
class SliceKey:
    """One slice of the latest `failstore slices` run, as its row names it."""

    model: str
    cls: str
    grouping: str
    tag_source: str
    tags: tuple[str, ...]

    def params(self) -> dict[str, str]:
        return {"model": self.model, "class": self.cls, "grouping": self.grouping,
                "tag_source": self.tag_source, "tags": ",".join(self.tags)}  # fmt: skip


def slice_key(model: str, cls: str, grouping: str, tag_source: str, tags: str) -> SliceKey:
    if grouping not in GROUPINGS:
        raise InputError(f"bad grouping {grouping!r}", hint="'label' or 'prediction'")
    parts = tuple(sorted(t for t in tags.split(",") if t))
    if not parts:
        raise InputError("a slice needs tags", hint="e.g. tags=snow,small")
    return SliceKey(model, cls, grouping, tag_source, parts)


def slice_sql(key: SliceKey) -> tuple[str, dict[str, str]]:
    """The SQL (over the stored query ``samples``) of the images of a slice: images of its class
    under its grouping that carry every tag of its tag source (as `failstore explain --slice`
    finds them). Values are parameters; column names are checked identifiers."""
    params = {"model": key.model, "class": key.cls}
    conds = ["s.model = $model", f's."{key.grouping}" = $class']
    if key.tag_source == "tags":
        names = []
        for i, tag in enumerate(key.tags):
            params[f"t{i}"] = tag
            names.append(f"$t{i}")
        conds.append(f"list_has_all(s.tags, [{', '.join(names)}])")
    else:
        columns = key.tag_source.split(",")
        for i, tag in enumerate(key.tags):
            col, sep, value = tag.partition("=")
            if not sep or col not in columns or not COLUMN_RE.match(col):
                raise InputError(f"tag {tag!r} is not COLUMN=value of {key.tag_source}")
            params[f"t{i}"] = value
            conds.append(f's."{col}" IS NOT NULL AND CAST(s."{col}" AS VARCHAR) = $t{i}')
    sql = (
        "SELECT s.image_id, s.label, s.prediction, s.confidence, s.correct, s.tags "
        f"FROM samples AS s WHERE {' AND '.join(conds)} ORDER BY s.image_id"
    )
    return sql, params


def leaf_sql(model: str, cls: str, leaf: str) -> tuple[str, dict[str, str]]:
    """The SQL of the images of one Barlow leaf (stored query ``barlow_members``)."""
    if not re.match(r"^-?\d{1,9}$", leaf):
        raise InputError(f"bad leaf {leaf[:40]!r}", hint="a leaf is its node id, an integer")
    sql = (
        "SELECT s.image_id, s.label, s.prediction, s.confidence, s.correct, s.tags "
        "FROM barlow_members AS b JOIN samples AS s "
        "ON s.image_id = b.image_id AND s.model = b.model ORDER BY s.image_id"
    )
    return sql, {"model": model, "class": cls, "leaf": leaf}
