"""Analysis commands, built from each analysis's parameter declarations: ``slices``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from failstore.cli.analysis_options import analysis_command, extra_option
from failstore.cli.output import Format, FormatOpt, emit
from failstore.cli.state import state

LimitOpt = Annotated[int | None, typer.Option(help="Print at most N rows.")]


def slices(ctx: typer.Context, est: Any, limit: int | None, fmt: Format) -> None:
    """PRIME failure slices: minimal tag combinations on which the model fails.

    Ordered by importance (error rate x error coverage). Results are also stored: query them
    with `failstore sql "SELECT * FROM slices"`.

    Example: failstore slices --class bird --split val --eval-split test
    """
    from failstore.queries.slices.search import slice_schema

    store = state(ctx).open_store()
    est.fit(store)
    # Exactly the documented fields, in order (the stored table also has run bookkeeping).
    fields = ["class", "grouping", "model", *slice_schema(bool(est.eval_split)).names]
    table = est.results_.select(fields)
    if limit is not None:
        table = table.slice(0, limit)
    if fmt is Format.table:  # for reading: the description first, without run constants
        table = table.drop_columns(["grouping", "model"])
        table = table.select(
            ["description", *(c for c in table.column_names if c != "description")]
        )
    emit(table, fmt)
    if est.results_.num_rows == 0:
        typer.echo(f"no failure slices: {why_no_slices(est, store)}", err=True)


def why_no_slices(est: Any, store: Any) -> str:
    """One line on why a run found nothing: the groups' sizes against the thresholds."""
    import numpy as np

    from failstore.queries.slices.estimator import load_frame

    params = est.resolved_params(store)
    data = load_frame(store, params["model"], params["tags_from"], params["split"])
    keys = np.asarray(data[params["by"]].to_numpy(zero_copy_only=False), dtype=object)
    if est.classes:
        keys = keys[np.isin(keys, list(est.classes))]
    sizes = sorted(((int((keys == k).sum()), str(k)) for k in set(keys)), reverse=True)
    if not sizes:
        return "no images in the groups searched"
    largest, name = sizes[0]
    if largest < params["min_size"]:
        return (
            f"every group has fewer than --min-size {params['min_size']} images "
            f"(largest: {name}, {largest}); lower --min-size"
        )
    return (
        f"{len(sizes)} group(s) searched (largest: {name}, {largest} images); no tag set of at "
        f"least --min-size {params['min_size']} images loses --min-drop {params['min_drop']:g} "
        f"accuracy with every tag adding --min-gain {params['min_gain']:g}"
    )


OUTPUT = [
    extra_option("limit", LimitOpt, None),
    extra_option("fmt", FormatOpt, Format.table),
]


def register(app: typer.Typer) -> None:
    from failstore.queries.slices.estimator import Slices

    app.command("slices")(analysis_command(Slices, slices, OUTPUT))
