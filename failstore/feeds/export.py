"""``failstore export DIR``: every table and stored query result to files, for tools that read
files rather than PostgreSQL.

* ``parquet`` (default): ``DIR/<name>.parquet`` per table and stored query, written batch by
  batch.
* ``csv``: ``DIR/<name>.csv`` (header row; nested values as JSON text).
* ``duckdb``: one database file ``DIR/failstore.duckdb`` holding the tables, and each stored
  query as a view over them where its SQL runs on the exported tables (else as a table of its
  result).

Every file is written under a temporary name and renamed into place, so a reader never opens a
half-written file. ``DIR/failstore_export.json`` lists what was written, from which table
versions; files a previous export listed and this one does not write are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from failstore.errors import ConfigError
from failstore.feeds import catalog
from failstore.feeds.catalog import Feed, QueryRequest
from failstore.feeds.columns import quote
from failstore.feeds.publish import Published, PublishSummary
from failstore.store import Store

FORMATS = ("parquet", "csv", "duckdb")
MANIFEST = "failstore_export.json"
DUCKDB_FILE = "failstore.duckdb"


def export(
    store: Store,
    folder: str | Path,
    *,
    fmt: str = "parquet",
    with_vectors: bool = False,
    requests: Sequence[QueryRequest] = (),
    batch_rows: int = 65536,
    timeout_s: float = 3600.0,
    say: Callable[[str], None] | None = None,
) -> PublishSummary:
    """Write ``store``'s tables and stored query results into ``folder`` (see module)."""
    from failstore.queries.sql.session import session

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder", hint="give a folder to export into")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    versions = store.versions()
    engine = catalog.bounded(session(store).engine(versions=versions, timeout_s=timeout_s))
    feeds, skipped = catalog.plan(engine, versions, requests)
    summary = PublishSummary(fmt, str(out), skipped=skipped, action="exported")
    written: list[str]
    if fmt == "duckdb":
        written = [DUCKDB_FILE]
        _duckdb_file(engine, feeds, out / DUCKDB_FILE, summary, with_vectors, batch_rows, say)
    else:
        written = []
        for feed in feeds:
            path = out / f"{feed.name}.{fmt}"
            t0 = time.perf_counter()
            with (
                catalog.stream(
                    engine, feed, fmt, with_vectors=with_vectors, batch_rows=batch_rows
                ) as (rows, conv),
                _replacing(path) as tmp,
            ):
                n = _write_file(rows, tmp, fmt)
            written.append(path.name)
            done = Published(feed.name, feed.kind, n, time.perf_counter() - t0, conv.left_out)
            summary.published.append(done)
            if say is not None:
                say(f"wrote {path.name} ({n:,} rows, {done.seconds:.1f} s)")
    summary.dropped = _tidy(out, written)
    _write_manifest(out, store, fmt, feeds, summary, written)
    summary.seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_file(rows: Any, path: Path, fmt: str) -> int:
    n = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, rows.schema) as w:
            for batch in rows:
                w.write_batch(batch)
                n += batch.num_rows
        return n
    import pyarrow.csv as pacsv

    with pacsv.CSVWriter(path, rows.schema) as w:
        for batch in rows:
            w.write_batch(batch)
            n += batch.num_rows
    return n


def _duckdb_file(
    engine: Any,
    feeds: list[Feed],
    path: Path,
    summary: PublishSummary,
    with_vectors: bool,
    batch_rows: int,
    say: Callable[[str], None] | None,
) -> None:
    """Tables first, then each stored query as a view that binds and runs on the exported
    tables, else as a table of its result. A fresh file, renamed into place at the end."""
    import duckdb

    with _replacing(path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            tables = [f for f in feeds if f.kind == "table"]
            queries = [f for f in feeds if f.kind == "query"]
            for feed in tables:
                _copy(con, engine, feed, summary, with_vectors, batch_rows, say)
            for feed in queries:
                sql = engine.guard(feed.sql, params=dict(feed.params))  # the view's body
                t0 = time.perf_counter()
                try:
                    con.execute(f"CREATE VIEW {quote(feed.name)} AS {sql}")
                    n = con.execute(f"SELECT count(*) FROM {quote(feed.name)}").fetchall()[0][0]
                except duckdb.Error:
                    con.execute(f"DROP VIEW IF EXISTS {quote(feed.name)}")
                    _copy(con, engine, feed, summary, with_vectors, batch_rows, say)
                    continue
                done = Published(feed.name, "view", int(n), time.perf_counter() - t0)
                summary.published.append(done)
                if say is not None:
                    say(f"made view {feed.name} ({n:,} rows)")
            con.execute("CHECKPOINT")
        finally:
            con.close()


def _copy(
    con: Any,
    engine: Any,
    feed: Feed,
    summary: PublishSummary,
    with_vectors: bool,
    batch_rows: int,
    say: Callable[[str], None] | None,
) -> None:
    t0 = time.perf_counter()
    with catalog.stream(
        engine, feed, "duckdb", with_vectors=with_vectors, batch_rows=batch_rows
    ) as (rows, conv):
        reader = rows.reader()
        con.register("_failstore_rows", reader)
        con.execute(f"CREATE TABLE {quote(feed.name)} AS SELECT * FROM _failstore_rows")
        con.unregister("_failstore_rows")
    n = con.execute(f"SELECT count(*) FROM {quote(feed.name)}").fetchall()[0][0]
    done = Published(feed.name, feed.kind, int(n), time.perf_counter() - t0, conv.left_out)
    summary.published.append(done)
    if say is not None:
        say(f"copied {feed.name} ({n:,} rows, {done.seconds:.1f} s)")


def _tidy(out: Path, written: list[str]) -> list[str]:
    """Remove the files the previous export listed that this one did not write."""
    try:
        before = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    gone = []
    for name in sorted(set(before) - set(written)):
        target = out / Path(name).name  # never outside the folder
        if target.is_file():
            target.unlink()
            gone.append(name)
    return gone


def _write_manifest(
    out: Path,
    store: Store,
    fmt: str,
    feeds: list[Feed],
    summary: PublishSummary,
    written: list[str],
) -> None:
    body = {
        "store": str(store.path),
        "format": fmt,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "files": written,
        "objects": [
            {
                "name": f.name,
                "kind": f.kind,
                "source": f.source,
                "params": dict(f.params),
                "sources": dict(sorted(f.sources.items())),
            }
            for f in feeds
        ],
        "summary": summary.to_json(),
    }
    with _replacing(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
