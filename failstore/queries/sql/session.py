"""Read-only SQL over one store: every table, and every stored query (shipped and saved).

``SqlSession(store)`` is the SQL side's view of a store. It keeps one locked-down DuckDB
connection (tables are registered per query and unregistered after it), lists the stored
queries (built-in, analysis and saved ones) and saves / drops user queries in the store's
``saved_queries`` table. ``run_sql(store, query)`` is the one-call form; it reuses one session
per ``Store`` object.

Teardown: ``SqlSession.close()`` closes the session's DuckDB cursors and connection, and an
``atexit`` hook closes every session still open, so DuckDB is shut down while the interpreter
is whole, never by the garbage collection of interpreter finalization (issue 9, see
docs/reliability.md).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from failstore import config, schemas
from failstore.errors import InputError, SqlError, SqlRefused, StoreError
from failstore.queries.sql.builds import CacheBuilds
from failstore.queries.sql.engine import SqlEngine, locked_connection
from failstore.queries.sql.plans import Plans
from failstore.queries.sql.readcache import CACHE_DIR, ReadCache, enabled
from failstore.store import Store, equals, utcnow

if TYPE_CHECKING:
    from failstore.queries.sql.stored import StoredQuery

# The guard and the stored-query parser (sqlglot, ~150 ms to import) are imported where they
# are used: a query whose plan is remembered needs neither (failstore/queries/sql/plans.py).


def _explain_missing(name: str) -> str | None:
    """The message for a query that reads an analysis table before its first run."""
    from failstore.queries.framework import registry

    return registry.missing_table_message(name)


class SqlSession:
    """Guarded, read-only SQL over the tables and stored queries of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._con: Any = None  # the locked-down database connection
        self._local = threading.local()  # one cursor of it per thread
        self._cursors: weakref.WeakSet[Any] = weakref.WeakSet()  # every cursor, for close()
        self.cache = ReadCache(store.path) if enabled() else None
        self.plans = Plans(store.path / CACHE_DIR / "plans" if enabled() else None)
        self.builds = CacheBuilds(store)

    # ------------------------------------------------------------------ queries
    def stored_queries(self) -> dict[str, StoredQuery]:
        """Built-in, analysis and saved queries by name (saved ones last)."""
        from failstore.queries.sql.stored import StoredQuery, builtin_queries

        queries = builtin_queries()
        if self.store.has_table("saved_queries"):
            for row in self.store.read("saved_queries").to_pylist():
                q = StoredQuery.from_row(row)
                queries[q.name] = q
        return queries

    def execute(
        self,
        query: str,
        *,
        params: Mapping[str, str] | None = None,
        dialect: str | None = None,
        timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
    ) -> pa.Table:
        """Run one read-only query; returns Arrow."""
        engine = self.engine(timeout_s=timeout_s)
        return engine.execute(query, params=params, dialect=dialect)

    def engine(
        self,
        *,
        versions: Mapping[str, int] | None = None,
        timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
    ) -> SqlEngine:
        """An engine over this store's tables, each read at ``versions[name]`` when given (a
        consistent snapshot for a run of queries, e.g. a publish), else at its latest."""
        check_timeout(timeout_s)
        store = self.store
        names = store.table_names()
        pinned = dict(versions or {})
        # Every table read at one version, listed once: the Lance scan, the read-cache file and
        # the remembered plans all agree on it (and no table's metadata is opened for it).
        at = {n: pinned[n] if n in pinned else store.manifest_version(n) for n in names}
        cache = self.cache
        return SqlEngine(
            datasets={n: _opener(store, n, at[n]) for n in names},
            schemas=LazySchemas(names, lambda n: store.dataset(n, at[n]).schema),
            stored=self.stored_queries,
            timeout_s=timeout_s,
            connection=self._connection(),
            missing_hint=_explain_missing,
            cache=None if cache is None else (lambda n: _entry(cache, n, at.get(n))),
            plans=self.plans,
            # plans are keyed by version and manifest: a table created again restarts at 1
            plan_state={n: (at[n], _stamp(store, n, at[n])) for n in names},
            # tables read from Lance for want of a cache file: built meanwhile, for next time
            on_uncached=lambda tables: self.builds.request(tables, at),
            views=getattr(self._local, "views", None),  # set with the cursor, just above
        )

    def _connection(self) -> Any:
        """This thread's cursor of the session's connection: DuckDB connections are not safe
        to share between threads, cursors are (same database, same locked configuration)."""
        with _CREATE:
            if self._con is None:
                readable = [] if self.cache is None else [self.cache.root]
                self._con = locked_connection(readable)
                _open(self)
            con = getattr(self._local, "con", None)
            if con is None:
                con = self._local.con = self._con.cursor()
                self._local.views = {}  # a new cursor has no views yet
                self._cursors.add(con)
        return con

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Close the session's DuckDB cursors, then its connection (which stops DuckDB's
        threads). Idempotent; a later query opens a new connection. Called for every open
        session at interpreter exit, so DuckDB is never torn down by interpreter finalization."""
        self.builds.wait()  # a DuckDB copy running at interpreter exit could crash it
        with _CREATE:
            con, cursors = self._con, list(self._cursors)
            self._con, self._local, self._cursors = None, threading.local(), weakref.WeakSet()
            _OPEN.discard(self)
        for c in [*cursors, con]:
            if c is not None:
                with contextlib.suppress(Exception):  # closed already, or DuckDB failing
                    c.close()

    # ------------------------------------------------------------------ saved queries
    def save_query(self, query: StoredQuery, *, replace: bool = False) -> None:
        """Save a user query, after checking it against this store. Names are compared without
        case (SQL resolves them so); an existing saved query is replaced only with ``replace``."""
        store = self.store
        names = store.table_names()
        if query.name.lower() in {n.lower() for n in names}:
            raise SqlRefused(f"query name {query.name!r} is a table name; choose another name")
        stored = self.stored_queries()
        saved = {q.name.lower(): q.name for q in stored.values() if q.source == "store"}
        same = saved.get(query.name.lower())
        if same is not None and not replace:
            raise SqlRefused(
                f"a saved query {same!r} exists",
                hint="pass --replace to overwrite it, or choose another name",
            )
        if same is not None:
            stored.pop(same, None)
            if same != query.name:
                store.delete("saved_queries", equals("name", same))
        from failstore.queries.sql.guard import guard

        placeholders = {p.name: p.default or "NULL" for p in query.parameters}
        # Refuse before writing: the query must pass the guard against this store.
        guard(
            query.sql,
            tables={n: store.schema(n) for n in names},
            stored=stored,
            params=placeholders,
            missing_hint=_explain_missing,
        )
        row = query.to_row()
        row["saved_at"] = utcnow()
        store.upsert(
            "saved_queries",
            pa.Table.from_pylist([row], schema=schemas.SAVED_QUERIES_SCHEMA),
            schema=schemas.SAVED_QUERIES_SCHEMA,
        )

    def drop_query(self, name: str) -> None:
        saved = self.saved_query_names()
        if name not in saved:
            raise StoreError(
                f"no saved query '{name}'",
                hint=f"saved queries: {', '.join(saved) or '(none)'}; built-ins cannot be dropped",
            )
        self.store.delete("saved_queries", equals("name", name))

    def saved_query_names(self) -> list[str]:
        if not self.store.has_table("saved_queries"):
            return []
        return sorted(self.store.read("saved_queries", ["name"]).column("name").to_pylist())


def make_user_query(
    name: str,
    sql: str,
    description: str = "",
    parameters: Mapping[str, str | None] | None = None,
) -> StoredQuery:
    """A user query to save in the store, checked: a free name, literal defaults, one read-only
    query whose ``$placeholders`` are all declared."""
    from failstore.queries.sql.guard import check_shape, placeholder_names
    from failstore.queries.sql.stored import (
        NAME_RE,
        Param,
        StoredQuery,
        builtin_queries,
        check_literal,
        expand_templates,
    )

    if not NAME_RE.match(name):
        raise SqlRefused(
            f"bad query name {name!r}", hint="use letters, digits and underscores, e.g. my_query"
        )
    if name.lower() in reserved_table_names():
        raise SqlRefused(f"query name {name!r} is a table name; choose another name")
    if name.lower() in builtin_queries():
        raise SqlRefused(f"query name {name!r} is a built-in query; choose another name")
    params: list[Param] = []
    for key, default in (parameters or {}).items():
        if not NAME_RE.match(key):
            raise SqlRefused(f"bad parameter name {key!r}; use letters, digits and underscores")
        if default is not None:
            try:
                check_literal(default, f"default of parameter {key!r}")
            except InputError as e:
                raise SqlRefused(e.one_line()) from e
        params.append(Param(key, default, ""))
    body = sql.strip().rstrip(";").strip()
    tree = check_shape(expand_templates(body, None), None)
    declared = {p.name for p in params}
    undeclared = sorted(placeholder_names(tree) - declared)
    if undeclared:
        raise SqlRefused(
            f"query {name!r} uses undeclared parameter(s) {', '.join('$' + u for u in undeclared)}",
            hint="declare them with a default, e.g. --param NAME=VALUE",
        )
    return StoredQuery(name, description, tuple(params), body, "store")


def reserved_table_names() -> set[str]:
    """Names a saved query cannot take: the store's own tables and every analysis's result
    tables (registered by the analysis classes; they may not exist in this store yet)."""
    from failstore.queries.framework import registry

    return {*schemas.KEYS, *schemas.CORE_TABLES, *registry.result_tables()}


def _opener(store: Store, name: str, version: int | None = None) -> Callable[[], Any]:
    return lambda: store.dataset(name, version)


def _stamp(store: Store, name: str, version: int | None) -> str | None:
    return None if version is None else store.manifest_stamp(name, version)


def _entry(cache: ReadCache, name: str, version: int | None) -> Any:
    return None if version is None else cache.entry(name, version)


class LazySchemas(Mapping[str, pa.Schema]):
    """Table schemas read when first asked for: the guard looks up only the tables a query
    reads, and a remembered plan none."""

    def __init__(self, names: list[str], load: Callable[[str], pa.Schema]) -> None:
        self._names = names
        self._load = load
        self._loaded: dict[str, pa.Schema] = {}

    def __getitem__(self, name: str) -> pa.Schema:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_CREATE = threading.Lock()


def check_timeout(timeout_s: float) -> None:
    """A time limit is a positive, finite number of seconds (0, negative, nan and inf would
    switch it off or break the timer)."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise SqlError(
            f"the time limit must be a positive number of seconds, got {timeout_s!r}",
            hint="e.g. --timeout 30",
        )


# A Store's session lives on the Store (attribute ``_sql_session``): the Store and its session
# then live and die together (a cycle the garbage collector frees), so a Store that is gone
# takes its DuckDB connection and threads with it. A global map from Store to session would
# keep every Store alive: its value refers to its key.
_ATTR = "_sql_session"
_OPEN: weakref.WeakSet[SqlSession] = weakref.WeakSet()  # sessions with a DuckDB connection
_AT_EXIT: list[bool] = []  # the exit hook is registered once, with the first connection


def _open(found: SqlSession) -> None:
    """Note an open session (``_CREATE`` held); the first one registers the exit hook. Hooks
    run last-registered first, so this one runs before those of the libraries imported
    earlier (pyarrow, lance), while every module is still whole."""
    _OPEN.add(found)
    if not _AT_EXIT:
        atexit.register(close_sessions)
        _AT_EXIT.append(True)


def close_sessions() -> None:
    """Close every open session (the exit hook). Left to interpreter finalization, DuckDB's
    connections were destroyed while the modules were being torn down (seen with gdb), the
    teardown order suspected of the SIGABRT at exit in issue 9."""
    with _CREATE:
        sessions = list(_OPEN)
    for found in sessions:
        found.close()


def session(store: Store) -> SqlSession:
    """The store's SQL session (one per ``Store`` object, so its connection is reused)."""
    with _CREATE:
        found = getattr(store, _ATTR, None)
        if found is None:
            found = SqlSession(store)
            setattr(store, _ATTR, found)
        return found


def samples_matching(store: Store, model: str, where: str) -> pa.Array:
    """The image ids of ``model``'s rows of the stored query ``samples`` matching the SQL
    condition ``where`` (through the read-only guard, like any query)."""
    from failstore.store import literal

    q = f"SELECT image_id FROM samples WHERE model = {literal(model)} AND ({where})"
    return run_sql(store, q)["image_id"].combine_chunks()


def run_sql(
    store: Store,
    query: str,
    *,
    params: Mapping[str, str] | None = None,
    dialect: str | None = None,
    timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
) -> pa.Table:
    """Run one read-only query over ``store``'s tables and stored queries; returns Arrow."""
    return session(store).execute(query, params=params, dialect=dialect, timeout_s=timeout_s)
