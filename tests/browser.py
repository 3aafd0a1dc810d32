"""Headless Chromium (Debian's chromium package, installed by scripts/dev) for the page tests:
the DOM after the page ran, and screenshots saved as test artefacts."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed: no lookups
    "--disable-component-update",
    "--disable-sync",
]
ARTEFACTS = Path(tempfile.gettempdir()) / "failstore-test-screenshots"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "headless Chromium is not on this machine: run scripts/dev setup (installs Debian's "
        "chromium package)"
    )


def _run(url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="failstore-chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dom(url: str) -> str:
    """The page's DOM as Chromium rendered it."""
    done = _run(url, "--dump-dom", "--virtual-time-budget=5000")
    if done.returncode != 0 or not done.stdout.strip():
        raise AssertionError(f"chromium could not render {url}: {done.stderr[-500:]}")
    return done.stdout


def screenshot(url: str, name: str, size: str = "1280,900") -> Path:
    """A PNG of the page, kept in ARTEFACTS/<name>.png."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTEFACTS / f"{name}.png"
    done = _run(url, f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars")
    if not out.is_file() or out.stat().st_size == 0:
        raise AssertionError(f"chromium took no screenshot of {url}: {done.stderr[-500:]}")
    return out
