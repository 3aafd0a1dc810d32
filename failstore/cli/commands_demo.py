"""``failstore demo``: the embedded default world, end to end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from failstore.cli.output import Format
from failstore.cli.state import state


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _metric(metrics: dict[str, Any], model: str, key: str) -> str:
    """``metrics[model][key]`` (as the demo trainers write it) to 3 decimals, or "-"."""
    m = metrics.get(model)
    v = m.get(key) if isinstance(m, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.3f}"
    return "-"


def print_report(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    m = result.metrics
    store = result.store
    con.print(
        f"[bold]failstore demo[/]: world '{result.spec_name}' ({result.spec_hash[:12]}), "
        f"store {store}"
    )
    con.print(
        f"models: target accuracy train {_metric(m, 'target', 'train_accuracy')} / "
        f"test {_metric(m, 'target', 'test_accuracy')}; robust clean "
        f"{_metric(m, 'robust', 'clean_accuracy')} / adversarial "
        f"{_metric(m, 'robust', 'adv_accuracy')}; "
        f"tagger macro-F1 on test {result.tag_macro_f1:.3f}"
    )
    con.print(
        "ingest specs: failstore ingest WORLD/manifest.parquet " + " ".join(result.ingest_args)
    )
    for title, findings in (
        ("CLIP tags", result.findings),
        ("attribute columns", result.findings_attr),
    ):
        t = Table(
            title=f"planted failure modes vs. slices found ({title}; searched on val, "
            "checked on test)"
        )
        for col in (
            "planted mode",
            "slice found",
            "rank",
            "error rate",
            "class error rate",
            "holds on test",
            "covers (of planted)",
            "covers (of its errors)",
        ):
            t.add_column(col)
        for f in findings:
            found = f"{f.cls}: {' + '.join(f.tags)}" if f.found else "not found"
            holds = "-" if f.holds is None else ("yes" if f.holds else "no")
            t.add_row(
                f.planted,
                found,
                str(f.rank or "-"),
                _pct(f.error_rate),
                _pct(f.class_error_rate),
                holds,
                _share(f.covered, f.planted_size),
                _share(f.covered_errors, f.planted_errors),
            )
        con.print(t)
    _planted_table(con, result)
    _barlow_table(con, result.barlow)
    _ces_table(con, result.ces)
    _coverage_tables(con, result.coverage, result.coverage_checks)
    _sanity_table(con, result.sanity)
    con.print("see the images:")
    for f in result.findings:
        con.print(f'  failstore --store {store} sql "{f.sql}"', soft_wrap=True)
    con.print(
        f"next: failstore --store {store} slices --split val --eval-split test", soft_wrap=True
    )
    con.print(f"browse: failstore --store {store} serve", soft_wrap=True)
    if result.report is not None:
        con.print(f"report: {result.report.as_uri()}", soft_wrap=True)


def _share(part: int | None, whole: int | None) -> str:
    """'44/279 (16%)', or '-'."""
    if part is None or not whole:
        return "-"
    return f"{part}/{whole} ({100 * part / whole:.0f}%)"


def _planted_table(con: Any, result: Any) -> None:
    """Did each rule take (the target fails on its slice), and was it found?"""
    from rich.table import Table

    modes = getattr(result, "planted_modes", [])
    if not modes:
        return
    t = Table(title="planted failure modes: did each rule take? (>= 2x class error, >= 0.30)")
    for col in ("planted mode", "split", "images", "error rate", "95 % interval",
                "class error rate", "ratio", "took"):  # fmt: skip
        t.add_column(col)
    for m in modes:
        ci = "-" if m.ci_low is None else f"{m.ci_low:.2f} .. {m.ci_high:.2f}"
        ratio = "-" if m.ratio is None else f"{m.ratio:.1f}x"
        t.add_row(m.planted, m.split, str(m.size), _pct(m.error_rate), ci,
                  _pct(m.class_error_rate), ratio, "yes" if m.learned else "no")  # fmt: skip
    con.print(t)
    o = Table(title="planted failure modes: outcomes")
    for col in ("planted mode", "with CLIP tags", "with attribute columns"):
        o.add_column(col)
    for row in result.outcomes():
        o.add_row(row["planted"], row["clip_tags"], row["attributes"])
    con.print(o)
    con.print("found: the rule took and a slice names it (its rank in the class); missed: the "
              "rule took but no slice names it (an analysis miss);")
    con.print("not learned: the target does not fail there as promised (a world miss)")


def _barlow_table(con: Any, findings: list[Any]) -> None:
    from rich.table import Table

    t = Table(title="planted failure modes vs. Barlow leaves (robust features, val, depth 2)")
    for col in ("planted mode", "best valid leaf", "ER", "EC", "description", "purity",
                "recall", "explains"):  # fmt: skip
        t.add_column(col)
    for f in findings:
        leaf = f"{f.cls}: {f.rule}" if f.found else "no valid leaf"
        t.add_row(
            f.planted, leaf, _pct(f.error_rate), _pct(f.error_coverage), f.description or "-",
            _pct(f.purity), _pct(f.recall), "yes" if f.explains else "no",
        )  # fmt: skip
    con.print(t)
    con.print(
        "purity: share of the leaf's failures in the mode; recall: share of the mode's "
        "failures in the leaf; explains: purity >= 0.6 and the description names the cause"
    )


def _ces_table(con: Any, findings: list[Any]) -> None:
    from rich.table import Table

    t = Table(title="planted failure modes vs. concept explanations (CES, test mistakes)")
    for col in ("planted mode", "mistakes", "top 3 name the cause", "sets of 5",
                "random concepts"):  # fmt: skip
        t.add_column(col)
    for f in findings:
        t.add_row(f.planted, str(f.images), _pct(f.singles), _pct(f.sets), _pct(f.control))
    con.print(t)


def _sanity_table(con: Any, findings: list[Any]) -> None:
    from rich.table import Table

    if not findings:
        return
    t = Table(title="can each attribution method be trusted? (debugging tests, test split)")
    for col in ("test", "method", "figure", "95 % interval", "verdict", "expected", "holds"):
        t.add_column(col)
    for f in findings:
        fig = "-" if f.figure is None else f"{f.metric} {f.figure:.3f}"
        ci = "-" if f.low is None else f"{f.low:.3f} .. {f.high:.3f}"
        t.add_row(f.test, f.method, fig, ci, f.verdict, f.expected, "yes" if f.holds else "no")
    con.print(t)


def _coverage_tables(con: Any, findings: list[Any], checks: list[Any]) -> None:
    from rich.table import Table

    if not findings:
        return
    t = Table(title="where the attributions lie (Shared Interest, test): soft saliency coverage")
    for col in ("method", "group", "images", "soft SC", "95 % interval", "cases"):
        t.add_column(col)
    for f in findings:
        ci = "-" if f.low is None else f"{f.low:.3f} .. {f.high:.3f}"
        soft = "-" if f.soft_sc is None else f"{f.soft_sc:.3f}"
        parts = f.cases.split(", ")
        mix = ", ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
        t.add_row(f.method, f.group, str(f.images), soft, ci, mix)
    con.print(t)
    c = Table(title="expected from the planted shortcuts (difference of mean soft SC, bootstrap)")
    for col in ("method", "expectation", "difference", "95 % interval", "verdict"):
        c.add_column(col)
    for k in checks:
        ci = "-" if k.low is None else f"{k.low:+.3f} .. {k.high:+.3f}"
        diff = "-" if k.difference is None else f"{k.difference:+.3f}"
        c.add_row(k.method, k.claim, diff, ci, k.verdict)
    con.print(c)


def demo(
    ctx: typer.Context,
    world: Annotated[
        Path | None,
        typer.Option(
            help="A world spec (YAML/JSON); default: the "
            "built-in world with three planted failure modes."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="Smaller world and shorter training (a cold run in about 3 minutes)."),
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    workers: Annotated[int | None, typer.Option(help="Decode worker processes.")] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the static report of the store (failstore report); default: "
            "STORE-report beside the store."
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no report.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with status 1 when a planted rule did not take (the target does not fail "
            "on its slice at >= 2x its class's error rate and >= 0.3).",
        ),
    ] = False,
) -> None:
    """Build a world with planted failures, train its models, ingest it, report the findings.

    Worlds and models are cached (FAILSTORE_CACHE, default ~/.cache/failstore); the store is
    --store, or ./failstore-demo (./failstore-demo-NAME for other worlds, e.g. --quick).

    Example: failstore demo --quick
    """
    from failstore.demo.run import dumps, run_demo

    st = state(ctx)
    quiet = fmt is not Format.table

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    result = run_demo(
        st.store,
        world=world,
        quick=quick,
        log=log,
        progress=not quiet and sys.stderr.isatty(),
        workers=workers,
        report_dir=None if no_report else (report or ""),
    )
    if fmt is Format.table:
        print_report(result)
    else:
        typer.echo(dumps(result))
    broken = result.broken_promises()
    for msg in broken:
        log(f"warning: {msg}")
    if broken and strict:
        from failstore.errors import FailstoreError

        raise FailstoreError(f"{len(broken)} planted rule(s) did not take (--strict)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
