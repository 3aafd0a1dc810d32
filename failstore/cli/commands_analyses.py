"""Analysis commands: ``slices`` (and later the other analyses)."""

from __future__ import annotations

from typing import Annotated

import typer

from failstore.cli.output import Format, emit
from failstore.cli.state import state

FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]

def _csv_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def slices(
    ctx: typer.Context,
    class_: Annotated[
        list[str] | None,
        typer.Option("--class", help="Only this class (repeatable; default: all classes)."),
    ] = None,
    by: Annotated[str, typer.Option(help="Group images by 'label' or 'prediction'.")] = "label",
    split: Annotated[
        str | None, typer.Option(help="Only images of this split (default: all).")
    ] = None,
    eval_split: Annotated[
        str | None,
        typer.Option(
            help="Also evaluate each slice on this "
            "split (eval_size, eval_error_rate, eval_accuracy_drop, holds)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Target model (default: the last ingested).")
    ] = None,
    tags_from: Annotated[
        str | None,
        typer.Option(
            help="Slice on categorical columns COL,COL,... (tags COL=value) instead of CLIP tags."
        ),
    ] = None,
    max_tags: Annotated[int, typer.Option(help="L: at most this many tags per slice.")] = 3,
    min_size: Annotated[int, typer.Option(help="s: at least this many images.")] = 30,
    min_drop: Annotated[float, typer.Option(help="a: accuracy drop vs the class.")] = 0.2,
    min_gain: Annotated[
        float, typer.Option(help="b: accuracy drop vs every subset with one tag less.")
    ] = 0.1,
    limit: Annotated[int | None, typer.Option(help="Print at most N slices.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """PRIME failure slices: minimal tag combinations on which the model fails.

    Ordered by importance (error rate x error coverage). Results are also stored: query them
    with `failstore sql "SELECT * FROM slices"`.

    Example: failstore slices --class bird --split val --eval-split test
    """
    from failstore.queries.slices.estimator import Slices
    from failstore.queries.slices.search import slice_schema

    store = state(ctx).open_store()
    est = Slices(
        classes=class_ or None,
        by=by,
        split=split,
        model=model,
        tags_from=_csv_list(tags_from),
        max_tags=max_tags,
        min_size=min_size,
        min_drop=min_drop,
        min_gain=min_gain,
        eval_split=eval_split,
    ).fit(store)
    # Exactly the documented fields, in order (the stored table also has run bookkeeping).
    fields = ["class", "grouping", "model", *slice_schema(bool(eval_split)).names]
    table = est.results_.select(fields)
    if limit is not None:
        table = table.slice(0, limit)
    if fmt is Format.table:
        table = table.drop_columns(["grouping", "model"])
    emit(table, fmt)


def register(app: typer.Typer) -> None:
    app.command("slices")(slices)
