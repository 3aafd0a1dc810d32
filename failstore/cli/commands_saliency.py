"""Saliency commands: ``saliency`` (compute attribution maps into the store), ``coverage``
(Shared-Interest scores and cases of those maps) and ``sanity`` (can each attribution method be
trusted on this model?), the last two analyses built from their declarations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from failstore.cli.analysis_options import analysis_command, extra_option
from failstore.cli.commands_analyses import OUTPUT
from failstore.cli.output import Format, emit
from failstore.cli.state import state
from failstore.errors import ConfigError

COVERAGE_TABLE = [
    "image_id",
    "label",
    "prediction",
    "correct",
    "iou",
    "gtc",
    "sc",
    "soft_sc",
    "case",
]


def saliency(
    ctx: typer.Context,
    method: Annotated[
        str,
        typer.Option(
            help="gradient, input_x_gradient, integrated_gradients, smoothgrad, "
            "guided_backprop, grad_cam or guided_grad_cam."
        ),
    ] = "gradient",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="A method parameter (repeatable), e.g. --param n_steps=32; values are "
            "JSON (numbers, true/false, strings).",
        ),
    ] = None,
    explain: Annotated[
        str, typer.Option(help="Explain the 'prediction' or the 'label' (true class).")
    ] = "prediction",
    model: Annotated[str | None, typer.Option(help="Target model (default: the last).")] = None,
    class_: Annotated[
        list[str] | None, typer.Option("--class", help="Only images of this label (repeatable).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Only images of this split.")] = None,
    where: Annotated[
        str | None, typer.Option(help="Only images matching this SQL condition over samples.")
    ] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            help="Stored map size (default: the model's input size); maps are averaged down to it."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward+backward.")] = 16,
    device: Annotated[str, typer.Option(help="Torch device (cpu, cuda, ...).")] = "cpu",
    workers: Annotated[int, typer.Option(min=0, help="Decode worker processes.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N images.")] = None,
) -> None:
    """Compute saliency maps of the target model's images into the store (saliency_maps).

    The model is reloaded from its models row; images are decoded and preprocessed exactly as
    the ingest did. Keyed by model, method and its settings, explained class and image: a rerun
    computes only what is missing. Score them with `failstore coverage`.

    Example: failstore saliency --method integrated_gradients --class bird --split test
    """
    from failstore.queries.saliency.compute import SaliencyOptions, compute_saliency

    params: dict[str, Any] = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {item!r}: write NAME=VALUE, e.g. --param n_steps=32")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    opts = SaliencyOptions(
        model=model,
        method=method,
        params=params,
        explain=explain,
        classes=class_,
        split=split,
        where=where,
        resolution=resolution,
        batch_size=batch_size,
        device=device,
        workers=workers,
        limit=limit,
    )
    store = state(ctx).open_store()
    report = compute_saliency(store, opts)
    for uri, reason in report.errors[:10]:
        typer.echo(f"warning: {uri}: {reason}", err=True)
    if len(report.errors) > 10:
        typer.echo(f"warning: ... and {len(report.errors) - 10} more unreadable images", err=True)
    rate = report.computed / report.seconds if report.seconds > 0 else 0.0
    typer.echo(
        f"{report.method} maps of '{report.model}': {report.computed} computed "
        f"({rate:.1f} images/s), {report.already} already stored, {len(report.errors)} errors, "
        f"of {report.selected} selected"
    )
    if report.errors and not report.computed and not report.already:
        raise typer.Exit(1)


PicturesOpt = Annotated[
    Path | None,
    typer.Option(
        "--pictures",
        metavar="DIR",
        help="Also draw one example image per case into DIR/<case>.png: the saliency region in "
        "red, the ground truth outlined in green, their overlap in yellow, the map beside.",
    ),
]


def coverage(
    ctx: typer.Context, est: Any, limit: int | None, fmt: Format, pictures: Path | None
) -> None:
    """Shared-Interest coverage of stored saliency maps: IoU, ground-truth coverage (gtc),
    saliency coverage (sc), soft sc and one of eight cases per image.

    Ground truth is the image's mask, else its boxes. Stored: `failstore sql "SELECT * FROM
    coverage"`, and coverage_cases (class x case) and coverage_lowest.

    Example: failstore coverage --method integrated_gradients --case distractor --class bird

    Example: failstore coverage --method grad_cam --split test --pictures coverage-cases
    """
    from failstore.queries.coverage.estimator import COVERAGE_SCHEMA

    store = state(ctx).open_store()
    est.fit(store)
    table = est.results_
    table = table.select(COVERAGE_TABLE if fmt is Format.table else COVERAGE_SCHEMA.names)
    if limit is not None:
        table = table.slice(0, limit)
    emit(table, fmt)
    if pictures is not None:
        from failstore.queries.coverage.pictures import case_pictures

        drawn = case_pictures(
            store, est.results_, pictures, rule=est.rule, top_percent=est.top_percent
        )
        typer.echo(f"pictures: {len(drawn)} files under {pictures}", err=True)
    cases = est.results_["case"].to_pylist()
    counts = ", ".join(f"{cases.count(c)} {c}" for c in sorted(set(cases), key=cases.index))
    typer.echo(f"{len(cases)} images: {counts or 'none'}", err=True)


SANITY_TABLE = ["method", "test", "metric", "figure", "low", "high", "verdict", "reason"]

PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="DIR",
        help="Also draw the run's curves into DIR/<test>.png: each figure's mean (and standard "
        "error) per randomised layer and method, or per group.",
    ),
]


def sanity(ctx: typer.Context, est: Any, limit: int | None, fmt: Format, plot: Path | None) -> None:
    """Can each attribution method be trusted on this model? Adebayo et al.'s debugging tests:
    re-initialise the target's layers from the top (cascading, or --test independent) and
    compare each method's maps with the trained model's, look for a suspected shortcut's
    background (--test spurious), or compare with another model (--test reference).

    A method fails when its maps stay similar after the whole model is randomised. Stored:
    `failstore sql "SELECT * FROM sanity"` (verdicts), sanity_curves (the figures per layer);
    the coverage query shows each method's verdict.

    Example: failstore sanity --methods gradient,guided_backprop --images 50 --plot curves

    Example: failstore sanity --test spurious --where "label = 'bird' AND attr_background = 'water'"
    """
    from failstore.queries.sanity.verdicts import VERDICTS_SCHEMA

    store = state(ctx).open_store()
    est.fit(store)
    table = est.results_
    table = table.select(SANITY_TABLE if fmt is Format.table else VERDICTS_SCHEMA.names)
    if limit is not None:
        table = table.slice(0, limit)
    emit(table, fmt)
    if plot is not None:
        from failstore.queries.sanity.plots import curve_plots

        written = curve_plots(est.read_table(store, "sanity_scores"), plot)
        typer.echo(f"plots: {', '.join(str(p) for p in written)}", err=True)
    verdicts = est.results_["verdict"].to_pylist()
    counts = ", ".join(
        f"{verdicts.count(v)} {v}" for v in sorted(set(verdicts), key=verdicts.index)
    )
    typer.echo(f"{len(verdicts)} methods: {counts or 'none'}", err=True)


def register(app: typer.Typer) -> None:
    from failstore.queries.coverage.estimator import Coverage
    from failstore.queries.sanity.estimator import Sanity

    app.command("saliency")(saliency)
    pictures = [extra_option("pictures", PicturesOpt, None)]
    app.command("coverage")(analysis_command(Coverage, coverage, OUTPUT + pictures))
    plots = [extra_option("plot", PlotOpt, None)]
    app.command("sanity")(analysis_command(Sanity, sanity, OUTPUT + plots))
