"""``failstore publish``: the store's tables and stored query results into a PostgreSQL schema,
in one transaction.

A run pins every table's Lance version, plans its feeds (``feeds.catalog``), then, inside one
transaction holding an advisory lock on the schema (so two publishes queue):

1. reads the bookkeeping table ``failstore_publish`` (what the last publish wrote, from which
   versions, with which options);
2. streams every feed whose signature changed (its tables' versions, its SQL, its parameters or
   the options) through ADBC's bulk ingest (binary COPY) into a new table under a temporary
   name, invisible to readers until the commit;
3. swaps: drops the old table and renames the new one; drops what failstore published before
   and does not publish now; rewrites ``failstore_publish``; commits.

Readers therefore see the previous complete state or the new one; a dropped connection or a
killed process rolls everything back. The live tables are locked only during the swap.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from failstore.errors import ConfigError, FailstoreError, PublishError
from failstore.feeds import catalog
from failstore.feeds.catalog import Feed, QueryRequest, Skipped
from failstore.feeds.postgres import Target, connect, ident, mask, parse_url, server_reason
from failstore.store import Store

BOOK = "failstore_publish"
CONVENTIONS_VERSION = 1  # bump when feeds.columns changes what a published column holds
BOOK_DDL = """CREATE TABLE IF NOT EXISTS {schema}.{book} (
    name text PRIMARY KEY,
    kind text NOT NULL,
    source text NOT NULL,
    params text NOT NULL,
    sources text NOT NULL,
    signature text NOT NULL,
    rows bigint NOT NULL,
    left_out text[] NOT NULL,
    published_at timestamptz NOT NULL,
    store text NOT NULL,
    plan_key text NOT NULL,
    digest text NOT NULL
)"""


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Published:
    name: str
    kind: str
    rows: int
    seconds: float
    left_out: tuple[str, ...] = ()


@dataclass
class PublishSummary:
    schema: str
    where: str
    published: list[Published] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    action: str = "published"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "schema": self.schema,
            "where": self.where,
            "published": [vars(p) | {"left_out": list(p.left_out)} for p in self.published],
            "kept": self.kept,
            "dropped": self.dropped,
            "skipped": [vars(s) for s in self.skipped],
            "rows": sum(p.rows for p in self.published),
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        rows = sum(p.rows for p in self.published)
        counts = (
            f"({rows:,} rows; {len(self.kept)} unchanged, {len(self.dropped)} dropped, "
            f"{len(self.skipped)} skipped)"
        )
        total = len(self.published) + len(self.kept)
        if self.action == "exported":
            return (
                f"exported {len(self.published)} of {total} {counts} as {self.schema} "
                f"into {self.where} in {self.seconds:.1f} s"
            )
        return (
            f"published {len(self.published)} of {total} {counts} into schema {self.schema} "
            f"at {self.where} in {self.seconds:.1f} s"
        )


def signature(feed: Feed, with_vectors: bool) -> str:
    """What decides whether a feed must be copied again."""
    return json.dumps(
        {
            "sources": dict(sorted(feed.sources.items())),
            "digest": feed.digest,
            "params": feed.params,
            "with_vectors": with_vectors,
            "conventions": CONVENTIONS_VERSION,
        },
        sort_keys=True,
    )


def publish(
    store: Store,
    url: str,
    *,
    schema: str = "failstore",
    with_vectors: bool = False,
    requests: Sequence[QueryRequest] = (),
    full: bool = False,
    batch_rows: int = 65536,
    timeout_s: float = 3600.0,
    say: Callable[[str], None] | None = None,
) -> PublishSummary:
    """Publish ``store`` into ``schema`` of the PostgreSQL database at ``url`` (see module)."""
    from failstore.queries.sql.session import session

    if not catalog.NAME_RE.match(schema) or len(schema) > catalog.MAX_NAME:
        raise ConfigError(f"--schema {schema!r} is not a plain SQL name", hint="e.g. failstore")
    target = parse_url(url)
    started = time.perf_counter()
    versions = store.versions()
    engine = catalog.bounded(session(store).engine(versions=versions, timeout_s=timeout_s))
    catalog.check_requests(engine, requests)  # before connecting: a typo costs nothing
    summary = PublishSummary(schema=schema, where=target.where())
    con = connect(target)
    try:
        run = Run(store, engine, versions, requests, with_vectors, full, batch_rows, say)
        _transaction(con, run, summary)
    except FailstoreError:
        _abandon(con)
        raise
    except Exception as e:  # the driver's errors: server refusals, a dropped connection
        _abandon(con)
        raise PublishError(
            f"publishing to {target.where()} failed, nothing changed: {server_reason(e, url)}"
        ) from None
    con.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _abandon(con: Any) -> None:
    """Roll back and close; a connection that is gone was rolled back by the server."""
    with contextlib.suppress(Exception):
        con.rollback()
    with contextlib.suppress(Exception):
        con.close()


@dataclass
class Run:
    store: Store
    engine: Any
    versions: dict[str, int]
    requests: Sequence[QueryRequest]
    with_vectors: bool
    full: bool
    batch_rows: int
    say: Callable[[str], None] | None


def _transaction(con: Any, run: Run, summary: PublishSummary) -> None:
    s = ident(summary.schema)
    engine, with_vectors = run.engine, run.with_vectors
    cur = con.cursor()
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    cur.execute(f"SELECT pg_advisory_xact_lock(hashtext({literal('failstore:' + summary.schema)}))")
    cur.execute(BOOK_DDL.format(schema=s, book=ident(BOOK)))
    cur.execute(
        f"SELECT name, signature, rows, left_out, published_at, plan_key, sources, digest "
        f"FROM {s}.{ident(BOOK)}"
    )
    previous = {r[0]: r for r in cur.fetchall()}
    known = {r[0]: (r[5], json.loads(r[6]), r[7]) for r in previous.values() if r[5]}
    feeds, summary.skipped = catalog.plan(engine, run.versions, run.requests, known)
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {literal(summary.schema)} AND c.relkind IN ('r', 'v', 'm', 'p')"
    )
    existing = {r[0] for r in cur.fetchall()}
    names = {f.name for f in feeds}
    foreign = sorted((existing & names) - set(previous))
    if foreign:
        raise PublishError(
            f"schema {summary.schema} holds {', '.join(foreign)}, which failstore did not "
            "publish; nothing changed",
            hint="drop them or publish into another --schema",
        )
    now = datetime.now(timezone.utc)
    book: list[tuple[Feed, str, int, Sequence[str], datetime]] = []
    swaps: list[tuple[str, str]] = []
    for i, feed in enumerate(feeds):
        sig = signature(feed, with_vectors)
        old = previous.get(feed.name)
        if not run.full and old is not None and old[1] == sig and feed.name in existing:
            summary.kept.append(feed.name)
            book.append((feed, sig, old[2], old[3] or [], old[4]))
            continue
        t0 = time.perf_counter()
        tmp = f"_failstore_new_{i}"
        with catalog.stream(
            engine, feed, "postgresql", with_vectors=with_vectors, batch_rows=run.batch_rows
        ) as (rows, conv):
            n = cur.adbc_ingest(tmp, rows.reader(), mode="create", db_schema_name=summary.schema)
        n = int(n) if n is not None and n >= 0 else _count(cur, s, tmp)
        swaps.append((tmp, feed.name))
        done = Published(feed.name, feed.kind, n, time.perf_counter() - t0, conv.left_out)
        summary.published.append(done)
        book.append((feed, sig, n, list(conv.left_out), now))
        if run.say is not None:
            run.say(f"copied {feed.name} ({n:,} rows, {done.seconds:.1f} s)")
    stale = sorted(set(previous) - names)
    if swaps or stale or set(previous) != names:
        _swap_and_record(cur, s, swaps, stale, book, engine, run.store, summary)
    con.commit()


def _swap_and_record(
    cur: Any,
    s: str,
    swaps: list[tuple[str, str]],
    stale: list[str],
    book: list[tuple[Feed, str, int, Sequence[str], datetime]],
    engine: Any,
    store: Store,
    summary: PublishSummary,
) -> None:
    """The end of the transaction: new tables take their names, what is no longer published
    goes, every table gets a comment naming its source and versions, and the bookkeeping
    table lists the new state."""
    for tmp, name in swaps:
        cur.execute(f"DROP TABLE IF EXISTS {s}.{ident(name)}")
        cur.execute(f"ALTER TABLE {s}.{ident(tmp)} RENAME TO {ident(name)}")
    for name in stale:
        cur.execute(f"DROP TABLE IF EXISTS {s}.{ident(name)}")
        summary.dropped.append(name)
    swapped = {name for _, name in swaps}
    for feed, *_ in book:
        if feed.name not in swapped:
            continue  # kept: its comment stands
        query = engine.stored.get(feed.source) if feed.kind == "query" else None
        about = f"failstore {'stored query' if query else 'table'} {feed.source}"
        if query is not None and query.description:
            about += ": " + query.description
        versions = ", ".join(f"{t} v{v}" for t, v in sorted(feed.sources.items()))
        comment = literal(f"{about} ({versions})")
        cur.execute(f"COMMENT ON TABLE {s}.{ident(feed.name)} IS {comment}")
    cur.execute(f"DELETE FROM {s}.{ident(BOOK)}")
    if book:
        values = ", ".join(_book_row(*entry, store) for entry in book)
        cur.execute(f"INSERT INTO {s}.{ident(BOOK)} VALUES {values}")


def _count(cur: Any, s: str, table: str) -> int:
    cur.execute(f"SELECT count(*) FROM {s}.{ident(table)}")
    return int(cur.fetchone()[0])


def _book_row(
    feed: Feed, sig: str, rows: int, left_out: Sequence[str], at: datetime, store: Store
) -> str:
    arr = "ARRAY[" + ", ".join(literal(c) for c in left_out) + "]::text[]"
    return (
        "("
        + ", ".join(
            [
                literal(feed.name),
                literal(feed.kind),
                literal(feed.source),
                literal(json.dumps(dict(feed.params))),
                literal(json.dumps(dict(sorted(feed.sources.items())))),
                literal(sig),
                str(int(rows)),
                arr,
                literal(at.isoformat()) + "::timestamptz",
                literal(str(store.path)),
                literal(feed.key),
                literal(feed.digest),
            ]
        )
        + ")"
    )


__all__ = ["BOOK", "PublishSummary", "Target", "mask", "publish"]
