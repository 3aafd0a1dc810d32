"""The JSON/CSV API (Datasette-like): ad-hoc SQL, stored queries, table schemas, images.

Every query goes through the SQL guard (read-only, time limit); every error is a 4xx with a
one-line JSON body ``{"error": "..."}``. Results are paged: ``limit`` (default 100, at most
1000) and ``offset``; a query is run as ``SELECT * FROM (<query>) LIMIT limit+1 OFFSET offset``
so a huge result never fills memory, and ``next`` says whether there is more.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from failstore.errors import FailstoreError, InputError, StoreError
from failstore.queries.sql.stored import sql_type
from failstore.queries.sql.values import jsonable
from failstore.serve import cache, data, images

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
API_TIMEOUT_S = 10.0
THUMB_CACHE_CONTROL = "private, max-age=3600"  # a browser reuses a gallery's thumbnails
RESERVED = {"q", "format", "limit", "offset", "_"}  # not query parameters


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def failstore_error(e: FailstoreError) -> JSONResponse:
    status = 404 if isinstance(e, StoreError) else 400
    return error(e.one_line(), status)


def paging(request: Request) -> tuple[int, int]:
    """``limit`` and ``offset`` of a request: a limit past MAX_LIMIT is refused, not capped
    silently (the caller would miss rows)."""
    try:
        limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        offset = int(request.query_params.get("offset", 0))
    except ValueError as e:
        raise InputError("limit and offset must be whole numbers") from e
    if not 0 <= limit <= MAX_LIMIT:
        raise InputError(
            f"limit {limit} is out of range", hint=f"use 0..{MAX_LIMIT} and page with offset"
        )
    if not 0 <= offset <= MAX_OFFSET:
        raise InputError(f"offset {offset} is out of range", hint=f"use 0..{MAX_OFFSET}")
    return limit, offset


def run_page(
    request: Request, sql: str, params: dict[str, str], *, cached: bool = False
) -> Response:
    """One page of a query as JSON or CSV. ``cached``: the encoded page is kept in the result
    cache until the store changes (stored queries; ad-hoc SQL may call ``random()``)."""
    store = request.app.state.store
    limit, offset = paging(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InputError(f"unknown format {fmt!r}", hint="json or csv")

    versions = store.versions()

    def encode() -> bytes:
        timeout_s = getattr(request.app.state, "timeout_s", API_TIMEOUT_S)
        table = data.page(store, sql, params, limit, offset, timeout_s, versions)
        return encoded(table, fmt, limit, offset)

    if cached:  # pinned at the versions of its key: a write meanwhile cannot slip in
        key = ("api", sql, tuple(sorted(params.items())), limit, offset, fmt,
               tuple(sorted(versions.items())))  # fmt: skip
        body = cache.cache_for(store).get(key, encode)
    else:
        body = encode()
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return Response(body, media_type=media)


def encoded(table: pa.Table, fmt: str, limit: int, offset: int) -> bytes:
    """The body of a page: ``limit + 1`` rows were read, the last one says there is more."""
    more = table.num_rows > limit
    table = table.slice(0, limit)
    if fmt == "csv":
        return to_csv(table).encode("utf-8")
    body = JSONResponse(
        {
            "columns": table.column_names,
            "types": [sql_type(f.type) for f in table.schema],
            "rows": [jsonable(r) for r in table.to_pylist()],
            "limit": limit,
            "offset": offset,
            "next": offset + limit if more else None,
        }
    ).body
    return bytes(body)


def to_csv(table: pa.Table) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        cells = []
        for v in row.values():
            v = jsonable(v)
            cells.append(json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v))
        w.writerow(cells)
    return out.getvalue()


def query_params(request: Request) -> dict[str, str]:
    """The query parameters that are SQL parameters: every one but the API's own; ``param.NAME``
    passes a parameter whose name is one of those (e.g. coverage_lowest's $limit)."""
    out = {k: v for k, v in request.query_params.items() if k not in RESERVED}
    for k in [k for k in out if k.startswith("param.")]:
        out[k[len("param.") :]] = out.pop(k)
    return out


def api_sql(request: Request) -> Response:
    """``/api/sql?q=SELECT...``: one read-only query, paged, JSON or CSV."""
    q = request.query_params.get("q")
    if q is None:
        return error("missing q", 400)
    return run_page(request, q, query_params(request))


def api_queries(request: Request) -> Response:
    """``/api/queries``: every stored query with its description and parameters."""
    stored = data.stored_queries(request.app.state.store)
    return JSONResponse(
        [
            {
                "name": q.name,
                "source": q.source,
                "description": q.description,
                "parameters": [
                    {"name": p.name, "default": p.default, "description": p.description}
                    for p in q.parameters
                ],
            }
            for q in sorted(stored.values(), key=lambda q: q.name)
        ]
    )


def api_query(request: Request) -> Response:
    """``/api/queries/NAME?param=value``: the rows of one stored query, paged."""
    name = request.path_params["name"]
    stored = data.stored_queries(request.app.state.store)
    if name not in stored:
        return error(f"no stored query {name[:80]!r}", 404)
    return run_page(request, f'SELECT * FROM "{name}"', query_params(request), cached=True)


def api_tables(request: Request) -> Response:
    """``/api/tables``: each table with its columns and SQL types."""
    store = request.app.state.store
    return JSONResponse(
        [
            {
                "name": n,
                "rows": store.count(n),
                "columns": [
                    {"name": f.name, "type": sql_type(f.type), "nullable": f.nullable}
                    for f in store.schema(n)
                ],
            }
            for n in store.table_names()
        ]
    )


def api_image(request: Request) -> Response:
    """``/api/images/ID``: the bytes of a stored image's file."""
    ref = images.lookup(request.app.state.store, request.path_params["image_id"])
    return FileResponse(ref.path, media_type=images.media_type(ref.path))


def api_thumb(request: Request) -> Response:
    """``/api/images/ID/thumb?size=128``: a cached PNG thumbnail with the boxes drawn."""
    store = request.app.state.store
    ref = images.lookup(store, request.path_params["image_id"])
    size = images.thumb_size(request.query_params.get("size"))
    # Bytes, not FileResponse: a thumbnail is a few KB, and FileResponse's async file
    # reads cost several thread hops each (100 thumbnails over 6 connections: 325 -> 130 ms).
    return Response(
        images.thumbnail(store, ref, size).read_bytes(),
        media_type="image/png",
        headers={"Cache-Control": THUMB_CACHE_CONTROL},
    )


def api_saliency(request: Request) -> Response:
    """``/api/images/ID/saliency?model=M&method=X``: the image with that saliency map on top."""
    store = request.app.state.store
    ref = images.lookup(store, request.path_params["image_id"])
    found = saliency_maps(store, ref.image_id, request.query_params.get("model"),
                          request.query_params.get("method"))  # fmt: skip
    if not found:
        return error("no such saliency map for this image", 404)
    size = images.thumb_size(request.query_params.get("size") or "256")
    return Response(images.overlay(store, ref, found[0], size), media_type="image/png")


def saliency_maps(store, image_id: str, model: str | None = None, method: str | None = None):
    if not store.has_table("saliency_maps"):
        return []
    conds, params = ["image_id = $id"], {"id": image_id}
    if model:
        conds.append("model = $model")
        params["model"] = model
    if method:
        conds.append("method = $method")
        params["method"] = method
    sql = (
        'SELECT model, method, "explain", "class", height, width, "map", x0, y0, x1, y1 '
        f"FROM saliency_maps WHERE {' AND '.join(conds)} ORDER BY model, method, explain"
    )
    return data.run(store, sql, params).to_pylist()


def handle_errors(endpoint):
    """Run a (blocking) endpoint in the thread pool, so a long query does not hold up other
    requests; every FailstoreError (and a broken query) -> a one-line JSON 4xx."""
    import functools

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await run_in_threadpool(endpoint, request)
        except FailstoreError as e:
            return failstore_error(e)
        except (ValueError, KeyError, OSError) as e:
            return error(f"{type(e).__name__}: {e}", 400)

    return wrapped


ROUTES = [
    Route("/api/sql", handle_errors(api_sql)),
    Route("/api/queries", handle_errors(api_queries)),
    Route("/api/queries/{name}", handle_errors(api_query)),
    Route("/api/tables", handle_errors(api_tables)),
    Route("/api/images/{image_id}", handle_errors(api_image)),
    Route("/api/images/{image_id}/thumb", handle_errors(api_thumb)),
    Route("/api/images/{image_id}/saliency", handle_errors(api_saliency)),
]
