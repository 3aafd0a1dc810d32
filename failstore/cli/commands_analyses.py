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

    est.fit(state(ctx).open_store())
    # Exactly the documented fields, in order (the stored table also has run bookkeeping).
    fields = ["class", "grouping", "model", *slice_schema(bool(est.eval_split)).names]
    table = est.results_.select(fields)
    if limit is not None:
        table = table.slice(0, limit)
    if fmt is Format.table:
        table = table.drop_columns(["grouping", "model"])
    emit(table, fmt)


OUTPUT = [
    extra_option("limit", LimitOpt, None),
    extra_option("fmt", FormatOpt, Format.table),
]


def register(app: typer.Typer) -> None:
    from failstore.queries.slices.estimator import Slices

    app.command("slices")(analysis_command(Slices, slices, OUTPUT))
