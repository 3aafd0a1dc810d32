"""``init``, ``info`` and ``ingest``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from failstore import config
from failstore.cli.output import Format, FormatOpt, emit
from failstore.cli.state import state

if TYPE_CHECKING:
    from failstore.store import Store


def init(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Argument(help="Store directory (default: --store or ./failstore-store).")
    ] = None,
) -> None:
    """Create an empty store (or confirm an existing one).

    Example: failstore init ./mystore
    """
    from failstore.store import Store

    store = Store.init(path or state(ctx).store)
    typer.echo(f"store ready at {store.path}")


def info(ctx: typer.Context, fmt: FormatOpt = Format.table) -> None:
    """List tables (rows, version) and the models in the store.

    Example: failstore --store S info --format json
    """
    import json

    import pyarrow as pa

    data = state(ctx).open_store().info()
    if fmt is Format.json:
        typer.echo(json.dumps(data, default=str))
        return
    tables = pa.Table.from_pylist(data["tables"]) if data["tables"] else pa.table({"table": []})
    models = pa.Table.from_pylist(data["models"]) if data["models"] else pa.table({"name": []})
    if fmt is Format.csv:
        emit(tables, fmt)
        return
    typer.echo(f"store: {data['store']}")
    emit(tables, fmt, title="tables")
    emit(models, fmt, title="models")


def ingest(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            help="An image folder (root/<label>/*, root/<split>/<label>/*) "
            "or a CSV/Parquet manifest."
        ),
    ],
    target: Annotated[
        str | None,
        typer.Option(
            help="Target model spec: efficientnet_lite0, torchvision:NAME, timm:NAME, "
            "a state-dict directory (factory + safetensors), a TorchScript file, or module:factory."
        ),
    ] = None,
    robust: Annotated[
        str | None,
        typer.Option(
            help="Robust model: a robustness-library "
            "ResNet-50 checkpoint or any target-style spec (with --robust-layer)."
        ),
    ] = None,
    clip: Annotated[
        str | None,
        typer.Option(
            help="open_clip tagger: MODEL:PRETRAINED, MODEL:/path/ckpt or local-dir:/path."
        ),
    ] = None,
    tags: Annotated[Path | None, typer.Option(help="Tag vocabulary file for --clip.")] = None,
    tag_threshold: Annotated[
        float | None,
        typer.Option(help="Default tag threshold (cosine) for tags without their own."),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Target bottleneck layer (default: input of the final Linear)."),
    ] = None,
    robust_layer: Annotated[str | None, typer.Option(help="Feature layer of --robust.")] = None,
    class_names: Annotated[
        Path | None,
        typer.Option(help="Class names file (one per line) for models that do not carry them."),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="Map dataset labels to the target's class names: JSON object or CSV 'label,class'."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split name for sources without one.")] = None,
    path_column: Annotated[
        str, typer.Option(help="Manifests: the column holding the image paths.")
    ] = "path",
    label_column: Annotated[
        str, typer.Option(help="Manifests: the column holding the labels.")
    ] = "label",
    batch_size: Annotated[
        int, typer.Option(help="Images per forward pass.")
    ] = config.DEFAULT_BATCH_SIZE,
    workers: Annotated[
        int | None,
        typer.Option(help="Decode worker processes (0: inline; default: half the cores)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any image failed.")] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    reread: Annotated[
        bool,
        typer.Option(
            help="Read every file again, even those unchanged since their ingest "
            "(same path, size and mtime), which a rerun otherwise skips."
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(
            help="Show progress on stderr: a bar on a terminal, otherwise a line every "
            "$FAILSTORE_PROGRESS_SECONDS seconds (default 5)."
        ),
    ] = True,
    commit_every: Annotated[
        int, typer.Option(min=1, help="Images per commit (a killed run loses at most these).")
    ] = config.DEFAULT_COMMIT_EVERY,
    engine: Annotated[
        str,
        typer.Option(
            help="local: this machine; ray: decode and run the models on a Ray cluster "
            "(docs/scaling.md)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster (auto, ray://HEAD:10001); default: a local one."
        ),
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="--engine ray: actors per model.")] = 1,
    ray_gpus: Annotated[float, typer.Option(help="--engine ray: GPUs per model actor.")] = 0.0,
    ray_cpus: Annotated[float, typer.Option(help="--engine ray: CPUs per model actor.")] = 1.0,
    ray_decode_cpus: Annotated[
        float, typer.Option(help="--engine ray: CPUs per decode task.")
    ] = 1.0,
    ray_threads: Annotated[
        int | None,
        typer.Option(help="--engine ray: torch threads per model actor (default: its CPUs)."),
    ] = None,
) -> None:
    """Embed every image with the given models and upsert one row per image.

    Reruns add nothing, and do not read files unchanged since their ingest; a killed run is
    completed by a rerun. Bad images go to the ingest_errors table and the rest continues.

    Example: failstore --store S ingest photos/ --target efficientnet_lite0
    """
    from failstore.ingest.pipeline import IngestOptions
    from failstore.ingest.pipeline import ingest as run
    from failstore.ingest.ray_engine import RayOptions

    st = state(ctx)
    opts = IngestOptions(
        source=source,
        target=target,
        robust=robust,
        clip=clip,
        tags=tags,
        tag_threshold=tag_threshold,
        layer=layer,
        robust_layer=robust_layer,
        class_names=class_names,
        label_map=label_map,
        split=split,
        path_column=path_column,
        label_column=label_column,
        batch_size=batch_size,
        workers=config.default_workers() if workers is None else workers,
        device=device,
        strict=strict,
        limit=limit,
        reread=reread,
        commit_every=commit_every,
        engine=engine,
        ray=RayOptions(address, ray_actors, ray_gpus, ray_cpus, ray_decode_cpus, ray_threads),
    )

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    report = run(st.store, opts, warn=warn, progress=progress)
    refresh_read_cache(st.open_store(), ["images", "predictions"])
    typer.echo(report.summary())


def refresh_read_cache(store: Store, tables: list[str] | None = None) -> None:
    """Copy the scalar columns of the tables just written into the SQL read cache, so that the
    first query after this command reads them at DuckDB's Parquet speed (docs/sql.md)."""
    from failstore.queries.sql.builds import refresh

    refresh(store, tables)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("info")(info)
    app.command("ingest")(ingest)
