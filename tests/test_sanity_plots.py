"""The sanity run's figures: the plotted numbers (means and SEMs, NaN left out) against numpy,
and the PNGs (one per test; curves for randomisation, bars for spurious and reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from failstore.queries.sanity.plots import curve_plots, curve_table
from failstore.queries.sanity.similarity import METRICS
from failstore.queries.sanity.verdicts import SCORES_SCHEMA

METHODS = ("gradient", "grad_cam")
LAYERS = ("fc", "bottleneck", "features.4")  # top first, as cascading randomises them
N_IMAGES = 4


def _rows(test: str, method: str, step: int, layer: str | None, group: str | None,
          values: dict[str, np.ndarray]) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for i in range(len(values["rank_abs"])):
        row: dict[str, Any] = {
            "model": "m", "method": method, "test": test, "step": step, "layer": layer,
            "layers": None, "group": group, "reference_model": None, "image_id": f"img{i}",
            "label": "a", "explained": "a",
        }  # fmt: skip
        row.update({m: float(values[m][i]) for m in METRICS})
        out.append(row)
    return out


def cascading_scores() -> tuple[pa.Table, dict[tuple[str, int, str], np.ndarray]]:
    """2 methods x 3 steps x 4 images; one NaN (gradient, step 2, rank_abs)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    truth = {}
    for method in METHODS:
        for step, layer in enumerate(LAYERS, start=1):
            values = {m: rng.uniform(-1, 1, N_IMAGES) for m in METRICS}
            if method == "gradient" and step == 2:
                values["rank_abs"][1] = np.nan
            rows += _rows("cascading", method, step, layer, None, values)
            truth.update({(method, step, m): v for m, v in values.items()})
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), truth


def spurious_scores() -> pa.Table:
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for method in METHODS:
        for group in ("slice", "control"):
            values = {m: rng.uniform(0, 1, N_IMAGES) for m in METRICS}
            values["rank_signed"][:] = np.nan
            values["hog"][:] = np.nan
            rows += _rows("spurious", method, 0, None, group, values)
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)


def test_curve_table_matches_numpy() -> None:
    scores, truth = cascading_scores()
    table = curve_table(scores)
    assert table.num_rows == len(METHODS) * len(LAYERS) * len(METRICS)
    assert table.column_names == [
        "test", "method", "step", "layer", "group", "metric", "mean", "sem", "images",
    ]  # fmt: skip
    for r in table.to_pylist():
        v = truth[(r["method"], r["step"], r["metric"])]
        v = v[np.isfinite(v)]
        assert r["test"] == "cascading" and r["group"] is None
        assert r["layer"] == LAYERS[r["step"] - 1]
        assert r["images"] == v.size
        assert r["mean"] == pytest.approx(np.mean(v), abs=1e-12)
        assert r["sem"] == pytest.approx(np.std(v, ddof=1) / np.sqrt(v.size), abs=1e-12)
    nan_row = [
        r for r in table.to_pylist()
        if (r["method"], r["step"], r["metric"]) == ("gradient", 2, "rank_abs")
    ]  # fmt: skip
    assert len(nan_row) == 1 and nan_row[0]["images"] == N_IMAGES - 1
    assert np.isfinite(nan_row[0]["mean"])
    # methods in order of appearance, steps ascending within a method
    firsts = table.filter(pa.compute.equal(table["metric"], "ssim"))
    assert firsts["method"].to_pylist() == [m for m in METHODS for _ in LAYERS]
    assert firsts["step"].to_pylist() == [1, 2, 3] * len(METHODS)


def test_curve_table_all_nan_and_single_image() -> None:
    table = curve_table(spurious_scores(), metrics=("hog", "ssim"))
    hog = [r for r in table.to_pylist() if r["metric"] == "hog"]
    assert hog and all(r["images"] == 0 and np.isnan(r["mean"]) for r in hog)
    one = curve_table(spurious_scores().slice(0, 1), metrics=("ssim",)).to_pylist()
    assert one[0]["images"] == 1 and np.isnan(one[0]["sem"])


def test_curves_query_counts_image_rows_and_averages_defined_figures(tmp_path: Path) -> None:
    """The stored query ``sanity_curves`` on a run holding a NaN figure: ``images`` is the
    number of image rows (4, the NaN one too), as its description says; each mean and SEM is
    over the defined figures only, as ``curve_table`` (3 for the NaN row)."""
    from failstore.queries.framework.analysis import write_run
    from failstore.queries.sanity.verdicts import VERDICTS_SCHEMA
    from failstore.queries.sql.session import run_sql
    from failstore.queries.sql.stored import builtin_queries
    from failstore.store import Store

    description = builtin_queries()["sanity_curves"].description
    assert "`images`: the number of image rows, every image compared, whether or not its " \
        "figures are defined" in description  # fmt: skip
    scores, _ = cascading_scores()
    store = Store(tmp_path / "s", create=True)
    write_run(
        store, analysis="sanity", result_table="sanity_verdicts",
        result=VERDICTS_SCHEMA.empty_table(), schema=VERDICTS_SCHEMA,
        extra={"sanity_scores": (scores, SCORES_SCHEMA)}, params={"p": 1},
        run_key={"model": "m", "test": "cascading"}, versions={}, seconds=0.0,
    )  # fmt: skip
    curves = run_sql(store, "SELECT * FROM sanity_curves").to_pylist()
    assert len(curves) == len(METHODS) * len(LAYERS)
    assert all(c["images"] == N_IMAGES for c in curves)
    plotted = {(r["method"], r["step"], r["metric"]): r for r in curve_table(scores).to_pylist()}
    for c in curves:
        for m in METRICS:
            want = plotted[(c["method"], c["step"], m)]
            assert c[m] == pytest.approx(want["mean"], abs=1e-12)
            assert c[f"{m}_sem"] == pytest.approx(want["sem"], abs=1e-12)
    (nan_row,) = [c for c in curves if (c["method"], c["step"]) == ("gradient", 2)]
    assert plotted[("gradient", 2, "rank_abs")]["images"] == N_IMAGES - 1
    assert nan_row["images"] == N_IMAGES and np.isfinite(nan_row["rank_abs"])


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Keep each figure curve_plots closes, to look at what it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    close = plt.close

    def keep(fig: Any = None) -> None:
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert 800 <= w <= 4000 and 300 <= h <= 1500


def test_curve_plots_cascading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch)
    scores, _ = cascading_scores()
    written = curve_plots(scores, tmp_path / "plots")
    assert written == [tmp_path / "plots" / "cascading.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cascading.png"]
    _check_png(written[0])
    (fig,) = figures
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["rank_abs", "rank_signed", "ssim", "hog"]
    ticks = [t.get_text() for t in axes[0].get_xticklabels()]
    assert ticks == ["original", *LAYERS]
    curves = [c for c in axes[2].containers if c.get_label() in METHODS]
    assert [c.get_label() for c in curves] == list(METHODS)
    table = curve_table(scores, metrics=("ssim",))
    for c in curves:
        x, y = c.lines[0].get_data()
        want = table.filter(pa.compute.equal(table["method"], c.get_label()))["mean"]
        assert list(x) == [0, 1, 2, 3]
        np.testing.assert_allclose(np.asarray(y, float), [1.0, *want.to_pylist()])


def test_curve_plots_spurious_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch)
    both = pa.concat_tables([cascading_scores()[0], spurious_scores()])
    written = curve_plots(both, tmp_path)
    assert [p.name for p in written] == ["cascading.png", "spurious.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascading.png", "spurious.png"]
    for p in written:
        _check_png(p)
    spurious = figures[1]
    assert [ax.get_title() for ax in spurious.axes] == ["rank_abs", "ssim"]
    table = curve_table(spurious_scores(), metrics=("ssim",)).to_pylist()
    ax = spurious.axes[1]
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["slice", "control"]
    for bars, group in zip(containers, ("slice", "control"), strict=True):
        assert len(bars) == len(METHODS)
        heights = [b.get_height() for b in bars]
        want = [r["mean"] for r in table if r["group"] == group]
        np.testing.assert_allclose(heights, want)


def test_curve_plots_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows: list[dict[str, Any]] = []
    for method in METHODS:
        rows += _rows("reference", method, 0, None, None,
                      {m: rng.uniform(-1, 1, N_IMAGES) for m in METRICS})  # fmt: skip
    written = curve_plots(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), tmp_path)
    assert [p.name for p in written] == ["reference.png"]
    _check_png(written[0])
    assert curve_plots(pa.Table.from_pylist([], schema=SCORES_SCHEMA), tmp_path / "e") == []


def test_import_stays_light() -> None:
    code = (
        "import sys, failstore.queries.sanity.plots; "
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
