"""Ingest feedback: "loading models: ..." before the work, a rate and an ETA while it runs (a bar
on a terminal, a plain line every few seconds otherwise), and a summary that says where the
errors are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import write_colour_folder

from failstore.errors import ConfigError
from failstore.ingest import progress
from failstore.ingest.progress import (
    LineProgress,
    ProgressBar,
    RateMeter,
    format_duration,
    open_progress,
    progress_seconds,
)
from failstore.ingest.report import IngestReport


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _run(meter: RateMeter, clock: Clock, per_second: float, seconds: int, step=0.1):
    """Images arrive at ``per_second`` for ``seconds``, one update every ``step`` seconds."""
    for _ in range(round(seconds / step)):
        clock.t += step
        meter.update(meter.done + round(per_second * step))


def test_format_duration():
    cases = {0: "0 s", 45: "45 s", 59.6: "1 min 00 s", 200: "3 min 20 s", 7500: "2 h 05 min"}
    assert {s: format_duration(s) for s in cases} == cases


def test_the_rate_and_eta_are_unknown_at_first_then_steady():
    clock = Clock()
    meter = RateMeter(1000, clock=clock)
    meter.update(0)
    assert meter.text() == "-- images/s, ETA --"
    _run(meter, clock, 10, 0.5)
    assert meter.line() == "ingest: 5/1000 images, -- images/s, ETA --"  # under a second
    _run(meter, clock, 10, 9.5)
    assert meter.line() == "ingest: 100/1000 images, 10.0 images/s, ETA 1 min 30 s"


def test_the_time_before_the_first_image_does_not_count():
    clock = Clock()
    meter = RateMeter(500, clock=clock)
    clock.t += 20  # workers starting, first batch
    meter.update(1)
    _run(meter, clock, 20, 5)
    assert meter.rate == pytest.approx(20.0) and meter.eta == pytest.approx(399 / 20)


def test_the_rate_follows_the_last_thirty_seconds():
    clock = Clock()
    meter = RateMeter(10_000, clock=clock)
    meter.update(0)
    _run(meter, clock, 100, 40)
    assert meter.rate == pytest.approx(100, rel=0.02)
    _run(meter, clock, 10, 40)
    assert meter.rate == pytest.approx(10, rel=0.02)  # not the run's average (55)
    assert meter.text() == f"10.0 images/s, ETA {format_duration((10_000 - 4400) / 10)}"


def test_a_stalled_run_has_no_eta():
    clock = Clock()
    meter = RateMeter(100, clock=clock)
    meter.update(0)
    _run(meter, clock, 0, 40)
    assert meter.rate == 0 and meter.text() == "0.0 images/s, ETA --"


def test_plain_lines_every_interval():
    clock, lines = Clock(), []
    p = LineProgress(100, interval=5, clock=clock, write=lines.append)
    for _ in range(100):  # 10 images/s for 10 s
        clock.t += 0.1
        p.advance()
    assert lines == [
        "ingest: 50/100 images, 10.0 images/s, ETA 5 s",
        "ingest: 100/100 images, 10.0 images/s, ETA 0 s",
    ]


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_SECONDS_ENV, raising=False)
    assert progress_seconds() == 5.0
    monkeypatch.setenv(progress.PROGRESS_SECONDS_ENV, "0.5")
    assert progress_seconds() == 0.5 and LineProgress(3).interval == 0.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(progress.PROGRESS_SECONDS_ENV, bad)
        with pytest.raises(ConfigError) as e:
            progress_seconds()
        assert str(e.value) == (
            f"FAILSTORE_PROGRESS_SECONDS must be a positive number of seconds, got {bad!r}; "
            "unset it for the default, 5"
        )


def test_a_terminal_gets_a_bar_anything_else_lines():
    assert isinstance(open_progress(3, tty=False), LineProgress)
    bar = open_progress(3, tty=True)
    try:
        assert isinstance(bar, ProgressBar)
        bar.advance()
        assert bar.meter.done == 1
    finally:
        bar.close()


def test_the_summary_says_where_the_errors_are():
    r = IngestReport(seen=10, new_images=7, errors=3, seconds=2.0, store="/data/my store")
    assert r.summary() == (
        "ingested 10 images in 2.0 s (5.0 images/s): 7 new, 0 updated, 0 unchanged, "
        "0 duplicates, 0 predictions, 3 errors; 3 images could not be ingested: see the "
        "ingest_errors table (failstore --store '/data/my store' sql "
        '"SELECT uri, reason FROM ingest_errors")'
    )
    ok = IngestReport(seen=10, new_images=10, seconds=2.0, store="/s")
    assert "ingest_errors" not in ok.summary()


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(4)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 3))
        return net, ["red", "green", "blue"], {"resize": 16, "crop": 16}
    """
)
LINE = re.compile(r"ingest: (\d+)/61 images, (--|\d+\.\d) images/s, ETA (--|\d.*)")


def test_a_real_ingest_without_a_terminal_prints_progress_lines(tmp_path):
    root = write_colour_folder(tmp_path / "images", per_class=20)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "fs_progress_factory.py").write_text(FACTORY)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FAILSTORE_PROGRESS_SECONDS="0.001")
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "failstore.cli.app", "--store", str(store), "ingest", str(root),
           "--target", "fs_progress_factory:make", "--workers", "0"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    loading = lines.index("loading models: fs_progress_factory:make (target)...")
    progress_at = [i for i, ln in enumerate(lines) if ln.startswith("ingest: ")]
    assert progress_at and loading < progress_at[0], r.stderr
    matches = [LINE.fullmatch(lines[i]) for i in progress_at]
    assert all(matches), r.stderr
    done = [int(m.group(1)) for m in matches if m]
    assert done == sorted(done) and done[-1] > 30
    assert r.stdout.strip().endswith(
        f"1 image could not be ingested: see the ingest_errors table (failstore --store {store} "
        'sql "SELECT uri, reason FROM ingest_errors")'
    )
