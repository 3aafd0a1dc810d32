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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import duckdb
import pyarrow as pa

from failstore import config
from failstore.errors import SqlError, SqlRefused, SqlTimeout, SqlTooLarge
from failstore.queries.sql.guard import GuardedQuery, guard_query
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


def locked_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection without external access, its configuration locked."""
    con = duckdb.connect(config={**DUCKDB_CONFIG, "memory_limit": config.sql_memory_limit()})
    con.execute("SET lock_configuration = true")
    return con


class SqlEngine:
    """Runs guarded, read-only SQL over the given Lance datasets."""

    def __init__(
        self,
        datasets: Mapping[str, Callable[[], Any]],
        schemas: Mapping[str, pa.Schema],
        stored: Mapping[str, StoredQuery],
        timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
        connection: duckdb.DuckDBPyConnection | None = None,
        missing_hint: Callable[[str], str | None] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """``connection``: a locked-down connection from ``locked_connection()`` to reuse (a
        fresh one per query costs ~50 ms); tables are unregistered after every query.
        ``missing_hint(table)``: the message for a table that does not exist yet, or None."""
        self.datasets = dict(datasets)
        self.schemas = dict(schemas)
        self.stored = dict(stored)
        self.timeout_s = timeout_s
        self.connection = connection
        self.missing_hint = missing_hint
        self.max_rows = config.sql_max_rows() if max_rows is None else max_rows
        self.max_bytes = config.sql_max_bytes() if max_bytes is None else max_bytes

    def guard(
        self, sql: str, *, params: Mapping[str, str] | None = None, dialect: str | None = None
    ) -> str:
        """The DuckDB SQL ``execute`` would run (raises SqlRefused like ``execute``)."""
        return self._guarded(sql, params, dialect).sql

    def execute(
        self, sql: str, *, params: Mapping[str, str] | None = None, dialect: str | None = None
    ) -> pa.Table:
        query = self._guarded(sql, params, dialect)
        with self._connection_for(query) as con, self._time_limit(con) as timed_out:
            try:
                return self._collect(con.sql(query.sql).to_arrow_reader(RESULT_BATCH_ROWS))
            except duckdb.Error as e:
                if timed_out.is_set() or isinstance(e, duckdb.InterruptException):
                    raise timeout_error(
                        self.timeout_s, "narrow it with WHERE or LIMIT, or raise the time limit"
                    ) from e
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
        with self._connection_for(query) as con, self._time_limit(con) as timed_out:
            try:
                reader = con.sql(query.sql).to_arrow_reader(batch_rows)
            except duckdb.Error as e:
                raise query_failed(e) from e
            try:
                yield ResultStream(reader, timed_out, self.timeout_s)
            finally:
                reader.close()

    @contextlib.contextmanager
    def _connection_for(self, query: GuardedQuery) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the query's datasets registered, its SQL checked to be one
        SELECT; the datasets unregistered (a connection of our own closed) afterwards."""
        con = self.connection or locked_connection()
        registered: list[str] = []
        try:
            for name in sorted(query.tables):
                if name not in self.datasets:
                    raise SqlRefused(f"table {name!r} has no data in this store yet")
                con.register(name, self.datasets[name]())
                registered.append(name)
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
        return guard_query(
            sql,
            tables=self.schemas,
            stored=self.stored,
            dialect=dialect,
            params=params,
            missing_hint=self.missing_hint,
        )

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
