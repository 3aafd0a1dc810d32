"""A planted store with slices, a real `failstore serve` process on a free port, and a raw
HTTP client (http.client: paths are sent as written, so traversal attempts reach the server)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from planted_store import build

from failstore.store import Store

ROOT = Path(__file__).resolve().parents[1]


def planted_with_slices(path: Path, n: int = 240) -> Store:
    """tests/planted_store with real PNG files, saliency maps and a `failstore slices` run."""
    from failstore.queries.slices.estimator import Slices

    store = build(path, n=n, with_model=True)
    Slices(min_size=10).fit(store)
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(store: Store, *args: str) -> Iterator[Server]:
    """`python -m failstore.cli.app --store S serve --port P [args]` until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "failstore.cli.app", "--store", str(store.path), "serve",
         "--port", str(port), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Server(port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if server.get("/api/tables")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"the server did not start: {out}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            con.request("GET", path)
            r = con.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            con.close()

    def json(self, path: str) -> tuple[int, Any]:
        status, headers, body = self.get(path)
        assert headers["content-type"].startswith("application/json"), (path, headers)
        return status, json.loads(body)
