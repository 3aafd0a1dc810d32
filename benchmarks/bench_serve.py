"""Benchmark of ``failstore serve``.

    .venv/bin/python benchmarks/bench_serve.py                    # 1,000,000 images
    .venv/bin/python benchmarks/bench_serve.py --rows 100000 --requests 10

Part 1: a store of N images and predictions (bench_sql's, 1,000 classes). ``failstore serve``
runs as its own process (``--cache-mb``: its result cache; 0 makes every request run the
query); 20 client threads each send ``--requests`` requests for
``/api/queries/class_error_rates`` (one connection per request, as a dashboard's HTTP source
does). Against: the same stored query in-process (``run_sql``), the same number of times, one
after another. Prints p50 / p95 of both and the ratio of the p50s (target <= 1.5).

Part 2: a planted store with real image files and slices (tests/planted_store.py); the gallery
of one slice with 100 thumbnails (50 failing, 50 not): the page's HTML, then its thumbnails
fetched over 6 keep-alive connections as a browser does (without its HTTP cache), after one
warm-up visit (thumbnails cached). Prints the page time and page + thumbnails time (target
< 300 ms warm).

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        con.request("GET", path)
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


def browser_get(port: int):
    """A GET over one keep-alive connection per thread (a browser reuses its 6 connections)."""
    local = threading.local()

    def fetch(path: str) -> int:
        con = getattr(local, "con", None)
        if con is None:
            con = local.con = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        con.request("GET", path)
        r = con.getresponse()
        r.read()
        return r.status

    return fetch


class Served:
    def __init__(self, store_path: Path, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "failstore.cli.app", "--store", str(store_path), "serve",
             "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/api/tables")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def part1(rows: int, requests: int, clients: int, cache_mb: int) -> None:
    import bench_sql

    from failstore.queries.sql.session import run_sql
    from failstore.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    t0 = time.perf_counter()
    bench_sql.build(tmp / "store", rows)
    print(f"store of {rows:,} images built in {time.perf_counter() - t0:.0f} s")
    store = Store(tmp / "store")
    path = "/api/queries/class_error_rates"
    served = Served(store.path, "--cache-mb", str(cache_mb))
    try:
        get(served.port, path)  # warm-up
        lat: list[float] = []
        failed: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(requests):
                t = time.perf_counter()
                status, _ = get(served.port, path)
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if status != 200:  # e.g. 400 past the server's --timeout
                        failed.append(status)

        t = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    finally:
        served.close()
    run_sql(store, "SELECT * FROM class_error_rates")  # warm-up
    local = []
    for _ in range(clients * requests):
        t = time.perf_counter()
        run_sql(store, "SELECT * FROM class_error_rates")
        local.append(time.perf_counter() - t)
    how = f"result cache {cache_mb} MB" if cache_mb else "result cache off"
    print(f"{clients} clients x {requests} requests ({how}): {len(lat) / wall:.1f} requests/s")
    if failed:
        print(f"  {len(failed)} of {len(lat)} requests failed (HTTP {sorted(set(failed))})")
    print(f"  served     p50 {median(lat) * 1e3:7.0f} ms  p95 {pct(lat, 0.95) * 1e3:7.0f} ms")
    print(f"  in-process p50 {median(local) * 1e3:7.0f} ms  p95 {pct(local, 0.95) * 1e3:7.0f} ms")
    print(f"  ratio of p50s {median(lat) / median(local):.2f} (target <= 1.5)")


THUMB = re.compile(r'src="(/api/images/[0-9a-f]{64}/thumb[^"]*)"')


def part2(repeat: int) -> None:
    from planted_store import build

    from failstore.queries.slices.estimator import Slices

    tmp = Path(tempfile.mkdtemp(prefix="bench_gallery_"))
    store = build(tmp / "s", n=2400, with_model=True)
    Slices(min_size=10).fit(store)
    q = {"model": "m", "class": "dog", "grouping": "label", "tag_source": "tags",
         "tags": "snow", "per_page": "50"}  # fmt: skip
    url = "/slice?" + urlencode(q)
    served = Served(store.path)
    try:
        pages, totals, shown = [], [], 0
        for i in range(repeat + 1):
            t = time.perf_counter()
            _, body = get(served.port, url)
            page = time.perf_counter() - t
            thumbs = THUMB.findall(body.decode().replace("&amp;", "&"))
            with ThreadPoolExecutor(6) as pool:  # 6 keep-alive connections, as a browser
                assert all(s == 200 for s in pool.map(browser_get(served.port), thumbs))
            total = time.perf_counter() - t
            if i:  # the first visit warms the thumbnail cache
                pages.append(page)
                totals.append(total)
            shown = len(thumbs)
    finally:
        served.close()
    print(f"gallery with {shown} thumbnails (warm, median of {repeat}):")
    print(f"  page HTML {median(pages) * 1e3:.0f} ms; page + thumbnails "
          f"{median(totals) * 1e3:.0f} ms (target < 300 ms)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=20, help="per client")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache-mb", type=int, default=64, help="the server's (0: every request "
                    "runs the query)")  # fmt: skip
    ap.add_argument("--part", choices=["all", "api", "gallery"], default="all")
    args = ap.parse_args()
    if args.part in ("all", "api"):
        part1(args.rows, args.requests, args.clients, args.cache_mb)
    if args.part in ("all", "gallery"):
        part2(args.repeat)


if __name__ == "__main__":
    main()
