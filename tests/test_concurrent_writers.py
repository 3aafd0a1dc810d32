"""Concurrent `failstore ingest` processes into one store: writers serialise on the store's
writer lock, so every key lands once whatever the interleaving (issue 9: before the lock, 5 of
7 concurrent pairs left hundreds of duplicate image_ids and prediction keys)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from failstore.queries.sql.session import run_sql
from failstore.store import Store

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(4)
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3),
        )
        return net, ["red", "green", "blue"], {"resize": 16, "crop": 16}
    """
)


def _folders(root: Path, n: int, parts: int) -> tuple[list[Path], int]:
    """``parts`` folders root/pK/<label>/<i>.png, each holding a window of 2n/3 of ``n`` images
    drawn from one seeded generator (so a smaller ``n`` gives a subset of a larger one's
    images); returns the folders and the number of distinct images they hold together."""
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(n)]
    labels = ["red", "green", "blue"]
    width = n * 2 // 3
    folders = []
    for k in range(parts):
        start = (k * (n - width)) // max(1, parts - 1)
        folder = root / f"p{k}"
        for i in range(start, start + width):
            d = folder / labels[i % 3]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arrays[i]).save(d / f"{i}.png")
        folders.append(folder)
    return folders, width if parts == 1 else n


def _ingest(store: Path, folder: Path, env: dict[str, str]) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "failstore.cli.app",
        "--store",
        str(store),
        "ingest",
        str(folder),
        "--target",
        "fs_conc_factory:make",
        "--workers",
        "0",
        "--no-progress",
    ]
    pipe = subprocess.PIPE
    return subprocess.Popen(args, env=env, stdout=pipe, stderr=pipe, text=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    mod = tmp_path_factory.mktemp("factory")
    (mod / "fs_conc_factory.py").write_text(FACTORY)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(mod), e.get("PYTHONPATH", "")])
    return e


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_ingests_land_every_key_once(tmp_path, env, writers):
    """The reported set-up: a store already holding the model and some images, then several
    ingests of one large folder at the same time (without the lock, a round of two writers left
    ~1,400 rows for 1,000 images about one time in three here)."""
    (small,), _ = _folders(tmp_path / "small", 150, 1)  # 100 of the large folder's images
    (large,), n = _folders(tmp_path / "large", 1500, 1)  # 1000 images
    for round_ in range(2):
        store = tmp_path / f"s{round_}"
        first = _ingest(store, small, env)
        assert first.wait(timeout=300) == 0
        procs = [_ingest(store, large, env) for _ in range(writers)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        s = Store(store)
        got = run_sql(s, "SELECT count(*) AS n, count(DISTINCT image_id) AS d FROM images")
        assert got.to_pylist() == [{"n": n, "d": n}]
        got = run_sql(
            s, "SELECT count(*) AS n, count(DISTINCT (model, image_id)) AS d FROM predictions"
        )
        assert got.to_pylist() == [{"n": n, "d": n}]
        assert s.count("models") == 1
        assert run_sql(s, "SELECT count(*) AS n FROM samples").to_pylist() == [{"n": n}]


def test_a_waiting_writer_says_it_is_waiting(tmp_path):
    store = Store.init(tmp_path / "s")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom failstore.store import Store\n"
         f"s = Store({str(store.path)!r})\n"
         "with s.writing():\n    print('held', flush=True)\n    time.sleep(3)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    said: list[str] = []
    store.on_wait = said.append
    start = time.monotonic()
    with store.writing():
        waited = time.monotonic() - start
    holder.wait(timeout=30)
    assert waited > 1.0
    assert said == [
        f"waiting for another failstore process writing to {store.path} "
        f"(lock file {store.path / '.writer.lock'})"
    ]
