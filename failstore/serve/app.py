"""``create_app(store)``: the Starlette app of ``failstore serve`` (API + pages), and ``serve``
to run it with uvicorn."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from failstore.serve import api, pages
from failstore.store import Store


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods: a one-line JSON error under /api, a page elsewhere."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if request.url.path.startswith("/api"):
        return JSONResponse({"error": f"{message}: {request.url.path[:120]}"}, status_code=status)
    return pages.page("error.html", {"status": status, "message": message}, status)


def create_app(store: Store, timeout_s: float = api.API_TIMEOUT_S) -> Starlette:
    """The app over one store (read-only: every query goes through the SQL guard);
    ``timeout_s``: the time limit of each API query."""
    app = Starlette(
        routes=[*api.ROUTES, *pages.ROUTES],
        exception_handlers={HTTPException: _http_error, 500: _http_error},
    )
    app.state.store = store
    app.state.timeout_s = timeout_s
    return app


def serve(
    store: Store, host: str = "127.0.0.1", port: int = 8501, timeout_s: float = api.API_TIMEOUT_S
) -> None:
    """Run the app until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store, timeout_s), host=host, port=port, log_level="warning")
