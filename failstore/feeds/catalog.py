"""What a publish or an export writes: every table of the store and the result of every stored
query (built-in, analysis and saved) at its defaults, plus stored queries asked for with other
parameters; each read at the versions pinned when the run started.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from failstore.errors import ConfigError, SqlError
from failstore.feeds.columns import Conventions, conventions, quote
from failstore.queries.sql.engine import ResultStream, SqlEngine

MAX_NAME = 63  # PostgreSQL's identifier length
CATALOG_VERSION = 1  # bump when the way a stored query is guarded changes
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class QueryRequest:
    """``--query NAME --param k=v [--as TABLE]``: a stored query with other parameters."""

    query: str
    params: Mapping[str, str] = field(default_factory=dict)
    as_name: str | None = None

    def published_name(self) -> str:
        if self.as_name:
            return self.as_name
        parts = [self.query, *(f"{k}_{v}" for k, v in sorted(self.params.items()))]
        name = re.sub(r"[^A-Za-z0-9_]+", "_", "__".join(parts)).strip("_").lower()
        return name[:MAX_NAME]


@dataclass(frozen=True)
class Feed:
    """One published object: a table, or a stored query's result with its parameters."""

    name: str  # the name it is published under
    kind: str  # "table" or "query"
    source: str  # the table or stored query
    params: tuple[tuple[str, str], ...]  # parameters given (the others take their defaults)
    sources: Mapping[str, int]  # the tables it reads, at their pinned versions
    digest: str  # of the SQL that makes it: a changed stored query is published again
    key: str = ""  # what its SQL and sources follow from (see ``plan``)

    @property
    def sql(self) -> str:
        return f"SELECT * FROM {quote(self.source)}"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def plan(
    engine: SqlEngine,
    versions: Mapping[str, int],
    requests: Sequence[QueryRequest] = (),
    known: Mapping[str, tuple[str, Mapping[str, int], str]] | None = None,
) -> tuple[list[Feed], list[Skipped]]:
    """The feeds of one run: every table, every stored query at its defaults, and the
    requested queries. A stored query that cannot run on this store (a required parameter, an
    analysis that has not run) is skipped with the reason.

    Guarding a stored query (to learn its SQL and the tables it reads) costs 50-200 ms. Both
    follow from its ``key``: the text of every stored query, its parameters and the store's set
    of tables (templates read the schemas of the tables a query reads, whose versions are its
    sources). ``known`` maps a published name to the (key, sources, digest) of a previous run:
    with the same key and the same source versions, the feed is reused without guarding."""
    feeds = [
        Feed(name, "table", name, (), {name: versions[name]}, f"table:{name}")
        for name in sorted(versions)
    ]
    skipped: list[Skipped] = []
    taken = {f.name.lower() for f in feeds}
    check_requests(engine, requests)
    wanted = [QueryRequest(name) for name in sorted(engine.stored)] + list(requests)
    texts = json.dumps(
        {
            "queries": {n: q.sql for n, q in sorted(engine.stored.items())},
            "tables": sorted(versions),
            "catalog": CATALOG_VERSION,
        },
        sort_keys=True,
    )
    for r in wanted:
        name = r.published_name()
        if r.as_name is not None and not NAME_RE.match(name):
            raise ConfigError(
                f"--as {name!r} is not a plain SQL name", hint="use letters, digits and _"
            )
        if name.lower() in taken:
            if r.params or r.as_name:
                raise ConfigError(
                    f"--query {r.query}: the name {name!r} is taken", hint="name it with --as"
                )
            continue
        query = engine.stored[r.query]
        missing = [p.name for p in query.parameters if p.default is None and p.name not in r.params]
        if missing:
            how = " ".join(f"--param {m}=VALUE" for m in missing)
            skipped.append(Skipped(name, f"needs {how} (give it with --query {r.query} {how})"))
            continue
        params = tuple(sorted(r.params.items()))
        key = _digest(json.dumps([texts, r.query, params]))
        before = (known or {}).get(name)
        if before is not None and before[0] == key and _same(before[1], versions):
            taken.add(name.lower())
            feeds.append(Feed(name, "query", r.query, params, dict(before[1]), before[2], key))
            continue
        try:
            guarded = engine.guarded(f"SELECT * FROM {quote(r.query)}", params=r.params)
        except SqlError as e:
            skipped.append(Skipped(name, e.one_line()))
            continue
        taken.add(name.lower())
        sources = {t: versions[t] for t in guarded.tables}
        feeds.append(Feed(name, "query", r.query, params, sources, _digest(guarded.sql), key))
    return feeds, skipped


def check_requests(engine: SqlEngine, requests: Sequence[QueryRequest]) -> None:
    for r in requests:
        if r.query not in engine.stored:
            names = ", ".join(sorted(engine.stored))
            raise ConfigError(f"--query {r.query}: no such stored query", hint=f"known: {names}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same(sources: Mapping[str, int], versions: Mapping[str, int]) -> bool:
    return all(versions.get(t) == v for t, v in sources.items())


READAHEAD = {"batch_readahead": 2, "fragment_readahead": 1}


def bounded(engine: SqlEngine) -> SqlEngine:
    """``engine`` with its Lance datasets scanned with little readahead, for whole-table copies.

    DuckDB scans a Lance dataset through its ``scanner(columns=..., filter=...)``; Lance's
    defaults (16 batches, 4 fragments ahead) made a publish's peak memory grow with the table
    (+180 MiB at 1M rows, +290 MiB at 2M: docs/performance.md). Read-ahead of 2 batches and
    1 fragment keeps it lower (+129 / +167 MiB) and was not slower. The datasets are given a
    subclass whose ``scanner`` sets those arguments: DuckDB offers no other way to pass them."""
    openers = dict(engine.datasets)
    engine.datasets = {name: _low_readahead(opener) for name, opener in openers.items()}
    return engine


def _low_readahead(opener: Callable[[], Any]) -> Callable[[], Any]:
    def open_() -> Any:
        ds = opener()
        ds.__class__ = _low_readahead_class(type(ds))
        return ds

    return open_


_CLASSES: dict[type, type] = {}


def _low_readahead_class(base: type) -> type:
    if base not in _CLASSES:

        def scanner(self: Any, *args: Any, **kwargs: Any) -> Any:
            for k, v in READAHEAD.items():
                kwargs.setdefault(k, v)
            return base.scanner(self, *args, **kwargs)  # type: ignore[attr-defined]

        _CLASSES[base] = type(f"LowReadahead{base.__name__}", (base,), {"scanner": scanner})
    return _CLASSES[base]


@contextlib.contextmanager
def stream(
    engine: SqlEngine,
    feed: Feed,
    target: str,
    *,
    with_vectors: bool = False,
    batch_rows: int = 65536,
) -> Iterator[tuple[ResultStream, Conventions]]:
    """The feed's rows with the target's column conventions, batch by batch."""
    params = dict(feed.params)
    if feed.kind == "table":
        schema = engine.schemas[feed.source]
    else:
        with engine.stream(f"{feed.sql} LIMIT 0", params=params) as probe:
            schema = probe.schema
    conv = conventions(schema, target, with_vectors=with_vectors)
    sql = f"SELECT {conv.select} FROM {quote(feed.source)} AS src"
    with engine.stream(sql, params=params, batch_rows=batch_rows) as rows:
        yield rows, conv
