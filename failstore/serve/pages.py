"""The server-rendered pages: home, class, slice / leaf gallery, image, SQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from failstore.errors import FailstoreError, StoreError
from failstore.serve import data, images, views
from failstore.serve.data import SliceKey
from failstore.serve.render import render


class ServerLinks:
    """Links of the live server (absolute paths, parameters in the query string)."""

    def home(self) -> str:
        return "/"

    def class_(self, model: str, cls: str) -> str:
        return f"/class/{quote(str(model), safe='')}/{quote(str(cls), safe='')}"

    def slice_(self, key: SliceKey) -> str:
        return "/slice?" + urlencode(key.params())

    def leaf(self, model: str, cls: str, leaf: Any) -> str:
        return "/leaf?" + urlencode({"model": model, "class": cls, "leaf": leaf})

    def image(self, image_id: str) -> str:
        return f"/image/{quote(str(image_id), safe='')}"

    def thumb(self, image_id: str) -> str:
        return f"/api/images/{quote(str(image_id), safe='')}/thumb?size=128"

    def full(self, image_id: str) -> str:
        return f"/api/images/{quote(str(image_id), safe='')}"

    def saliency(self, image_id: str, model: str, method: str) -> str:
        return f"/api/images/{image_id}/saliency?" + urlencode({"model": model, "method": method})

    def sql(self, q: str = "") -> str:
        return "/sql" + ("?" + urlencode({"q": q}) if q else "")

    def api(self, q: str, fmt: str, params: dict[str, str] | None = None) -> str | None:
        return "/api/sql?" + urlencode({"q": q, "format": fmt, **(params or {})})


LINKS = ServerLinks()


def page(template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return HTMLResponse(render(template, {**context, "links": LINKS}), status_code=status)


def error_page(e: FailstoreError) -> HTMLResponse:
    status = 404 if isinstance(e, StoreError) else 400
    return page("error.html", {"status": status, "message": e.one_line()}, status)


def handled(endpoint):
    """Run a (blocking) page endpoint in the thread pool; FailstoreError -> an error page."""
    import functools

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await run_in_threadpool(endpoint, request)
        except FailstoreError as e:
            return error_page(e)

    return wrapped


def page_number(request: Request) -> int:
    try:
        return max(0, int(request.query_params.get("page", 0)))
    except ValueError:
        return 0


def per_page(request: Request) -> int:
    """Thumbnails per side of a gallery page: ``per_page`` (1..200), default 48."""
    try:
        return min(200, max(1, int(request.query_params.get("per_page", views.PER_PAGE))))
    except ValueError:
        return views.PER_PAGE


def home(request: Request) -> Response:
    return page(*views.home(request.app.state.store))


def class_page(request: Request) -> Response:
    p = request.path_params
    return page(*views.class_page(request.app.state.store, p["model"], p["cls"]))


def slice_page(request: Request) -> Response:
    q = request.query_params
    key = data.slice_key(q.get("model", ""), q.get("class", ""), q.get("grouping", "label"),
                         q.get("tag_source", "tags"), q.get("tags", ""))  # fmt: skip
    sql, params = data.slice_sql(key)
    size = per_page(request)

    def page_url(n: int) -> str:
        return "/slice?" + urlencode({**key.params(), "page": n, "per_page": size})

    title = f"Slice {' + '.join(key.tags)}"
    view = views.gallery(request.app.state.store, title, sql, params, key.model, key.cls,
                         page_number(request), page_url, size)  # fmt: skip
    return gallery_page(view, request)


def gallery_page(view: tuple[str, dict[str, Any]], request: Request) -> Response:
    """A gallery, its images' refs read in one query for the thumbnail requests to come."""
    ctx = view[1]
    ids = [r["image_id"] for r in [*ctx.get("failing", []), *ctx.get("passing", [])]]
    images.prefetch(request.app.state.store, ids)
    return page(*view)


def leaf_page(request: Request) -> Response:
    q = request.query_params
    model, cls, leaf = q.get("model", ""), q.get("class", ""), q.get("leaf", "")
    sql, params = data.leaf_sql(model, cls, leaf)
    size = per_page(request)

    def page_url(n: int) -> str:
        q = {"model": model, "class": cls, "leaf": leaf, "page": n, "per_page": size}
        return "/leaf?" + urlencode(q)

    view = views.gallery(request.app.state.store, f"Barlow leaf {leaf}", sql, params, model,
                         cls, page_number(request), page_url, size)  # fmt: skip
    return gallery_page(view, request)


def image_page(request: Request) -> Response:
    return page(*views.image_page(request.app.state.store, request.path_params["image_id"]))


def sql_page(request: Request) -> Response:
    return page(*views.sql_page(request.app.state.store, request.query_params.get("q", "")))


ROUTES = [
    Route("/", handled(home)),
    Route("/class/{model}/{cls}", handled(class_page)),
    Route("/slice", handled(slice_page)),
    Route("/leaf", handled(leaf_page)),
    Route("/image/{image_id}", handled(image_page)),
    Route("/sql", handled(sql_page)),
]
