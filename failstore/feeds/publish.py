"""``failstore publish``: the store's tables and stored query results into a PostgreSQL schema;
readers see the previous complete state or the new one, never a mix.

A run pins every table's Lance version, plans its feeds (``feeds.catalog``), takes a session
advisory lock on the schema (so two publishes queue), then:

1. **stage** (transaction 1): reads the bookkeeping table ``failstore_publish`` (what the last
   publish wrote, from which versions, with which options), drops the staging tables a killed
   publish left, and streams every feed whose signature changed (its tables' versions, its SQL,
   its parameters or the options) through ADBC's bulk ingest (binary COPY) into a staging table
   ``_failstore_new_<i>``; commits. No reader reads staging tables; the live ones are untouched.
2. **wait** (bounded): until no other session holds a snapshot older than that commit, so a
   reader queued behind the switch sees the staged rows (see below).
3. **switch** (transaction 2): drops each old table and renames its staging table in its place,
   drops what failstore published before and does not publish now, rewrites
   ``failstore_publish``, commits.

Why two transactions: PostgreSQL's DROP/RENAME is not MVCC-safe. A reader whose statement
queues behind the switch's lock took its snapshot before the switch committed; had the rows been
written in the switching transaction, that reader would find the new table empty (measured: a
reader saw ``predictions`` with 0 rows). Rows committed before the switch, and a wait until
every open snapshot sees them, make it read the new state whole.

A dropped connection or a killed process at any point leaves the live tables and the
bookkeeping as they were; a kill after step 1 leaves staging tables, dropped by the next
publish. The live tables are locked only during the switch.
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


STAGING = "_failstore_new_"
SNAPSHOT_WAIT_S = 5.0  # longest wait for older snapshots before the switch (module docstring)


def _transaction(con: Any, run: Run, summary: PublishSummary) -> None:
    """Stage, wait, switch (module docstring)."""
    s = ident(summary.schema)
    cur = con.cursor()
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    con.commit()
    # session-level: held across the two transactions, released when the connection closes
    cur.execute(f"SELECT pg_advisory_lock(hashtext({literal('failstore:' + summary.schema)}))")
    cur.fetchall()
    staged = _stage(con, cur, run, summary)
    if staged is None:
        con.commit()
        return
    swaps, stale, book, xid = staged
    con.commit()
    _wait_for_older_snapshots(cur, xid, SNAPSHOT_WAIT_S)
    _swap_and_record(cur, s, swaps, stale, book, run.engine, run.store, summary)
    con.commit()


Book = list[tuple[Feed, str, int, Sequence[str], datetime]]


def _stage(
    con: Any, cur: Any, run: Run, summary: PublishSummary
) -> tuple[list[tuple[str, str]], list[str], Book, str] | None:
    """Transaction 1: copy every changed feed into a staging table. None: nothing to switch."""
    s = ident(summary.schema)
    engine, with_vectors = run.engine, run.with_vectors
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
    for left in sorted(n for n in existing if n.startswith(STAGING)):
        cur.execute(f"DROP TABLE IF EXISTS {s}.{ident(left)}")  # a killed publish's
    names = {f.name for f in feeds}
    foreign = sorted((existing & names) - set(previous))
    if foreign:
        raise PublishError(
            f"schema {summary.schema} holds {', '.join(foreign)}, which failstore did not "
            "publish; nothing changed",
            hint="drop them or publish into another --schema",
        )
    now = datetime.now(timezone.utc)
    book: Book = []
    swaps: list[tuple[str, str]] = []
    for i, feed in enumerate(feeds):
        sig = signature(feed, with_vectors)
        old = previous.get(feed.name)
        if not run.full and old is not None and old[1] == sig and feed.name in existing:
            summary.kept.append(feed.name)
            book.append((feed, sig, old[2], old[3] or [], old[4]))
            continue
        t0 = time.perf_counter()
        tmp = f"{STAGING}{i}"
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
    if not (swaps or stale or set(previous) != names):
        return None
    cur.execute("SELECT txid_current()")  # assigns one if nothing was written
    xid = str(cur.fetchone()[0])
    return swaps, stale, book, xid


def _wait_for_older_snapshots(cur: Any, xid: str, limit_s: float) -> None:
    """Wait (at most ``limit_s``) until no other client session may hold a snapshot that does
    not see transaction ``xid`` (just committed).

    A session may when its transaction began before the commit and its oldest snapshot's xmin
    is not newer than ``xid`` (``age`` orders xids across wraparound); a statement or
    transaction that began after the commit sees it. A session holding such a snapshot longer
    than ``limit_s`` (a long REPEATABLE READ transaction) does not stop the publish: it is the
    documented caveat.
    """
    xid32 = int(xid) % (1 << 32)  # txid_current() carries the epoch; backend_xmin does not
    cur.execute("SELECT clock_timestamp()::text")
    committed = str(cur.fetchone()[0])
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND backend_type = 'client backend' AND backend_xmin IS NOT NULL "
        f"AND age(backend_xmin) >= age('{xid32}'::xid) "
        f"AND xact_start < {literal(committed)}::timestamptz"
    )
    end = time.monotonic() + limit_s
    while True:
        cur.execute(query)
        if int(cur.fetchone()[0]) == 0 or time.monotonic() >= end:
            return
        time.sleep(0.01)


def _swap_and_record(
    cur: Any,
    s: str,
    swaps: list[tuple[str, str]],
    stale: list[str],
    book: Book,
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
