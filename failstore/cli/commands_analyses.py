"""Analysis commands, built from each analysis's parameter declarations: ``slices``,
``barlow``, ``concepts``."""

from __future__ import annotations

from pathlib import Path
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


# Table output: the paper's short names (docs/barlow.md), the description after the rule.
BARLOW_TABLE = {"class": "class", "valid": "valid", "rule": "rule", "error_rate": "ER",
                "error_coverage": "EC", "importance": "IV", "base_error_rate": "BER",
                "aler": "ALER", "description": "description"}  # fmt: skip


PicturesOpt = Annotated[
    Path | None,
    typer.Option(
        "--pictures",
        metavar="DIR",
        help="Also draw each valid leaf's features into DIR: the top images of the group, "
        "their heatmaps and feature attacks (listed in barlow_tree_pictures).",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="Torch device for --pictures (cpu, cuda, ...).")]
TopImagesOpt = Annotated[
    int, typer.Option(min=1, help="--pictures: most-activating images per feature.")
]
AttackStepsOpt = Annotated[
    int,
    typer.Option(min=0, help="--pictures: gradient steps of each feature attack (the paper: 500)."),
]


def barlow(
    ctx: typer.Context,
    est: Any,
    limit: int | None,
    fmt: Format,
    pictures: Path | None,
    device: str,
    top_images: int,
    attack_steps: int,
) -> None:
    """Barlow failure explanations: shallow decision trees over robust features.

    For each class group, the leaves of a depth-1..3 entropy tree over the robust features
    with the most mutual information with failure; valid leaves (error rate above the base rate
    + delta, error coverage above tau) first. Results are also stored: query them with
    `failstore sql "SELECT * FROM barlow_leaves"` (and barlow_members, barlow_classes).

    Example: failstore barlow --class dog --split val --max-depth 2 --pictures barlow-pictures
    """
    from failstore.queries.barlow.estimator import LEAVES_SCHEMA

    store = state(ctx).open_store()
    est.fit(store)
    if pictures is not None:
        drawn = est.pictures(store, pictures, top=top_images, steps=attack_steps, device=device)
        typer.echo(f"pictures: {drawn.num_rows} files under {pictures}", err=True)
    table = est.results_
    if fmt is Format.table:
        table = table.filter(table["leaf"].is_valid()).select(list(BARLOW_TABLE))
        table = table.rename_columns(list(BARLOW_TABLE.values()))
    else:
        table = table.select(LEAVES_SCHEMA.names)
    if limit is not None:
        table = table.slice(0, limit)
    emit(table, fmt)
    valid = est.results_.filter(est.results_["valid"].fill_null(False))
    if valid.num_rows == 0:
        typer.echo(f"no valid leaf: {why_no_leaf(est)}", err=True)


def why_no_leaf(est: Any) -> str:
    """One line on why a run found no valid leaf."""
    rows = est.results_
    if rows.num_rows == 0:
        return "no class group had images with predictions and robust features"
    statuses = rows["status"].to_pylist()
    explained = statuses.count("explained")
    if not explained:
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        return (
            "no group could be explained (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
        )
    return (
        f"{explained} leaf row(s) in the trees, none with error rate > base rate + "
        f"--delta {est.delta:g} and error coverage > --tau {est.tau:g}; "
        "try --max-depth 2 or 3, or lower --delta/--tau"
    )


CONCEPT_TABLE = ["concept", "kept", "val_accuracy", "positives", "negatives", "main_class",
                 "main_class_share", "reason"]  # fmt: skip


def concepts(ctx: typer.Context, est: Any, limit: int | None, fmt: Format) -> None:
    """Learn a concept bank: a CAV (linear SVM direction) per tag in the target model's bottleneck.

    Each CLIP tag (or --tags-from value) is a concept: images carrying it against as many
    without it, balanced over classes; kept when its held-out accuracy reaches --min-accuracy.
    Or a concept library: --folder DIR with DIR/<concept>/*.jpg, embedded with the target model
    (negatives: the other concepts, or --negatives DIR). Stored: `failstore sql "SELECT * FROM
    concept_bank"`.

    Example: failstore concepts --split train --tags-from attr_background,attr_size

    Example: failstore concepts --folder ~/concept-library --negatives ~/random-images
    """
    from failstore.queries.concepts.bank import BANK_SCHEMA

    store = state(ctx).open_store()
    est.fit(store)
    table = est.results_
    if fmt is Format.table:  # a folder or arrays bank has no classes: no empty columns
        shown = [c for c in CONCEPT_TABLE if not c.startswith("main_class")
                 or table[c].null_count < table.num_rows]  # fmt: skip
        table = table.select(shown)
    else:
        table = table.select(BANK_SCHEMA.names)
    if limit is not None:
        table = table.slice(0, limit)
    emit(table, fmt)
    kept = sum(est.results_["kept"].to_pylist())
    typer.echo(f"{kept} of {est.results_.num_rows} concepts kept", err=True)


def explain(ctx: typer.Context, est: Any, limit: int | None, fmt: Format) -> None:
    """Explain mistakes with concepts: conceptual explanation scores (CES) through the head.

    For each label -> prediction set of the selected mistakes, the concepts of the model's
    concept bank whose direction would most raise (+) or lower (-) the true class's probability.
    Stored: `failstore sql "SELECT * FROM ces"` (per image: ces_images).

    Example: failstore explain --class dog --split test

    Example: failstore explain --slice snow,small --class dog
    """
    from failstore.queries.concepts.explain import SETS_SCHEMA, sentence

    store = state(ctx).open_store()
    est.fit(store)
    table = est.results_
    if fmt is not Format.table:
        emit(table.select(SETS_SCHEMA.names) if limit is None else table.slice(0, limit), fmt)
        return
    rows = table.to_pylist()
    sets: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        sets.setdefault((r["label"], r["prediction"]), []).append(r)
    ordered = sorted(sets.values(), key=lambda rs: -rs[0]["images"])
    for rs in ordered[:limit] if limit is not None else ordered:
        typer.echo(sentence(sorted(rs, key=lambda r: r["rank"]), int(est.top)))
    if not rows:
        typer.echo("no mistakes to explain in the selection", err=True)


def register(app: typer.Typer) -> None:
    from failstore.queries.barlow.estimator import Barlow
    from failstore.queries.concepts.bank import ConceptBank
    from failstore.queries.concepts.explain import Explain
    from failstore.queries.slices.estimator import Slices

    app.command("slices")(analysis_command(Slices, slices, OUTPUT))
    pictures = [
        extra_option("pictures", PicturesOpt, None),
        extra_option("device", DeviceOpt, "cpu"),
        extra_option("top_images", TopImagesOpt, 5),
        extra_option("attack_steps", AttackStepsOpt, 500),
    ]
    app.command("barlow")(analysis_command(Barlow, barlow, OUTPUT + pictures))
    app.command("concepts")(analysis_command(ConceptBank, concepts, OUTPUT))
    app.command("explain")(analysis_command(Explain, explain, OUTPUT))
