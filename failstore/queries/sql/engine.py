"""Read-only SQL over the store's Lance tables, run by an in-process, locked-down DuckDB.

Each ``execute`` guards the query (``failstore.queries.sql.guard``), uses a DuckDB connection
with external access disabled and its configuration locked (the session's, reused across
queries, or a fresh one), registers only the Lance datasets the query reads (DuckDB scans them
with projection and filter pushdown; they are unregistered afterwards), and runs the query
under a time limit (``config.DEFAULT_SQL_TIMEOUT_S`` unless given).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from failstore import config
from failstore.errors import SqlError, SqlRefused, SqlTimeout, SqlTooLarge
from failstore.queries.sql.plans import GuardedQuery, Plans, plan_key

if TYPE_CHECKING:
    from failstore.queries.sql.readcache import CacheEntry
    from failstore.queries.sql.stored import StoredQuery

RESULT_BATCH_ROWS = 1 << 20

DUCKDB_CONFIG = {
    "enable_external_access": False,
    "python_enable_replacements": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
}


def duckdb_message(error: BaseException) -> str:
    """DuckDB's multi-line error -> one line, without the echoed SQL and caret lines, and
    without its advice to change settings (``SET ...``: the configuration is locked)."""
    kept = []
    for line in (ln.strip() for ln in str(error).splitlines()):
        if line.startswith(("Possible solutions", "See also")):
            break
        if line and not line.startswith("LINE ") and set(line) != {"^"}:
            kept.append(line)
    return " ".join(kept) or type(error).__name__


def query_failed(error: BaseException) -> SqlError:
    """The one-line ``SqlError`` for a DuckDB error, with a fix the user can apply."""
    text = duckdb_message(error)
    if "max_expression_depth" in text:
        return SqlError(
            "the query is nested too deeply for DuckDB (over 1,000 levels of operators)",
            hint="split the long expression into steps (WITH)",
        )
    if text.startswith("Out of Memory Error"):
        return SqlError(
            f"query failed: {text}",
            hint="aggregate it or add WHERE or LIMIT, or raise the memory limit "
            f"({config.SQL_MEMORY_ENV}, megabytes)",
        )
    return SqlError(f"query failed: {text}")


def locked_connection(readable: Sequence[Path] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection without external access, its configuration locked.
    ``readable``: directories it may still read (the store's read cache): DuckDB's
    ``allowed_directories``, set before external access is switched off. Statements that
    would write there (COPY, ATTACH) never reach DuckDB: the guard runs only single SELECTs."""
    settings: dict[str, Any] = {**DUCKDB_CONFIG, "memory_limit": config.sql_memory_limit()}
    if readable:
        settings.pop("enable_external_access")
    con = duckdb.connect(config=settings)
    if readable:
        folders = ", ".join(_literal(str(p).rstrip("/") + "/") for p in readable)
        con.execute(f"SET allowed_directories = [{folders}]")
        con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _CacheFileGone(Exception):
    """A read-cache file was removed between the check and the read: run on Lance."""


class SqlEngine:
    """Runs guarded, read-only SQL over the given Lance datasets."""

    def __init__(
        self,
        datasets: Mapping[str, Callable[[], Any]],
        schemas: Mapping[str, pa.Schema],
        stored: Mapping[str, StoredQuery] | Callable[[], Mapping[str, StoredQuery]],
        timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
        connection: duckdb.DuckDBPyConnection | None = None,
        missing_hint: Callable[[str], str | None] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        cache: Callable[[str], CacheEntry | None] | None = None,
        plans: Plans | None = None,
        plan_state: Mapping[str, object] | None = None,
        on_uncached: Callable[[set[str]], None] | None = None,
        views: dict[str, str] | None = None,
    ) -> None:
        """``connection``: a locked-down connection from ``locked_connection()`` to reuse (a
        fresh one per query costs ~50 ms); tables are unregistered after every query.
        ``schemas`` may load lazily (only the tables a query reads are looked up), ``stored``
        may be a function called at the first guard. ``missing_hint(table)``: the message for a
        table that does not exist yet, or None. ``cache(table)``: the table's read-cache entry
        at the version ``datasets`` read, or None (the connection must be allowed to read its
        files); ``on_uncached(tables)`` is told of the tables a query read from Lance for want of
        a cache file. ``plans`` with ``plan_state`` (every table's version and manifest stamp):
        remembered guard outputs, keyed by that state. ``views``: the read-cache
        views kept on ``connection`` between queries (table -> file; binding a view reads the
        file's metadata, ~3 ms), owned by whoever owns the connection."""
        self.datasets = dict(datasets)
        self.schemas = schemas
        self._stored = stored
        self.timeout_s = timeout_s
        self.connection = connection
        self.missing_hint = missing_hint
        self.max_rows = config.sql_max_rows() if max_rows is None else max_rows
        self.max_bytes = config.sql_max_bytes() if max_bytes is None else max_bytes
        self.cache = cache
        self.plans = plans
        self.plan_state = plan_state
        self.sources: dict[str, str] = {}  # table -> "cache" | "lance", for the last query
        self.uncached: set[str] = set()  # tables read from Lance for want of a cache file
        self.on_uncached = on_uncached
        self.kept_views = views if connection is not None else None

    @property
    def stored(self) -> Mapping[str, StoredQuery]:
        if callable(self._stored):
            self._stored = dict(self._stored())
        return self._stored

    def guard(
        self, sql: str, *, params: Mapping[str, str] | None = None, dialect: str | None = None
    ) -> str:
        """The DuckDB SQL ``execute`` would run (raises SqlRefused like ``execute``)."""
        return self._guarded(sql, params, dialect).sql

    def execute(
        self, sql: str, *, params: Mapping[str, str] | None = None, dialect: str | None = None
    ) -> pa.Table:
        query = self._guarded(sql, params, dialect)
        try:
            return self._execute(query, use_cache=True)
        except _CacheFileGone:
            return self._execute(query, use_cache=False)

    def _execute(self, query: GuardedQuery, *, use_cache: bool) -> pa.Table:
        with self._connection_for(query, use_cache) as con, self._time_limit(con) as timed_out:
            try:
                return self._collect(con.sql(query.sql).to_arrow_reader(RESULT_BATCH_ROWS))
            except duckdb.Error as e:
                if timed_out.is_set() or isinstance(e, duckdb.InterruptException):
                    raise timeout_error(
                        self.timeout_s, "narrow it with WHERE or LIMIT, or raise the time limit"
                    ) from e
                if isinstance(e, duckdb.IOException) and "cache" in self.sources.values():
                    raise _CacheFileGone() from e
                raise query_failed(e) from e

    def guarded(self, sql: str, *, params: Mapping[str, str] | None = None) -> GuardedQuery:
        """The guarded query: the DuckDB SQL ``execute`` would run and the store tables it
        reads, stored queries expanded (raises SqlRefused like ``execute``)."""
        return self._guarded(sql, params, None)

    @contextlib.contextmanager
    def stream(
        self,
        sql: str,
        *,
        params: Mapping[str, str] | None = None,
        batch_rows: int = RESULT_BATCH_ROWS,
    ) -> Iterator[ResultStream]:
        """The result of one guarded query as a stream of batches of at most ``batch_rows``
        rows, with no row or byte cap: memory stays bounded by the batch (and by DuckDB's own
        memory limit), for callers that copy whole results elsewhere (publish, export). The
        time limit covers the whole stream; the datasets stay registered until the block
        ends."""
        query = self._guarded(sql, params, None)
        with self._connection_for(query, True) as con, self._time_limit(con) as timed_out:
            try:
                reader = con.sql(query.sql).to_arrow_reader(batch_rows)
            except duckdb.Error as e:
                raise query_failed(e) from e
            try:
                yield ResultStream(reader, timed_out, self.timeout_s)
            finally:
                reader.close()

    @contextlib.contextmanager
    def _connection_for(
        self, query: GuardedQuery, use_cache: bool
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the query's tables in place, its SQL checked to be one SELECT:
        each table a view of its read-cache file when one serves the query, else its Lance
        dataset registered; all removed (a connection of our own closed) afterwards."""
        con = self.connection or locked_connection()
        registered: list[str] = []
        views: list[str] = []  # views to drop afterwards (those not kept)
        kept = self.kept_views
        self.sources = {}
        try:
            for name in sorted(query.tables):
                if name not in self.datasets:
                    raise SqlRefused(f"table {name!r} has no data in this store yet")
                entry = self.cache(name) if use_cache and self.cache is not None else None
                if entry is not None and entry.serves(query.columns):
                    path = str(entry.path)
                    if kept is not None and kept.get(name) == path:
                        self.sources[name] = "cache"
                        continue
                    try:  # binding the view opens the file: it may have been pruned since
                        con.execute(
                            f"CREATE OR REPLACE TEMP VIEW {_identifier(name)} AS "
                            f"SELECT * FROM read_parquet({_literal(path)})"
                        )
                    except duckdb.IOException:
                        entry = None
                    else:
                        if kept is not None:
                            kept[name] = path
                        else:
                            views.append(name)
                        self.sources[name] = "cache"
                        continue
                if entry is None and use_cache and self.cache is not None:
                    self.uncached.add(name)
                if kept is not None and kept.pop(name, None) is not None:
                    con.execute(f"DROP VIEW IF EXISTS {_identifier(name)}")
                con.register(name, self.datasets[name]())
                registered.append(name)
                self.sources[name] = "lance"
            try:
                statements = con.extract_statements(query.sql)
            except duckdb.Error as e:
                raise query_failed(e) from e
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise SqlRefused("the guarded query is not a single SELECT; refusing to run it")
            yield con
        finally:
            if self.connection is None:
                con.close()
            else:
                for name in registered:
                    con.unregister(name)
                for name in views:
                    con.execute(f"DROP VIEW IF EXISTS {_identifier(name)}")
            if self.uncached and self.on_uncached is not None:
                self.on_uncached(set(self.uncached))

    @contextlib.contextmanager
    def _time_limit(self, con: duckdb.DuckDBPyConnection) -> Iterator[threading.Event]:
        """Interrupt ``con`` after ``timeout_s``; the event says the limit was reached."""
        timed_out = threading.Event()

        def interrupt() -> None:
            timed_out.set()
            con.interrupt()

        timer = threading.Timer(self.timeout_s, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield timed_out
        finally:
            timer.cancel()

    def _guarded(
        self, sql: str, params: Mapping[str, str] | None, dialect: str | None
    ) -> GuardedQuery:
        """The guard's output, remembered in ``plans`` under the store's versions."""
        key = None
        if self.plans is not None and self.plan_state is not None:
            key = plan_key(sql, dialect, params, self.plan_state)
            found = self.plans.get(key)
            if found is not None:
                return found
        from failstore.queries.sql.guard import guard_query  # sqlglot: only when guarding

        query = guard_query(
            sql,
            tables=self.schemas,
            stored=self.stored,
            dialect=dialect,
            params=params,
            missing_hint=self.missing_hint,
        )
        if key is not None and self.plans is not None:
            self.plans.put(key, query)
        return query

    def _collect(self, reader: pa.RecordBatchReader) -> pa.Table:
        """The result, batch by batch, refused once it passes the row or byte cap (so a
        ``SELECT * FROM range(1000000000)`` stops early instead of filling the memory)."""
        batches, rows, size = [], 0, 0
        try:
            for batch in reader:
                rows += batch.num_rows
                size += batch.nbytes
                if rows > self.max_rows or size > self.max_bytes:
                    raise SqlTooLarge(
                        f"the result has more than {self.max_rows:,} rows or "
                        f"{self.max_bytes / 2**20:,.0f} MiB",
                        hint="aggregate it, add WHERE or LIMIT, or raise the limit "
                        f"({config.SQL_MAX_ROWS_ENV} / {config.SQL_MAX_MB_ENV})",
                    )
                batches.append(batch)
        finally:
            reader.close()
        return pa.Table.from_batches(batches, schema=reader.schema)


class ResultStream:
    """A result stream whose DuckDB errors (a timeout included) surface as failstore's SQL
    errors while it is read."""

    def __init__(self, reader: pa.RecordBatchReader, timed_out: threading.Event, limit: float):
        self._reader = reader
        self._timed_out = timed_out
        self._limit = limit
        self.schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (duckdb.Error, pa.ArrowException) as e:
                if self._timed_out.is_set() or isinstance(e, duckdb.InterruptException):
                    raise timeout_error(self._limit, "raise the time limit") from e
                raise query_failed(e) from e
            yield batch

    def reader(self) -> pa.RecordBatchReader:
        """The stream as a pyarrow reader (for consumers that take one, e.g. ADBC's ingest)."""
        return pa.RecordBatchReader.from_batches(self.schema, iter(self))


def timeout_error(limit: float, hint: str) -> SqlTimeout:
    return SqlTimeout(f"query ran longer than {limit:g} s", hint=hint)
