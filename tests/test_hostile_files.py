"""Files that are not ordinary images, through a real `failstore ingest` process (issue 9): a
FIFO named x.png hung the ingest, a link to /dev/zero grew it past 3 GB, a file name that is
not UTF-8 aborted the whole ingest. Each is now one ingest_errors row and the rest ingests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_colour_folder

from failstore.queries.sql.session import run_sql
from failstore.store import Store

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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_and_bad_names_are_rows_not_failures(tmp_path):
    root = write_colour_folder(tmp_path / "images", per_class=2)
    os.mkfifo(root / "red" / "fifo.png")
    os.symlink("/dev/zero", root / "green" / "zero.png")
    big = root / "blue" / "big.png"
    big.write_bytes((root / "blue" / "0.png").read_bytes() + b"\0" * 4096)
    with open(os.path.join(os.fsencode(root / "red"), b"bad_\xff\xfe.png"), "wb") as f:
        f.write((root / "red" / "1.png").read_bytes())
    (tmp_path / "fs_hostile_factory.py").write_text(FACTORY)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FAILSTORE_MAX_FILE_MB="0.003")
    store = tmp_path / "s"
    r = subprocess.run(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store), "ingest", str(root),
         "--target", "fs_hostile_factory:make", "--workers", "0", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = Store(store)
    errors = run_sql(s, "SELECT uri, reason FROM ingest_errors ORDER BY uri").to_pylist()
    limit = int(0.003 * 1024 * 1024)
    size = big.stat().st_size
    assert errors == [
        {"uri": str(big), "reason": f"file is {size} bytes, more than the limit {limit} "
         "(raise it with FAILSTORE_MAX_FILE_MB=MEGABYTES)"},
        {"uri": str(root / "green" / "zero.png"),
         "reason": "not a regular file (a character device); only image files are read"},
        {"uri": str(root / "red" / "bad_\\xff\\xfe.png"),
         "reason": "file name is not valid UTF-8; rename the file (e.g. with convmv)"},
        {"uri": str(root / "red" / "fifo.png"),
         "reason": "not a regular file (a FIFO); only image files are read"},
    ]  # fmt: skip
    assert s.count("images") == 6 and s.count("predictions") == 6


def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie waiting for its new parent to reap it has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_decode_workers_exit_when_the_ingest_is_killed(tmp_path):
    root = write_colour_folder(tmp_path / "images", per_class=400, size=(160, 120))
    (tmp_path / "fs_hostile_factory.py").write_text(FACTORY)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(tmp_path / "s"), "ingest",
         str(root), "--target", "fs_hostile_factory:make", "--workers", "2", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
    assert len(workers) >= 2, "the decode workers did not start"
    # multiprocessing's resource tracker goes too once the workers' pipes close
    workers += [c for c in _children(proc.pid) if "resource_tracker" in _cmdline(c)]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
