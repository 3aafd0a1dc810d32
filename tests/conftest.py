"""Shared fixtures: small generated image folders and tiny real model files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _hypothesis_outside_the_checkout() -> None:
    """Hypothesis keeps its example database in ./.hypothesis by default: the suite writes
    nothing into the checkout, so it goes to failstore's cache (reused across local runs)."""
    from hypothesis.configuration import set_hypothesis_home_dir

    from failstore import config

    set_hypothesis_home_dir(config.cache_dir() / "hypothesis")


_hypothesis_outside_the_checkout()

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210)}


def write_colour_folder(
    root: Path, per_class: int = 4, size: tuple[int, int] = (24, 20), seed: int = 0
) -> Path:
    """root/<colour>/<i>.png: noisy images whose dominant channel is their label."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, rgb in COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-25, 25, (size[1], size[0], 3))
            arr = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return write_colour_folder(tmp_path / "images")


@pytest.fixture
def colour_folder_with_bad(tmp_path: Path) -> Path:
    root = write_colour_folder(tmp_path / "images")
    (root / "red" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


@pytest.fixture(scope="session")
def pg():
    """A throwaway PostgreSQL server (tests/pg_server.py), one per test process."""
    import pg_server

    server = pg_server.start()
    try:
        yield server
    finally:
        server.stop()
