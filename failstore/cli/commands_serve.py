"""``serve`` (the store's images and analyses as web pages and a JSON/CSV API) and ``report``
(the same pages as static HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from failstore.cli.state import state


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    cache_mb: Annotated[
        int,
        typer.Option(
            min=0,
            help="Memory for results of stored queries and pages, reused until the "
            "store changes (0: off).",
        ),
    ] = 64,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Time limit of each API query, in seconds.")
    ] = 10.0,
) -> None:
    """Browse the store's failures in a web browser: pages and a read-only JSON/CSV API.

    Example: failstore serve --port 8501
    """
    from failstore.serve.app import serve as run
    from failstore.serve.cache import configure

    store = state(ctx).open_store()
    configure(store, cache_mb << 20)
    typer.echo(f"serving {store.path} on http://{host}:{port}/ (Ctrl-C stops)")
    run(store, host=host, port=port, timeout_s=timeout)


def report(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the report to.")],
) -> None:
    """Write the pages of `failstore serve` as static HTML with thumbnails, shareable without
    a server.

    Example: failstore report report/ && open report/index.html
    """
    from failstore.serve.report import write_report

    store = state(ctx).open_store()
    written = write_report(store, out_dir)
    typer.echo(f"wrote {written.pages} pages and {written.images} images to {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("report")(report)
